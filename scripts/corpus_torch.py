"""The torch half of the corpus (scripts/make_corpus.py runs it in the test environment):
torchvision state_dicts, torch.onnx exports (dynamo and legacy, opsets 11-21, Gemm /
Flatten / MatMul + Add / Reshape heads), ONNX Runtime's quantizers, a torch.export archive.
Weights as in make_corpus's docstring: BN statistics measured on the calibration photos, random
gamma and beta, a nearest-prototype classifier."""

from pathlib import Path

import numpy as np
import torch
import torchvision

from make_corpus import ASSETS, SEED, add_entry, calibration_images

GEN = torch.Generator().manual_seed(SEED)


MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def torch_images(res):
    """The calibration photos as torchvision's models take them, and as npmobile's ONNX importer
    preprocesses for an NCHW file (convention "torch"): (pixel / 255 - mean) / std, NCHW."""
    pixels = (calibration_images(res) + 1) * 127.5
    return np.ascontiguousarray(((pixels / 255 - MEAN) / STD).transpose(0, 3, 1, 2)).astype(np.float32)


@torch.no_grad()
def randomise(model, images):
    """Random gamma/beta; each BN's running statistics measured on `images`: a pre-hook sets them
    from the BN's own input just before it runs, so one forward pass calibrates every layer in
    order (later layers see the calibrated earlier ones)."""
    model.eval()

    def measure(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3), unbiased=False) + 1e-3)

    handles = []
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        c = bn.num_features
        bn.weight.copy_(torch.rand(c, generator=GEN) + 0.5)
        bn.bias.copy_(0.5 + 0.25 * torch.randn(c, generator=GEN))
        handles.append(bn.register_forward_pre_hook(measure))
    model.features(images)
    for h in handles:
        h.remove()


@torch.no_grad()
def prototype_head(linear, features, gap=6.0):
    """The nearest-prototype classifier of corpus_tf.prototype_head, for a torch Linear."""
    f = features - features.mean(0)
    f = f / (f.norm(dim=1, keepdim=True) + 1e-12)
    k, c = linear.weight.shape
    w = torch.randn(k, c, generator=GEN, dtype=torch.float64) * 0.1 / c ** 0.5
    n = min(k, len(f))
    w[:n] = f[:n].double()
    mu = features.double().mean(0) @ w.T
    spread = float(torch.median((features.double() @ w.T - mu).max(1).values))
    scale = gap / max(spread, 1e-6)
    linear.weight.copy_((w * scale).float())
    linear.bias.copy_((-mu * scale).float())


def mobilenet_v2(width, res, classes):
    model = torchvision.models.mobilenet_v2(num_classes=classes, width_mult=width)
    images = torch.from_numpy(torch_images(res))
    randomise(model, images)
    with torch.no_grad():
        prototype_head(model.classifier[1], model.features(images).mean((2, 3)))
    return model.eval()


@torch.no_grad()
def pretrained_v2(classes):
    """torchvision mobilenet_v2(1.0, num_classes=classes) holding the trained weights of
    ../shared/assets' V2 1.0-224 TFLite file (read by npmobile, dequantized; each BN the identity
    plus the folded bias; the head the first `classes` ImageNet rows). TF-slim padded its stride-2
    convolutions (0, 1) where torchvision pads (1, 1), so this is not the same function as the
    TFLite file, but its outputs are as confident and photo-dependent as a trained network's,
    which is what quantized files need for top-1 agreement to mean something."""
    import npmobile
    src = npmobile.load(ASSETS / "models" / "mobilenet_v2_1.0_224_quant.tflite")
    linear = [n for n in src.graph.nodes if n.op in ("conv2d", "depthwise_conv2d", "pointwise_conv2d", "dense")]
    model = torchvision.models.mobilenet_v2(num_classes=classes).eval()
    convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(bns) == len(linear) - 1
    for conv, bn, node in zip(convs, bns, linear):
        w, b = (torch.from_numpy(src.params[f"{node.name}.{p}"]) for p in ("w", "b"))
        conv.weight.copy_(w.permute(3, 2, 0, 1) if w.ndim == 4 else  # HWIO
                          w.permute(2, 0, 1)[:, None] if node.op == "depthwise_conv2d" else w.T[:, :, None, None])
        bn.weight.fill_(1.0)
        bn.bias.copy_(b)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    head = linear[-1].name
    model.classifier[1].weight.copy_(torch.from_numpy(src.params[f"{head}.w"][:, 1:classes + 1].T))
    model.classifier[1].bias.copy_(torch.from_numpy(src.params[f"{head}.b"][1:classes + 1]))
    return model


class MatMulHead(torch.nn.Module):
    """features -> mean over H, W -> reshape -> x @ W + b -> softmax: ReduceMean, Reshape, MatMul,
    Add and Softmax in ONNX (the head a hand-written exporter or tf2onnx writes)."""

    def __init__(self, model):
        super().__init__()
        self.features = model.features
        self.w = torch.nn.Parameter(model.classifier[1].weight.detach().T.contiguous())
        self.b = torch.nn.Parameter(model.classifier[1].bias.detach().clone())

    def forward(self, x):
        x = self.features(x).mean((2, 3), keepdim=True)
        return torch.softmax(x.reshape(x.shape[0], -1) @ self.w + self.b, dim=-1)


def export(model, path, res, opset, dynamo):
    x = torch.zeros(1, 3, res, res)
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(path), opset_version=opset, dynamo=dynamo, input_names=["input"],
                          output_names=["output"], **({} if dynamo else {"do_constant_folding": True}))
    if dynamo:  # the dynamo exporter may keep weights in a side file; fold them back in
        import onnx
        proto = onnx.load(str(path))
        onnx.save(proto, str(path))
        Path(str(path) + ".data").unlink(missing_ok=True)


def entry(out, name, **kw):
    add_entry(out, dict(file=name, **kw))
    print(f"  {name}", flush=True)


def quantize(out, src, name, res, per_channel=None, dynamic=False):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if dynamic:
        quantize_dynamic(str(out / src), str(out / name), weight_type=QuantType.QInt8, op_types_to_quantize=["Gemm", "MatMul"])
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": x[None]} for x in torch_images(res)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(out / src), str(out / name), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8 if not per_channel else QuantType.QInt8,
                    weight_type=QuantType.QInt8)


def write_all(out):
    print("torch half:", torch.__version__, "torchvision", torchvision.__version__, flush=True)
    res, width, classes = 112, 0.5, 100
    model = mobilenet_v2(width, res, classes)
    torch.save(model.state_dict(), out / "tv_v2_05_112_c100.pth")
    entry(out, "tv_v2_05_112_c100.pth", format="torchvision", writer=f"torch.save {torch.__version__}", quantized=False,
          runtime="torch", width=width, resolution=res, classes=classes,
          form="torchvision mobilenet_v2(num_classes=100, width_mult=0.5) state_dict")
    for opset in (11, 13, 17):
        name = f"tv_v2_05_112_c100_legacy_op{opset}.onnx"
        export(model, out / name, res, opset, dynamo=False)
        entry(out, name, format="onnx", writer="torch.onnx (legacy TorchScript exporter)", quantized=False,
              runtime="onnxruntime", form=f"torch.onnx legacy, opset {opset}, NCHW; GlobalAveragePool + Flatten + Gemm head")
    for opset in (18, 21):
        name = f"tv_v2_05_112_c100_dynamo_op{opset}.onnx"
        export(model, out / name, res, opset, dynamo=True)
        entry(out, name, format="onnx", writer="torch.onnx (dynamo exporter)", quantized=False, runtime="onnxruntime",
              form=f"torch.onnx dynamo, opset {opset}, NCHW")
    name = "tv_v2_05_112_c100_matmul_op17.onnx"
    export(MatMulHead(model).eval(), out / name, res, 17, dynamo=False)
    entry(out, name, format="onnx", writer="torch.onnx (legacy)", quantized=False, runtime="onnxruntime",
          form="opset 17; ReduceMean + Reshape + MatMul + Add + Softmax head")
    # Quantized: a trained network (see pretrained_v2), exported float, then quantized by ORT.
    src = "tv_v2_10_224_c100_legacy_op13.onnx"
    export(pretrained_v2(100), out / src, 224, 13, dynamo=False)
    entry(out, src, format="onnx", writer="torch.onnx (legacy)", quantized=False, runtime="onnxruntime",
          form="opset 13, the trained V2 1.0-224 the quantized ONNX files come from")
    for per_channel, tag in ((True, "qdq_per_channel"), (False, "qdq_per_tensor")):
        name = f"tv_v2_10_224_c100_{tag}.onnx"
        quantize(out, src, name, 224, per_channel=per_channel)
        entry(out, name, format="onnx", writer="onnxruntime.quantization.quantize_static", quantized=True,
              runtime="onnxruntime", form=f"quantize_static QDQ, {'per-channel, int8 activations' if per_channel else 'per-tensor, uint8 activations'}")
    name = "tv_v2_10_224_c100_dynamic.onnx"
    quantize(out, src, name, 224, dynamic=True)
    entry(out, name, format="onnx", writer="onnxruntime.quantization.quantize_dynamic", quantized=True,
          runtime="onnxruntime", form="quantize_dynamic (int8 Gemm weights, activations quantized at run time)")
    name = "tv_v2_05_112_c100.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, res, res),)), str(out / name))
    entry(out, name, format="torch.export", writer="torch.export.save", quantized=False, runtime="torch",
          width=width, resolution=res, classes=classes,
          form="torch.export archive of the same model (raw weights + JSON, read without torch)")
