"""Issue 17: the fourteen things a newcomer met, each as a test (the CLI ones through a subprocess,
as a user runs them). Each case's number is the issue's."""

import csv
import hashlib
import io
import json
import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npmobile
from npmobile.data import DIGITS_MODEL


def cli(*args, env=None, timeout=600):
    """`python -m npmobile ARGS` with no network for weights (a closed local port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {**os.environ, "NPMOBILE_WEIGHTS_URL": f"http://127.0.0.1:{port}/", **(env or {})}
    return subprocess.run([sys.executable, "-m", "npmobile", *map(str, args)], capture_output=True, text=True,
                          env=environ, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def onnx_model(assets):
    return npmobile.load(assets / "models" / "mobilenetv2-12-int8.onnx")


# --- 1: a value the user gave is never read as "not given" --------------------------------------

@pytest.mark.parametrize("flag", ["--alpha=0", "--resolution=0", "--alpha=nan", "--alpha=-1"])
def test_case01_zero_is_not_the_default(tmp_path, flag):
    run = cli("classify", flag, tmp_path / "x.jpg", env={"NPMOBILE_CACHE": str(tmp_path)})
    name = flag.split("=")[0]
    assert run.returncode == 2 and f"argument {name}: expected" in run.stderr, run.stderr
    assert "download" not in run.stderr and os.listdir(tmp_path) == []


# --- 2: a closed output pipe is not "no images found" ----------------------------------------------

def test_case02_closed_pipe_is_not_missing_input(sample_pngs):
    cmd = [sys.executable, "-m", "npmobile", "classify", "--weights", str(DIGITS_MODEL), str(sample_pngs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    proc.stdout.close()  # the reader goes away before the first line, as `| true` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "no images found" not in err and "Traceback" not in err and "Broken pipe" not in err, err
    assert proc.returncode == 1


# --- 3: one output contract ---------------------------------------------------------------------------

def test_case03_outputs_say_what_model_returns(onnx_model, assets):
    digits = npmobile.load(DIGITS_MODEL)
    assert digits.outputs == "probabilities" and onnx_model.outputs == "logits"
    x = onnx_model.preprocess(np.full((224, 224, 3), 128, np.uint8))
    logits = onnx_model(x)
    probs = onnx_model.predict(x)
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
    assert np.array_equal(probs.argmax(1), logits.argmax(1)) and logits.max() > 1  # model(x) stays logits
    e = np.exp(logits - logits.max())
    assert np.allclose(probs, e / e.sum(), atol=1e-6)
    ((_, _, score), *_), = npmobile.decode_predictions(probs, top=3)
    assert 0 < score <= 1
    for doc in (npmobile.Model.__doc__, npmobile.Model.predict.__doc__, npmobile.Model.__call__.__doc__):
        assert "probabilities" in doc.lower() or "model.outputs" in doc, doc


# --- 4: NCHW models take NCHW when asked ----------------------------------------------------------

def test_case04_nchw_input_when_asked(onnx_model):
    assert onnx_model.config.input_layout == "NCHW"
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    assert np.array_equal(onnx_model(nchw, layout="NCHW"), onnx_model(x))
    assert np.array_equal(onnx_model.predict(nchw, layout="NCHW"), onnx_model.predict(x))
    with pytest.raises(ValueError, match='an NCHW batch .*layout="NCHW"'):
        onnx_model(nchw)  # the error tells a torch/ONNX user the keyword


# --- 5: convert writes a file load reads, or refuses the name ------------------------------------

@pytest.mark.parametrize("name", ["out.onnx", "noext", "model.tflite"])
def test_case05_convert_refuses_a_name_it_cannot_honour(tmp_path, name):
    run = cli("convert", DIGITS_MODEL, "-o", tmp_path / name)
    assert run.returncode == 1 and ".npz" in run.stderr and "wrote" not in run.stdout, run.stderr
    assert os.listdir(tmp_path) == []


def test_case05_convert_writes_what_load_reads(tmp_path):
    run = cli("convert", DIGITS_MODEL, "-o", tmp_path / "m.NPZ")
    assert run.returncode == 0, run.stderr
    assert npmobile.load(tmp_path / "m.NPZ").labels == [str(d) for d in range(10)]


# --- 9: one image to predict ---------------------------------------------------------------------------

def test_case09_one_image_says_add_the_batch_axis():
    """Keras' predict takes batches, and so does npmobile's: one (h, w, 3) image is refused with a
    message that says so and how to fix it (not a shape from slicing the image's rows)."""
    model = npmobile.load(DIGITS_MODEL)
    image = npmobile.preprocess_input(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"found \(32, 32, 3\) .*: that is one image; add the batch axis, x\[None\]"):
        model.predict(image)
    assert model.predict(image[None]).shape == (1, 10)


# --- 11: messages that say what is wrong --------------------------------------------------------

def test_case11_directory_as_weights(tmp_path):
    run = cli("classify", "--weights", tmp_path, tmp_path / "x.png")
    assert run.returncode == 1 and "is a directory; expected a weight file" in run.stderr, run.stderr


def test_case11_empty_png(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    run = cli("classify", "--weights", DIGITS_MODEL, tmp_path / "empty.png")
    assert run.returncode == 1 and "empty.png: skipped: empty file (0 bytes)" in run.stderr, run.stderr


def test_case11_tflite_renamed_onnx(tmp_path, assets):
    renamed = tmp_path / "model.onnx"
    renamed.write_bytes((assets / "models" / "mobilenet_v1_0.25_128_quant.tflite").read_bytes())
    run = cli("classify", "--weights", renamed, tmp_path / "x.png")
    assert run.returncode == 1 and "this is a TFLite file" in run.stderr and "DecodeError" not in run.stderr


def test_case11_pickled_torch_model_is_one_clean_line(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole.pth")
    with open(tmp_path / "whole.pth", "rb") as f:
        assert f.read(2) == b"PK"  # a real torch zip holding a pickled module
    run = cli("classify", "--weights", tmp_path / "whole.pth", tmp_path / "x.png")
    assert run.returncode == 1 and "\x1b" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "holds pickled Python objects" in run.stderr and "state_dict()" in run.stderr, run.stderr
    assert pickle  # the file is never unpickled by npmobile: torch.load(weights_only=True) refuses it


# --- 14: the demo says which model ran and how many it got right ------------------------------------

def test_case14_demo_names_the_model_and_the_score():
    run = cli("demo")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert re.match(r"model: digits_mobilenet\.npz \(mobilenet_v1 alpha=0\.25 32x32, 10 classes", lines[0]), lines[0]
    assert lines[-1].startswith("10/10 right")
    records = json.loads(cli("demo", "--json").stdout)  # --json: stdout stays one JSON document
    assert len(records) == 10


# --- 10: output a script can trust ----------------------------------------------------------------

def test_case10_text_labels_cannot_be_misread(tmp_path, sample_pngs):
    digits = npmobile.load(DIGITS_MODEL)
    labels = ["jersey, T-shirt, tee shirt", 'say "cheese"', "a (b)", "x: y", "5", "", "é", "7%", "8, 9", "zero"]
    npmobile.save(tmp_path / "commas.npz", npmobile.Model(digits.graph, digits.params, labels=labels))
    image = next(sample_pngs.glob("digit1_*.png"))
    run = cli("classify", "--weights", tmp_path / "commas.npz", image, "--top", "10")
    assert run.returncode == 0, run.stderr
    path, rest = run.stdout.rstrip("\n").split(": ", 1)
    decoder, found, i = json.JSONDecoder(), [], 0
    while i < len(rest):  # "label" 12.3%, "label" 4.5%, ...
        label, i = decoder.raw_decode(rest, i)
        found.append(label)
        m = re.compile(r" \d+\.\d%(, )?").match(rest, i)
        assert m, rest[i:]
        i = m.end()
    assert path == str(image) and sorted(found) == sorted(labels)


def test_case10_skipped_files_in_json_and_csv(tmp_path, sample_pngs):
    (tmp_path / "empty.png").write_bytes(b"")
    good = next(sample_pngs.glob("digit4_*.png"))
    run = cli("classify", "--weights", DIGITS_MODEL, good, tmp_path / "empty.png", "--json", "--top", "1")
    assert run.returncode == 1
    records = {r["path"]: r for r in json.loads(run.stdout)}  # in the order they finish
    assert records[str(good)]["predictions"][0]["label"] == "4"
    assert records[str(tmp_path / "empty.png")] == {"path": str(tmp_path / "empty.png"), "error": "empty file (0 bytes)"}
    run = cli("classify", "--weights", DIGITS_MODEL, good, tmp_path / "empty.png", "--csv", "--top", "1")
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(run.stdout))}
    assert rows[str(good)]["error"] == "" and rows[str(good)]["label"] == "4"
    assert rows[str(tmp_path / "empty.png")]["error"] == "empty file (0 bytes)"


def test_case10_synset_column_whatever_the_index_convention(assets):
    from npmobile.data import imagenet_classes

    synsets = [s for s, _ in imagenet_classes()]
    photo = assets / "photos" / "coffee.png"
    for name, offset in (("mobilenet_v1_0.25_128_quant.tflite", 1), ("mobilenet_v1_0.25_224.h5", 0)):
        run = cli("classify", "--weights", assets / "models" / name, photo, "--json")
        assert run.returncode == 0, run.stderr
        preds = json.loads(run.stdout)[0]["predictions"]
        assert [p["synset"] for p in preds] == [synsets[p["index"] - offset] for p in preds], name
        if offset == 0:  # the .h5 holds no labels: ImageNet's names, not output indices
            assert [p["label"] for p in preds] == [imagenet_classes()[p["index"]][1] for p in preds]
    digits = json.loads(cli("demo", "--json").stdout)
    assert all(p["synset"] is None for r in digits for p in r["predictions"])  # not an ImageNet model


# --- 7: benchmarks leave committed results alone; missing frameworks are one line ------------------

ROOT = Path(__file__).resolve().parents[1]


def _tree_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_case07_quick_benchmark_does_not_overwrite_results():
    before = _tree_digest(ROOT / "benchmarks" / "results")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "separable.py"), "--quick"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert _tree_digest(ROOT / "benchmarks" / "results") == before and "wrote" not in run.stdout


@pytest.mark.parametrize("script,flag", [("separable.py", "--quick"), ("layers.py", "--runs=1"),
                                         ("kernels.py", "--quick")])
def test_case07_benchmark_without_torch_is_one_line(script, flag):
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:];"
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks" / script), flag],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "torch" in run.stderr and "pip install" in run.stderr


def test_case07_missing_peers_said_once(monkeypatch):
    from npmobile import bench

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert bench.missing_peers() == "# not timed (package missing; pip install 'npmobile[bench]'): ONNX Runtime"
    monkeypatch.delitem(sys.modules, "onnxruntime")
    assert bench.missing_peers() is None


# --- 8: npmobile bench --weights FILE ------------------------------------------------------------------

def _bench_rows(stdout):
    return {line[:14].strip(): line[14:].split() for line in stdout.splitlines()
            if line and not line.startswith(("#", "(", "runtime"))}


@pytest.mark.parametrize("name,peer,batch", [("mobilenet_v1_0.25_128_quant.tflite", "LiteRT", 1),
                                             ("mobilenet_v1_0.25_128_quant.tflite", "LiteRT", 2),
                                             ("mobilenetv2-12-int8.onnx", "ONNX Runtime", 2)])
def test_case08_bench_times_the_users_file_beside_its_runtime(assets, name, peer, batch):
    run = cli("bench", "--weights", assets / "models" / name, "--runs", "2", "--warmup", "1", "--batch", batch,
              "--threads", "1")
    assert run.returncode == 0, run.stderr
    rows = _bench_rows(run.stdout)
    assert set(rows) == {"npmobile", peer}, run.stdout
    assert all(float(r[0]) > 0 for r in rows.values())  # ms per batch
    assert f"batch {batch}, threads 1" in run.stdout and "1 warm-up and 2 timed calls" in run.stdout
    assert "DeprecationWarning" not in run.stderr and "Traceback" not in run.stderr


def test_case08_bench_a_pth_against_torch_and_a_missing_peer(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.35).state_dict(), tmp_path / "m.pth")
    run = cli("bench", "--weights", tmp_path / "m.pth", "--runs", "1", "--warmup", "1")
    assert run.returncode == 0, run.stderr
    same, diff = _bench_rows(run.stdout)["PyTorch"][3:5]
    assert same == "1/1" and float(diff) < 1e-4  # the peer runs the same network
    from npmobile.bench_file import bench_file

    monkeypatch.setitem(sys.modules, "torchvision", None)  # the peer's package missing: one line, npmobile alone
    rows = bench_file(tmp_path / "m.pth", runs=1, warmup=1)
    assert [r[0] for r in rows] == ["npmobile"]
    assert capsys.readouterr().err.strip() == "# PyTorch not timed: torchvision is not installed (pip install torchvision)"
    run = cli("bench", "--weights", tmp_path / "nothing.onnx", "--runs", "1")
    assert run.returncode == 1 and "no such file" in run.stderr and "Traceback" not in run.stderr


# --- 12: count beside clock ----------------------------------------------------------------------------

def test_case12_summary_time_puts_macs_and_ms_on_the_same_rows():
    run = cli("summary", "--time", "--arch", "mobilenet_v2", "--runs", "2")
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if "(" in line and not line.startswith(("mobilenet", "Layer", "Total"))]
    by_name = {line.split(" (")[0]: line for line in rows}
    assert "block_1_expand (pointwise_conv2d) + block_1_expand_BN, block_1_expand_relu" in by_name["block_1_expand"]
    for line in rows:  # name (op) [+ fused] shape MACs params ms GFLOP/s
        macs, params, ms, gflops = line.split()[-4:]
        assert float(ms) > 0, line
        if int(macs.replace(",", "")) > 0:
            assert float(gflops) > 0, line
    from npmobile import cost
    graph = npmobile.mobilenet_v2()
    total = next(line for line in run.stdout.splitlines() if line.startswith("Total:"))
    assert total.startswith(f"Total: {cost.count(graph).macs:,} MACs, {cost.count(graph).params():,} params")


def test_case12_model_summary_keras_style():
    from npmobile.architectures import random_params

    graph = npmobile.mobilenet_v1(0.25, 96)
    model = npmobile.Model(graph, random_params(graph))
    printed = []
    model.summary(print_fn=printed.append)
    assert "conv_pw_1_bn (batchnorm)" in printed[0] and "Total MACs:" in printed[0]
    model.summary(time=True, runs=2, print_fn=printed.append)
    line = next(s for s in printed[1].splitlines() if s.startswith("conv_pw_7 "))
    assert "conv_pw_7 (pointwise_conv2d) + conv_pw_7_bn, conv_pw_7_relu" in line and float(line.split()[-2]) > 0
    line = next(s for s in printed[1].splitlines() if s.startswith("conv_dw_1 "))  # a depthwise-separable step
    assert "conv_dw_1 (separable_conv2d) + conv_dw_1_bn, conv_dw_1_relu, conv_pw_1, conv_pw_1_bn, conv_pw_1_relu" in line


# --- 13: README figures from the preprocessing the CLI uses ----------------------------------------

def test_case13_readme_h5_figure_is_what_classify_gets(assets):
    """The README's imagenet-dev-100 top-1 for the Keras .h5 equals the accuracy of
    `npmobile classify` itself on those images (its centre crop, its decoder), counted by synset."""
    row = re.search(r"\| Keras MobileNet 0\.25-224 `\.h5` .*\| (\d+)% / (\d+)% \|", (ROOT / "README.md").read_text())
    assert row, "the README's .h5 row"
    folder = assets / "imagenet-dev-100"
    run = cli("classify", "--weights", assets / "models" / "mobilenet_v1_0.25_224.h5", folder, "--json", "--top", "1")
    assert run.returncode == 0, run.stderr
    records = json.loads(run.stdout)
    right = sum(r["predictions"][0]["synset"] == Path(r["path"]).name.split("_")[0] for r in records)
    assert len(records) == 100 and right == int(row.group(1)), (right, row.group(0))
