"""Files shipped inside the package: the embedded digits model, its sample inputs, ImageNet's
class names.

- digits_mobilenet.npz: MobileNetV1 alpha 0.25 at 32x32, 10 classes "0".."9", trained on
  scikit-learn's digits by scripts/train_digits.py (the default that needs no network);
- samples.npz: ten test-split digits from the same data set as uint8 RGB arrays (32, 32, 3),
  keyed "digit<true label>_sklearn<index in scikit-learn's data set>" (no image decoder needed);
- imagenet_classes.tsv: "synset<TAB>name" for the 1000 ImageNet classes in output order,
  written by scripts/make_imagenet_labels.py from torchvision's and timm's public lists.
"""

from functools import lru_cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIGITS_MODEL = HERE / "digits_mobilenet.npz"
SAMPLES = HERE / "samples.npz"


def sample_digits():
    """{name: (32, 32, 3) uint8 RGB} of the bundled samples, in name order (true label first)."""
    with np.load(SAMPLES, allow_pickle=False) as data:
        return {name: data[name] for name in sorted(data.files)}


@lru_cache(maxsize=1)
def imagenet_classes():
    """[(synset, name)] for the 1000 ImageNet classes, in the output order of Keras and torchvision."""
    lines = (HERE / "imagenet_classes.tsv").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t", 1)) for line in lines]


def default_labels(classes):
    """The class names of a model whose file names none: ImageNet's for 1000 outputs (Keras,
    torchvision) and 1001 ("background" first, TF-slim), else None."""
    if classes not in (1000, 1001):
        return None
    names = [name for _, name in imagenet_classes()]
    return names if classes == 1000 else ["background"] + names


def digit_images(flat, side=32):
    """scikit-learn's digits (n, 64), values 0..16 -> (n, side, side) uint8 grayscale, drawn dark
    on white and upsampled with Pillow (bilinear): the images the digits model was trained on."""
    from PIL import Image

    ink = np.rint(np.asarray(flat, dtype=np.float64).reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(255 - d).resize((side, side), Image.BILINEAR)) for d in ink])
