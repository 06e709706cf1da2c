"""Write the corpus: small MobileNet V1/V2 files in every form the converters write, by the
converters themselves (docs/real-models.md lists them with the figures the tests measured).

    python scripts/make_corpus.py OUT_DIR            # everything (creates the TensorFlow venv when needed)
    python scripts/make_corpus.py OUT_DIR --part tf  # only the TensorFlow half (run in that venv)

Two halves, two interpreters. TensorFlow (its TFLite converter, Keras with the tensorflow backend,
tf2onnx) would change numpy/keras/protobuf in the test environment, so it lives in its own venv,
~/.cache/npmobile/venv-tf-2.21 (pinned in TF_REQUIREMENTS, created on first use; or
$NPMOBILE_TF_PYTHON), and that half runs in a child process with KERAS_BACKEND=tensorflow. The torch half (torch.onnx,
ONNX Runtime's quantizers, torchvision state_dicts, torch.export) runs in the test environment.

Weights are random but shaped like a trained network's, so that outputs are confident and depend
on the input (a random network's outputs are nearly flat, and top-1 agreement on flat outputs
means nothing):
- convolutions He-scaled; every batch norm's statistics are *measured*: its moving mean and
  variance are the mean and variance of its input over calibration images (the asset photos),
  layer by layer, as after training; gamma and beta are drawn at random (gamma in 0.5..1.5, beta
  around 0.5), so the statistics are not the identity and a wrong epsilon or a swapped mean and
  variance shows;
- the classifier is a nearest-prototype head: class c's weights are the centred, normalised
  pooled features of one calibration image (classes beyond the images get random rows of a
  tenth the norm), scaled so the logit gap is a few units. Each photo then has its own class,
  a clear top-1 that a runtime must keep through quantization.

Nothing written here is committed. Each file is described in OUT_DIR/manifest/<file>.json: its name, format,
form, the writer, and whether it is quantized. Reference outputs are computed at test time by each
file's own runtime (Keras, ONNX Runtime, LiteRT), which the test environment has.
"""

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
PHOTOS = [ASSETS / "photos", ASSETS / "imagenet-dev-100"]
TF_REQUIREMENTS = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.0", "pillow>=10"]
CACHE = Path(os.environ.get("NPMOBILE_CACHE") or Path.home() / ".cache" / "npmobile")
TF_VENV = CACHE / "venv-tf-2.21"  # one per machine, shared by every checkout
CALIBRATION = 32  # images used for BN statistics, prototypes and quantization ranges
SEED = 12


# --- shared by both halves --------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def photos(resolution, n=None):
    """The asset photos (sorted; the first n) as float32 NHWC in -1..1, centre-cropped to 0.875
    and resized bilinearly, or seeded noise blobs where the assets are absent."""
    import numpy as np
    files = [p for d in PHOTOS if d.is_dir() for p in sorted(d.iterdir())
             if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")]
    if not files:
        rng = np.random.default_rng(SEED)
        return rng.uniform(-1, 1, (n or CALIBRATION, resolution, resolution, 3)).astype(np.float32)
    from PIL import Image
    out = []
    for p in files[:n]:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        side = int(min(w, h) * 0.875)
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        out.append(np.asarray(im.resize((resolution, resolution), Image.BILINEAR), dtype=np.float32))
    return np.stack(out) / np.float32(127.5) - np.float32(1)


def calibration_images(resolution):
    """Every third photo: shared by BN statistics, prototypes and quantization ranges."""
    return photos(resolution)[::3][:CALIBRATION]


def add_entry(out, entry):
    """Describe one written file: OUT/manifest/<file>.json (one file each, so the two halves
    never write the same file)."""
    folder = Path(out) / "manifest"
    folder.mkdir(exist_ok=True)
    (folder / (entry["file"] + ".json")).write_text(json.dumps(entry, indent=1))


def manifest(out):
    """{file name: its description} for every file written."""
    return {e["file"]: e for e in (json.loads(p.read_text()) for p in sorted((Path(out) / "manifest").glob("*.json")))}


def label_names(classes):
    return [f"class_{i:04d}" for i in range(classes)]


# --- the TensorFlow half (runs in the TensorFlow venv) ----------------------------------------

def tf_python():
    """The interpreter of the TensorFlow venv: $NPMOBILE_TF_PYTHON, else TF_VENV (created and
    filled with TF_REQUIREMENTS the first time)."""
    if os.environ.get("NPMOBILE_TF_PYTHON"):
        return os.environ["NPMOBILE_TF_PYTHON"]
    python = TF_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TF_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TF_REQUIREMENTS], check=True)
    return str(python)


def run_tf_half(out):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    subprocess.run([tf_python(), str(Path(__file__).resolve()), str(out), "--part", "tf"], check=True, env=env)


def stamp():
    """What the corpus depends on: the generator's own source (a changed generator rebuilds)."""
    import hashlib
    h = hashlib.sha256()
    for name in ("make_corpus.py", "corpus_tf.py", "corpus_torch.py"):
        h.update((ROOT / "scripts" / name).read_bytes())
    return h.hexdigest()[:16]


def is_built(out):
    return (Path(out) / "stamp").exists() and (Path(out) / "stamp").read_text() == stamp()


DOC = ROOT / "docs" / "real-models.md"
SECTION = "## Every form the converters write"


def report(out):
    """The docs/real-models.md section: every corpus file, its writer, runtime and the figure
    tests/test_corpus.py measured (OUT/results.json)."""
    entries = manifest(out).values()
    results = json.loads((Path(out) / "results.json").read_text()) if (Path(out) / "results.json").exists() else {}
    rows = ["| file | form | written by | checked against | figure |", "|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (e["format"], e["file"])):
        r = results.get(e["file"], {})
        rows.append(f"| `{e['file']}` | {e['form']} | {e['writer']} | {r.get('runtime', e['runtime'])} | "
                    f"{r.get('figure', 'not run')} |")
    return "\n".join(rows)


def write_docs(out):
    """Replace the corpus table in docs/real-models.md (the text above the table stays)."""
    text = DOC.read_text()
    head, _, rest = text.partition(SECTION)
    intro, sep, _ = rest.partition("\n| file |")
    DOC.write_text(head + SECTION + intro + "\n" + report(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--part", choices=("all", "tf", "torch"), default="all")
    ap.add_argument("--docs", action="store_true", help="only rewrite the table in docs/real-models.md from "
                    "OUT/results.json (written by tests/test_corpus.py)")
    args = ap.parse_args()
    if args.docs:
        write_docs(args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stamp").unlink(missing_ok=True)
    if args.part == "all":
        shutil.rmtree(args.out / "manifest", ignore_errors=True)
    if args.part == "tf":
        sys.path.insert(0, str(ROOT / "scripts"))
        import corpus_tf
        corpus_tf.write_all(args.out)
        return
    if args.part == "all":
        run_tf_half(args.out)
    sys.path.insert(0, str(ROOT / "scripts"))
    import corpus_torch
    corpus_torch.write_all(args.out)
    if args.part == "all":
        (args.out / "stamp").write_text(stamp())


if __name__ == "__main__":
    main()
