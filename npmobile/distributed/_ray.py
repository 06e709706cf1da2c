"""The Ray Data adapter (`npmobile[ray]`): the paths become a dataset, `map_batches` runs a pool
of actors each holding one BatchClassifier (the model loaded once per actor), each actor reads its
paths itself, and the rows are written as Parquet files of at least rows_per_file rows (or
streamed to JSON lines by this process). Retries and actor restarts are Ray's: Ray Data restarts
a dead actor and retries its batch by default (max_restarts=-1, max_task_retries=-1).

Two guards: every actor process starts with its threads pinned (BLAS, OpenMP, numba: one thread,
set before numpy loads), and the actors leave room for Ray Data's other tasks: actors reserve one
CPU each but at most all CPUs but one on a cluster of two or more, and the write tasks reserve
none, so they never wait for a CPU the actors hold for good.
"""

import os
import time

import ray

from .classifier import BatchClassifier

PINNED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
OBJECT_STORE_BYTES = 128 * 2**20  # a local cluster's object store: rows and paths are small


class RayClassifier:
    """The actor class: BatchClassifier on Ray Data's column batches."""

    def __init__(self, weights, top, root):
        self.classifier = BatchClassifier(weights, top, root)

    def __call__(self, batch):
        import pyarrow as pa

        from .. import rows  # the rows' own schema: a block without errors still has a string "error"
        return pa.Table.from_pylist(self.classifier(list(batch["path"])), schema=rows.schema())


def start(address, workers):
    """Join `address`, or start a local Ray on 127.0.0.1 with `workers` CPUs, no dashboard and a
    small object store."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)


def rows_dataset(paths, weights, top, batch_size):
    """The dataset of result rows, lazily: nothing runs until it is written or iterated."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = max(1, cpus - 1) if cpus > 2 else cpus
    return ray.data.from_items([{"path": p} for p in paths]).map_batches(
        RayClassifier, fn_constructor_args=(weights, top, os.getcwd()), batch_size=batch_size, batch_format="numpy",
        concurrency=actors, num_cpus=1, runtime_env={"env_vars": {**PINNED, **_test_switches()}})


def _test_switches():
    """The test-only NPMOBILE_TEST_* variables (classifier.py), passed on to the actors."""
    return {k: v for k, v in os.environ.items() if k.startswith("NPMOBILE_TEST_")}


def classify(paths, weights, output_dir, *, address, workers, batch_size, top, fmt, rows_per_file):
    """npmobile.distributed.classify on Ray Data."""
    from .. import pipeline, rows

    started = time.perf_counter()
    start(address, workers or pipeline.default_threads())
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = rows_dataset(paths, weights, top, batch_size)
    if fmt == "parquet":
        dataset.write_parquet(output_dir, min_rows_per_file=rows_per_file, ray_remote_args={"num_cpus": 0})
        return {**_count_parquet(output_dir), "first_result_s": None}
    out, first = rows.PartWriter(output_dir, fmt, rows_per_file), None
    try:
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            first = first or time.perf_counter() - started
            out.write(batch.to_pylist())
    finally:
        out.close()
    return {"rows": out.rows, "errors": out.errors, "first_result_s": first}


def _count_parquet(output_dir):
    import pyarrow.dataset as ds

    table = ds.dataset(output_dir, format="parquet").to_table(columns=["error"])
    return {"rows": table.num_rows, "errors": len(table["error"].drop_null())}
