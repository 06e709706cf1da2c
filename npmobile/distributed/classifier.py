"""`BatchClassifier`: the one piece of npmobile an engine runs on its workers.

It loads the model once (per worker process: an engine keeps it between batches) and maps a
batch of paths, or of encoded images, to result rows (npmobile/rows.py), exactly the rows the
local pipeline writes for the same batch: the same reader, the same model call on one thread,
BLAS on one thread. A file that cannot be read becomes a row with its reason in "error"; the
batch goes on. Scheduling, retries and partitioning are the engine's.
"""

import io
import json
import os
import threading

from .. import pipeline, rows
from ..classify import _reason, predictor, reader


class BatchClassifier:
    """classifier(paths) -> rows; classifier(paths, data=[bytes, ...]) decodes the bytes and
    names each row by its path. A path with a scheme (s3://bucket/a.jpg, file:///x.png) is
    fetched with pyarrow's filesystems (the engines' extras install pyarrow). Relative paths
    are read from `root` when given (the folder the job was submitted from)."""

    def __init__(self, weights, top=5, root=None):
        from ..io import load

        self.weights, self.top, self.root = str(weights), top, root  # root: where relative paths start
        self.model = load(self.weights)
        self._read, self._predict = reader(self.model), predictor(self.model, top)
        self._lock = threading.Lock()  # one batch at a time: the model call is pinned to one core
        self.batches = 0

    def __call__(self, paths, data=None):
        paths = [str(p) for p in paths]
        if data is None:
            read = self._read_path
        else:
            encoded = dict(zip(paths, data))
            read = lambda path: self._read(io.BytesIO(encoded[path]))  # noqa: E731 -- one line, one use
        with self._lock, pipeline.one_blas_thread():
            done, preds = pipeline.run_batch([(p, None) for p in paths], read, self._predict)
            self.batches += 1
            _test_hooks(self)
        return rows.to_rows(done, preds)

    def _read_path(self, path):
        """A local path, or a URI (s3://, gs://, file://...) fetched through pyarrow's filesystems."""
        if "://" not in path:  # a row keeps the path as given; a worker's working folder may differ
            return self._read(os.path.join(self.root, path) if self.root else path)
        try:
            from pyarrow import fs
            filesystem, inner = fs.FileSystem.from_uri(path)
            with filesystem.open_input_file(inner) as f:
                data = f.read()
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 -- any failure to fetch one file is that file's error row
            return None, _reason(e)
        return self._read(io.BytesIO(data))

    def info(self):
        """What this worker's classifier sees of its process: pid, batches run, BLAS threads
        in a call, kernel loops this process compiled (0 after `npmobile warmup`)."""
        from threadpoolctl import threadpool_info

        from ..warmup import compiled_here
        with pipeline.one_blas_thread():
            blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
        return {"pid": os.getpid(), "batches": self.batches, "blas_threads_in_a_call": blas,
                "compiled_here": compiled_here()}


def _test_hooks(classifier):
    """Two test-only switches, read from the environment (the engines pass it to workers):
    NPMOBILE_TEST_INFO_DIR=D writes classifier.info() to D/<pid>.json after each batch;
    NPMOBILE_TEST_CRASH=K:FILE exits this worker process hard after its K-th batch, once per
    FILE (the first worker to get there creates it), so a fault test is deterministic."""
    if folder := os.environ.get("NPMOBILE_TEST_INFO_DIR"):
        with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
            json.dump(classifier.info(), f)
    if crash := os.environ.get("NPMOBILE_TEST_CRASH"):
        after, marker = crash.split(":", 1)
        if classifier.batches == int(after):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(3)
