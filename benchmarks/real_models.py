"""Real pretrained models: npmobile against each model's own runtime, on real photos.

For every .tflite (uint8, run by ai-edge-litert), .onnx (int8, run by onnxruntime) and .h5 (Keras,
run by keras.applications with the file's weights) in ../shared/assets/models, each image of
assets/photos and assets/imagenet-dev-100 is read exactly as `npmobile classify` reads it
(npmobile.classify.read_image: decoded, centre-cropped to the model's crop fraction, 0.875 for
all of these, and resized with Pillow); the same uint8 pixels then go to both sides: the TFLite
runtime takes them as they are, onnxruntime, Keras and npmobile take model.preprocess(pixels)
(NCHW for onnxruntime). Reported per model: how often npmobile's top-1 equals the runtime's, and
the top-1 accuracy of both on imagenet-dev-100; plus the top-5 probabilities of each photo
(model.predict: probabilities whatever the graph ends in). tests/test_real_models.py checks the
same figures against the issue's thresholds.

    python benchmarks/real_models.py [--assets DIR] [--save | --out FILE]

prints the summary; --save writes docs/real-models.md (the committed table: never overwritten
unless asked), --out FILE elsewhere.

1001-class (TF-slim) outputs have "background" at index 0: ImageNet class k is output k + 1.
"""

import argparse
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
CAT_LABELS = ("Egyptian cat", "tabby, tabby cat", "tabby", "tiger cat")  # 1001-class and 1000-class label files


def load_images(assets):
    """[(name, path, ImageNet class or None)]: the photos, then imagenet-dev-100."""
    synsets = (assets / "labels" / "imagenet_synsets.txt").read_text().split()
    out = [(p.name, p, None) for p in sorted((assets / "photos").iterdir())
           if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")]
    out += [(p.name, p, synsets.index(p.name.split("_")[0])) for p in sorted((assets / "imagenet-dev-100").iterdir())]
    return out


def model_files(assets):
    return sorted(p for p in (assets / "models").iterdir() if p.suffix in (".tflite", ".onnx", ".h5"))


def runtime_scores(path, model, pixels):
    """The file's own runtime on the resized uint8 pixels (n, r, r, 3): (n, classes) float."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        rows = []
        for img in pixels:
            it.set_tensor(inp["index"], img[None])
            it.invoke()
            q = it.get_tensor(out["index"])[0].astype(np.float64)
            scale, zero = out["quantization"]
            rows.append(scale * (q - zero) if scale else q)
        return np.array(rows)
    if path.suffix == ".h5":
        return keras_scores(path, model, pixels)
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = model.preprocess(pixels).transpose(0, 3, 1, 2)
    return np.concatenate([sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x[i:i + 16])})[0]
                           for i in range(0, len(x), 16)])


def keras_scores(path, model, pixels):
    """Keras with the .h5 file's weights loaded into keras.applications' architecture (this file's
    own layer config no longer deserializes in Keras 3)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    c = model.config
    app = {"mobilenet_v1": keras.applications.MobileNet, "mobilenet_v2": keras.applications.MobileNetV2}[c.arch]
    net = app(alpha=c.alpha, input_shape=(c.resolution, c.resolution, 3), weights=None)
    net.load_weights(str(path))
    return np.asarray(net.predict(model.preprocess(pixels), batch_size=16, verbose=0))


def evaluate(path, images, assets):
    """Both sides' scores on every image, and the figures derived from them."""
    from npmobile.classify import read_image
    from npmobile.io import load
    model = load(path, dequantize=True)  # the float engine; the integer one: benchmarks/quantized_agreement.py
    res, crop = model.config.resolution, model.config.preprocess.crop
    pixels = np.stack([read_image(str(p), res, crop) for _, p, _ in images])  # as `npmobile classify` does
    ours = model.predict(model.preprocess(pixels), batch_size=16)
    ref = runtime_scores(path, model, pixels)
    classes = ours.shape[1]
    labels = model.labels or (assets / "labels" / f"imagenet_labels_{classes}.txt").read_text().splitlines()
    offset = 1 if classes == 1001 else 0
    truth = np.array([-1 if c is None else c + offset for _, _, c in images])
    dev = truth >= 0
    top_ours, top_ref = ours.argmax(1), ref.argmax(1)
    return dict(
        name=path.name, model=model, labels=labels, names=[n for n, _, _ in images], ours=ours, ref=ref,
        agreement=float((top_ours == top_ref).mean()), n=len(images),
        acc_ours=float((top_ours[dev] == truth[dev]).mean()), acc_ref=float((top_ref[dev] == truth[dev]).mean()),
        n_dev=int(dev.sum()))


def top5(result, image_name, side="ours"):
    scores = result[side][result["names"].index(image_name)]
    return [(result["labels"][i], float(scores[i])) for i in np.argsort(-scores)[:5]]


def summary_line(r):
    return (f"{r['name']}: top-1 agreement with its runtime {r['agreement']:.1%} of {r['n']} images; "
            f"imagenet-dev-100 top-1 npmobile {r['acc_ours']:.1%}, runtime {r['acc_ref']:.1%}")


def markdown(results, photo_names):
    lines = ["# Real pretrained models in npmobile", "",
             "Generated by `python benchmarks/real_models.py --save` from the models and photos in",
             "`../shared/assets` (not shipped with npmobile). Each quantized model is loaded as float (weights dequantized as",
             "`scale * (q - zero_point)`) and compared with its own runtime (ai-edge-litert for .tflite on the",
             "uint8 pixels, onnxruntime for .onnx, Keras for .h5) on the same pixels, read as `npmobile classify`",
             "reads them (centre crop 0.875, then resize).",
             "The runtimes also quantize activations, so agreement is high but not 100%.", "",
             "| model | images | top-1 agreement | dev-100 top-1 npmobile | dev-100 top-1 runtime |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['n']} | {r['agreement']:.1%} | {r['acc_ours']:.1%} | {r['acc_ref']:.1%} |")
    lines += ["", "## Top-5 per photo (npmobile's probabilities, model.predict)", ""]
    for photo in photo_names:
        lines += [f"### {photo}", "", "| model | top-5 |", "|---|---|"]
        for r in results:
            cells = "; ".join(f"{label.split(',')[0]} {score:.3g}" for label, score in top5(r, photo))
            lines.append(f"| {r['name']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


CORPUS_SECTION = "## Every form the converters write"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--assets", type=Path, default=ASSETS)
    p.add_argument("--out", type=Path, help="write the markdown table to this file")
    p.add_argument("--save", action="store_true", help="write docs/real-models.md (the committed table)")
    args = p.parse_args(argv)
    out = args.out or (ROOT / "docs" / "real-models.md" if args.save else None)
    images = load_images(args.assets)
    results = []
    for path in model_files(args.assets):
        results.append(evaluate(path, images, args.assets))
        print(summary_line(results[-1]))
    photos = [n for n, _, c in images if c is None]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        old = out.read_text() if out.exists() else ""
        kept = old[old.index(CORPUS_SECTION):] if CORPUS_SECTION in old else ""  # scripts/make_corpus.py's
        out.write_text(markdown(results, photos) + "\n" + ("\n" + kept if kept else ""))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
