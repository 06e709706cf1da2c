"""npmobile's integer engine against LiteRT on the quantized TFLite files, on real photos.

For every .tflite file in ../shared/assets/models and every photo of assets/photos and
assets/imagenet-dev-100 (centre-cropped 0.875 and resized once, as benchmarks/real_models.py
does), the same uint8 pixels (with --corpus, also the corpus' 8-bit files, each fed the photos
as its input type: corpus_inputs) go to
- npmobile's QuantizedModel (model.run_integers),
- LiteRT with its reference kernels (OpResolverType.BUILTIN_REF), one image at a time,
- LiteRT's default interpreter (its optimized kernels and the XNNPACK delegate), one at a time,
- LiteRT's optimized kernels without the delegate (BUILTIN_WITHOUT_DEFAULT_DELEGATES): where the
  default interpreter's difference from the reference comes from.
Reported per model: on how many images npmobile's uint8 output is byte-identical to the reference
kernels', on how many its top-1 equals the default interpreter's, and how far the default
interpreter itself is from the reference kernels (images whose bytes differ, the largest
difference in output quanta, images whose top-1 differs). tests/test_quantized_tflite.py
checks the same figures.

For the ONNX QOperator file (mobilenetv2-12-int8.onnx), the same images, preprocessed as
`npmobile classify` does, go to npmobile's QuantizedModel and to ONNX Runtime (CPU, one thread);
reported: the fraction of output values equal and within one quantum, the largest difference in
quanta, and on how many images the top-1 is the same (tests/test_quantized_onnx.py checks them).

    python benchmarks/quantized_agreement.py [--assets DIR] [--corpus ~/.cache/npmobile/corpus] [--out FILE]
"""

import argparse
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
MODELS = ["mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite",
          "mobilenet_v1_0.75_192_quant.tflite", "mobilenet_v2_1.0_224_quant.tflite"]
# The 8-bit TFLite files of the real-world corpus (scripts/make_corpus.py): int8 with int8,
# uint8 or float ends, and the legacy uint8 converter's; MEAN, FULLY_CONNECTED and QUANTIZE heads.
CORPUS = ["v1_025_128_avgpool_linear12_int8-float-io.tflite", "v1_025_128_conv10_int8.tflite",
          "v1_025_128_conv10_legacy_uint8.tflite", "v1_025_128_headless_avg_int8.tflite",
          "v2_10_224_conv_squeeze20_legacy_uint8.tflite", "v2_10_224_fc965_int8-float-io.tflite",
          "v2_10_224_fc965_int8.tflite", "v2_10_224_fc965_legacy_uint8.tflite", "v2_10_224_fc965_uint8-io.tflite"]
ONNX_MODELS = ["mobilenetv2-12-int8.onnx"]


def _real_models():
    spec = importlib.util.spec_from_file_location("real_models", ROOT / "benchmarks" / "real_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_images(assets):
    """[(name, path, ImageNet class or None)], as benchmarks/real_models.py lists them."""
    return _real_models().load_images(assets)


def pixels_for(images, resolution):
    """The images as `npmobile classify` reads them: decoded, centre-cropped 0.875, resized."""
    from npmobile.classify import read_image
    return np.stack([read_image(str(path), resolution, 0.875) for _, path, _ in images])


def litert_outputs(path, pixels, kernels):
    """LiteRT's raw output integers for each image, one at a time, one thread, with its "reference"
    kernels, its "default" interpreter (optimized kernels and the XNNPACK delegate) or its
    "optimized" kernels alone (no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kind = {"reference": OpResolverType.BUILTIN_REF, "default": OpResolverType.AUTO,
            "optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[kernels]
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=kind, num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    rows = []
    for img in pixels:
        it.set_tensor(inp, img[None])
        it.invoke()
        rows.append(it.get_tensor(out)[0].copy())
    return np.array(rows)


def corpus_inputs(model, n=None):
    """The asset photos as the real-world corpus' generator crops them (scripts/make_corpus.py),
    as the file's input: float32 for a file with a float input, else integers by TFLite's
    QUANTIZE (what a LiteRT user feeds such a file)."""
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_corpus
    pre = model.config.preprocess
    x = ((make_corpus.photos(model.config.resolution, n) + 1) * 127.5 - np.float32(pre.mean)) / np.float32(pre.std)
    return model.quantize_input(x.astype(np.float32))


def compare(path, inputs):
    """The figures of the module docstring for one model file on the given inputs (the file's
    input type: uint8 pixels for the TF-slim files, corpus_inputs for the corpus)."""
    from npmobile.io import load
    model = load(path)
    ours = np.concatenate([model.run_integers(inputs[i:i + 8]) for i in range(0, len(inputs), 8)])
    ref, default, optimized = (litert_outputs(path, inputs, kind).reshape(ours.shape)
                               for kind in ("reference", "default", "optimized"))
    last = model.graph.nodes[-1]  # a float output is measured in its quanta too
    quantum = last.attrs["scale"] if last.op == "dequantize" else 1
    gap = np.abs(default.astype(np.float64) - ref.astype(np.float64)) / quantum
    optimized_gap = np.abs(optimized.astype(np.float64) - ref.astype(np.float64)) / quantum
    return dict(
        name=Path(path).name, n=len(inputs), ours=ours, ref=ref, default=default,
        identical_to_ref=int((ours.view(np.uint8).reshape(len(ours), -1)
                              == ref.view(np.uint8).reshape(len(ref), -1)).all(axis=1).sum()),
        top1_as_default=int((ours.argmax(1) == default.argmax(1)).sum()),
        default_differs=int((gap > 0).any(axis=1).sum()), default_max_gap=int(round(gap.max())),
        default_values_differ=float((gap > 0).mean()),
        default_top1_differs=int((default.argmax(1) != ref.argmax(1)).sum()),
        optimized_differs=int((optimized_gap > 0).any(axis=1).sum()), optimized_max_gap=int(round(optimized_gap.max())))


def onnxruntime_outputs(path, x):
    """ONNX Runtime's (dequantized) output for a float NHWC batch, one image at a time, one thread."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: np.ascontiguousarray(img[None].transpose(0, 3, 1, 2))})[0]
                           for img in x])


def compare_onnx(path, pixels):
    """The ONNX figures of the module docstring for one file on the given pixels. Both sides
    dequantize the same way, (q - zero_point) * scale in float32, so the difference in quanta is
    the difference of the floats divided by the output scale, rounded."""
    from npmobile.io import load
    model = load(path)
    x = model.preprocess(pixels)
    ours = np.concatenate([model(x[i:i + 8]) for i in range(0, len(x), 8)])
    ref = onnxruntime_outputs(path, x)
    quanta = np.abs(np.rint((ours.astype(np.float64) - ref) / model.quant[model.graph.output][0])).astype(np.int64)
    return dict(name=Path(path).name, n=len(x), ours=ours, ref=ref, equal=float((quanta == 0).mean()),
                within_one=float((quanta <= 1).mean()), max_quanta=int(quanta.max()),
                identical_images=int((quanta == 0).all(axis=1).sum()),
                top1_same=int((ours.argmax(1) == ref.argmax(1)).sum()))


def onnx_summary_line(r):
    return (f"{r['name']}: output values equal to ONNX Runtime's {r['equal']:.4%}, within one quantum "
            f"{r['within_one']:.4%}, at most {r['max_quanta']} quanta apart; images identical "
            f"{r['identical_images']}/{r['n']}; top-1 the same on {r['top1_same']}/{r['n']}")


def summary_line(r):
    return (f"{r['name']}: output bytes identical to LiteRT's reference kernels on {r['identical_to_ref']}/{r['n']} "
            f"images; top-1 as LiteRT's default interpreter on {r['top1_as_default']}/{r['n']}; the default "
            f"interpreter differs from the reference kernels on {r['default_differs']} images "
            f"({r['default_values_differ']:.2%} of output values, at most {r['default_max_gap']} quanta), "
            f"top-1 on {r['default_top1_differs']}; its optimized kernels without the XNNPACK delegate differ on "
            f"{r['optimized_differs']} images (at most {r['optimized_max_gap']} quanta)")


def markdown(results):
    lines = ["| model | images | bytes identical to LiteRT reference kernels | top-1 as LiteRT default | "
             "default vs reference: images differing | values differing | largest difference (quanta) | "
             "top-1 differing | optimized kernels without XNNPACK vs reference: images differing |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['n']} | {r['identical_to_ref']} | {r['top1_as_default']} | "
                     f"{r['default_differs']} | {r['default_values_differ']:.2%} | {r['default_max_gap']} | "
                     f"{r['default_top1_differs']} | {r['optimized_differs']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--assets", type=Path, default=ASSETS)
    p.add_argument("--out", type=Path, help="write the markdown table here (default: print it)")
    p.add_argument("--corpus", type=Path, help="also the 8-bit TFLite files of this corpus folder "
                                                   "(scripts/make_corpus.py; its photos are cropped by the generator)")
    args = p.parse_args(argv)
    from npmobile.io import load
    images = load_images(args.assets)
    results = []
    for name in MODELS:
        path = args.assets / "models" / name
        results.append(compare(path, pixels_for(images, load(path).config.resolution)))
        print(summary_line(results[-1]), flush=True)
    for name in CORPUS if args.corpus else []:
        results.append(compare(args.corpus / name, corpus_inputs(load(args.corpus / name))))
        print(summary_line(results[-1]), flush=True)
    for name in ONNX_MODELS:
        print(onnx_summary_line(compare_onnx(args.assets / "models" / name, pixels_for(images, 224))), flush=True)
    table = markdown(results)
    if args.out:
        args.out.write_text(table + "\n")
        print(f"wrote {args.out}")
    else:
        print(table)


if __name__ == "__main__":
    main()
