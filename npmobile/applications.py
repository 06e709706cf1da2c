"""The Keras-style API: `npmobile.MobileNet(...)`, `npmobile.MobileNetV2(...)`,
`preprocess_input`, `decode_predictions`.

    model = npmobile.MobileNetV2(alpha=1.0, weights="imagenet")     # downloaded once, then cached
    probs = model.predict(npmobile.preprocess_input(images))         # images: (n, 224, 224, 3), 0..255
    print(npmobile.decode_predictions(probs, top=3))

weights: "imagenet" (the official Keras weights, npmobile.download), None (random weights with
randomised batch-norm statistics, npmobile.architectures.random_params), or the path of any file
npmobile.load reads. The result is a `Model`: model(x), model.predict(x), model.preprocess(images).
"""

import numpy as np

from .download import imagenet_model
from .model import Model
from .architectures import mobilenet_v1, mobilenet_v2, random_params


def MobileNet(input_shape=None, alpha=1.0, depth_multiplier=1, include_top=True, weights="imagenet",
              pooling=None, classes=1000):
    """MobileNetV1 as keras.applications.MobileNet builds it (Keras conventions)."""
    graph = mobilenet_v1(alpha, _resolution(input_shape), classes, depth_multiplier=depth_multiplier,
                         include_top=include_top, pooling=pooling)
    return _with_weights(graph, weights)


def MobileNetV2(input_shape=None, alpha=1.0, include_top=True, weights="imagenet", pooling=None, classes=1000):
    """MobileNetV2 as keras.applications.MobileNetV2 builds it (Keras conventions)."""
    graph = mobilenet_v2(alpha, _resolution(input_shape), classes, include_top=include_top, pooling=pooling)
    return _with_weights(graph, weights)


def _resolution(input_shape):
    if input_shape is None:
        return 224
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
        raise ValueError(f"input_shape: expected (side, side, 3) (NHWC, square, RGB), found {shape}")
    return shape[0]


def _with_weights(graph, weights):
    """A Model of `graph` holding the requested weights; a source model with the classifier
    serves a graph without it (its tensors are a subset)."""
    c = graph.config
    if weights is None:
        return Model(graph, random_params(graph), source="random weights")
    if isinstance(weights, str) and weights == "imagenet":
        if c.depth_multiplier != 1 or (c.include_top and c.classes != 1000):
            raise ValueError("weights='imagenet' needs depth_multiplier=1 and, with include_top, classes=1000; "
                             f"found depth_multiplier={c.depth_multiplier}, classes={c.classes}")
        source = imagenet_model(c.arch, c.alpha, c.resolution)
    else:
        from .io import load
        source = load(weights)
    found = {k: getattr(source.config, k) for k in ("arch", "alpha", "resolution")}
    wanted = {k: getattr(c, k) for k in found}
    if found != wanted:
        raise ValueError(f"{source.source}: holds {found}, expected {wanted}")
    if c.include_top:
        return source
    names = graph.param_shapes()
    return Model(graph, {k: v for k, v in source.params.items() if k in names}, source=source.source)


def preprocess_input(x):
    """Pixels 0..255 -> -1..1, as keras.applications.mobilenet(_v2).preprocess_input ("tf" mode):
    x / 127.5 - 1, in float32. Any shape; does not resize (model.preprocess does)."""
    return np.asarray(x, dtype=np.float32) / np.float32(127.5) - np.float32(1)


def decode_predictions(preds, top=5, labels=None):
    """Class scores -> per row, [(class id, class name, score)] best first, as keras.applications'
    decode_predictions returns them.

    - labels=None: ImageNet, (n, 1000) (synset ids and names from torchvision's list) or TF-slim's
      (n, 1001), whose column 0 is "background": it is dropped and the rest decoded as ImageNet;
    - labels=model.labels (any labelled model, e.g. a fine-tuned classifier whose file names its
      classes): ids are the column indices as strings.
    """
    from .data import imagenet_classes

    preds = np.asarray(preds)
    if labels is not None:
        if preds.ndim != 2 or preds.shape[1] != len(labels):
            raise ValueError(f"decode_predictions: expected an (n, {len(labels)}) batch for {len(labels)} labels, "
                             f"found shape {preds.shape}")
        classes = [(str(i), name) for i, name in enumerate(labels)]
    elif preds.ndim == 2 and preds.shape[1] in (1000, 1001):
        preds = preds[:, -1000:]  # 1001: TF-slim's background class first
        classes = imagenet_classes()
    else:
        raise ValueError(f"decode_predictions: expected an (n, 1000) or (n, 1001) ImageNet batch, found shape "
                         f"{preds.shape} (for other classifiers pass labels=model.labels)")
    order = np.argsort(-preds, axis=1, kind="stable")[:, :top]
    return [[(*classes[i], float(row[i])) for i in idx] for row, idx in zip(preds, order)]
