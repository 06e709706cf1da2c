"""The local batch pipeline behind `npmobile classify`: every core busy, results in input order.

The work is cut into batches of paths, and each batch is one task: decode and resize its images
(Pillow releases the GIL while it decodes and resizes), then run the model on them (the kernels
release it too). `threads` tasks run at once on a pool of that many threads, one per core, so
while one batch is being decoded another is being inferred: the same work two separate
processes on half the files each would do, without the second process.

Each thread runs its batch on one core: the model on the calling thread only (no batch
splitting), its parallel loops on one numba thread (numba.set_num_threads is per calling thread,
set once when the pool starts the thread), BLAS on one thread. OpenBLAS would otherwise start a thread per core for every
caller, and `threads` callers each asking for every core oversubscribe the machine (on a busy
2-core machine a 20 s job took 355 s). BLAS is limited with threadpoolctl (the `cli` extra):
after numpy has loaded, that is the only portable way to change its thread count.

Memory stays bounded: paths are drawn lazily from the iterator given, and at most 2 * threads
batches are decoded or waiting to be written at any moment. Results come back in input order.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice

import numba

from .errors import needs


def default_threads():
    """The cores this process may run on (its CPU affinity, not the machine's core count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@contextmanager
def one_blas_thread():
    """BLAS on one thread inside the block, restored after it."""
    with needs("threadpoolctl", "limiting BLAS to one thread per batch", "cli"):
        from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def batches(items, batch_size):
    """Consecutive lists of at most batch_size items, drawn lazily."""
    items = iter(items)
    while batch := list(islice(items, batch_size)):
        yield batch


def run_batch(batch, read, infer):
    """Decode a batch of (path, reason) items and run the readable images, on this thread.
    read(path) -> (image, None) or (None, reason); infer(images) -> one result row per image.
    Returns ([(path, reason), ...], rows of the readable ones in order); reason is None for an
    image that ran, else why it could not be read."""
    done, images = [], []
    for path, reason in batch:
        if reason is None:
            image, reason = read(path)
            if reason is None:
                images.append(image)
        done.append((path, reason))
    return done, (infer(images) if images else [])


def run(items, read, infer, *, batch_size=16, threads=None):
    """Yield what `run_batch` returns for each batch of `items`, in input order, with up to
    `threads` batches decoding or running at once (default: every core this process may use).
    `infer` must run on its calling thread (model(x, threads=1)).

    items: (path, reason) pairs, reason None for a file to read.
    """
    threads = threads or default_threads()
    window = []  # futures in input order; at most 2 * threads, so memory stays bounded
    with one_blas_thread(), ThreadPoolExecutor(threads, thread_name_prefix="npmobile-batch",
                                               initializer=numba.set_num_threads, initargs=(1,)) as pool:
        try:
            for batch in batches(items, batch_size):
                window.append(pool.submit(run_batch, batch, read, infer))
                if len(window) >= 2 * threads:
                    yield window.pop(0).result()
            while window:
                yield window.pop(0).result()
        finally:  # the consumer stopped early (a closed pipe) or a batch failed: drop the rest
            for future in window:
                future.cancel()
