"""Classify more images than one machine holds: the same rows as `npmobile classify`, computed
by an engine users already run. npmobile brings the work, one `BatchClassifier` per worker; Dask
or Ray brings the scheduling, retries and partitioning.

    from npmobile.distributed import classify
    classify(paths, "mobilenet_v2.tflite", "out/", engine="dask")      # a local cluster
    classify(paths, "mobilenet_v2.tflite", "out/", engine="ray", address="ray://head:10001")

Or on the command line: `npmobile classify --engine dask|ray [--address ADDR] [--workers N]
--weights FILE --output DIR PATH...`. The weights file and the images must be readable at the
same path on every worker (a shared filesystem). Engines are imported only when used:
`import npmobile` imports neither.
"""

import os

from .. import rows
from .classifier import BatchClassifier

__all__ = ["BatchClassifier", "classify"]
ENGINES = ("dask", "ray")


def classify(paths_or_uris, weights, output_dir, *, engine="dask", address=None, workers=None, batch_size=16,
             top=5, format="parquet", rows_per_file=rows.ROWS_PER_GROUP):
    """Classify every path on a Dask or Ray cluster; rows go into files in output_dir (Parquet
    or JSON lines, at most about rows_per_file rows each), one row per path, in no particular
    order (the path is the key). Returns {"rows": n, "errors": files that could not be read,
    "first_result_s": seconds from starting or joining the cluster to the first batch's rows
    (None where the engine writes the files itself: Ray with Parquet)}.

    address: the cluster's scheduler (Dask) or head (Ray); None starts a local cluster of
    `workers` processes (default: one per core) on 127.0.0.1, without dashboards."""
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, found {engine!r}")
    if format not in rows.ROW_FORMATS:
        raise ValueError(f"format: expected one of {', '.join(rows.ROW_FORMATS)}, found {format!r}")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights: no such file: {weights}")
    os.makedirs(output_dir, exist_ok=True)
    paths = [str(p) for p in paths_or_uris]
    if engine == "dask":
        from . import _dask as backend
    else:
        from . import _ray as backend
    return backend.classify(paths, os.path.abspath(weights), output_dir, address=address, workers=workers,
                            batch_size=batch_size, top=top, fmt=format, rows_per_file=rows_per_file)
