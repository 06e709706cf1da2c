"""A Model that travels to other processes: pickling (what Dask and Ray ship to their workers)
and `npmobile warmup` (a process started after it compiles nothing)."""

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import npmobile
from npmobile.data import DIGITS_MODEL

ROOT = Path(__file__).resolve().parents[1]


def tiny_v2():
    """MobileNetV2 (residual adds included) with random weights, small enough to run in ms."""
    graph = npmobile.mobilenet_v2(0.35, 64, classes=7)
    rng = np.random.default_rng(1)
    params = {k: rng.standard_normal(s).astype(np.float32) * 0.2 for k, s in graph.param_shapes().items()}
    params.update({k: np.abs(v) + 1 for k, v in params.items() if k.endswith(".var")})
    return npmobile.Model(graph, params, labels=[f"class {i}" for i in range(7)])


def python(code, env=None):
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize("make", [lambda: npmobile.load(DIGITS_MODEL), tiny_v2], ids=["digits_v1", "tiny_v2"])
def test_pickled_model_gives_bit_identical_outputs_in_a_fresh_process(tmp_path, make):
    travels_bit_identically(make(), tmp_path)


def test_pickled_quantized_model_gives_bit_identical_outputs_in_a_fresh_process(tmp_path, assets):
    travels_bit_identically(npmobile.load(assets / "models" / "mobilenet_v1_0.25_128_quant.tflite"), tmp_path)


def travels_bit_identically(model, tmp_path):
    h, w, c = model.graph.input_shape
    x = np.random.default_rng(2).standard_normal((5, h, w, c)).astype(np.float32)
    # The same call on both sides, with BLAS on one thread in each (as in a Dask or Ray worker): a
    # batch split differently, or BLAS run on another thread count, may round differently.
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        expected = model(x, threads=1)
    threads = [threading.Thread(target=model, args=(x,), kwargs={"threads": 2}) for _ in range(2)]
    for t in threads:  # the model now holds plans, a fused graph, thread-local state: none of it travels
        t.start()
    for t in threads:
        t.join()
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    np.save(tmp_path / "x.npy", x)
    python(f"import pickle, numpy as np; m = pickle.load(open({str(tmp_path / 'model.pkl')!r}, 'rb')); "
           f"np.save({str(tmp_path / 'y.npy')!r}, m(np.load({str(tmp_path / 'x.npy')!r}), threads=1))",
           env={"OPENBLAS_NUM_THREADS": "1"})
    got = np.load(tmp_path / "y.npy")
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


def test_pickle_carries_the_model_and_nothing_else():
    model = tiny_v2()
    before = pickle.dumps(model)
    model(np.zeros((3, 64, 64, 3), dtype=np.float32), threads=2)
    after = pickle.dumps(model)
    assert len(after) == len(before)  # no plans or buffers came along
    copy = pickle.loads(after)
    assert copy.labels == model.labels and copy.config == model.config and copy.source == model.source
    assert [n for n in copy.graph.nodes] == [n for n in model.graph.nodes]
    assert all(np.array_equal(copy.params[k], v) for k, v in model.params.items())


def test_after_warmup_a_new_process_compiles_nothing(tmp_path, assets):
    """`npmobile warmup --weights` into an empty NUMBA_CACHE_DIR; then a new process running float
    models (built and read from a file) and the quantized TFLite file compiles no loop."""
    quantized = assets / "models" / "mobilenet_v2_1.0_224_quant.tflite"
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    first = subprocess.run([sys.executable, "-m", "npmobile", "warmup", "--weights", str(quantized)],
                           capture_output=True, text=True, cwd=ROOT, timeout=900, env={**os.environ, **env})
    assert first.returncode == 0 and "kernel loops ready" in first.stdout, first.stdout + first.stderr
    code = ("import numpy as np, npmobile; from npmobile.warmup import compiled_here\n"
            f"m = npmobile.load({str(DIGITS_MODEL)!r}); m(np.zeros((3, 32, 32, 3), np.float32))\n"
            f"q = npmobile.load({str(quantized)!r}); q(np.zeros((1, 224, 224, 3), np.float32))\n"
            "from test_travel import tiny_v2\n"
            "v2 = tiny_v2(); v2(np.zeros((1, 64, 64, 3), np.float32)); v2.run(np.zeros((2, 64, 64, 3), np.float32))\n"
            "print(compiled_here())")
    assert python(code, env=env).strip() == "0"
