"""The Dask adapter (`npmobile[dask]`): a worker plugin holds one BatchClassifier per worker
process, loaded when the worker starts (and again when a restarted worker comes back); batches
are submitted as tasks, at most a few per worker in flight, and written as they complete.
Retries, placement and restarts are Dask's."""

import os
import time

from dask.distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

from .classifier import BatchClassifier

_ATTR = "_npmobile_classifiers"  # on the Worker object: {(weights, top): BatchClassifier}


class ModelPlugin(WorkerPlugin):
    """Loads the model on every worker, present and future, once per worker process."""

    def __init__(self, weights, top, root):
        self.weights, self.top, self.root = str(weights), top, root
        self.name = f"npmobile-{self.weights}-{top}"  # registering it twice replaces it

    def setup(self, worker):
        getattr(worker, _ATTR, None) or setattr(worker, _ATTR, {})
        getattr(worker, _ATTR)[(self.weights, self.top)] = BatchClassifier(self.weights, self.top, self.root)


def classify_batch(weights, top, paths):
    """The task: this worker's classifier on one batch of paths."""
    return getattr(get_worker(), _ATTR)[(weights, top)](paths)


def worker_info(weights, top):
    return getattr(get_worker(), _ATTR)[(weights, top)].info()


def start(address, workers):
    """A Client on `address`, or on a local cluster of `workers` one-thread processes on 127.0.0.1
    without a dashboard. BLAS in each worker runs one thread (Dask's nanny sets
    OPENBLAS_NUM_THREADS=1 before the process starts; the classifier pins it again per call)."""
    if address:
        return Client(address)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    return Client(cluster)


def run(client, batches, weights, top, on_result):
    """Submit each batch (an (index, paths) pair), at most 2 per worker in flight, and call
    on_result(index, rows) as each completes, in completion order."""
    weights = str(weights)
    client.register_plugin(ModelPlugin(weights, top, os.getcwd()))
    in_flight = 2 * max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    batches, pending, index_of = iter(batches), as_completed(), {}

    def submit_next():
        item = next(batches, None)
        if item is not None:
            future = client.submit(classify_batch, weights, top, item[1], pure=False)
            index_of[future.key] = item[0]
            pending.add(future)

    for _ in range(in_flight):
        submit_next()
    for future in pending:
        on_result(index_of.pop(future.key), future.result())
        future.release()
        submit_next()


def classify(paths, weights, output_dir, *, address, workers, batch_size, top, fmt, rows_per_file):
    """npmobile.distributed.classify on Dask: rows written by this process as batches complete."""
    from .. import pipeline, rows

    started = time.perf_counter()
    client = start(address, workers or pipeline.default_threads())
    out, first = rows.PartWriter(output_dir, fmt, rows_per_file), []

    def on_result(_, batch_rows):
        first or first.append(time.perf_counter() - started)
        out.write(batch_rows)

    try:
        run(client, enumerate(pipeline.batches(paths, batch_size)), weights, top, on_result)
    finally:
        out.close()
        cluster = client.cluster
        client.close()
        if cluster is not None and not address:
            cluster.close()
    return {"rows": out.rows, "errors": out.errors, "first_result_s": first[0] if first else None}
