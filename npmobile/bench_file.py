"""`npmobile bench --weights FILE`: one model file, timed by npmobile and by the runtimes that read
that same file, in one process, on the same batch, with the same thread count:
ONNX Runtime for .onnx, LiteRT (ai-edge-litert) for .tflite, PyTorch (torchvision's
mobilenet_v2) for a .pth state_dict; .npz, .h5 and .keras have no peer here.

Each runtime runs `warmup` calls (at least one: it absorbs numba's compile), then `runs` timed
calls; the median is reported in ms per batch, beside images per second and npmobile's time over
the peer's (as `npm/ort` in the end-to-end benchmark). The batch is smooth synthetic colour waves
(no image decoder needed); before timing, each peer's outputs on it are compared with npmobile's
(top-1 and the largest difference, relative) and shown: for a quantized file the runtime also
quantizes activations, so differences are expected (reported, not asserted). A peer whose package is missing is one line on stderr.

Threads: npmobile.set_num_threads(T) (a batch is split into T parts) with BLAS limited through
threadpoolctl to T threads for a single image and 1 per part otherwise (as npmobile.bench does);
ONNX Runtime intra_op_num_threads=T; LiteRT num_threads=T; torch.set_num_threads(T).
"""

import sys

import numpy as np

from .bench import _blas_threads  # the end-to-end benchmark's BLAS pinning
from .measure import median_time

# suffix -> (peer name, the module it needs, the extra that installs it)
PEERS = {".onnx": ("ONNX Runtime", "onnxruntime", "bench"), ".tflite": ("LiteRT", "ai_edge_litert", "ai-edge-litert"),
         ".pth": ("PyTorch", "torchvision", "torchvision"), ".pt": ("PyTorch", "torchvision", "torchvision")}


def median_ms(call, runs, warmup):
    """`warmup` untimed calls (measure.median_time makes the last), then `runs` timed: the median in ms."""
    for _ in range(warmup - 1):
        call()
    return 1e3 * median_time(call, runs)[0]


def onnxruntime_peer(path, model, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    nchw = model.config.input_layout == "NCHW"

    def run(x, pixels):
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nchw else x)
        return session.run(None, {name: x})[0]
    return run


def litert_peer(path, model, threads):
    """LiteRT on the file; a file whose ops fix batch 1 (a RESHAPE to (1, classes)) runs one image
    per call, as LiteRT can run it. Quantized outputs are dequantized."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = out["quantization"]

    def invoke(batch):
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        return scale * (y.astype(np.float32) - zero) if scale else y

    def run(x, pixels):
        data = pixels if inp["dtype"] == np.uint8 else x
        if list(inp["shape"]) != list(data.shape):
            try:
                interpreter.resize_tensor_input(inp["index"], list(data.shape))
                interpreter.allocate_tensors()
                inp["shape"] = data.shape
            except RuntimeError:  # fixed batch: one image per call
                interpreter.resize_tensor_input(inp["index"], [1, *data.shape[1:]])
                interpreter.allocate_tensors()
                inp["shape"] = (1, *data.shape[1:])
        if inp["shape"][0] == len(data):
            return invoke(data)
        return np.concatenate([invoke(data[i:i + 1]) for i in range(len(data))])
    return run


def torch_peer(path, model, threads):
    import torch
    import torchvision

    torch.set_num_threads(threads)
    net = torchvision.models.mobilenet_v2(num_classes=model.config.classes, width_mult=model.config.alpha)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.eval()

    def run(x, pixels):
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    return run


PEER_BUILDERS = {"ONNX Runtime": onnxruntime_peer, "LiteRT": litert_peer, "PyTorch": torch_peer}


def smooth_images(n, side):
    """n uint8 RGB images of smooth colour waves: a deterministic input that, unlike noise, does not
    leave every class equally likely (so top-1 agreement between runtimes means something)."""
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    waves = [128 + 100 * np.sin(i / (5 + k) + c) * np.cos(j / (7 + c) + k) for k in range(n) for c in range(3)]
    return np.stack(waves, axis=-1).reshape(side, side, n, 3).transpose(2, 0, 1, 3).round().astype(np.uint8)


def bench_file(path, *, runs=20, warmup=3, threads=1, batch=1, out=sys.stdout):
    """Time `path` with npmobile and its peer (if any); print one table; return the rows."""
    import npmobile

    model = npmobile.load(path)
    npmobile.set_num_threads(threads)
    r = model.config.resolution
    pixels = smooth_images(batch, r)
    x = model.preprocess(pixels)
    ours = model(x)
    with _blas_threads(threads if batch == 1 else 1) as blas:
        rows = [("npmobile", median_ms(lambda: model(x), runs, warmup), "-", "-")]
    peer, run = PEERS.get(path.suffix.lower()), None
    if peer is None:
        print(f"# no peer reads {path.suffix} files: npmobile alone", file=sys.stderr)
    else:
        try:
            run = PEER_BUILDERS[peer[0]](path, model, threads)
        except ImportError as e:
            print(f"# {peer[0]} not timed: {e.name or peer[1]} is not installed (pip install {peer[2]})", file=sys.stderr)
    if run is not None:
        theirs = np.asarray(run(x, pixels), dtype=np.float32).reshape(ours.shape)
        same = int((theirs.argmax(1) == ours.argmax(1)).sum())
        diff = float(np.abs(theirs - ours).max() / max(1.0, np.abs(theirs).max()))
        rows.append((peer[0], median_ms(lambda: run(x, pixels), runs, warmup), f"{same}/{batch}", f"{diff:.2g}"))
    print(f"# {path}: {model!r}\n# batch {batch}, threads {threads} (BLAS: {blas}), {warmup} warm-up and "
          f"{runs} timed calls, median", file=out)
    print(f"{'runtime':14s} {'ms/batch':>9s} {'img/s':>8s} {'npm/this':>8s} {'top-1 same':>10s} {'max|diff|':>9s}",
          file=out)
    for name, ms, same, diff in rows:
        print(f"{name:14s} {ms:9.2f} {1e3 * batch / ms:8.1f} {rows[0][1] / ms:8.2f} {same:>10s} {diff:>9s}", file=out)
    print("(npm/this: npmobile's time over this runtime's; max|diff| relative to the runtime's largest output; "
          "a quantized file's runtime also quantizes activations)", file=out)
    return rows
