"""`npmobile classify` and `npmobile demo` end to end, through a subprocess as a user runs them."""

import csv
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import npmobile
from npmobile.data import DIGITS_MODEL, digit_images, sample_digits

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # ImageNet 281..285


def npmobile_cli(*args, env=None, timeout=600):
    """Run `python -m npmobile ARGS`; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "npmobile", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)


def digit_image(d):
    """The bundled sample of digit d as a grayscale PIL image."""
    return Image.fromarray(next(a for k, a in sample_digits().items() if k.startswith(f"digit{d}_"))).convert("L")


def sample_digit(path):
    """The true label of a bundled sample: its file name starts with digit<d>."""
    return re.match(r"digit(\d)_", Path(path).name).group(1)


# --- help, version, entry point ---------------------------------------------------------------

def test_help_version_and_every_subcommand():
    top = npmobile_cli("--help")
    assert top.returncode == 0
    commands = ["classify", "demo", "convert", "summary"]
    for cmd in commands:
        assert cmd in top.stdout
        sub = npmobile_cli(cmd, "--help")
        assert sub.returncode == 0 and f"usage: npmobile {cmd}" in sub.stdout, sub.stderr
    assert "--weights" in npmobile_cli("classify", "--help").stdout
    version = npmobile_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"npmobile {npmobile.__version__}"


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("npmobile")
    assert exe.is_file(), f"no console script beside {sys.executable}: is [project.scripts] installed?"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and npmobile.__version__ in out.stdout


# --- the embedded default ---------------------------------------------------------------------

def test_demo_shows_real_predictions():
    text = npmobile_cli("demo")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 12 and lines[0].startswith("model: digits_mobilenet.npz") and "right" in lines[-1]
    json_run = npmobile_cli("demo", "--json", "--top", "3")
    records = json.loads(json_run.stdout)
    assert len(records) == 10 and all(len(r["predictions"]) == 3 for r in records)
    right = sum(r["predictions"][0]["label"] == sample_digit(r["path"]) for r in records)
    assert right >= 9, f"the bundled model got {right} of 10 bundled samples right: {records}"
    for r in records:
        probs = [p["probability"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5


def test_digits_model_held_out_accuracy():
    """The bundled model on the test split scripts/train_digits.py held out, run by npmobile."""
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is in the test extra")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, test = train_test_split(np.arange(len(digits.target)), test_size=0.25, random_state=0,
                               stratify=digits.target)
    model = npmobile.load(DIGITS_MODEL)
    assert model.labels == [str(d) for d in range(10)] and sklearn
    images = np.repeat(digit_images(digits.data[test])[..., None], 3, axis=-1)
    accuracy = (model.predict(model.preprocess(images)).argmax(1) == digits.target[test]).mean()
    assert accuracy > 0.9, f"held-out accuracy {accuracy:.3f}"
    assert DIGITS_MODEL.stat().st_size < 1 << 20


# --- acceptance: real ImageNet weights on real photos -----------------------------------------

def test_tflite_weights_classify_the_photos(assets):
    weights = assets / "models" / "mobilenet_v2_1.0_224_quant.tflite"
    photos = assets / "photos"
    text = npmobile_cli("classify", "--weights", weights, photos, "--top", "3")
    assert text.returncode == 0, text.stderr
    top1 = {Path(line.split(": ", 1)[0]).name: line.split(": ", 1)[1] for line in text.stdout.splitlines()}
    assert set(top1) == {p.name for p in photos.iterdir() if p.suffix in (".png", ".jpg", ".bmp")}
    assert any(top1["chelsea.png"].startswith(f'"{c}') for c in CAT_CLASSES), top1["chelsea.png"]
    assert top1["coffee.png"].startswith('"espresso" '), top1["coffee.png"]

    records = {Path(r["path"]).name: r["predictions"]
               for r in json.loads(npmobile_cli("classify", "--weights", weights, photos, "--json").stdout)}
    assert any(c in records["chelsea.png"][0]["label"] for c in CAT_CLASSES)
    assert records["coffee.png"][0]["label"] == "espresso"
    assert len(records["coffee.png"]) == 5 and records["coffee.png"][0]["probability"] > 0.5


# --- bad input --------------------------------------------------------------------------------

def _bomb_png(path, side):
    """A valid 1x1 PNG whose header claims side x side pixels (Pillow refuses it on open)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 4  # signature, then the IHDR chunk's length field
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", side, side)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def test_folder_with_bad_images(tmp_path):
    """Good images in every format and mode are classified; each bad one is named with its reason."""
    folder = tmp_path / "photos"
    (folder / "nested" / "deeper").mkdir(parents=True)
    digit = digit_image(3)
    good = {
        "gray.png": digit,
        "rgb.bmp": digit.convert("RGB"),
        "palette.png": digit.convert("P"),
        "rgba.png": digit.convert("RGBA"),
        "photo.JPG": digit.convert("RGB"),
        "nested/deeper/lossless.webp": digit.convert("RGB"),
        "tiny.png": Image.new("RGB", (1, 1), (200, 30, 30)),
    }
    for name, im in good.items():
        im.save(folder / name, **({"lossless": True} if name.endswith(".webp") else {}))
    # A real 10,000 x 10,000 photo of the digit, as a JPEG (draft decoding) and a PNG (full decoding).
    huge = digit.resize((10_000, 10_000), Image.NEAREST)
    huge.save(folder / "huge.jpg", quality=90)
    huge.save(folder / "huge.png", compress_level=1)
    del huge
    good.update({"huge.jpg": None, "huge.png": None})

    jpeg = (folder / "photo.JPG").read_bytes()
    (folder / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.png").write_text("this is a text file, not a PNG\n")
    _bomb_png(folder / "nested" / "bomb.png", 40_000)
    (folder / "readme.txt").write_text("not an image suffix: ignored in folders")
    bad = {"corrupt.jpg": "truncated", "notes.png": "not an image", "nested/bomb.png": "decompression bomb"}

    run = npmobile_cli("classify", "--weights", DIGITS_MODEL, folder, folder / "missing.png", "--json",
                       "--batch-size", "3", "--top", "2")
    assert run.returncode == 1, run.stderr
    found = json.loads(run.stdout)
    records = {Path(r["path"]).relative_to(folder).as_posix(): r["predictions"] for r in found if "predictions" in r}
    assert set(records) == set(good), run.stderr
    errors = {Path(r["path"]).name: r["error"] for r in found if "error" in r}  # skipped files are records too
    assert set(errors) == {"corrupt.jpg", "notes.png", "bomb.png", "missing.png"}, errors
    for name in ("gray.png", "rgb.bmp", "palette.png", "rgba.png", "photo.JPG", "nested/deeper/lossless.webp",
                 "huge.jpg", "huge.png"):
        assert records[name][0]["label"] == "3", (name, records[name])
    for name, reason in bad.items():
        line = next((s for s in run.stderr.splitlines() if s.startswith(f"npmobile: {folder / name}: skipped:")), None)
        assert line is not None and reason in line.lower(), (name, run.stderr)
    assert "missing.png: skipped: no such file or directory" in run.stderr
    assert f"{len(bad) + 1} of {len(good) + len(bad) + 1} images could not be classified" in run.stderr


def test_csv_output_and_text_file(tmp_path):
    digit_image(7).save(tmp_path / "seven.png")
    run = npmobile_cli("classify", "--weights", DIGITS_MODEL, tmp_path / "seven.png", "--csv", "--top", "10")
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 11)] and rows[0]["label"] == "7"
    probs = [float(r["probability"]) for r in rows]
    # every class, best first, printed to 6 decimals: a distribution, not logits or a partial list
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) <= 10 * 5e-7
    assert sorted(r["label"] for r in rows) == [str(d) for d in range(10)]


def test_logits_model_shows_probabilities(tmp_path):
    """A torchvision-convention model outputs logits: classify shows their softmax."""
    graph = npmobile.mobilenet_v2(0.35, 32, classes=4, convention="torch")
    path = tmp_path / "logits.npz"
    npmobile.save(path, npmobile.Model(graph, npmobile.architectures.random_params(graph)))
    digit_image(0).save(tmp_path / "x.png")
    run = npmobile_cli("classify", "--weights", path, tmp_path / "x.png", "--json", "--top", "4")
    assert run.returncode == 0, run.stderr
    preds = json.loads(run.stdout)[0]["predictions"]
    assert abs(sum(p["probability"] for p in preds) - 1) < 1e-5 and all(0 < p["probability"] < 1 for p in preds)


def test_empty_folder_and_bad_weights(tmp_path, sample_pngs):
    run = npmobile_cli("classify", "--weights", DIGITS_MODEL, tmp_path)
    assert run.returncode == 1 and "no images found" in run.stderr
    (tmp_path / "w.npz").write_bytes(b"PK not really a zip")
    run = npmobile_cli("classify", "--weights", tmp_path / "w.npz", sample_pngs)
    assert run.returncode == 1 and "w.npz" in run.stderr and "Traceback" not in run.stderr
    run = npmobile_cli("classify", "--weights", DIGITS_MODEL, "--alpha", "0.5", sample_pngs)
    assert run.returncode == 1 and "--alpha choose the ImageNet weights to download" in run.stderr


def test_missing_pillow_is_a_clear_error(sample_pngs):
    """Without Pillow, classifying image files says so in one line; the demo needs no Pillow."""
    code = "import sys; sys.modules['PIL'] = None; from npmobile.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, "classify", "--weights", str(DIGITS_MODEL), str(sample_pngs)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "needs Pillow" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-c", code, "demo"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "10/10 right" in run.stdout, run.stderr


def test_progress_bar_on_a_terminal_only(sample_pngs):
    """A folder on a terminal shows tqdm's bar on stderr; piped, stderr has no bar."""
    import fcntl
    import pty
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    cmd = [sys.executable, "-m", "npmobile", "classify", "--weights", str(DIGITS_MODEL), str(sample_pngs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=300)
    os.close(leader)
    assert proc.returncode == 0
    assert re.search(r"10img \[", b"".join(chunks).decode(errors="replace")), chunks
    assert npmobile_cli(*cmd[3:]).stderr == ""


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Streaming: classifying 4x as many images must not raise the peak of traced allocations
    (each image kept would cost at least its 32x32x3 input, 3 KB: 2.7 MB for the 900 extra)."""
    import tracemalloc

    from npmobile.classify import classify

    digit = digit_image(5)
    for n in (300, 1200):
        (tmp_path / str(n)).mkdir()
        for i in range(n):
            digit.save(tmp_path / str(n) / f"{i:05d}.png")
    model = npmobile.load(DIGITS_MODEL)
    classify(model, [str(tmp_path / "300")], out=open(os.devnull, "w"))  # warm up: compile, caches
    peaks = {}
    for n in (300, 1200):
        with open(os.devnull, "w") as sink:
            tracemalloc.start()
            counts = classify(model, [str(tmp_path / str(n))], fmt="json", batch_size=8, out=sink)
            peaks[n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert counts == (n, 0)
    assert peaks[1200] - peaks[300] < 1_000_000, peaks
