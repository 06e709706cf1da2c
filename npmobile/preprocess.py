"""Images -> the network's input: centre crop, resize, normalise.

    input = (pixel - mean) / std,   pixels in 0..255, per channel

mean and std are the model's convention: Keras and TF-slim map 0..255 to -1..1 (mean = std =
127.5), torchvision uses the ImageNet statistics, a quantized TFLite model its input zero point
and scale. Resizing needs Pillow (the "images" extra); an image that is already
resolution x resolution is only normalised.
"""

import numpy as np

from .errors import needs


def _as_rgb_array(image, i):
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"images[{i}]: expected uint8 RGB pixels, found dtype {a.dtype}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"images[{i}]: expected shape (h, w, 3), found {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"images[{i}]: an empty image, shape {a.shape}")
    return a


def center_crop_resize(rgb, resolution, crop):
    """Keep the central `crop` fraction of the shorter side (a square), resize it to resolution."""
    h, w = rgb.shape[:2]
    if (h, w) == (resolution, resolution):
        return rgb
    with needs("Pillow", "resizing images", "images"):
        from PIL import Image
    side = max(1, int(round(min(h, w) * crop)))
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(rgb[top:top + side, left:left + side])
    return np.asarray(square.resize((resolution, resolution), Image.BILINEAR))


def preprocess_batch(images, resolution, mean, std, crop):
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    batch = np.stack([center_crop_resize(_as_rgb_array(im, i), resolution, crop) for i, im in enumerate(images)])
    mean = np.asarray(mean, dtype=np.float32)
    inv_std = np.float32(1) / np.asarray(std, dtype=np.float32)
    return (batch.astype(np.float32) - mean) * inv_std
