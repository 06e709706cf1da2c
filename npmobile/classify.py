"""`npmobile classify PATH...` and `npmobile demo`: label image files, streamed in batches.

Memory stays bounded whatever the number of images: folders are walked lazily (os.scandir,
one directory's names at a time), each image is decoded, cropped and resized to the model's
input as soon as it is read (a 10,000 x 10,000 photo is never kept), batches hold at most
--batch-size small arrays, and every result is written as soon as its batch has run (the JSON
array too is streamed). Batches are decoded and run on every core at once, results written in
input order (npmobile/pipeline.py). An image that cannot be read is named on stderr with the
reason and skipped (an error row in --jsonl/--parquet); the exit code is 1 when any failed.

Decoding needs Pillow (the "images" extra); the progress bar uses tqdm when it is installed
(the "cli" extra) and shows only for folders on a terminal.
"""

import argparse
import contextlib
import csv
import functools
import json
import os
import stat
import sys
import warnings
from typing import NamedTuple

import numpy as np

from . import pipeline, rows
from .errors import needs
from .model import softmax
from .preprocess import center_crop_resize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Pillow refuses images over 2x this many pixels as decompression bombs; its default (89.5M)
# would warn about a real 10,000 x 10,000 photo. Above 2 * 144M pixels (over 800 MB decoded)
# the image is reported and skipped.
MAX_IMAGE_PIXELS = 12_000 * 12_000
# Pixels alone undercount: a 16-bit or CMYK image takes more bytes per pixel. The bytes an image
# takes to decode and bring to 8-bit RGB are capped at what an 8-bit RGB image of
# MAX_IMAGE_PIXELS takes (432 MB), judged from the header (after JPEG's draft scaling) before
# any pixel is decoded. 16-bit samples count 8 bytes: decoded, copied, shifted, narrowed.
MAX_IMAGE_BYTES = 3 * MAX_IMAGE_PIXELS
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                    "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "F": 4}


class ImageRefused(ValueError):
    """An image file refused before decoding: empty, or too large once decoded."""


def _pil():
    with needs("Pillow", "classifying image files", "cli"):
        from PIL import Image, ImageOps
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    return Image, ImageOps


# --- finding and reading images -------------------------------------------------------------

def iter_paths(paths):
    """Yield (path, None) for every file to classify, or (path, reason) for one that cannot be:
    missing, not a regular file (a FIFO, socket or device would block or never end), or a folder
    that cannot be listed. Files named on the command line are always tried; folders are walked
    for image suffixes, skipping hidden entries, each directory in name order. The walk always
    ends: a directory (by device and inode) is entered once, however many links lead to it."""
    entered = set()
    for path in paths:
        yield from _walk(path, entered, named=True)


def _kind(mode):
    """What a file that is not a regular file or a directory is, for a message."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _walk(root, entered, named):
    """Depth first in name order, iteratively (a deep tree cannot exhaust the stack)."""
    pending = [(root, named)]  # a stack: the next path to look at is last
    while pending:
        path, named = pending.pop()
        try:
            st = os.stat(path)  # follows links: a link is judged by what it points to
        except OSError as e:
            yield path, "no such file or directory" if isinstance(e, FileNotFoundError) else _reason(e)
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in entered:
                continue  # a link back to a folder already walked: following it again never ends
            entered.add((st.st_dev, st.st_ino))
            try:
                with os.scandir(path) as it:
                    names = sorted(e.name for e in it if not e.name.startswith("."))
            except OSError as e:
                yield path, f"cannot list the folder: {_reason(e)}"
                continue
            pending.extend((os.path.join(path, n), False) for n in reversed(names))
        elif named or path.lower().endswith(IMAGE_SUFFIXES):
            yield path, None if stat.S_ISREG(st.st_mode) else f"{_kind(st.st_mode)}, not a regular file: not read"


class UnreadableImage(Exception):
    """An image file refused before decoding; the message is the reason shown to the user."""


def read_image(path, resolution, crop):
    """Decode one image file into the model's (resolution, resolution, 3) uint8 RGB input.

    Large JPEGs are decoded at a reduced scale (Pillow's draft mode, at least twice the size
    the crop needs), the EXIF orientation is applied, and grayscale, palette, 16-bit, CMYK and
    transparent images become RGB (transparency over white)."""
    Image, ImageOps = _pil()
    if isinstance(path, (str, os.PathLike)) and os.path.getsize(path) == 0:  # (a worker may pass bytes)
        raise UnreadableImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            need = int(np.ceil(2 * resolution / crop))
            if im.format == "JPEG":
                im.draft("RGB", (need, need))
            _check_size(im)
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(_to_rgb(im, Image))
    return center_crop_resize(rgb, resolution, crop)


def _check_size(im):
    """Refuse an empty image, or one whose decoded pixels would take over MAX_IMAGE_BYTES."""
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageRefused(f"an empty image ({w}x{h} pixels)")
    size = w * h * _BYTES_PER_PIXEL.get(im.mode, 8)
    if size > MAX_IMAGE_BYTES:
        raise ImageRefused(f"decompression bomb refused: a {w}x{h} {im.mode} image decodes to {size:,.0f} bytes, "
                           f"above {MAX_IMAGE_BYTES:,}")


def _to_rgb(im, Image):
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit samples: keep the top 8 bits
        a = np.asarray(im)  # uint16 (I;16) or int32 (I): shifted in its own type, no wider copy
        im = Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8))
    return im.convert("RGB")


def try_read(path, resolution, crop):
    """(image, None) for a readable image, (None, reason) for any other file."""
    try:
        return read_image(path, resolution, crop), None
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 -- any decoder failure on untrusted bytes means "unreadable"
        return None, _reason(e)


def _reason(e):
    if isinstance(e, UnreadableImage):
        return str(e)
    name = type(e).__name__
    if isinstance(e, ImageRefused):
        return str(e)
    if name in ("DecompressionBombError", "DecompressionBombWarning"):
        return f"decompression bomb refused: {e}"
    if name == "UnidentifiedImageError":
        return "not an image Pillow can decode (unknown format or not an image file)"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return f"{name}: {e}" if str(e) else name


# --- running and reporting --------------------------------------------------------------------

# --- output formats: what a script reads --------------------------------------------------------

class Prediction(NamedTuple):
    label: str          # the model's label (or its output index as text when it has none)
    index: int          # the model's output index (TF-slim/TFLite count "background" as 0)
    probability: float
    synset: str | None  # the WordNet id for ImageNet models: the same class whatever the index convention


def imagenet_classes_of(model):
    """[(synset, name)] per output index for a model with ImageNet's classes (1000, or 1001 with
    TF-slim's "background" first: ("", "background")), else None. A model whose labels are not
    ImageNet's (its first class is not the tench) is not taken for one."""
    from .data import imagenet_classes

    offset = {1000: 0, 1001: 1}.get(model.config.classes)
    labels = model.labels
    if offset is None or (labels and not labels[offset].lower().startswith("tench")):
        return None
    return [("", "background")] * offset + imagenet_classes()


def top_k(model, probs, k, classes=None):
    """[[Prediction, ...] per row], best first. Labels: the model's own; for an ImageNet model
    without labels (an .h5 or ONNX file), ImageNet's class names (`classes`, imagenet_classes_of)."""
    labels = model.labels or ([name for _, name in classes] if classes else None)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[Prediction(labels[i] if labels else str(i), int(i), float(p[i]), classes[i][0] if classes else None)
             for i in row] for p, row in zip(probs, order)]


def text_line(path, preds):
    """path: "label" 12.3%, "label" 6.9%: each label in double quotes (JSON escapes), so that the
    commas inside ImageNet names ("jersey, T-shirt, tee shirt") cannot be read as separators."""
    return f"{path}: " + ", ".join(f"{json.dumps(p.label, ensure_ascii=False)} {p.probability:.1%}" for p in preds)


def json_record(path, preds=None, error=None):
    """One element of the --json array: {"path", "predictions": [...]} or {"path", "error"}."""
    if error is not None:
        return {"path": path, "error": error}
    return {"path": path, "predictions": [{"label": p.label, "synset": p.synset, "index": p.index,
                                           "probability": round(p.probability, 6)} for p in preds]}


CSV_COLUMNS = ["path", "rank", "label", "synset", "index", "probability", "error"]


def csv_rows(path, preds=None, error=None):
    """The --csv rows of one image: one per prediction, or one naming the error."""
    if error is not None:
        return [[path, "", "", "", "", "", error]]
    return [[path, rank, p.label, p.synset or "", p.index, f"{p.probability:.6f}", ""]
            for rank, p in enumerate(preds, start=1)]


def shown(path):
    """A path as printed in text and CSV output and on stderr: every character that is not
    printable (a newline, a carriage return, an escape sequence, bytes that are not UTF-8) is
    written as its backslash escape, so a file name cannot forge or hide a result line."""
    path = os.fspath(path)
    if path.isprintable():
        return path
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in path)


class _Writer:
    """Writes each result as it comes, as text lines, CSV rows, one streamed JSON array, or
    --jsonl/--parquet rows (npmobile/rows.py). A skipped image is named on stderr, and in every
    format but text also as a record with its error."""

    def __init__(self, fmt, out, bar):
        self.fmt, self.out, self.bar, self.count, self.records = fmt, out, bar, 0, 0
        if fmt == "csv":
            self.csv = csv.writer(out, lineterminator="\n")
            self.csv.writerow(CSV_COLUMNS)
        elif fmt == "json":
            out.write("[")
        elif fmt in rows.ROW_FORMATS:
            self.rows = rows.RowWriter(fmt, getattr(out, "buffer", out))

    def _record(self, path, preds=None, error=None):
        if self.fmt in rows.ROW_FORMATS:
            self.rows.write(rows.to_rows([(path, error)], [] if error is not None else [preds]))
        elif self.fmt == "json":
            self.out.write(("\n" if self.records == 0 else ",\n") + json.dumps(json_record(path, preds, error)))
        elif self.fmt == "csv":
            self.csv.writerows(csv_rows(shown(path), preds, error))
        self.records += 1

    def result(self, path, preds):
        if self.fmt == "text":
            line = text_line(shown(path), preds)
            self.bar.write(line, file=self.out) if self.bar is not None else print(line, file=self.out)
        else:
            self._record(path, preds)
        self.count += 1

    def error(self, path, reason):
        line = f"npmobile: {shown(path)}: skipped: {reason}"
        self.bar.write(line, file=sys.stderr) if self.bar is not None else print(line, file=sys.stderr)
        if self.fmt != "text":
            self._record(path, error=reason)

    def close(self):
        if self.fmt == "json":
            self.out.write("\n]\n" if self.records else "]\n")
        elif self.fmt in rows.ROW_FORMATS:
            self.rows.close()
        self.out.flush()


def _progress(paths):
    """A tqdm bar on stderr when a folder is classified on a terminal; None otherwise."""
    if not sys.stderr.isatty() or not any(os.path.isdir(p) for p in paths):
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience: no tqdm, no bar
        return None
    return tqdm(unit="img", file=sys.stderr, dynamic_ncols=True)


def classify(model, paths, *, top=5, batch_size=16, fmt="text", out=None, relative_to=None, threads=None):
    """Classify every image under `paths`, writing results to `out` (stdout) in input order as
    they come, each named by its path (relative to `relative_to` when given), with `threads`
    batches decoding or running at once (default: one per core; see npmobile.pipeline).
    Returns (classified, failed) counts."""
    out = out or sys.stdout
    bar = _progress(paths)
    writer = _Writer(fmt, out, bar)
    failed = 0
    try:
        for done, preds in pipeline.run(iter_paths(paths), reader(model), predictor(model, top),
                                        batch_size=batch_size, threads=threads):
            ran = iter(preds)
            for path, reason in done:
                if reason:
                    writer.error(path, reason)
                    failed += 1
                else:
                    writer.result(os.path.relpath(path, relative_to) if relative_to else path, next(ran))
            if bar is not None:
                bar.update(len(done))
        writer.close()
    finally:  # a closed output pipe (`| head`) raises BrokenPipeError: the CLI stops quietly (cli.main)
        if bar is not None:
            bar.close()
    return writer.count, failed


def reader(model):
    """path -> (image, None) or (None, reason), at this model's resolution and crop."""
    resolution, crop = model.config.resolution, model.config.preprocess.crop
    return functools.partial(try_read, resolution=resolution, crop=crop)


def predictor(model, top):
    """uint8 images -> their top-k predictions (always from probabilities: a softmax applied to
    a graph that ends in logits), computed on the calling thread."""
    classes = imagenet_classes_of(model)

    def predict(images):
        out = model(model.preprocess(images), threads=1)
        return top_k(model, softmax(out) if model.config.output == "logits" else out, top, classes)
    return predict


# --- the subcommands --------------------------------------------------------------------------

def _add_output_flags(p, top):
    from .cli import positive_int

    p.add_argument("--top", type=positive_int, default=top, metavar="K", help=f"labels per image (default {top})")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="B", help="images per batch (default 16)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="fmt", action="store_const", const="json",
                     help='write one JSON array: {"path", "predictions": [{"label", "synset", "index", "probability"}]} '
                          'per image, {"path", "error"} per skipped image')
    fmt.add_argument("--csv", dest="fmt", action="store_const", const="csv",
                     help="write CSV rows: " + ", ".join(CSV_COLUMNS) + " (a skipped image: one row with its error)")
    fmt.add_argument("--jsonl", dest="fmt", action="store_const", const="jsonl",
                     help="write one JSON object per file: path, ids, scores, labels, error")
    fmt.add_argument("--parquet", dest="fmt", action="store_const", const="parquet",
                     help="write the --jsonl rows as Parquet to --output (needs pyarrow: the parquet extra)")
    p.set_defaults(fmt="text")
    p.add_argument("--output", metavar="FILE", help="write the results to FILE instead of stdout "
                   "(with --engine dask|ray: a folder, one file per batch)")


def _add_engine_flags(p):
    from .cli import positive_int

    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="batches decoded or run at once, one core each (default: every core this process may use)")
    p.add_argument("--engine", choices=["local", "dask", "ray"], default="local",
                   help="local: this process (default); dask or ray: a cluster, writing --jsonl or --parquet "
                        "(the default) files into the --output folder; needs --weights readable by every worker")
    p.add_argument("--address", metavar="ADDR", help="with --engine: the cluster to join (default: start one here)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="with --engine and no --address: workers of the local cluster (default: one per core)")


def add_parsers(sub):
    """Add `classify` and `demo` to the CLI's subparsers."""
    from .cli import positive_float, positive_int
    from .download import KERAS_ALPHAS

    p = sub.add_parser(
        "classify", help="label image files or folders (JPEG, PNG, BMP, WebP)",
        description="Label images with a MobileNet. Folders are searched recursively. Without --weights, "
                    "the official Keras ImageNet weights for --arch/--alpha/--resolution are downloaded once "
                    "and cached ($NPMOBILE_CACHE, default ~/.cache/npmobile). Unreadable images are reported "
                    "on stderr and skipped; the exit code is then 1.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders")
    p.add_argument("--weights", metavar="FILE",
                   help="a weight file npmobile.load reads (.npz, .h5, .keras, .pth, .onnx, .tflite)")
    p.add_argument("--arch", choices=sorted(KERAS_ALPHAS),
                   help="without --weights: the ImageNet model to download (default mobilenet_v2)")
    p.add_argument("--alpha", type=positive_float, help="without --weights: width multiplier (default 1.0)")
    p.add_argument("--resolution", type=positive_int, help="without --weights: input side (default 224)")
    p.add_argument("--dequantize", action="store_true",
                   help="run a quantized --weights file (TFLite uint8/int8, ONNX QLinear ops) as float instead of "
                        "as the runtime's integers")
    _add_output_flags(p, top=5)
    _add_engine_flags(p)
    p.set_defaults(func=cmd_classify)

    d = sub.add_parser(
        "demo", help="classify the bundled digit images with the bundled model (no network needed)",
        description="Runs the embedded MobileNetV1 (alpha 0.25, 32x32, trained by scripts/train_digits.py on "
                    "scikit-learn's digits) on the ten sample digits shipped in the package; each file name "
                    "says its true label.")
    _add_output_flags(d, top=3)
    d.set_defaults(func=cmd_demo)


def cmd_classify(args):
    from .cli import given
    from .download import DownloadError, imagenet_model
    from .io import load

    if args.engine != "local":
        return _cmd_classify_cluster(args)

    chosen = [f"--{k}" for k in ("arch", "alpha", "resolution") if getattr(args, k) is not None]
    if args.weights:
        if chosen:  # a weight file carries its own architecture; silently ignoring the flags would mislead
            raise ValueError(f"{', '.join(chosen)} choose the ImageNet weights to download; "
                             f"the file given with --weights ({args.weights}) carries its own architecture")
        model = load(args.weights, dequantize=args.dequantize)
    else:
        try:
            model = imagenet_model(*(given(args, k) for k in ("arch", "alpha", "resolution")))
        except DownloadError as e:
            print(f"npmobile classify: error: {e}", file=sys.stderr)
            return 1
    with _output(args) as out:
        return _report(*classify(model, args.paths, top=args.top, batch_size=args.batch_size, fmt=args.fmt,
                                 out=out, threads=args.threads))


def _cmd_classify_cluster(args):
    from . import distributed

    if not args.weights or not args.output:
        raise ValueError(f"--engine {args.engine} needs --weights FILE and --output FOLDER "
                         "(every worker reads the weights and writes its results there)")
    if args.fmt not in ("text", *rows.ROW_FORMATS):
        raise ValueError(f"--engine {args.engine} writes --jsonl or --parquet files, not --{args.fmt}")
    fmt = "parquet" if args.fmt == "text" else args.fmt
    paths = [p for p, missing in iter_paths(args.paths)]
    counts = distributed.classify(paths, args.weights, args.output, engine=args.engine, address=args.address,
                                  workers=args.workers, batch_size=args.batch_size, top=args.top, format=fmt)
    print(f"npmobile: wrote {counts['rows']} rows ({counts['errors']} errors) into {args.output}", file=sys.stderr)
    return 1 if counts["errors"] or not counts["rows"] else 0


def cmd_demo(args):
    """The bundled digits model on the ten bundled digits (uint8 arrays: no decoder, no network):
    says which model ran, prints each prediction, then how many match the true labels."""
    from .data import DIGITS_MODEL, sample_digits
    from .io import load

    model = load(DIGITS_MODEL)
    samples = sample_digits()
    note = sys.stdout if args.fmt == "text" else sys.stderr  # --json / --csv keep stdout machine-readable
    c = model.config
    print(f"model: {DIGITS_MODEL.name} ({c.arch} alpha={c.alpha} {c.resolution}x{c.resolution}, "
          f"{c.classes} classes, trained by scripts/train_digits.py on scikit-learn's digits)", file=note)
    probs = model.predict(model.preprocess(np.stack(list(samples.values()))), batch_size=args.batch_size)
    right = 0
    with _output(args) as out:
        writer = _Writer(args.fmt, out, None)
        for name, preds in zip(samples, top_k(model, probs, args.top)):
            writer.result(name, preds)
            right += preds[0].label == name[len("digit")]  # a sample's name starts with digit<true label>
        writer.close()
    print(f"{right}/{len(samples)} right (each sample is named digit<true label>_sklearn<index>)", file=note)
    return 0


@contextlib.contextmanager
def _output(args):
    """The stream results go to: --output FILE, else stdout (Parquet needs a file)."""
    if args.output is None:
        if args.fmt == "parquet":
            raise ValueError("--parquet writes a binary file: name it with --output FILE")
        yield sys.stdout
        return
    with open(args.output, "w", encoding="utf-8", newline="") as f:
        yield f


def _report(classified, failed):
    if failed:
        print(f"npmobile: {failed} of {classified + failed} images could not be classified", file=sys.stderr)
        return 1
    if classified == 0:
        print("npmobile: no images found (looked for " + ", ".join(IMAGE_SUFFIXES) + ")", file=sys.stderr)
        return 1
    return 0
