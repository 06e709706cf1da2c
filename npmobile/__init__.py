"""npmobile: MobileNetV1 and V2 inference in NumPy and numba, with an oracle for every kernel.

    model = npmobile.load("mobilenet_v2.tflite")    # or .npz, .h5, .keras, .pth, .onnx
    probs = model.predict(model.preprocess(images))   # probabilities; model(x): see model.outputs
"""

__version__ = "0.1.0"

# The public names are imported from their modules on first use (PEP 562), not with the
# package: `npmobile ...` then starts without numpy or numba, so that a Ctrl-C while they load
# reaches the command line's handler (one line, exit 130) instead of printing a traceback.
__all__ = ["Graph", "MobileNet", "MobileNetV2", "Model", "Node", "WeightFileError", "decode_predictions",
           "get_num_threads", "load", "mobilenet_v1", "mobilenet_v2", "preprocess_input", "save",
           "set_num_threads"]


def __getattr__(name):
    match name:
        case "Graph" | "Node":
            from . import graph as module
        case "Model" | "get_num_threads" | "set_num_threads":
            from . import model as module
        case "mobilenet_v1" | "mobilenet_v2":
            from . import architectures as module
        case "WeightFileError":
            from . import errors as module
        case "load":
            from . import io as module
        case "save":
            from . import weights as module
        case "MobileNet" | "MobileNetV2" | "decode_predictions" | "preprocess_input":
            from . import applications as module
        case _:
            raise AttributeError(f"module 'npmobile' has no attribute {name!r}")
    value = globals()[name] = getattr(module, name)
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
