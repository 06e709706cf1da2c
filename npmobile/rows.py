"""Result rows: one per input file, the same from the local pipeline and from a cluster.

    {"path": str, "ids": [int, ...], "scores": [float, ...], "labels": [str, ...], "error": str | None}

ids, scores and labels are the top-k classes, best first (scores are probabilities); a file that
could not be read has empty lists and the reason in "error". Rows are written as JSON lines or
as Parquet (pyarrow, the `parquet` extra), streamed: Parquet in row groups of ROWS_PER_GROUP, so
memory stays bounded whatever the number of files.
"""

import json

from .errors import needs

ROW_FORMATS = ("jsonl", "parquet")
ROWS_PER_GROUP = 10_000


def to_rows(done, preds):
    """Rows for a batch: done is [(path, reason)], preds the top-k lists [(label, index,
    probability, ...)] (classify.Prediction) of the paths whose reason is None, in order."""
    ran = iter(preds)
    rows = []
    for path, reason in done:
        top = [] if reason else next(ran)
        rows.append({"path": path, "ids": [t[1] for t in top], "scores": [t[2] for t in top],
                     "labels": [t[0] for t in top], "error": reason})
    return rows


def _pyarrow():
    with needs("pyarrow", "writing Parquet", "parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
    return pa, pq


def schema():
    pa, _ = _pyarrow()
    return pa.schema([("path", pa.string()), ("ids", pa.list_(pa.int64())), ("scores", pa.list_(pa.float64())),
                      ("labels", pa.list_(pa.string())), ("error", pa.string())])


def write_parquet(rows, path):
    """Write one list of rows as a Parquet file (one row group)."""
    pa, pq = _pyarrow()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema()), path)


class RowWriter:
    """Streams rows to a binary file object as JSON lines or Parquet."""

    def __init__(self, fmt, out):
        if fmt not in ROW_FORMATS:
            raise ValueError(f"format: expected one of {', '.join(ROW_FORMATS)}, found {fmt!r}")
        self.fmt, self.out, self.pending = fmt, out, []
        if fmt == "parquet":
            pa, pq = _pyarrow()
            self.parquet = pq.ParquetWriter(out, schema())

    def write(self, rows):
        if self.fmt == "jsonl":
            self.out.write(b"".join(json.dumps(r).encode("utf-8") + b"\n" for r in rows))
            return
        self.pending += rows
        if len(self.pending) >= ROWS_PER_GROUP:
            self._flush()

    def _flush(self):
        pa, _ = _pyarrow()
        if self.pending:
            self.parquet.write_table(pa.Table.from_pylist(self.pending, schema=schema()))
            self.pending = []

    def close(self):
        if self.fmt == "parquet":
            self._flush()
            self.parquet.close()
        self.out.flush()


class PartWriter:
    """Rows into output_dir/part-00000.<fmt>, part-00001..., a new file every rows_per_file rows;
    counts the rows and the errors written."""

    def __init__(self, output_dir, fmt, rows_per_file=ROWS_PER_GROUP):
        self.dir, self.fmt, self.per_file = output_dir, fmt, rows_per_file
        self.parts, self.writer, self.in_file, self.rows, self.errors = 0, None, 0, 0, 0

    def write(self, rows):
        if self.writer is None:
            self.writer = RowWriter(self.fmt, open(f"{self.dir}/part-{self.parts:05d}.{self.fmt}", "wb"))
            self.parts += 1
        self.writer.write(rows)
        self.in_file += len(rows)
        self.rows += len(rows)
        self.errors += sum(r["error"] is not None for r in rows)
        if self.in_file >= self.per_file:
            self.close()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer.out.close()
            self.writer, self.in_file = None, 0
