"""The official Keras ImageNet weights: downloaded on first use, checked, converted, cached.

    model = imagenet_model("mobilenet_v2", alpha=1.0, resolution=224)

The files are those `keras.applications.MobileNet` / `MobileNetV2(weights="imagenet")` fetch
(keras/src/applications/mobilenet.py and mobilenet_v2.py: BASE_WEIGHT_PATH + the file name).
Keras calls get_file() for them without a file_hash, so it publishes no checksum: `SHA256` pins
none, and a download is checked by importing it against the architecture asked for (every tensor
name and shape, npmobile.weights.check_params) and the 1000 ImageNet classes. A hash added to
`SHA256` is checked too.

Nothing half-written ever lands in the cache: a download streams into a ".part" file beside its
destination and is renamed (os.replace, atomic) only once complete; the converted native .npz is
written the same way (npmobile.weights.save). The cache is $NPMOBILE_CACHE, else the platform's
cache directory (~/.cache/npmobile on Linux). $NPMOBILE_WEIGHTS_URL replaces the base URL (a
mirror; the tests point it at a server on 127.0.0.1).
"""

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .architectures import PUBLISHED_ALPHAS
from .weights import WeightFileError, save

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# What keras.applications accepts for weights="imagenet".
KERAS_ALPHAS = PUBLISHED_ALPHAS  # Keras publishes them all
KERAS_RESOLUTIONS = {"mobilenet_v1": (128, 160, 192, 224), "mobilenet_v2": (96, 128, 160, 192, 224)}
SHA256 = {}  # file name -> sha256 hex; Keras publishes none for these files (see above)
CHUNK = 1 << 20


class DownloadError(OSError):
    """A download that failed: no network, an HTTP error, a short transfer or a wrong hash."""


def cache_dir():
    """$NPMOBILE_CACHE, else the platform's per-user cache directory + "npmobile"."""
    if os.environ.get("NPMOBILE_CACHE"):
        return Path(os.environ["NPMOBILE_CACHE"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "npmobile"


def keras_file(arch, alpha, resolution):
    """(file name, URL) of the Keras ImageNet weights (with the classifier) for arch/alpha/resolution."""
    if arch not in KERAS_ALPHAS:
        raise ValueError(f"arch: expected one of {sorted(KERAS_ALPHAS)}, found {arch!r}")
    if float(alpha) not in KERAS_ALPHAS[arch] or resolution not in KERAS_RESOLUTIONS[arch]:
        raise ValueError(f"Keras publishes ImageNet weights for {arch} at alpha in {KERAS_ALPHAS[arch]} and "
                         f"resolution in {KERAS_RESOLUTIONS[arch]}; found alpha={alpha}, resolution={resolution}")
    if arch == "mobilenet_v1":  # mobilenet.py: alpha_text
        text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[float(alpha)]
        name, folder = f"mobilenet_{text}_{resolution}_tf.h5", "mobilenet/"
    else:  # mobilenet_v2.py: f"_{float(alpha)}_{rows}.h5"
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{resolution}.h5"
        folder = "mobilenet_v2/"
    base = os.environ.get("NPMOBILE_WEIGHTS_URL") or KERAS_BASE_URL
    return name, base.rstrip("/") + "/" + folder + name


def fetch(url, dest, sha256=None, timeout=60):
    """Download url to dest atomically: stream into dest's folder as a .part file, check the
    length the server announced and the sha256 (when given), then rename. On any failure the
    .part file is removed and DownloadError says what failed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    digest, received = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                expected = response.headers.get("Content-Length")
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
        if expected is not None and received != int(expected):
            raise DownloadError(f"{url}: the transfer was cut short: received {received} of {expected} bytes")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(f"{url}: wrong sha256: expected {sha256}, found {digest.hexdigest()} "
                                "(a corrupted or substituted file)")
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        _remove(tmp)
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        _remove(tmp)
        raise DownloadError(f"{url}: could not connect: {e.reason}") from None
    except http.client.IncompleteRead as e:
        _remove(tmp)
        raise DownloadError(f"{url}: the transfer was cut short: received {received + len(e.partial)} bytes, "
                            f"{e.expected} more expected") from None
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, a full disk, DownloadError
        _remove(tmp)
        if isinstance(e, DownloadError):
            raise
        raise DownloadError(f"{url}: download failed: {type(e).__name__}: {e}") from None
    return dest


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def imagenet_model(arch="mobilenet_v2", alpha=1.0, resolution=224):
    """The Keras ImageNet model for arch/alpha/resolution, from the cache or downloaded once."""
    from .data import imagenet_classes
    from .io import load

    name, url = keras_file(arch, alpha, resolution)
    cached = cache_dir() / f"{arch}_{float(alpha)}_{resolution}_imagenet.npz"
    if cached.is_file():
        return load(cached)
    with tempfile.TemporaryDirectory(dir=_mkdir(cached.parent), prefix=".download-") as work:
        h5 = Path(work) / name
        print(f"npmobile: downloading {url} (once; cached in {cached.parent})", file=sys.stderr)
        try:
            fetch(url, h5, SHA256.get(name))
        except DownloadError as e:
            raise DownloadError(
                f"could not download the ImageNet weights for {arch} alpha={alpha} resolution={resolution}: {e}\n"
                "Without network access, pass a weight file you have: `npmobile classify --weights FILE ...` "
                "or weights=\"FILE\" in Python (FILE: any .npz, .h5, .keras, .pth, .onnx or .tflite that "
                f"npmobile.load reads, e.g. {name} copied from a machine that has it); "
                "`npmobile demo` runs the embedded digits model with no network.") from None
        try:  # the check: every tensor must fit the architecture asked for
            model = load(h5, alpha=float(alpha), resolution=resolution)
        except WeightFileError as e:
            raise WeightFileError(f"{url}: the downloaded file is not the expected weights: {e}") from None
        found = (model.config.arch, model.config.classes)
        if found != (arch, 1000):
            raise WeightFileError(f"{url}: expected {arch} with 1000 classes, found {found[0]} with {found[1]}")
        model.labels = [label for _, label in imagenet_classes()]
        save(cached, model)
    return load(cached)


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["DownloadError", "cache_dir", "fetch", "imagenet_model", "keras_file"]
