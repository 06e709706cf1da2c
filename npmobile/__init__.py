"""npmobile: MobileNetV1 and V2 inference in NumPy and numba, with an oracle for every kernel."""

__version__ = "0.1.0"
