"""End-to-end benchmark, writing the figures the README quotes when asked to.

    python benchmarks/e2e.py [--quick] [--save]

Runs npmobile.bench (MobileNetV1/V2-1.0-224, batch 1 and 8, 1 and 2 threads; npmobile fast and
oracle engines, ONNX Runtime, PyTorch, the ONNX reference evaluator, all on the same weights; and
LiteRT against npmobile on the quantized MobileNetV2 .tflite of ../shared/assets when it is there)
and prints the table; with --save it also writes benchmarks/results/e2e.json, e2e.png and e2e.md (the
committed results: never overwritten unless asked). See npmobile/bench.py for the method and the
thread settings.
"""

import sys
from pathlib import Path

from npmobile import bench

RESULTS = Path(__file__).resolve().parent / "results"
TFLITE = Path(__file__).resolve().parents[2] / "shared" / "assets" / "models" / "mobilenet_v2_1.0_224_quant.tflite"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--save" in argv:
        argv.remove("--save")
        RESULTS.mkdir(exist_ok=True)
        argv += ["--out", str(RESULTS / "e2e.json"), "--plot", str(RESULTS / "e2e.png"),
                 "--markdown", str(RESULTS / "e2e.md")]
    if TFLITE.exists():
        argv += ["--tflite", str(TFLITE)]
    sys.exit(bench.main(argv))
