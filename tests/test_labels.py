"""Class names: from the file when it names them, ImageNet's for 1000/1001-class models without,
and decode_predictions for ImageNet (1000 or 1001 columns) and any labelled model."""

import numpy as np
import pytest

import npmobile
from npmobile.data import imagenet_classes
from npmobile.architectures import mobilenet_v1, random_params


def _model(classes, labels=None):
    graph = mobilenet_v1(0.25, 32, classes)
    return npmobile.Model(graph, random_params(graph), labels)


def test_imagenet_models_without_labels_get_the_bundled_names():
    names = [name for _, name in imagenet_classes()]
    assert _model(1000).labels == names
    assert _model(1001).labels == ["background"] + names
    assert _model(10).labels is None
    assert _model(3, ["a", "b", "c"]).labels == ["a", "b", "c"]


def test_decode_predictions_drops_the_background_class_of_1001_outputs():
    p = np.zeros((2, 1001), np.float32)
    p[0, 0], p[0, 1 + 281] = 0.9, 0.1  # background first: never returned
    p[1, 1 + 7] = 1.0
    first, second = npmobile.decode_predictions(p, top=1)
    assert first[0][:2] == imagenet_classes()[281] and first[0][2] == pytest.approx(0.1)
    assert second[0][:2] == imagenet_classes()[7]
    same = npmobile.decode_predictions(p[:, 1:], top=1)
    assert same == [first, second]


def test_decode_predictions_with_a_labelled_models_names():
    model = _model(3, ["cat", "dog", "bird"])
    out = npmobile.decode_predictions(np.array([[0.1, 0.3, 0.6]]), top=2, labels=model.labels)
    assert out == [[("2", "bird", 0.6), ("1", "dog", pytest.approx(0.3))]]
    with pytest.raises(ValueError, match=r"\(n, 3\) batch for 3 labels, found shape \(1, 4\)"):
        npmobile.decode_predictions(np.zeros((1, 4)), labels=model.labels)
    with pytest.raises(ValueError, match="labels=model.labels"):
        npmobile.decode_predictions(np.zeros((1, 3)))
