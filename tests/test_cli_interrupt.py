"""Ctrl-C in `npmobile classify`: a real SIGINT sent to a child process at three points (while
numba is being imported, while the weights load, while images are classified) is one line on
stderr and exit status 130, never a traceback.

The child is the console script's own two lines (`from npmobile.cli import main; sys.exit(main())`)
behind a driver that makes the chosen point last: it prints READY on stdout there and waits, and
the test sends SIGINT once it reads READY, so the signal always lands where it is meant to."""

import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crafted import write_native

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import importlib.abc, sys, time

def ready():
    print("READY", flush=True)

stage, argv = sys.argv[1], sys.argv[2:]
if stage == "import":  # numba's import (seconds on a cold machine) waits for the signal
    class SlowNumba(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "numba":
                sys.meta_path.remove(self)
                ready()
                time.sleep(60)
            return None
    sys.meta_path.insert(0, SlowNumba())
elif stage == "load":
    import npmobile.io
    real_load = npmobile.io.load
    def slow_load(*args, **kwargs):
        ready()
        time.sleep(60)
        return real_load(*args, **kwargs)
    npmobile.io.load = slow_load
elif stage == "classify":  # each batch takes 0.3 s longer, on the pipeline's threads
    import npmobile.classify
    real_predictor = npmobile.classify.predictor
    def slow_predictor(model, top):
        predict, calls = real_predictor(model, top), []
        def slow(images):
            calls.append(1)
            if len(calls) == 8:
                ready()
            time.sleep(0.3)
            return predict(images)
        return slow
    npmobile.classify.predictor = slow_predictor
from npmobile.cli import main
sys.exit(main(argv))
"""


def _images(folder, n):
    from PIL import Image
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i % 256, np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.parametrize("stage, command", [("import", "npmobile"), ("load", "npmobile classify"),
                                            ("classify", "npmobile classify")])
def test_sigint_is_one_line_and_exit_130(tmp_path, stage, command):
    weights = write_native(tmp_path / "w.npz")
    images = _images(tmp_path / "images", 200)
    args = ["classify", str(images), "--weights", str(weights), "--batch-size", "1", "--threads", "2"]
    # As from a terminal: SIGINT at its default in the child. A test run started in the background
    # (a CI runner, `cmd &` in a script) ignores SIGINT, children inherit that, and Python then
    # installs no handler: the child would finish with exit 0.
    child = subprocess.Popen([sys.executable, "-c", DRIVER, stage, *args], cwd=str(ROOT), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        # READY may share a line with a result: the pipeline prints from another thread.
        while not any("READY" in line for line in lines):
            assert select.select([child.stdout], [], [], 300)[0], "the child never got READY"
            line = child.stdout.readline()
            assert line, (f"the child ended before READY, exit status {child.wait()}, after {len(lines)} lines "
                          f"on stdout (last: {lines[-3:]}); stderr: {child.stderr.read()}")
            lines.append(line.strip())
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert err.splitlines() == [f"{command}: interrupted"], err
    if stage == "classify":  # it stopped part way through: some results, not all 200
        results = [line for line in lines + out.splitlines() if line.endswith(".png") or ".png:" in line]
        assert 0 < len(results) < 200, lines + out.splitlines()
