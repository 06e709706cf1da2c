"""The local batch pipeline (npmobile/pipeline.py) behind `npmobile classify`: input order, the
same rows whatever the thread count, BLAS on one thread per pipeline thread, bounded read-ahead,
and the row formats (JSON lines, Parquet)."""

import io
import json
import threading

import numba
import pytest
from PIL import Image

import npmobile
from npmobile import pipeline
from npmobile.classify import classify, iter_paths, predictor, reader
from npmobile.data import DIGITS_MODEL, sample_digits
from test_cli import npmobile_cli


@pytest.fixture(scope="module")
def model():
    return npmobile.load(DIGITS_MODEL)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """37 images (the ten samples in three encodings) and two unreadable files among them."""
    folder = tmp_path_factory.mktemp("pipeline")
    for i in range(37):
        digit = Image.fromarray(list(sample_digits().values())[i % 10])  # uint8 RGB, in name order
        digit.save(folder / f"{i:03d}.{('png', 'jpg', 'bmp')[i % 3]}")
    (folder / "010.png").write_text("not a PNG")
    (folder / "020.jpg").write_bytes(b"\xff\xd8\xff")
    return folder


def jsonl_rows(model, paths, **kwargs):
    """The rows `classify` writes with --jsonl."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    classify(model, [str(p) for p in paths], fmt="jsonl", out=out, **kwargs)
    return [json.loads(line) for line in out.buffer.getvalue().decode().splitlines()]


def test_rows_are_the_same_in_input_order_whatever_the_threads(model, folder):
    one = jsonl_rows(model, [folder], threads=1, batch_size=4)
    three = jsonl_rows(model, [folder], threads=3, batch_size=4)
    assert three == one  # probabilities bit for bit: each batch runs alone on one thread
    assert [r["path"] for r in one] == [p for p, _ in iter_paths([str(folder)])]
    errors = {r["path"].rsplit("/", 1)[1]: r["error"] for r in one if r["error"]}
    assert set(errors) == {"010.png", "020.jpg"}, errors
    assert all(len(r["ids"]) == len(r["scores"]) == len(r["labels"]) == 5 for r in one if not r["error"])
    assert all(r["ids"] == [] for r in one if r["error"])


def test_each_pipeline_thread_runs_blas_and_numba_on_one_thread(model, folder):
    from threadpoolctl import threadpool_info

    seen, infer = [], predictor(model, 1)

    def spy(images):
        seen.append((threading.current_thread().name, [p["num_threads"] for p in threadpool_info()
                                                       if p["user_api"] == "blas"] + [numba.get_num_threads()]))
        return infer(images)

    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    done = list(pipeline.run(iter_paths([str(folder)]), reader(model), spy, batch_size=2, threads=2))
    assert sum(len(d) for d, _ in done) == 39
    # every BLAS loaded (numpy's, torch's) and numba's parallel loops: one thread per batch
    assert {n for _, counts in seen for n in counts} == {1}, seen
    assert {name for name, _ in seen} == {"npmobile-batch_0", "npmobile-batch_1"}
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == before  # restored


def test_read_ahead_is_bounded(model, folder):
    """Paths are drawn lazily: never more than 2 * threads batches ahead of the consumer."""
    drawn = 0

    def items():
        nonlocal drawn
        for i in range(10_000):
            drawn += 1
            yield f"{folder}/missing-{i}.png", "no such file or directory"

    stream = pipeline.run(items(), reader(model), predictor(model, 1), batch_size=8, threads=2)
    consumed = 0
    for done, _ in stream:
        consumed += len(done)
        assert drawn - consumed <= 8 * (2 * 2 + 1)
        if consumed >= 400:
            break
    stream.close()
    assert drawn < 500


def test_parquet_file_holds_the_jsonl_rows(tmp_path, folder):
    pq = pytest.importorskip("pyarrow.parquet")
    jsonl = npmobile_cli("classify", "--weights", DIGITS_MODEL, folder, "--jsonl", "--threads", "2")
    parquet = npmobile_cli("classify", "--weights", DIGITS_MODEL, folder, "--parquet", "--output",
                           tmp_path / "rows.parquet")
    assert jsonl.returncode == parquet.returncode == 1  # two files could not be read
    assert pq.read_table(tmp_path / "rows.parquet").to_pylist() == [json.loads(s) for s in jsonl.stdout.splitlines()]
    refused = npmobile_cli("classify", "--weights", DIGITS_MODEL, folder, "--parquet")
    assert refused.returncode == 1 and "--output FILE" in refused.stderr


def test_the_pipeline_benchmarks_serial_loop_still_runs(folder):
    # benchmarks/pipeline.py's baseline peer calls classify's functions directly: it must follow them.
    from benchmarks import pipeline as bench
    bench.serial_loop(str(DIGITS_MODEL), str(folder), 4)
