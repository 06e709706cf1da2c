"""npmobile.distributed on one machine: a 2-worker local cluster on 127.0.0.1 per engine (Dask,
Ray), no dashboards. The rows equal the local pipeline's exactly, one per input; an unreadable
file is an error row; inside the workers BLAS runs one thread and numba compiles nothing; a worker
that exits hard mid-job (NPMOBILE_TEST_CRASH) costs nothing but time. Every test has a timeout, so
a stuck engine fails instead of hanging CI."""

import glob
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import npmobile
from npmobile.data import DIGITS_MODEL, sample_digits
from npmobile.distributed import BatchClassifier, classify
from npmobile.warmup import warmup
from test_cli import npmobile_cli
from test_pipeline import jsonl_rows

BATCH = 3  # rows equal the local pipeline's bit for bit when the batches are the same
ENGINES = ["dask", "ray"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """12 digit images (PNG, JPEG, BMP), one file that is not an image, one missing path."""
    folder = tmp_path_factory.mktemp("images")
    files = []
    for i in range(12):
        path = folder / f"{i:02d}.{('png', 'jpg', 'bmp')[i % 3]}"
        Image.fromarray(list(sample_digits().values())[i % 10]).save(path)  # uint8 RGB, in name order
        files.append(str(path))
    (folder / "broken.png").write_text("not a PNG")
    warmup()  # the kernels are in numba's cache before any worker starts
    return files[:5] + [str(folder / "broken.png")] + files[5:] + [str(folder / "missing.jpg")]


@pytest.fixture(scope="module")
def local_rows(paths):
    return jsonl_rows(npmobile.load(DIGITS_MODEL), paths, batch_size=BATCH, threads=2)


@pytest.fixture(scope="module", autouse=True)
def ray_shutdown():
    yield
    if "ray" in sys.modules:
        import ray
        ray.shutdown()


def read_rows(folder):
    import pyarrow.parquet as pq
    found = []
    for f in sorted(glob.glob(f"{folder}/*")):
        found += pq.read_table(f).to_pylist() if f.endswith(".parquet") else [json.loads(s) for s in open(f)]
    return found


def by_path(rows):
    return sorted(rows, key=lambda r: r["path"])


def test_batch_classifier_gives_the_local_rows(paths, local_rows):
    classifier = BatchClassifier(DIGITS_MODEL, top=5)
    rows = [r for i in range(0, len(paths), BATCH) for r in classifier(paths[i:i + BATCH])]
    assert rows == local_rows
    as_bytes = classifier(paths[:2], data=[open(p, "rb").read() for p in paths[:2]])
    assert as_bytes == local_rows[:2]
    uris = classifier([f"file://{p}" for p in paths[:BATCH]])
    assert uris == [{**row, "path": f"file://{row['path']}"} for row in local_rows[:BATCH]]
    [missing] = classifier([f"file://{paths[-1]}"])
    assert missing["ids"] == [] and "no such file" in missing["error"].lower(), missing
    assert local_rows[5]["error"] and local_rows[-1]["error"] == "no such file or directory"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("engine", ENGINES)
def test_cluster_rows_equal_the_local_rows(engine, paths, local_rows, tmp_path, monkeypatch):
    monkeypatch.setenv("NPMOBILE_TEST_INFO_DIR", str(tmp_path / "info"))
    (tmp_path / "info").mkdir()
    if engine == "dask":  # through the command line, as JSON lines
        run = npmobile_cli("classify", "--engine", "dask", "--workers", 2, "--batch-size", BATCH, "--jsonl",
                           "--weights", DIGITS_MODEL, "--output", tmp_path / "out", *paths, timeout=280)
        assert run.returncode == 1 and f"wrote {len(paths)} rows (2 errors)" in run.stderr, run.stderr
    else:  # through the Python API, as Parquet
        counts = classify(paths, DIGITS_MODEL, tmp_path / "out", engine=engine, workers=2, batch_size=BATCH)
        assert counts["rows"] == len(paths) and counts["errors"] == 2
    rows = read_rows(tmp_path / "out")
    assert by_path(rows) == by_path(local_rows)
    assert len({r["path"] for r in rows}) == len(rows) == len(paths)
    infos = [json.load(open(f)) for f in glob.glob(f"{tmp_path}/info/*.json")]
    assert infos and sum(i["batches"] for i in infos) >= len(paths) // BATCH
    for info in infos:
        assert info["blas_threads_in_a_call"] == [1] and info["compiled_here"] == 0, info


@pytest.mark.timeout(300)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_worker_that_dies_mid_job_loses_no_path(engine, paths, local_rows, tmp_path, monkeypatch):
    monkeypatch.setenv("NPMOBILE_TEST_CRASH", f"2:{tmp_path / 'crashed'}")
    fmt = {"dask": "parquet", "ray": "jsonl"}[engine]
    counts = classify(paths, DIGITS_MODEL, tmp_path / "out", engine=engine, workers=2, batch_size=BATCH, format=fmt)
    assert (tmp_path / "crashed").exists()  # a worker did exit after its second batch
    rows = read_rows(tmp_path / "out")
    assert by_path(rows) == by_path(local_rows)  # every path exactly once, same rows
    assert counts["rows"] == len(paths)


def test_engines_are_imported_only_when_used():
    run = subprocess.run([sys.executable, "-c", "import sys, npmobile, npmobile.distributed; "
                          "print(sorted(m for m in ('dask', 'distributed', 'ray', 'pyarrow') if m in sys.modules))"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_cluster_flags_are_checked_before_any_cluster_starts(tmp_path, sample_pngs):
    no_output = npmobile_cli("classify", "--engine", "dask", "--weights", DIGITS_MODEL, sample_pngs)
    assert no_output.returncode == 1 and "needs --weights FILE and --output FOLDER" in no_output.stderr
    csv = npmobile_cli("classify", "--engine", "ray", "--csv", "--weights", DIGITS_MODEL, "--output", tmp_path,
                       sample_pngs)
    assert csv.returncode == 1 and "writes --jsonl or --parquet files, not --csv" in csv.stderr
