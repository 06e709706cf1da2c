"""npmobile: MobileNetV1 and V2 inference in NumPy and numba, with an oracle for every kernel.

    model = npmobile.load("mobilenet_v2.tflite")    # or .npz, .h5, .keras, .pth, .onnx
    probs = model.predict(model.preprocess(images))   # probabilities; model(x): see model.outputs
"""

__version__ = "0.1.0"

# Each name below is imported from its module on first use (PEP 562), not when the package is:
# `npmobile ...` then starts without numpy or numba, so that a Ctrl-C while they load reaches
# the command line's handler (one line, exit 130) instead of a traceback.
_EXPORTS = {
    "Graph": "graph", "Node": "graph",
    "Model": "model", "get_num_threads": "model", "set_num_threads": "model",
    "mobilenet_v1": "architectures", "mobilenet_v2": "architectures",
    "WeightFileError": "errors",
    "load": "io",
    "save": "weights",
    "MobileNet": "applications", "MobileNetV2": "applications", "decode_predictions": "applications",
    "preprocess_input": "applications",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'npmobile' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
