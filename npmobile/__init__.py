"""npmobile: MobileNetV1 and V2 inference in NumPy and numba, with an oracle for every kernel.

    model = npmobile.load("mobilenet_v2.tflite")    # or .npz, .h5, .keras, .pth, .onnx
    probs = model.predict(model.preprocess(images))   # probabilities; model(x): see model.outputs
"""

__version__ = "0.1.0"

from .graph import Graph, Node  # noqa: E402
from .model import Model, get_num_threads, set_num_threads  # noqa: E402
from .architectures import mobilenet_v1, mobilenet_v2  # noqa: E402
from .errors import WeightFileError  # noqa: E402
from .io import load  # noqa: E402
from .weights import save  # noqa: E402
from .applications import MobileNet, MobileNetV2, decode_predictions, preprocess_input  # noqa: E402

__all__ = ["Graph", "MobileNet", "MobileNetV2", "Model", "Node", "WeightFileError", "decode_predictions", "load",
           "mobilenet_v1", "mobilenet_v2", "preprocess_input", "save"]
