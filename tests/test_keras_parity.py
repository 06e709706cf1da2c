"""Whole networks vs Keras: keras.applications.MobileNet / MobileNetV2 with random weights and
randomised BN statistics, imported by npmobile (in memory, and through .h5 / .keras files), and the
real ImageNet weights of ../shared/assets against Keras itself.

Bound: max |npmobile - keras| <= 1e-4 * max(1, max |keras|), for the fast engine (fused graph),
the oracle engine (the graph as built), and the unfused graph on the fast kernels.
Why 1e-4: both sides compute in float32 but in different orders (sgemm blocks, im2col, BN folded
into the weights on the fast engine), so they differ by rounding only; measured on random V2 nets
that is about 1e-7 of the largest output, so 1e-4 leaves a wide margin for deeper or wider nets,
while a real bug (a wrong tap, pad, epsilon or clamp: scripts/mutations.py plants them) moves the
outputs by far more. The softmax of a random network is nearly flat, so the logits are compared too: Keras' from the same
forward pass (keras_probs_and_logits), npmobile's from its intermediates (node "conv_preds" in V1,
"predictions" in V2: the Keras layer names).
"""

import os
import time

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

import npmobile  # noqa: E402
from npmobile import engine  # noqa: E402
from npmobile.io.keras import from_keras_model  # noqa: E402

APPS = {"mobilenet_v1": keras.applications.MobileNet, "mobilenet_v2": keras.applications.MobileNetV2}
ALPHAS = {"mobilenet_v1": [0.25, 0.5, 0.75, 1.0, 0.6], "mobilenet_v2": [0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 0.6]}
RESOLUTIONS = [96, 128, 160, 192, 224]
LOGITS = {"mobilenet_v1": "conv_preds", "mobilenet_v2": "predictions"}
FAST = [("mobilenet_v1", 0.5, 128), ("mobilenet_v1", 0.6, 96), ("mobilenet_v2", 0.35, 96), ("mobilenet_v2", 1.3, 128)]
GRID = [(a, al, r) for a in ALPHAS for al in ALPHAS[a] for r in RESOLUTIONS]


def assert_close(ours, ref, what):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != keras' {ref.shape}"
    err, bound = np.abs(ours - ref).max(), 1e-4 * max(1.0, np.abs(ref).max())
    assert err <= bound, f"{what}: max |npmobile - keras| = {err:.3g} > bound {bound:.3g}"


def random_weights(model, seed):
    """Kernels of variance 1/fan_in (the classifier's 16/fan_in, so the softmax is not flat), small
    biases, and BN gamma/beta/mean/variance drawn away from the identity. He's 2/fan_in would make
    a random V2 chaotic: its rounding errors grow layer by layer to the size of the bound."""
    rng = np.random.default_rng(seed)
    out = []
    for layer in model.layers:
        ws = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            c = ws[0].shape
            ws = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 1.5, c)]
        else:
            fan = {4: lambda s: s[0] * s[1] * (1 if "Depthwise" in type(layer).__name__ else s[2]), 2: lambda s: s[0]}
            gain = 16.0 if layer.name in LOGITS.values() else 1.0
            ws = [rng.standard_normal(w.shape) * np.sqrt(gain / fan[w.ndim](w.shape)) if w.ndim > 1
                  else rng.normal(0, 0.1, w.shape) for w in ws]
        out += [w.astype(np.float32) for w in ws]
    return out


_WEIGHTS = {}


def keras_model(arch, alpha, resolution, **kw):
    """keras.applications' model with random weights drawn once per (arch, alpha): the weights do
    not depend on the resolution, nor on the classifier activation."""
    model = APPS[arch](alpha=alpha, input_shape=(resolution, resolution, 3), weights=None, **kw)
    if (arch, alpha) not in _WEIGHTS:
        _WEIGHTS[arch, alpha] = random_weights(model, seed=int(alpha * 100) + len(arch))
    model.set_weights(_WEIGHTS[arch, alpha])
    return model


def keras_run(model, x):
    with torch.no_grad():
        out = model(x, training=False)
    return [keras.ops.convert_to_numpy(o) for o in out] if isinstance(out, (list, tuple)) else keras.ops.convert_to_numpy(out)


def keras_probs_and_logits(model, arch, x):
    """One Keras forward pass giving the softmax output and the logits: V1's logits are layer
    reshape_2's output; V2's Dense fuses its softmax, so its logits are the pooled features Keras
    computed times the Dense kernel plus bias (in float64)."""
    if arch == "mobilenet_v1":
        view = keras.Model(model.inputs, [model.get_layer("reshape_2").output, model.output])
        logits, probs = keras_run(view, x)
        return probs, logits
    pool = next(l for l in model.layers if isinstance(l, keras.layers.GlobalAveragePooling2D))
    features, probs = keras_run(keras.Model(model.inputs, [pool.output, model.output]), x)
    kernel, bias = model.get_layer("predictions").get_weights()
    return probs, features.astype(np.float64) @ kernel + bias


def batch(resolution, n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, resolution, resolution, 3)).astype(np.float32)


def check_parity(ours, model, x, arch):
    """Outputs and logits within the bound, fast and oracle engines, fused graph == unfused."""
    probs, logits = keras_probs_and_logits(model, arch, x)
    assert np.abs(logits).max() > 1.0, "random logits too small to test anything"
    fast = ours.run(x, intermediates=True)
    oracle = ours.run(x, oracle=True, intermediates=True)
    for name, values in (("fast", fast), ("oracle", oracle)):
        assert_close(values[ours.graph.output], probs, f"{name} engine, softmax output")
        assert_close(values[LOGITS[arch]], logits, f"{name} engine, logits")
    unfused = engine.Plan(ours.graph, ours.params, len(x)).run(x)  # fast kernels, graph as built
    assert_close(fast[ours.graph.output], unfused, "fused vs unfused graph")
    return logits


def run_case(arch, alpha, resolution, twin=False):
    model = keras_model(arch, alpha, resolution)
    ours = npmobile.Model(*from_keras_model(model))
    c = ours.config
    assert (c.arch, c.alpha, c.resolution) == (arch, alpha, resolution)
    x = batch(resolution, n=2 if resolution <= 128 else 1)
    logits = check_parity(ours, model, x, arch)
    if twin:  # classifier_activation=None imports as a model without softmax: logits out
        logits_model = keras_model(arch, alpha, resolution, classifier_activation=None)
        assert_close(keras_run(logits_model, x), logits, "keras' own logits")
        assert_close(npmobile.Model(*from_keras_model(logits_model))(x), logits, "logits model")


@pytest.mark.parametrize("arch,alpha,resolution", FAST)
def test_parity_fast_subset(arch, alpha, resolution):
    run_case(arch, alpha, resolution, twin=True)


@pytest.mark.slow
def test_parity_full_grid():
    """Every alpha x every resolution, V1 and V2 (the grid's time is printed: pytest -s)."""
    start = time.perf_counter()
    for case in GRID:
        run_case(*case)
    print(f"\nkeras grid: {len(GRID)} configurations in {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("arch,alpha,resolution,suffix", [
    ("mobilenet_v1", 0.75, 160, ".h5"), ("mobilenet_v2", 0.5, 128, ".keras"),
    ("mobilenet_v1", 0.25, 128, ".keras"), ("mobilenet_v2", 1.4, 96, ".h5")])
def test_parity_through_saved_files(tmp_path, arch, alpha, resolution, suffix):
    """model.save by Keras, npmobile.load without Keras: the same numbers as Keras."""
    model = keras_model(arch, alpha, resolution)
    path = tmp_path / f"model{suffix}"
    model.save(path)
    ours = npmobile.load(path)
    assert ours.config.alpha == alpha and ours.source == str(path)
    check_parity(ours, model, batch(resolution), arch)


def test_keras3_weights_file_and_resolution_option(tmp_path):
    """save_weights("x.weights.h5") holds no input size: resolution= says it; the vars groups'
    name attribute is optional (older Keras 3): without it, names come from the .keras config."""
    import h5py
    model = keras_model("mobilenet_v2", 0.75, 96)
    model.save_weights(tmp_path / "m.weights.h5")
    ours = npmobile.load(tmp_path / "m.weights.h5", resolution=96)
    check_parity(ours, model, batch(96, 1), "mobilenet_v2")
    model.save(tmp_path / "m.keras")
    import zipfile
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        members = {n: z.read(n) for n in z.namelist()}
    (tmp_path / "w.h5").write_bytes(members["model.weights.h5"])
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        for group in f["layers"].values():
            if "vars" in group:
                group["vars"].attrs.pop("name", None)
    members["model.weights.h5"] = (tmp_path / "w.h5").read_bytes()
    with zipfile.ZipFile(tmp_path / "nonames.keras", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    check_parity(npmobile.load(tmp_path / "nonames.keras"), model, batch(96, 1), "mobilenet_v2")


@pytest.mark.parametrize("arch,pooling", [("mobilenet_v1", "avg"), ("mobilenet_v2", "max"), ("mobilenet_v2", None)])
def test_parity_without_top(arch, pooling):
    model = APPS[arch](alpha=0.5, input_shape=(128, 128, 3), weights=None, include_top=False, pooling=pooling)
    model.set_weights(random_weights(model, seed=7))
    ours = npmobile.Model(*from_keras_model(model))
    assert not ours.config.include_top and ours.config.pooling == pooling
    x = batch(128)
    ref = keras_run(model, x)
    assert_close(ours(x), ref, "features")
    assert_close(ours.run(x, oracle=True), ref, "features, oracle")


# --- real weights ------------------------------------------------------------------------------

def _images(folder, resolution=224):
    from PIL import Image
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    pixels = [np.asarray(Image.open(p).convert("RGB").resize((resolution, resolution), Image.BILINEAR))
              for p in paths]
    return paths, np.stack(pixels).astype(np.float32) / 127.5 - 1.0


def test_real_weights_match_keras(assets):
    """The real MobileNet 0.25 224 of the assets, imported without Keras, equals Keras with the same
    file loaded, on every photo; both classify imagenet-dev-100 identically."""
    path = assets / "models" / "mobilenet_v1_0.25_224.h5"
    ours = npmobile.load(path)
    assert (ours.config.arch, ours.config.alpha, ours.config.resolution) == ("mobilenet_v1", 0.25, 224)
    reference = keras.applications.MobileNet(alpha=0.25, weights=None)
    reference.load_weights(path)

    _, photos = _images(assets / "photos")
    ref = keras_run(reference, photos)
    assert_close(ours(photos), ref, "photos, fast engine")
    assert_close(ours.run(photos, oracle=True), ref, "photos, oracle engine")

    paths, x = _images(assets / "imagenet-dev-100")
    synsets = (assets / "labels" / "imagenet_synsets.txt").read_text().split()
    truth = np.array([synsets.index(p.name.split("_")[0]) for p in paths])
    ref = keras_run(reference, x)
    mine = ours.predict(x)
    assert_close(mine, ref, "imagenet-dev-100, fast engine")
    ours_top1, keras_top1 = (mine.argmax(1) == truth).mean(), (ref.argmax(1) == truth).mean()
    print(f"\nmobilenet_v1_0.25_224 top-1 on imagenet-dev-100: npmobile {ours_top1:.2f}, keras {keras_top1:.2f}")
    assert np.array_equal(mine.argmax(1), ref.argmax(1))
    # Published top-1 of this model on ImageNet val is about 0.50; 100 images (std ~0.05) resized
    # without the central crop: anything below 0.35 means the import is wrong, not unlucky.
    assert ours_top1 >= 0.35
