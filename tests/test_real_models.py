"""Real pretrained weights (../shared/assets/models) against each model's own runtime.

The four uint8 TFLite MobileNets (ai-edge-litert), the int8 ONNX MobileNetV2 (onnxruntime) and the
float Keras .h5 MobileNet (Keras), loaded as float by npmobile, on the 15 photos and
imagenet-dev-100 read as `npmobile classify` reads them: top-1 agreement with the runtime (>= 90%
for V1, >= 95% for V2), top-1 accuracy within 3 points of the runtime's, and both cat photos
classified as a cat. How the two sides are fed is defined once, in benchmarks/real_models.py,
which also writes docs/real-models.md (with --save); `pytest -s` prints the figures.
"""

import pytest

pytest.importorskip("PIL")
from benchmarks import real_models  # noqa: E402

MODELS = ["mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite",
          "mobilenet_v1_0.75_192_quant.tflite", "mobilenet_v2_1.0_224_quant.tflite", "mobilenetv2-12-int8.onnx",
          "mobilenet_v1_0.25_224.h5"]


@pytest.fixture(scope="module")
def images(assets):
    return real_models.load_images(assets)


@pytest.fixture(scope="module")
def results(assets, images):
    """A cache, {model file name: its scores from both sides}, that `result` fills on first use:
    each model is evaluated once per module (~115 images x 5 models), not once per test."""
    return {}


@pytest.fixture
def result(request, results, assets, images):
    name = request.param
    if name not in results:
        results[name] = real_models.evaluate(assets / "models" / name, images, assets)
    return results[name]


def test_every_model_file_is_covered(assets):
    # A model added to the assets must be added here (and meet the same bar).
    assert sorted(p.name for p in real_models.model_files(assets)) == sorted(MODELS)


@pytest.mark.parametrize("result", MODELS, indirect=True)
def test_agreement_and_accuracy(result):
    r = result
    print("\n" + real_models.summary_line(r))
    assert r["n"] == 115 and r["n_dev"] == 100
    floor = 0.95 if "v2" in r["name"] else 0.90
    assert r["agreement"] >= floor, real_models.summary_line(r)
    assert abs(r["acc_ours"] - r["acc_ref"]) <= 0.03 + 1e-9, real_models.summary_line(r)
    # A broken importer lands near chance (0.1%); these networks score 45-90% on this set.
    assert r["acc_ref"] > 0.4


@pytest.mark.parametrize("result", MODELS, indirect=True)
@pytest.mark.parametrize("photo", ["chelsea.png", "cat.bmp"])
def test_cats_are_cats(result, photo):
    top = real_models.top5(result, photo)
    print(f"\n{result['name']} {photo}: {top}")
    assert top[0][0] in real_models.CAT_LABELS, top


@pytest.mark.parametrize("result", MODELS, indirect=True)
def test_labels_and_preprocessing(result):
    model = result["model"]
    if result["name"].endswith(".tflite"):
        assert model.labels[0] == "background" and len(model.labels) == 1001
        # input quantization (q - 128) / 128 became the preprocessing
        assert model.config.preprocess.mean == (128.0,) * 3
        assert model.config.preprocess.std == (128.0,) * 3
        assert model.config.convention == "tfslim"
    elif result["name"].endswith(".h5"):  # Keras: x / 127.5 - 1, NHWC
        assert model.config.classes == 1000 and model.config.convention == "keras"
        assert model.config.preprocess.mean == (127.5,) * 3 and model.config.preprocess.std == (127.5,) * 3
    else:
        assert model.config.classes == 1000 and model.config.convention == "torch"
        assert model.config.input_layout == "NCHW"
    assert model.config.arch == ("mobilenet_v2" if "v2" in result["name"] else "mobilenet_v1")
