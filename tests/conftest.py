import os
from pathlib import Path

# Keras 3 runs on the torch backend in these tests (TensorFlow is not a test dependency); this
# must be set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest
from hypothesis import HealthCheck, settings

# Every property test draws at least 200 examples. In CI the examples are derandomised (the same
# every run) and there is no deadline: the first call of a numba kernel compiles it.
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


@pytest.fixture(scope="module")
def worker():
    """A child process that loads weight files under a 3 GiB address-space cap and a timeout
    (fuzzing.Worker): a file that would crash or exhaust the machine fails the test instead."""
    from fuzzing import Worker
    w = Worker(mem_limit=3 << 30, timeout=120)
    yield w
    w.close()


@pytest.fixture(scope="session")
def assets():
    """../shared/assets beside the checkout: always there in CI, absent on a user's machine."""
    if not ASSETS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real assets at {ASSETS}")
        pytest.skip(f"real assets not found at {ASSETS}")
    return ASSETS


@pytest.fixture(scope="session")
def corpus(assets):
    """The generated corpus (scripts/make_corpus.py: every MobileNet form the converters write),
    built once and reused while the generator is unchanged: in $NPMOBILE_CORPUS_DIR, else
    ~/.cache/npmobile/corpus (a lock keeps two sessions from building it at once).
    Returns (folder, {file name: manifest entry})."""
    import fcntl
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    import make_corpus

    out = Path(os.environ.get("NPMOBILE_CORPUS_DIR") or make_corpus.CACHE / "corpus")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not make_corpus.is_built(out):
            subprocess.run([sys.executable, str(root / "scripts" / "make_corpus.py"), str(out)], check=True)
    return out, make_corpus.manifest(out)


@pytest.fixture(scope="session")
def sample_pngs(tmp_path_factory):
    """The ten bundled sample digits (npmobile/data/samples.npz) written as grayscale PNG files,
    named as in the package: a folder for the tests of `npmobile classify`."""
    from PIL import Image

    from npmobile.data import sample_digits

    folder = tmp_path_factory.mktemp("samples")
    for name, rgb in sample_digits().items():
        Image.fromarray(rgb).convert("L").save(folder / f"{name}.png")
    return folder


def pytest_sessionfinish(session, exitstatus):
    """In CI every test runs: a skip (a framework missing, the assets absent) fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if os.environ.get("CI") and reporter is not None and reporter.stats.get("skipped"):
        reporter.write_line(f"CI: {len(reporter.stats['skipped'])} test(s) skipped; every test must run in CI",
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=["other", "vnni"])
def vnni_path(request, monkeypatch):
    """Both ways of the kernels that have a VNNI loop (quantized 1x1 products, depthwise): the
    VNNI one where this CPU has it, and the other one (sgemm; the float kernel or the integer
    loop). Where the CPU has no VNNI, both params run the other way: tests assert which ran."""
    from npmobile.kernels import _simd as simd

    monkeypatch.setattr(simd, "USE_VNNI", request.param == "vnni" and simd.HAVE_VNNI)
    return simd.USE_VNNI
