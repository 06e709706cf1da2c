"""Files shipped inside the package: the embedded digits model, its sample inputs, ImageNet's
class names.

- digits_mobilenet.npz: MobileNetV1 alpha 0.25 at 32x32, 10 classes "0".."9", trained on
  scikit-learn's digits by scripts/train_digits.py (the default that needs no network);
- samples/*.png: ten test-split digits from the same data set, named after their true label;
- imagenet_classes.tsv: "synset<TAB>name" for the 1000 ImageNet classes in output order,
  written by scripts/make_imagenet_labels.py from torchvision's and timm's public lists.
"""

from functools import lru_cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIGITS_MODEL = HERE / "digits_mobilenet.npz"
SAMPLES = HERE / "samples"


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
