"""Fuzzing every weight format: seeded byte flips and truncations, and structural edits of graph
attributes, each mutant loaded in a child process under a 2 GiB address-space cap and a timeout
(fuzzing.Worker). A crash (signal), a hang, a MemoryError or any exception other than
WeightFileError fails the test with the mutants at fault; so does a load peaking at 1 GiB RSS.

The quick variant draws a few dozen mutants per format; the slow one (CI runs it too) a few
hundred. scripts/fuzz.py runs the full campaign the README quotes.
"""

import os

import numpy as np
import pytest

import fuzzing
from crafted import npz_bytes, pt2_bytes, tiny_graph, tiny_meta, tiny_onnx, tiny_params, tiny_torchvision_state_dict

pytest.importorskip("onnx")
pytest.importorskip("tflite")
pytest.importorskip("h5py")

GiB = 1 << 30


@pytest.fixture(scope="module")
def seeds(assets, tmp_path_factory):
    """Byte seeds per format, native metas, ONNX models and a .pt2 state_dict to edit: small
    generated files plus the smallest real TFLite, ONNX and Keras files."""
    import onnx
    d = tmp_path_factory.mktemp("seeds")
    keras = pytest.importorskip("keras")
    h5 = d / "keras.h5"
    keras.applications.MobileNet(alpha=0.25, input_shape=(32, 32, 3), weights=None, classes=10).save(h5)
    models = {"tiny.onnx": tiny_onnx(), "real.onnx": onnx.load(str(assets / "models" / "mobilenetv2-12-int8.onnx"))}
    files = {".npz": {"tiny.npz": npz_bytes(tiny_meta(), tiny_params(tiny_graph()))},
             ".onnx": {"tiny.onnx": models["tiny.onnx"].SerializeToString()},
             ".tflite": {"real.tflite": (assets / "models" / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()},
             ".h5": {"keras.h5": h5.read_bytes()}, ".pt2": {"tiny.pt2": pt2_bytes(tiny_torchvision_state_dict())}}
    native = {"tiny.npz": (tiny_meta(), tiny_params(tiny_graph()))}
    return files, native, models, {"tiny.pt2": tiny_torchvision_state_dict()}, d


def campaign(seeds, mutants, edits, seed):
    files, native, models, pt2, folder = seeds
    rng = np.random.default_rng(seed)
    jobs = [*fuzzing.byte_mutants(files, mutants, rng), *fuzzing.edit_mutants(native, models, edits, rng, pt2)]
    results = fuzzing.run(jobs, folder, workers=1, mem_limit=2 * GiB, timeout=float(os.environ.get("FUZZ_TIMEOUT", 120)))
    bad = [f"{m.fmt} {m.seed} {m.how}: {o.kind}: {o.detail[-400:]}" for m, o in results if o.failed]
    fat = [f"{m.fmt} {m.seed} {m.how}: peak RSS {o.peak_rss:,}" for m, o in results
           if o.peak_rss >= GiB]
    assert not bad and not fat, "\n".join(bad + fat)
    kinds = {o.kind for _, o in results}
    assert "refused" in kinds, "no mutant was refused: the mutations do not reach the readers"
    return results


def test_fuzz_quick(seeds):
    results = campaign(seeds, mutants=20, edits=40, seed=11)
    assert len(results) == 5 * 20 + 40


@pytest.mark.slow
def test_fuzz_deep(seeds):
    results = campaign(seeds, mutants=250, edits=300, seed=12)
    assert len(results) == 5 * 250 + 300
