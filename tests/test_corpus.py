"""Every file of the generated corpus (scripts/make_corpus.py) against its own runtime.

Each model gets the same input the runtime gets: the asset photos (pixels, centre-cropped and
resized) mapped by the model's own preprocessing (model.config.preprocess); for a file with
an integer input, the runtime gets the quantized photo and npmobile its exact real value
scale * (q - zero_point). Float files: |npmobile - runtime| <= 1e-4 * max(1, max|runtime|) on
eight photos. Quantized files run as float in npmobile (weights dequantized, activations not
re-quantized), so they are held to top-1 agreement with the runtime on all 115 photos (embedding
extractors: cosine similarity), each bounded below; the figures go to docs/real-models.md.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import npmobile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_corpus  # noqa: E402

# file -> lower bound on top-1 agreement (classifiers) or mean cosine similarity (embeddings) with
# its runtime over the 115 photos, for the quantized files; None for float files (1e-4 bound).
FILES = {
    # a fine-tuned V2 1.0-224 (trained base, Dense(965) head): the acceptance files
    "v2_10_224_fc965_float.tflite": None,
    "v2_10_224_fc965_dynamic.tflite": 0.97,
    "v2_10_224_fc965_int8-float-io.tflite": 0.97,
    "v2_10_224_fc965_int8.tflite": 0.97,
    "v2_10_224_fc965_uint8-io.tflite": 0.97,
    "v2_10_224_fc965_legacy_uint8.tflite": 0.97,
    "v2_10_224_fc965.keras": None,
    "v2_10_224_fc965_tf2onnx.onnx": None,
    # trained V1 0.25-128 and V2 1.0-224 bases with other heads, headless extractors
    "v1_025_128_conv10_float.tflite": None,
    "v1_025_128_conv10_int8.tflite": 0.9,
    "v1_025_128_conv10_legacy_uint8.tflite": 0.9,
    "v1_025_128_conv10.h5": None,
    "v1_025_128_avgpool_linear12_float.tflite": None,
    "v1_025_128_avgpool_linear12_int8-float-io.tflite": 0.9,
    "v2_10_224_conv_squeeze20_float.tflite": None,
    "v2_10_224_conv_squeeze20_legacy_uint8.tflite": 0.95,
    "v1_025_128_headless_avg_float.tflite": None,
    "v1_025_128_headless_avg_int8.tflite": 0.99,
    "v2_035_128_headless_map_dynamic.tflite": 0.99,
    # small random-weight networks: Keras wrappers, torchvision, torch.onnx
    "v2_05_128_seq_rescale_linear37.keras": None,
    "v2_05_128_seq_rescale_linear37.h5": None,
    "v1_05_96_func_rescale_softmax5.keras": None,
    "v1_05_96_func_rescale_softmax5.h5": None,
    "tv_v2_05_112_c100.pth": None,
    "tv_v2_05_112_c100.pt2": None,
    "tv_v2_05_112_c100_legacy_op11.onnx": None,
    "tv_v2_05_112_c100_legacy_op13.onnx": None,
    "tv_v2_05_112_c100_legacy_op17.onnx": None,
    "tv_v2_05_112_c100_dynamo_op18.onnx": None,
    "tv_v2_05_112_c100_dynamo_op21.onnx": None,
    "tv_v2_05_112_c100_matmul_op17.onnx": None,
    # ONNX Runtime's quantizers on a trained V2 1.0-224 (torchvision layout)
    "tv_v2_10_224_c100_legacy_op13.onnx": None,
    "tv_v2_10_224_c100_qdq_per_channel.onnx": 0.9,
    "tv_v2_10_224_c100_qdq_per_tensor.onnx": 0.9,
    "tv_v2_10_224_c100_dynamic.onnx": 0.97,
}
FLOAT_PHOTOS = 8


def pixels(resolution):
    """The 115 asset photos as float pixels 0..255, (n, r, r, 3), as the generator crops them."""
    return (make_corpus.photos(resolution) + 1) * 127.5


def _quantize(x, detail):
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    q = np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    return q, (scale * (q.astype(np.float64) - zero)).astype(np.float32)


def litert(path, x):
    """LiteRT's outputs (dequantized) and the real input it saw, one image at a time."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    seen, ys = x, []
    if inp["dtype"] != np.float32:
        q, seen = _quantize(x, inp)
    else:
        q = x
    for image in q:
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        y = it.get_tensor(out["index"])[0]
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = scale * (y.astype(np.float64) - zero)
        ys.append(np.asarray(y, np.float32))
    return np.stack(ys), seen


def onnxruntime(path, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    nchw = inp.shape[1] == 3
    feed = np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nchw else x)
    ys = [sess.run(None, {inp.name: image[None]})[0][0] for image in feed]
    return np.stack(ys).reshape(len(x), -1), x


def keras_runtime(path, x):
    import keras
    return np.asarray(keras.saving.load_model(path, compile=False).predict(x, verbose=0)), x


def torch_runtime(path, x, entry):
    import torch
    import torchvision
    if path.suffix == ".pt2":  # torch's own reader of its archive (runs its unpickler: our file)
        model = torch.export.load(str(path)).module()
    else:
        model = torchvision.models.mobilenet_v2(num_classes=entry["classes"], width_mult=entry["width"]).eval()
        model.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():  # one image at a time: the archive was exported for a batch of 1
        return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(image[None].transpose(0, 3, 1, 2)))).numpy()
                               for image in x]), x


def reference(path, entry, x):
    """(the runtime's outputs as (n, -1), the input as the runtime saw it)."""
    ref, seen = _run(path, entry, x)
    return ref.reshape(len(x), -1), seen


def _run(path, entry, x):
    runtime = entry["runtime"]
    if runtime == "litert":
        return litert(path, x)
    if runtime == "onnxruntime":
        return onnxruntime(path, x)
    if runtime == "keras":
        return keras_runtime(path, x)
    if runtime == "torch":
        return torch_runtime(path, x, entry)
    raise AssertionError(runtime)


def model_input(model, n):
    pre = model.config.preprocess
    p = pixels(model.config.resolution)[:n]
    return ((p - np.float32(pre.mean)) / np.float32(pre.std)).astype(np.float32)


def record(corpus_dir, name, runtime, figure):
    path = corpus_dir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = {"runtime": runtime, "figure": figure}
    path.write_text(json.dumps(results, indent=1))


@pytest.mark.parametrize("name", sorted(FILES))
def test_corpus_file_agrees_with_its_runtime(corpus, name):
    folder, manifest = corpus
    assert name in manifest, f"the generator did not write {name}"
    entry, path, bound = manifest[name], folder / name, FILES[name]
    assert entry["quantized"] == (bound is not None)
    # a state_dict or export archive does not record its input size: the generator's
    options = {"resolution": entry["resolution"]} if "resolution" in entry else {}
    if path.suffix == ".tflite":  # the float path; the default path must load the file too
        npmobile.load(path)
        options["dequantize"] = True
    model = npmobile.load(path, **options)
    x = model_input(model, None if bound is not None else FLOAT_PHOTOS)
    ref, seen = reference(path, entry, x)
    y = model(seen).reshape(len(x), -1)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    if bound is None:
        err = float(np.abs(y - ref).max() / max(1.0, np.abs(ref).max()))
        record(folder, name, entry["runtime"], f"max rel. diff {err:.1e}")
        assert err <= 1e-4
    elif entry.get("embedding"):
        cos = np.sum(y * ref, 1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
        record(folder, name, entry["runtime"], f"cosine {cos.mean():.4f} (min {cos.min():.4f})")
        assert cos.mean() >= bound
    else:
        agree = float(np.mean(y.argmax(1) == ref.argmax(1)))
        distinct = len(set(ref.argmax(1)))
        record(folder, name, entry["runtime"], f"top-1 {agree:.1%} ({distinct} distinct)")
        assert distinct >= min(10, y.shape[1]) // 2, "the runtime's top-1 barely depends on the photo"
        assert agree >= bound, f"top-1 agreement {agree:.1%} < {bound:.0%}"


def test_corpus_labels(corpus):
    folder, _ = corpus
    # the legacy file: labels.txt in an appended zip; the V1 ones: the file the TFLite Metadata
    # names, packed after a readme.txt (so taking the zip's first .txt would be wrong)
    for name, n in (("v2_10_224_fc965_legacy_uint8.tflite", 965), ("v1_025_128_conv10_float.tflite", 10),
                    ("v1_025_128_conv10_int8.tflite", 10)):
        labels = npmobile.load(folder / name).labels
        assert labels == make_corpus.label_names(n), name




def test_a_form_outside_the_supported_set_is_refused_listing_every_node(corpus, tmp_path):
    """quantize_dynamic on the convolutions writes ConvInteger nodes, which npmobile does not
    run: loading refuses the file with one error that names every one of them."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from npmobile.errors import WeightFileError

    folder, _ = corpus
    path = tmp_path / "conv_integer.onnx"
    quantize_dynamic(str(folder / "tv_v2_05_112_c100_legacy_op13.onnx"), str(path), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv"])
    n = sum(node.op_type == "ConvInteger" for node in onnx.load(str(path)).graph.node)
    with pytest.raises(WeightFileError) as e:
        npmobile.load(path)
    assert n == 52 and f"{n} ONNX node(s) npmobile cannot run" in str(e.value)
    assert str(e.value).count("(ConvInteger): op not supported") == n
