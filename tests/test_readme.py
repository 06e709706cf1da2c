"""The README as a newcomer runs it, in a fresh virtual environment (issue 17, case 6).

1. `pip install .` with no extras, then `npmobile demo` from another directory: the bundled
   samples are uint8 arrays, so the demo needs neither Pillow nor the network (beyond PyPI for
   numpy and numba). The venv has no access to the test environment's packages.
2. Every ```sh block of the README, every command as written, in order: an install line
   (`pip install ...`) runs in the checkout, every other command in a scratch folder that holds
   ../shared's photos (`photos/`) and models under the names the README uses (`model.tflite`: the
   smallest TFLite file), so no command downloads weights. A block marked as not run (a cluster)
   is left out, with its reason in the README. Each must exit 0 without a traceback.

Both share one venv (pip's own cache makes a second run quick). They need PyPI (CI has it).
"""

import os
import re
import shlex
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def shell_blocks(text):
    """The commands of every ```sh block, one per line, comments and blank lines dropped. A block
    right after a line `<!-- not run by tests/test_readme.py: REASON -->` is left out (a command
    that needs a cluster); the reason must be given."""
    commands = []
    text = re.sub(r"^<!-- not run by tests/test_readme\.py: \S.*?-->\n```sh\n.*?^```", "", text, flags=re.S | re.M)
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new venv with nothing installed but pip; returns its bin folder."""
    folder = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    return folder / "bin"


def run_in(bin_dir, command, cwd, timeout=1800):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(bin_dir.parent),
               NPMOBILE_WEIGHTS_URL="http://127.0.0.1:9/", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_plain_install_runs_the_demo_from_another_folder(fresh_venv, tmp_path):
    install = run_in(fresh_venv, f"pip install -q {shlex.quote(str(ROOT))}", tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    assert run_in(fresh_venv, "python -c 'import PIL'", tmp_path).returncode != 0  # no Pillow here
    demo = run_in(fresh_venv, "npmobile demo", tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert demo.stdout.startswith("model: digits_mobilenet.npz") and "10/10 right" in demo.stdout, demo.stdout


def test_every_readme_shell_command_runs(fresh_venv, tmp_path, assets):
    commands = shell_blocks((ROOT / "README.md").read_text())
    assert commands[0].startswith("pip install"), "the README's first command must install npmobile"
    (tmp_path / "photos").symlink_to(assets / "photos")
    for model in (assets / "models").iterdir():
        (tmp_path / model.name).symlink_to(model)
    (tmp_path / "model.tflite").symlink_to(assets / "models" / "mobilenet_v1_0.25_128_quant.tflite")  # the generic name
    for command in commands:
        installing = command.startswith("pip install")
        run = run_in(fresh_venv, command, ROOT if installing else tmp_path)
        assert run.returncode == 0 and "Traceback" not in run.stderr, \
            f"$ {command}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
