"""Issue 11's cases, each a crafted file (built here, small) refused at load with one clear error
naming the file, the node and the attribute; plus the folder walk, images and the CLI.

The files that could allocate gigabytes are loaded in a child process under a memory cap
(fuzzing.Worker), so a regression fails the test instead of the machine.
"""

import io
import json
import math
import os
import stat
import zipfile

import numpy as np
import pytest

import npmobile
from npmobile import WeightFileError, cli, classify
from crafted import (node, npy_bytes, npz_bytes, png_header, set_zip_method, tiny_graph, tiny_meta, tiny_onnx,
                     tiny_params, write_native, zip_bytes)


def refused(path, *fragments):
    """Load `path`: one WeightFileError naming the file and every fragment."""
    with pytest.raises(WeightFileError) as info:
        npmobile.load(path)
    message = str(info.value)
    assert str(path) in message, message
    for f in fragments:
        assert f in message, f"{f!r} not in: {message}"
    return message


def test_the_tiny_native_file_loads_and_runs(tmp_path):
    """The base every case below edits: valid, so each refusal is the edit's doing."""
    model = npmobile.load(write_native(tmp_path / "ok.npz"))
    y = model(np.zeros((2, 8, 8, 3), np.float32))
    assert y.shape == (2, 3) and np.allclose(y.sum(axis=1), 1) and model.labels == ["a", "b", "c"]


# --- attributes out of range: the out-of-bounds reads of the depthwise and conv kernels -----------

HUGE_STRIDE, HUGE_PAD = 2**62 - 1, 2**63 - 3


@pytest.mark.parametrize("name", ["dw", "c"])
@pytest.mark.parametrize("attr, value, fragment", [
    ("stride", HUGE_STRIDE, "stride: expected an integer 1..16"),
    ("stride", 0, "stride: expected an integer 1..16"),
    ("pad", [0, HUGE_PAD, 0, 0], "pad: expected every side 0..64"),
    ("pad", [0, -1, 0, 0], "pad: expected every side 0..64"),
    ("pad", [3, 3, 3, 3], "pad: expected every side < the kernel side 3"),
    ("stride", True, "stride: expected an integer"),
    ("pad", [1, 1], "pad: expected 4 integers"),
])
def test_native_attribute_out_of_range(tmp_path, name, attr, value, fragment):
    meta = tiny_meta()
    node(meta, name)["attrs"][attr] = value
    refused(write_native(tmp_path / "a.npz", meta), f"node {name!r}", fragment)


def test_onnx_overflowing_strides_and_pads_refused_at_load(tmp_path):
    """The 746-byte ONNX file of the issue: Pad, Relu, then a grouped Conv with strides 2**62-1
    and pads (0, 0, 2**63-3, 0): a SIGSEGV in the depthwise kernel before; refused at load now."""
    import onnx
    attrs = {"kernel_shape": [3, 3], "strides": [HUGE_STRIDE] * 2, "pads": [0, 0, HUGE_PAD, 0]}
    onnx.save(tiny_onnx(attrs), tmp_path / "seg.onnx")
    refused(tmp_path / "seg.onnx", "'dwconv'", "stride")
    attrs = {"kernel_shape": [3, 3], "pads": [0, 0, HUGE_PAD, 0]}
    onnx.save(tiny_onnx(attrs), tmp_path / "pad.onnx")
    refused(tmp_path / "pad.onnx", "'dwconv'", "pad")
    attrs = {"kernel_shape": [3, 3], "pads": [0, -2, 0, 0]}  # negative pads: deferred to the first call before
    onnx.save(tiny_onnx(attrs), tmp_path / "neg.onnx")
    refused(tmp_path / "neg.onnx", "'dwconv'", "pad")


def test_onnx_overflow_file_is_refused_in_a_child(tmp_path, worker):
    """End to end, as a user's process would meet it: refused, no signal."""
    import onnx
    attrs = {"kernel_shape": [3, 3], "strides": [HUGE_STRIDE] * 2, "pads": [0, 0, HUGE_PAD, 0]}
    onnx.save(tiny_onnx(attrs), tmp_path / "seg.onnx")
    out = worker.load(tmp_path / "seg.onnx", run=True)
    assert out.kind == "refused" and "stride" in out.detail, out


# --- metadata that is not what it should be ---------------------------------------------------------

@pytest.mark.parametrize("text, fragment", [
    ("[]", "the metadata: expected dict"),
    ('"npmobile"', "the metadata: expected dict"),
    ("null", "the metadata: expected dict"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    ('{"a": ' * 200 + "1" + "}" * 200, "nested"),
    ("{not json", "not valid JSON"),
])
def test_metadata_json_of_the_wrong_shape(tmp_path, text, fragment):
    refused(write_native(tmp_path / "m.npz", meta_text=text), fragment)


def dead_node_after_the_output(meta):
    """A node after the softmax reading an earlier value: the softmax computes for nobody."""
    meta["graph"]["nodes"].append({"op": "clamp", "name": "extra", "inputs": ["r"], "attrs": {"lo": 0, "hi": 1},
                                   "params": {}, "shape": [8, 8, 4]})
    meta["config"]["output"] = "logits"


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.update(config=[1, 2]), "config: expected dict"),
    (lambda m: m["config"].pop("preprocess"), "preprocess: expected dict"),
    (lambda m: m["config"]["preprocess"].update(std=[127.5, 0, 127.5]), "preprocess"),
    (lambda m: m["config"]["preprocess"].update(mean=[float("nan")] * 3), "preprocess"),
    (lambda m: m.update(labels=["a", "b"]), "2 labels for an output of shape (3,)"),
    (lambda m: m["graph"].update(nodes="x"), "graph in the metadata is not valid"),
    (lambda m: node(m, "r")["attrs"].update(stride=2), "'r' (clamp): stride: not an attribute of clamp"),
    (lambda m: node(m, "c").update(shape=[8, 8, 10**12]), "'c' (conv2d): shape"),
    (lambda m: node(m, "dw").update(shape=[5, 5, 4]), "'dw' (depthwise_conv2d): shape: expected (4, 4, 4)"),
    (lambda m: node(m, "c").update(op="conv3d"), "unknown op 'conv3d'"),
    (lambda m: node(m, "c").update(inputs=["nowhere"]), "reads 'nowhere'"),
    (lambda m: m["graph"].update(input_shape=[8, 8, 0]), "input_shape"),
    (lambda m: dead_node_after_the_output(m), "'sm'"),
    (lambda m: node(m, "bn")["attrs"].update(eps=-1.0), "'bn' (batchnorm): eps: expected a finite number > 0"),
    (lambda m: node(m, "bn")["attrs"].update(eps=float("nan")), "eps: expected a finite number > 0"),
    (lambda m: node(m, "bn")["attrs"].update(eps=float("-inf")), "eps: expected a finite number > 0"),
    (lambda m: node(m, "r")["attrs"].update(lo=float("nan")), "'r' (clamp): lo"),
    (lambda m: m["config"].update(classes=1000), "config classes: expected 3"),
])
def test_metadata_refused(tmp_path, edit, fragment):
    meta = tiny_meta()
    edit(meta)
    refused(write_native(tmp_path / "m.npz", meta), fragment)


def test_zero_input_channels(tmp_path):
    """A graph whose every shape chains from an input of 0 channels (ZeroDivisionError before)."""
    meta = tiny_meta()
    meta["graph"]["input_shape"] = [8, 8, 0]
    node(meta, "c")["params"]["w"] = [3, 3, 0, 4]
    params = tiny_params(tiny_graph())
    params["c.w"] = np.zeros((3, 3, 0, 4), np.float32)
    refused(write_native(tmp_path / "z.npz", meta, params), "input_shape")


def test_resolution_20000_refused_by_the_activation_budget(tmp_path, worker):
    """Shapes that chain correctly but need 4.8 GB of activations for one image (5.2 GB RSS then an
    uncaught _ArrayMemoryError before): refused at load naming the node, in a capped child too."""
    path = write_native(tmp_path / "big.npz", tiny_meta(resolution=20000), tiny_params(tiny_graph(20000)))
    refused(path, "'c' (conv2d)", "NPMOBILE_MAX_ACTIVATION_BYTES")
    out = worker.load(path, run=True)
    assert out.kind == "refused" and out.peak_rss < (1 << 30), out


def test_activation_limit_is_settable(tmp_path, monkeypatch):
    path = write_native(tmp_path / "ok.npz")
    monkeypatch.setenv("NPMOBILE_MAX_ACTIVATION_BYTES", "1000")
    refused(path, "above the limit of 1,000")
    monkeypatch.setenv("NPMOBILE_MAX_ACTIVATION_BYTES", "lots")
    with pytest.raises(ValueError, match="NPMOBILE_MAX_ACTIVATION_BYTES"):
        npmobile.load(path)


# --- tensors and zip members -------------------------------------------------------------------------

def test_tensor_problems(tmp_path):
    params = tiny_params(tiny_graph())
    params["bn.gamma"] = np.ones(5, np.float32)  # deferred to the first call, naming nothing, before
    refused(write_native(tmp_path / "t.npz", params=params), "bn.gamma: expected shape (4,), found (5,)")
    params = tiny_params(tiny_graph())
    params["bn.var"] = -np.ones(4, np.float32)  # NaN out of the folded batch norm, before
    refused(write_native(tmp_path / "v.npz", params=params), "bn.var: expected a variance >= 0")


def test_member_that_is_not_npy(tmp_path):
    data = npz_bytes(tiny_meta(), {})
    members = {i.filename: zipfile.ZipFile(io.BytesIO(data)).read(i) for i in zipfile.ZipFile(io.BytesIO(data)).infolist()}
    members.update({f"{k}.npy": npy_bytes(v) for k, v in tiny_params(tiny_graph()).items()})
    members["c.w.npy"] = b"not an npy file at all"
    (tmp_path / "n.npz").write_bytes(zip_bytes(members))
    refused(tmp_path / "n.npz", "not a readable npmobile .npz")


def test_corrupted_zip_method(tmp_path):
    (tmp_path / "m.npz").write_bytes(set_zip_method(npz_bytes(tiny_meta(), tiny_params(tiny_graph())), 99))
    refused(tmp_path / "m.npz", "not a readable npmobile .npz")


def _bomb_npz(tmp_path, name):
    """A small .npz with a deflated member that inflates to 400 MB (3.2 GB RSS before)."""
    data = npz_bytes(tiny_meta(), tiny_params(tiny_graph()), compress=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[name] = npy_bytes(np.zeros(100_000_000, np.float32))
    path = tmp_path / "bomb.npz"
    path.write_bytes(zip_bytes(members))
    assert path.stat().st_size < 2_000_000
    return path


@pytest.mark.parametrize("name, fragment", [("junk.npy", "unexpected (1): junk"),
                                            ("fc.b.npy", "fc.b: expected shape (3,), found (100000000,)")])
def test_deflate_bomb_member(tmp_path, worker, name, fragment):
    path = _bomb_npz(tmp_path, name)
    out = worker.load(path)
    assert out.kind == "refused" and fragment in out.detail and out.peak_rss < (1 << 30), out


def test_member_whose_zip_header_declares_more_than_its_tensor(tmp_path, worker):
    data = npz_bytes(tiny_meta(), tiny_params(tiny_graph()), compress=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["fc.b.npy"] = npy_bytes(np.zeros(3, np.float32)) + bytes(100_000_000)  # right header, junk after
    path = tmp_path / "tail.npz"
    path.write_bytes(zip_bytes(members))
    out = worker.load(path)
    assert out.kind == "refused" and "declares" in out.detail and out.peak_rss < (1 << 30), out


# --- ONNX constants that would allocate gigabytes ------------------------------------------------------

def test_onnx_constant_of_shape_and_range_refused(tmp_path, worker):
    from onnx import helper
    import onnx
    cos = helper.make_node("ConstantOfShape", ["shape"], ["junk"], name="cos")
    onnx.save(tiny_onnx(extra_nodes=[(cos, {"shape": np.array([1 << 30], np.int64)})]), tmp_path / "cos.onnx")
    rng = helper.make_node("Range", ["a", "b", "d"], ["junk"], name="range")
    onnx.save(tiny_onnx(extra_nodes=[(rng, {"a": np.array(0, np.int64), "b": np.array(1 << 30, np.int64),
                                            "d": np.array(1, np.int64)})]), tmp_path / "range.onnx")
    for name in ("cos", "range"):
        path = tmp_path / f"{name}.onnx"
        assert path.stat().st_size < 2000
        refused(path, f"'{name}'", "folding")
        out = worker.load(path)
        assert out.kind == "refused" and out.peak_rss < (1 << 30), out


# --- TFLite ------------------------------------------------------------------------------------------

SMALL_TFLITE = "mobilenet_v1_0.25_128_quant.tflite"


def test_tflite_labels_bomb_and_truncated_zip(assets, tmp_path, worker):
    model = (assets / "models" / SMALL_TFLITE).read_bytes()
    bomb = tmp_path / "bomb.tflite"
    bomb.write_bytes(model + zip_bytes({"labels.txt": b"x\n" * (64 << 20)}))
    out = worker.load(bomb)
    assert out.kind == "refused" and "labels.txt" in out.detail and out.peak_rss < (1 << 30), out
    cut = tmp_path / "cut.tflite"  # the file's own labels zip, its central directory cut off
    assert npmobile.load(assets / "models" / SMALL_TFLITE).labels is not None
    cut.write_bytes(model[:-30])
    refused(cut, "truncated or corrupted")


def test_tflite_nan_input_scale(assets, tmp_path):
    import tflite
    buf = bytearray((assets / "models" / SMALL_TFLITE).read_bytes())
    m = tflite.Model.GetRootAsModel(bytes(buf), 0)
    g = m.Subgraphs(0)
    q = g.Tensors(g.Inputs(0)).Quantization()
    scale_at = q._tab.Vector(q._tab.Offset(8))  # QuantizationParameters.scale: [float]
    assert np.frombuffer(bytes(buf[scale_at:scale_at + 4]), np.float32)[0] == q.Scale(0)
    for value, name in ((float("nan"), "nan"), (0.0, "zero"), (float("inf"), "inf")):
        buf[scale_at:scale_at + 4] = np.float32(value).tobytes()
        (tmp_path / f"{name}.tflite").write_bytes(bytes(buf))
        refused(tmp_path / f"{name}.tflite", "scale" if name != "inf" else "preprocess")


# --- Keras HDF5 ----------------------------------------------------------------------------------------

def _h5(assets, tmp_path, edit):
    import h5py
    path = tmp_path / "k.h5"
    path.write_bytes((assets / "models" / "mobilenet_v1_0.25_224.h5").read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_h5_model_config_of_the_wrong_shape(assets, tmp_path):
    refused(_h5(assets, tmp_path, lambda f: f.attrs.modify("model_config", "[1, 2]")), "expected dict")
    refused(_h5(assets, tmp_path, lambda f: f.attrs.modify("model_config", "[" * 100_000 + "]" * 100_000)), "nested")


def test_h5_negative_epsilon(assets, tmp_path):
    def edit(f):
        config = json.loads(f.attrs["model_config"])
        layer = next(la for la in config["config"]["layers"] if la["class_name"] == "BatchNormalization")
        layer["config"]["epsilon"] = -1
        f.attrs.modify("model_config", json.dumps(config))
    refused(_h5(assets, tmp_path, edit), "eps: expected a finite number > 0")


def test_h5_dataset_declaring_gigabytes(assets, tmp_path, worker):
    """A dataset whose dataspace says 1 GB backed by nothing stored (HDF5's fill value)."""
    def edit(f):
        group = f["model_weights/conv1/conv1"]
        del group["kernel:0"]
        group.create_dataset("kernel:0", shape=(16384, 16384), dtype="float32", chunks=(1024, 1024),
                             compression="gzip")
    path = _h5(assets, tmp_path, edit)
    out = worker.load(path)
    assert out.kind == "refused" and "declares" in out.detail and out.peak_rss < (1 << 30), out


def test_h5_dataset_in_one_huge_chunk(assets, tmp_path, worker):
    """conv1's kernel (216 values) stored in one deflated chunk of 453 MB (450 KB in the file):
    libhdf5 inflates the whole chunk to read it, so it is refused from its chunk shape."""
    def edit(f):
        group = f["model_weights/conv1/conv1"]
        kernel = group["kernel:0"][()]
        del group["kernel:0"]
        group.create_dataset("kernel:0", data=kernel, maxshape=(3, 3, 3, None), chunks=(3, 3, 3, 1 << 22),
                             compression="gzip")
    out = worker.load(_h5(assets, tmp_path, edit))
    assert out.kind == "refused" and "stored in chunks of 452,984,832 bytes" in out.detail, out
    assert out.peak_rss < (256 << 20), out


# --- images, arguments ---------------------------------------------------------------------------------

def test_predict_batch_size_zero_and_empty_images(tmp_path):
    model = npmobile.load(write_native(tmp_path / "ok.npz"))
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1"):
        model.predict(np.zeros((2, 8, 8, 3), np.float32), batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        model.preprocess(np.zeros((0, 0, 3), np.uint8))


def test_image_bombs_count_bytes(tmp_path):
    """A 16-bit grey 12000 x 12000 PNG is under Pillow's pixel limit, but decoding it and taking
    8 bits of each sample took 4 GB RSS: refused from its header (bytes, not pixels, counted)."""
    pytest.importorskip("PIL")
    (tmp_path / "bomb.png").write_bytes(png_header(12000, 12000, bit_depth=16, color_type=0))
    with pytest.raises(classify.ImageRefused, match="decompression bomb refused"):
        classify.read_image(tmp_path / "bomb.png", 224, 0.875)
    (tmp_path / "small16.png").write_bytes(png_header(4000, 4000, bit_depth=16, color_type=0))
    with pytest.raises(Exception) as info:  # a header within the limit is decoded (and its fake IDAT fails)
        classify.read_image(tmp_path / "small16.png", 224, 0.875)
    assert not isinstance(info.value, classify.ImageRefused)


# --- the folder walk ---------------------------------------------------------------------------------

def _image_folder(tmp_path):
    from PIL import Image
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(d / "a.png")
    return d


def test_walk_with_links_to_itself_ends(tmp_path):
    d = _image_folder(tmp_path)
    os.symlink(".", d / "loop1")
    os.symlink(".", d / "loop2")
    os.symlink(d, d / "abs")
    found = list(classify.iter_paths([str(d)]))
    assert found == [(str(d / "a.png"), None)]


def test_walk_skips_fifos_and_names_them(tmp_path):
    d = _image_folder(tmp_path)
    os.mkfifo(d / "b.jpg")
    found = dict(classify.iter_paths([str(d)]))
    assert found[str(d / "a.png")] is None
    assert "FIFO" in found[str(d / "b.jpg")]
    assert "FIFO" in dict(classify.iter_paths([str(d / "b.jpg")]))[str(d / "b.jpg")]
    assert dict(classify.iter_paths([str(d / "nope.jpg")]))[str(d / "nope.jpg")] == "no such file or directory"


def test_names_cannot_forge_result_lines(tmp_path, capsys):
    d = _image_folder(tmp_path)
    evil = d / "x.png\nbackground: cat (99.0%)\ny.png"
    evil.write_bytes((d / "a.png").read_bytes())
    model = npmobile.load(write_native(tmp_path / "ok.npz"))
    classify.classify(model, [str(d)], top=1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith(str(d)) for line in lines), lines
    assert any("\\nbackground" in line for line in lines)


# --- the CLI: one line, never a traceback --------------------------------------------------------------

def test_cli_refuses_labels_shorter_than_classes(tmp_path, capsys):
    meta = tiny_meta()
    meta["labels"] = ["a"]
    path = write_native(tmp_path / "l.npz", meta)
    d = _image_folder(tmp_path)
    assert cli.main(["classify", str(d), "--weights", str(path)]) == 1
    err = capsys.readouterr().err
    assert "1 labels for an output of shape (3,)" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_cli_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(classify, "classify", interrupted)
    assert cli.main(["classify", str(tmp_path), "--weights", str(write_native(tmp_path / "ok.npz"))]) == 130
    assert capsys.readouterr().err.strip() == "npmobile classify: interrupted"


def test_cli_weights_that_are_a_fifo(tmp_path, capsys):
    os.mkfifo(tmp_path / "w.npz")
    assert cli.main(["summary", str(tmp_path / "w.npz")]) == 1
    assert "not a regular file" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.stat(tmp_path / "w.npz").st_mode)


def test_tflite_overflowing_stride_refused_on_the_integer_and_float_paths(assets, tmp_path):
    """The first convolution's strides set to 2**31 - 1 in the flatbuffer: refused at load (here by
    the shapes that no longer chain), whether read as an integer graph (the default) or as float."""
    import struct
    import tflite
    buf = bytearray((assets / "models" / SMALL_TFLITE).read_bytes())
    m = tflite.Model.GetRootAsModel(bytes(buf), 0)
    g = m.Subgraphs(0)
    op = next(g.Operators(i) for i in range(g.OperatorsLength())
              if m.OperatorCodes(g.Operators(i).OpcodeIndex()).DeprecatedBuiltinCode() == tflite.BuiltinOperator.CONV_2D)
    table = op.BuiltinOptions()
    for slot in (6, 8):  # Conv2DOptions.stride_w, stride_h
        struct.pack_into("<i", buf, table.Pos + table.Offset(slot), 2**31 - 1)
    (tmp_path / "m.tflite").write_bytes(bytes(buf))
    refused(tmp_path / "m.tflite", "node ")
    with pytest.raises(WeightFileError, match="node "):
        npmobile.load(tmp_path / "m.tflite", dequantize=True)
