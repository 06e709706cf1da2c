"""The fast engine's machinery: fused graph, reused buffers, threads, memory, numba's cache."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import npmobile
from npmobile import engine
from npmobile.model import PLAN_BATCH
from npmobile.architectures import random_params


@pytest.fixture(scope="module", params=["mobilenet_v1", "mobilenet_v2"])
def small_model(request):
    build = {"mobilenet_v1": npmobile.mobilenet_v1, "mobilenet_v2": npmobile.mobilenet_v2}[request.param]
    graph = build(alpha=0.5, resolution=64, classes=20, convention="torch")
    return npmobile.Model(graph, random_params(graph, seed=5))


def test_buffers_reused_across_calls_give_fresh_correct_outputs(small_model):
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((3, 64, 64, 3)).astype(np.float32) for _ in range(2))
    y1 = small_model(x1)
    y1_copy = y1.copy()
    y2 = small_model(x2, threads=1)  # one part, so the chunks below are the model's (any NPMOBILE_NUM_THREADS)
    np.testing.assert_array_equal(y1, y1_copy)  # the second call did not write into the first result
    np.testing.assert_array_equal(small_model(x1), y1)  # same input, same buffers, same bits
    # The model runs a batch PLAN_BATCH images at a time; a new plan of the fused graph on the
    # same chunks must give the same bits (a matrix product with another number of rows may round
    # differently).
    graph, params = engine.fuse(small_model.graph, small_model.params)
    plain = [engine.Plan(graph, params, len(c)).run(c) for c in (x2[i:i + PLAN_BATCH] for i in range(0, len(x2), PLAN_BATCH))]
    np.testing.assert_array_equal(y2, np.concatenate(plain))
    oracle = small_model.run(x2, oracle=True)
    assert np.abs(y2 - oracle).max() <= 1e-4 * max(1.0, np.abs(oracle).max())


def test_residual_add_fused_into_the_projection_gives_the_same_bits(small_model, monkeypatch):
    """V2's adds run in the epilogue of the pointwise convolution before them (engine.fuse): the
    fused node, named after the add, reads the shortcut as its second input, and computes the same
    float32 additions in the same order as the add did: the same bits as a plan without it."""
    x = np.random.default_rng(3).standard_normal((2, 64, 64, 3)).astype(np.float32)
    graph, params = engine.fuse(small_model.graph, small_model.params)
    adds = [n for n in small_model.graph.nodes if n.op == "add"]
    assert all(n.op != "add" for n in graph.nodes)
    for add in adds:
        fused = graph.node(add.name)  # the projection, or the depthwise + projection pair
        assert fused.op in ("pointwise_conv2d", "separable_conv2d") and len(fused.inputs) == 2
        assert fused.inputs[1] in add.inputs
    y = engine.Plan(graph, params, 2).run(x, intermediates=True)
    monkeypatch.setattr(engine, "_RESIDUAL", ())
    unfused = engine.Plan(*engine.fuse(small_model.graph, small_model.params), 2).run(x, intermediates=True)
    for name in [a.name for a in adds] + [graph.output]:
        np.testing.assert_array_equal(y[name], unfused[name])
    if adds:
        oracle = small_model.run(x, oracle=True, intermediates=True)[adds[-1].name]
        assert np.abs(y[adds[-1].name] - oracle).max() <= 1e-4 * max(1.0, np.abs(oracle).max())


def test_depthwise_and_pointwise_fused_where_it_pays(small_model, monkeypatch):
    """engine.fuse runs each 3x3 depthwise convolution and the pointwise one that reads it as one
    separable_conv2d node, named as the pointwise (with its BN, clamp and add) was, wherever the
    fused kernel pays (separable.pays: at least as many pixels as output channels); the depthwise
    value is then no longer one of the plan's values (like a folded BN's). The fast plan agrees
    with the oracle, and with the plan of the two kernels within the float32 bound (its sgemm runs
    on other blocks of rows)."""
    from npmobile import timing
    from npmobile.kernels import separable
    x = np.random.default_rng(6).standard_normal((2, 64, 64, 3)).astype(np.float32)
    graph, params = engine.fuse(small_model.graph, small_model.params)
    built = small_model.graph.nodes
    depthwise = [n for n in built if n.op == "depthwise_conv2d"]
    expected = [dw.name for i, dw in enumerate(built) if dw.op == "depthwise_conv2d" and separable.pays(
        dw.shape[0] * dw.shape[1], dw.shape[2], next(n for n in built[i:] if n.op == "pointwise_conv2d").shape[2])]
    assert 0 < len(expected) < len(depthwise)  # (at 64x64, the 2x2 layers have fewer pixels than channels)
    fused = [n for n in graph.nodes if n.op == "separable_conv2d"]
    computes = dict(zip((n.name for n in graph.nodes), timing.steps(small_model.graph, graph)))
    assert [next(name for name in computes[n.name] if name in expected) for n in fused] == expected
    for node in fused:
        assert set(params) >= {f"{node.name}.{p}" for p in ("w_dw", "b_dw", "w", "b")}
        assert params[f"{node.name}.w_dw"].shape[:2] == (3, 3)
    y = engine.Plan(graph, params, 2).run(x, intermediates=True)
    assert not any(n.name in y for n in depthwise) and all(n.name in y for n in fused)
    monkeypatch.setattr(engine, "_fuse_separable", lambda nodes, params, graph: nodes)
    pairs = engine.Plan(*engine.fuse(small_model.graph, small_model.params), 2).run(x, intermediates=True)
    oracle = small_model.run(x, oracle=True, intermediates=True)
    for name in [n.name for n in fused] + [graph.output]:
        scale = max(1.0, np.abs(oracle[name]).max())
        assert np.abs(y[name] - oracle[name]).max() <= 1e-4 * scale
        assert np.abs(y[name] - pairs[name]).max() <= 1e-5 * scale


def test_an_add_is_fused_only_where_its_shortcut_already_exists():
    """add(a, b) with b computed after a: fused into b (a exists by then), never into a."""
    from npmobile.graph import Builder, Graph
    g = Builder((4, 5, 3))
    g.pointwise("a", 6, bias=True)
    g.add("pointwise_conv2d", "b", {}, {"w": (3, 6)}, (4, 5, 6), inputs=("input",))
    g.residual("sum", "a", "b")
    graph = Graph(g.nodes, (4, 5, 3))
    params = random_params(graph, seed=1)
    fused, fused_params = engine.fuse(graph, params)
    assert [(n.name, n.inputs) for n in fused.nodes] == [("a", ("input",)), ("sum", ("input", "a"))]
    x = np.random.default_rng(4).standard_normal((2, 4, 5, 3)).astype(np.float32)
    y = engine.Plan(fused, fused_params, 2).run(x)
    oracle = engine.Plan(graph, params, 2, oracle=True).run(x)
    assert np.abs(y - oracle).max() <= 1e-5 * max(1.0, np.abs(oracle).max())


def test_fused_weights_of_1024_columns_are_laid_out_apart():
    """engine.fuse stores a pointwise or dense w whose rows are a multiple of 4 KiB (V1-1.0's
    last layers) in padded rows (kernels._product.padded_rows); the fast plan reads them there
    and agrees with the oracle plan."""
    from npmobile.graph import Builder, Graph
    g = Builder((3, 3, 8))
    g.pointwise("pw", 1024, bias=True)
    g.relu6("relu")
    g.pool("pool", "avg")
    g.dense("fc", 1024)
    graph = Graph(g.nodes, (3, 3, 8))
    params = random_params(graph, seed=2)
    fused, fused_params = engine.fuse(graph, params)
    for name in ("relu", "fc"):
        w = fused_params[f"{name}.w"]
        assert w.shape[1] == 1024 and w.strides[0] > 4 * 1024
    x = np.random.default_rng(5).standard_normal((2, 3, 3, 8)).astype(np.float32)
    y = engine.Plan(fused, fused_params, 2).run(x)
    oracle = engine.Plan(graph, params, 2, oracle=True).run(x)
    assert np.abs(y - oracle).max() <= 1e-4 * max(1.0, np.abs(oracle).max())


def test_activation_buffers_start_64_byte_aligned_and_spread_over_the_page(small_model):
    """Each buffer starts on a 64-byte boundary, at its own offset within a 4 KiB page: a kernel
    reading one buffer and writing another at the same position avoids 4K aliasing. (Every value
    view starts at its buffer's first byte, so the distinct starts are the buffers.)"""
    plan = engine.Plan(*engine.fuse(small_model.graph, small_model.params), 1)
    starts = {view.ctypes.data for view in plan.values.values()}
    offsets = {start % 4096 for start in starts}
    assert len(starts) >= 3 and len(offsets) == len(starts), sorted(offsets)
    assert all(offset % 64 == 0 for offset in offsets), sorted(offsets)


def test_plan_never_writes_a_node_over_its_own_input(small_model):
    plan = small_model._plan(2, oracle=False)
    values = plan.values
    for node in plan.graph.nodes:
        for name in node.inputs:
            assert not np.shares_memory(values[name], values[node.name]), f"{node.name} writes over its input {name}"
    buffers = {id(v.base) for name, v in values.items() if name != "input"}
    assert len(buffers) <= 4  # a handful of buffers, not one per layer


def test_a_fast_plan_keeps_openblas_on_one_thread_while_it_runs(small_model):
    # The kernels call OpenBLAS from numba's threads, block by block: OpenBLAS starting its own
    # threads inside each block ran V2 at batch 4 2.3x slower. The plan sets OpenBLAS to one
    # thread for the run and puts back the process's setting after it.
    from npmobile.kernels import _blas
    assert _blas._LIB is not None, "NumPy's wheel ships OpenBLAS: the kernels' sgemm comes from it"
    get, set_ = _blas._LIB.scipy_openblas_get_num_threads64_, _blas._LIB.scipy_openblas_set_num_threads64_
    before = get()
    set_(2)
    try:
        plan = engine.Plan(*engine.fuse(small_model.graph, small_model.params), 1)
        seen = []
        plan.steps = [lambda step=step: (seen.append(get()), step()) for step in plan.steps]
        plan.run(np.ones((1, 64, 64, 3), np.float32))
        assert set(seen) == {1}
        assert get() == 2
    finally:
        set_(before)


def test_many_python_threads_get_the_single_thread_answer(small_model):
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((2, 64, 64, 3)).astype(np.float32) for _ in range(4)]
    expected = [small_model(x) for x in inputs]
    failures = []

    def worker(k):
        for j in range(12):
            i = (k + j) % len(inputs)
            if not np.array_equal(small_model(inputs[i]), expected[i]):
                failures.append((k, j))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_batch_split_across_threads_matches_one_thread(small_model):
    x = np.random.default_rng(2).standard_normal((5, 64, 64, 3)).astype(np.float32)
    one = small_model(x)
    npmobile.set_num_threads(2)
    try:
        two = small_model(x)
    finally:
        npmobile.set_num_threads(1)
    # Parts of a split batch are separate matrix products: equal within float32 rounding.
    assert two.shape == one.shape
    assert np.abs(two - one).max() <= 1e-5 * max(1.0, np.abs(one).max())
    with pytest.raises(ValueError, match="n: expected an integer >= 1, found 0"):
        npmobile.set_num_threads(0)


def test_the_parts_of_a_split_batch_share_numba_threads(small_model, monkeypatch):
    """Two parts on two numba threads: each part's layers run on one (its share), not on both."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here: nothing to share")
    seen, run = [], engine.Plan.run
    monkeypatch.setattr(engine.Plan, "run", lambda plan, x, **kw: seen.append(numba.get_num_threads()) or run(plan, x, **kw))
    x = np.random.default_rng(3).standard_normal((4, 64, 64, 3)).astype(np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        small_model(x, threads=2)
        small_model(x[:1], threads=2)  # one image: one part, both threads
    finally:
        numba.set_num_threads(before)
    assert seen == [1, 1, 2], seen  # two parts of two images (PLAN_BATCH), then one


def _run_python(code):
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


MEMORY_LOOP = """
import json, resource, numpy as np, npmobile
from npmobile.architectures import random_params
g = npmobile.mobilenet_v2(alpha=0.35, resolution=32, classes=10)
m = npmobile.Model(g, random_params(g))
x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
for _ in range(1000):
    m(x)
before = rss_kb()
for _ in range(9000):
    m(x)
print(json.dumps({"before_kb": before, "after_kb": rss_kb()}))
"""


def test_ten_thousand_inferences_do_not_grow_memory():
    r = _run_python(MEMORY_LOOP)
    assert r["after_kb"] - r["before_kb"] < 4 * 1024, r  # less than 4 MB over 9,000 more calls


CACHE_CHECK = """
import json, numpy as np, npmobile
from npmobile.architectures import random_params
from npmobile import kernels
g = npmobile.mobilenet_v2(alpha=0.35, resolution=32, classes=10)
npmobile.Model(g, random_params(g))(np.zeros((1, 32, 32, 3), np.float32))
import importlib
stats = {}
for name in ("conv2d", "depthwise", "_product", "elementwise", "pooling", "activation", "batchnorm", "padding"):
    module = importlib.import_module("npmobile.kernels." + name)
    for name, f in vars(module).items():
        if hasattr(f, "stats") and f.signatures:
            stats[module.__name__ + "." + name] = [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
print(json.dumps(stats))
"""


def test_second_process_compiles_nothing():
    _run_python(CACHE_CHECK)  # fills numba's cache if this checkout has none yet
    stats = _run_python(CACHE_CHECK)
    assert "npmobile.kernels._product._product_jit" in stats, stats
    # MobileNet's depthwise rows and first layer: each its parallel loop, or its block function
    # called directly on one thread
    assert {"npmobile.kernels.depthwise._depthwise_3x3_jit", "npmobile.kernels.depthwise._depthwise_3x3_rows_jit"} & set(stats), stats
    assert {"npmobile.kernels.conv2d._first_layer_jit", "npmobile.kernels.conv2d._first_layer_rows_jit"} & set(stats), stats
    recompiled = {k: v for k, v in stats.items() if v[1] or not v[0]}
    assert not recompiled, f"compiled again instead of loading from the cache: {recompiled}"


def test_peak_memory_of_classifying_one_image_with_mobilenet_v2(assets):
    code = f"""
import json, resource, subprocess, sys
p = subprocess.run([sys.executable, "-m", "npmobile", "classify", "--top", "1", "--weights",
                    {str(assets / "models" / "mobilenet_v2_1.0_224_quant.tflite")!r},
                    {str(assets / "photos" / "chelsea.png")!r}], capture_output=True, text=True, check=True)
print(json.dumps({{"out": p.stdout, "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""
    r = _run_python(code)
    assert "cat" in r["out"], r
    assert r["peak_mb"] < 300, r


def test_a_batch_runs_in_chunks_with_the_answers_of_single_images(small_model):
    """model(x) runs a batch PLAN_BATCH images at a time through plans of that size; every image must
    come out as it does alone, whatever chunk it falls in."""
    x = np.random.default_rng(3).standard_normal((2 * PLAN_BATCH + 1, 64, 64, 3)).astype(np.float32)
    batch = small_model(x)
    alone = np.concatenate([small_model(x[i:i + 1]) for i in range(len(x))])
    assert batch.shape == alone.shape
    assert np.abs(batch - alone).max() <= 1e-5 * max(1.0, np.abs(alone).max())
    assert {len(x) % PLAN_BATCH or PLAN_BATCH, PLAN_BATCH} <= set(small_model._local.__dict__[False])  # the plans it used


LAYERS_CHECK = """
import importlib.abc, json, sys, types, pathlib
import numpy as np

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "PIL" or name in ("npmobile.io", "npmobile.weights") or name.startswith("npmobile.io."):
            raise ImportError("refused: " + name)
        return None

sys.meta_path.insert(0, Refuse())
package = types.ModuleType("npmobile")  # the package without its __init__, which imports everything
package.__path__ = [str(pathlib.Path(%r))]
sys.modules["npmobile"] = package
from npmobile.model import Model
from npmobile.architectures import mobilenet_v2, random_params
g = mobilenet_v2(0.35, 32, classes=3)
m = Model(g, random_params(g))
x = m.preprocess(np.zeros((1, 32, 32, 3), np.uint8))
print(json.dumps({"fast": m(x).tolist(), "oracle": m.run(x, oracle=True).tolist(),
                  "loaded": sorted(k for k in sys.modules if k.startswith(("npmobile.io", "npmobile.weights", "PIL")))}))
"""


def test_the_engine_and_model_run_without_io_weights_or_pillow():
    """engine.py and Model import no file format and no Pillow: with those imports refused, a model
    is built, preprocessed (already at its resolution) and run by both engines."""
    import pathlib
    r = _run_python(LAYERS_CHECK % str(pathlib.Path(npmobile.__file__).parent))
    assert r["loaded"] == []
    assert np.allclose(r["fast"], r["oracle"], atol=1e-5)


def test_no_module_is_reached_by_an_import_string():
    """Every import in the package is a statement a reader (and a tool) can follow."""
    import pathlib
    root = pathlib.Path(npmobile.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if "importlib" in p.read_text() or "__import__" in p.read_text()]
    assert offenders == []


def test_a_call_runs_no_check(small_model, monkeypatch):
    """Issue 11's checks cost nothing per call: the file's validation runs at load and each
    kernel's argument check once, when a plan is bound. With every one of them made to fail,
    a model whose plans are bound still runs, and gives the same bits."""
    from npmobile import kernels, validate
    x = np.random.default_rng(7).standard_normal((PLAN_BATCH, 64, 64, 3)).astype(np.float32)
    before = small_model(x, threads=1)

    def refuse(*args, **kwargs):
        raise AssertionError("a check ran during a call")
    for name in [n for n in dir(validate) if n.startswith(("check", "_"))
                 and callable(getattr(validate, n)) and not n.startswith("__")]:
        monkeypatch.setattr(validate, name, refuse)
    for op, kernel in kernels.KERNELS.items():
        monkeypatch.setitem(kernels.KERNELS, op, kernel._replace(check=refuse))
    np.testing.assert_array_equal(small_model(x, threads=1), before)
    with pytest.raises(AssertionError, match="a check ran"):  # the patches are live: binding a plan checks
        engine.Plan(*engine.fuse(small_model.graph, small_model.params), 1)


def test_the_kernels_thread_count_is_numbas_for_the_calling_thread():
    # the kernels read numba's thread count through the function behind numba.get_num_threads
    # (_jit.num_threads): it must follow numba.set_num_threads, per calling thread
    import threading

    import numba

    from npmobile.kernels._jit import num_threads
    saved = numba.get_num_threads()
    seen = {}

    def other():
        numba.set_num_threads(1)
        seen["other"] = num_threads()
    try:
        for n in (1, saved):
            numba.set_num_threads(n)
            assert num_threads() == numba.get_num_threads() == n
        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
        assert seen["other"] == 1 and num_threads() == saved
    finally:
        numba.set_num_threads(saved)


EDITED_CALLEE_CHECK = """
import json, numpy as np
from npmobile.kernels import depthwise
depthwise.depthwise_conv2d(np.ones((1, 8, 8, 4), np.float32), np.ones((3, 3, 4), np.float32), pad=(1, 1, 1, 1))
f = depthwise._depthwise_3x3_rows_jit
print(json.dumps([sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]))
"""


def test_an_edit_to_a_called_kernel_compiles_its_callers_again(tmp_path):
    # numba's cache drops a function when its own file changes, not when a function it calls
    # (compiled into it) changes in another file: depthwise's rows function calls _checks.py's
    # inside_range. The kernels' cache is keyed by the hash of all their sources (_jit.py), so an
    # edit anywhere under kernels/ compiles the callers again instead of running stale code.
    import shutil
    package = tmp_path / "npmobile"
    shutil.copytree(Path(__file__).resolve().parents[1] / "npmobile", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), NUMBA_NUM_THREADS="1")
    env.pop("NUMBA_CACHE_DIR", None)

    def run():
        out = subprocess.run([sys.executable, "-c", EDITED_CALLEE_CHECK], cwd=tmp_path, env=env, check=True,
                             capture_output=True, text=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])
    assert run()[1] > 0  # compiled, and cached
    assert run() == [1, 0]  # loaded from the cache
    with open(package / "kernels" / "_checks.py", "a") as f:
        f.write("\n# an edit to a file whose function depthwise's rows call\n")
    assert run()[1] > 0  # compiled again
