"""benchmarks/quantized_agreement.py as a module, for the tests that check its figures
(test_quantized_tflite.py, test_quantized_corpus.py): one script computes them for the docs
and for the tests."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "quantized_agreement", Path(__file__).resolve().parents[1] / "benchmarks" / "quantized_agreement.py")
qa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qa)
