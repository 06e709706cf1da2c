"""The torch half of the corpus (scripts/make_corpus.py runs it in the test environment):
torchvision state_dicts, torch.onnx exports (dynamo and legacy, opsets 11-21, Gemm /
Flatten / MatMul + Add / Reshape heads), ONNX Runtime's quantizers, a torch.export archive.
Weights as in make_corpus's docstring: BN statistics measured on the calibration photos, random
gamma and beta, a nearest-prototype classifier."""

import numpy as np
import torch
import torchvision

from make_corpus import SEED, add_entry, calibration_images, photos

GEN = torch.Generator().manual_seed(SEED)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


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
    images = nchw(calibration_images(res))
    randomise(model, images)
    with torch.no_grad():
        prototype_head(model.classifier[1], model.features(images).mean((2, 3)))
    return model.eval()


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
            self.items = iter([{"input": x[None]} for x in calibration_images(res).transpose(0, 3, 1, 2)])

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
    src = "tv_v2_05_112_c100_legacy_op13.onnx"
    for per_channel, tag in ((True, "qdq_per_channel"), (False, "qdq_per_tensor")):
        name = f"tv_v2_05_112_c100_{tag}.onnx"
        quantize(out, src, name, res, per_channel=per_channel)
        entry(out, name, format="onnx", writer="onnxruntime.quantization.quantize_static", quantized=True,
              runtime="onnxruntime", form=f"quantize_static QDQ, {'per-channel int8' if per_channel else 'per-tensor uint8 activations'}")
    name = "tv_v2_05_112_c100_dynamic.onnx"
    quantize(out, src, name, res, dynamic=True)
    entry(out, name, format="onnx", writer="onnxruntime.quantization.quantize_dynamic", quantized=True,
          runtime="onnxruntime", form="quantize_dynamic (int8 Gemm/MatMul weights)")
    name = "tv_v2_05_112_c100.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, res, res),)), str(out / name))
    entry(out, name, format="torch.export", writer="torch.export.save", quantized=False, runtime="refused",
          form="torch.export archive: refused (reading it means running torch's unpickler on the archive)")
