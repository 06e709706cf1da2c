"""The Keras-style API: npmobile.MobileNet / MobileNetV2, preprocess_input, decode_predictions."""

import os
import socket

import numpy as np
import pytest
from PIL import Image

import npmobile
from npmobile.data import imagenet_classes

os.environ.setdefault("KERAS_BACKEND", "torch")


def test_random_weights_build_the_keras_architecture():
    import keras

    model = npmobile.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)
    reference = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)
    assert sum(a.size for a in model.params.values()) == reference.count_params()
    x = npmobile.preprocess_input(np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3)))
    probs = model.predict(x, batch_size=2)
    assert probs.shape == (3, 1000) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)

    v1 = npmobile.MobileNet(input_shape=(128, 128, 3), alpha=0.5, weights=None, include_top=False, pooling="max")
    keras_v1 = keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.5, weights=None, include_top=False)
    assert sum(a.size for a in v1.params.values()) == keras_v1.count_params()
    assert v1.predict(np.zeros((1, 128, 128, 3), np.float32)).shape == (1, 512)


def test_preprocess_input_matches_keras():
    import keras

    pixels = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    ours = npmobile.preprocess_input(pixels)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, keras.applications.mobilenet_v2.preprocess_input(pixels.copy()), atol=1e-6)
    np.testing.assert_allclose(ours, keras.applications.mobilenet.preprocess_input(pixels.copy()), atol=1e-6)


def test_weights_from_a_file_with_and_without_the_classifier(tmp_path):
    full = npmobile.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)
    path = tmp_path / "v2.npz"
    npmobile.save(path, full)
    again = npmobile.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=str(path))
    x = np.random.default_rng(2).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    np.testing.assert_array_equal(again(x), full(x))

    features = npmobile.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=path, include_top=False,
                                    pooling="avg")
    expected = full.run(x, intermediates=True)["global_pool"]
    np.testing.assert_allclose(features(x), expected, rtol=1e-6, atol=1e-6)

    with pytest.raises(ValueError, match=r"holds .*'alpha': 0.35.*expected .*'alpha': 0.5"):
        npmobile.MobileNetV2(input_shape=(96, 96, 3), alpha=0.5, weights=path)
    with pytest.raises(ValueError, match="input_shape"):
        npmobile.MobileNetV2(input_shape=(96, 128, 3), weights=None)
    with pytest.raises(ValueError, match="classes=1000"):
        npmobile.MobileNet(classes=10, weights="imagenet")


def test_decode_predictions():
    preds = np.zeros((2, 1000), np.float32)
    preds[0, [281, 967, 5]] = [0.7, 0.2, 0.1]
    preds[1, 999] = 1.0
    decoded = npmobile.decode_predictions(preds, top=3)
    assert decoded[0] == [("n02123045", "tabby", pytest.approx(0.7)), ("n07920052", "espresso", pytest.approx(0.2)),
                          ("n01496331", "electric ray", pytest.approx(0.1))]
    assert decoded[1][0][:2] == ("n15075141", "toilet tissue")
    # (1001 columns, TF-slim's background first, are decoded too: tests/test_labels.py)
    with pytest.raises(ValueError, match=r"expected an \(n, 1000\) or \(n, 1001\) ImageNet batch, found shape \(2, 999\)"):
        npmobile.decode_predictions(np.zeros((2, 999)))


def test_bundled_class_list_is_imagenets(assets):
    synsets = (assets / "labels" / "imagenet_synsets.txt").read_text().split()
    names = (assets / "labels" / "imagenet_labels_1000.txt").read_text().splitlines()
    assert [s for s, _ in imagenet_classes()] == synsets
    assert [n for _, n in imagenet_classes()] == names


def test_imagenet_weights_from_the_cache_on_real_photos(assets, tmp_path, monkeypatch):
    """weights="imagenet" with the converted file already cached: no network is touched (the URL
    points at a closed port), and the real Keras V1-0.25 weights find the cat and the espresso."""
    cached = npmobile.load(assets / "models" / "mobilenet_v1_0.25_224.h5")
    cached.labels = [name for _, name in imagenet_classes()]
    npmobile.save(tmp_path / "mobilenet_v1_0.25_224_imagenet.npz", cached)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NPMOBILE_CACHE", str(tmp_path))
    monkeypatch.setenv("NPMOBILE_WEIGHTS_URL", f"http://127.0.0.1:{port}/")

    model = npmobile.MobileNet(alpha=0.25, weights="imagenet")
    images = [np.asarray(Image.open(assets / "photos" / name).convert("RGB").resize((224, 224), Image.BILINEAR))
              for name in ("chelsea.png", "coffee.png")]
    probs = model.predict(npmobile.preprocess_input(np.stack(images)))
    chelsea, coffee = npmobile.decode_predictions(probs, top=5)
    assert chelsea[0][2] == pytest.approx(float(probs[0].max()))
    assert {"tabby", "tiger cat", "Egyptian cat"} & {name for _, name, _ in chelsea}, chelsea
    assert "espresso" in {name for _, name, _ in coffee}, coffee
