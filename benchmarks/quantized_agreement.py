"""npmobile's integer engine against LiteRT on the quantized TFLite files, on real photos.

For every .tflite file in ../shared/assets/models and every photo of assets/photos and
assets/imagenet-dev-100 (centre-cropped 0.875 and resized once, as benchmarks/real_models.py
does), the same uint8 pixels go to
- npmobile's QuantizedModel (model.run_integers),
- LiteRT with its reference kernels (OpResolverType.BUILTIN_REF), one image at a time,
- LiteRT's default interpreter (its optimized kernels and the XNNPACK delegate), one at a time.
Reported per model: on how many images npmobile's uint8 output is byte-identical to the reference
kernels', on how many its top-1 equals the default interpreter's, and how far the default
interpreter itself is from the reference kernels (images whose bytes differ, the largest
difference in output quanta, images whose top-1 differs). tests/test_quantized_tflite.py
checks the same figures.

For the ONNX QOperator file (mobilenetv2-12-int8.onnx), the same images, preprocessed as
`npmobile classify` does, go to npmobile's QuantizedModel and to ONNX Runtime (CPU, one thread);
reported: the fraction of output values equal and within one quantum, the largest difference in
quanta, and on how many images the top-1 is the same (tests/test_quantized_onnx.py checks them).

    python benchmarks/quantized_agreement.py [--assets DIR] [--out docs/quantized-agreement.md]
"""

import argparse
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
MODELS = ["mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite",
          "mobilenet_v1_0.75_192_quant.tflite", "mobilenet_v2_1.0_224_quant.tflite"]
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


def litert_outputs(path, pixels, reference):
    """LiteRT's raw output integers for each image, with its reference kernels or its default ones."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kind = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=kind, num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    rows = []
    for img in pixels:
        it.set_tensor(inp, img[None])
        it.invoke()
        rows.append(it.get_tensor(out)[0].copy())
    return np.array(rows)


def compare(path, pixels):
    """The figures of the module docstring for one model file on the given pixels."""
    from npmobile.io import load
    model = load(path)
    ours = np.concatenate([model.run_integers(pixels[i:i + 8]) for i in range(0, len(pixels), 8)])
    ref = litert_outputs(path, pixels, reference=True)
    default = litert_outputs(path, pixels, reference=False)
    gap = np.abs(default.astype(np.int64) - ref.astype(np.int64))
    return dict(
        name=Path(path).name, n=len(pixels), ours=ours, ref=ref, default=default,
        identical_to_ref=int((ours == ref).all(axis=1).sum()),
        top1_as_default=int((ours.argmax(1) == default.argmax(1)).sum()),
        default_differs=int((gap > 0).any(axis=1).sum()), default_max_gap=int(gap.max()),
        default_values_differ=float((gap > 0).mean()),
        default_top1_differs=int((default.argmax(1) != ref.argmax(1)).sum()))


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
            f"top-1 on {r['default_top1_differs']}")


def markdown(results):
    lines = ["| model | images | bytes identical to LiteRT reference kernels | top-1 as LiteRT default | "
             "default vs reference: images differing | values differing | largest difference (quanta) | "
             "top-1 differing |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['n']} | {r['identical_to_ref']} | {r['top1_as_default']} | "
                     f"{r['default_differs']} | {r['default_values_differ']:.2%} | {r['default_max_gap']} | "
                     f"{r['default_top1_differs']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--assets", type=Path, default=ASSETS)
    p.add_argument("--out", type=Path, help="write the markdown table here (default: print it)")
    args = p.parse_args(argv)
    images = load_images(args.assets)
    results = []
    for name in MODELS:
        from npmobile.io import load
        path = args.assets / "models" / name
        results.append(compare(path, pixels_for(images, load(path).config.resolution)))
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
