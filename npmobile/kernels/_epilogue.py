"""The epilogue of the matrix-product kernels (conv2d, pointwise_conv2d, dense):

    rows[r, o] = clamp(rows[r, o] + b[o])

run in place on the product's output, on blocks of rows small enough to be still in the L2
cache when the epilogue reads them back (a trip through main memory saved on MobileNet's
112x112 layers).
"""

import glob

from ._jit import jit


def _l2_cache_bytes(default=1 << 20):
    """One core's L2 cache in bytes, from Linux's sysfs; 1 MiB where that is not available."""
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(f"{index}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{index}/size") as f:
                text = f.read().strip().upper()  # "2048K"
            return int(text.rstrip("KM")) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        except (OSError, ValueError):
            break
    return default


# The largest output block (in float32 values) a product runs its epilogue on at once: half the L2.
BLOCK_FLOATS = max(1 << 14, _l2_cache_bytes() // 2 // 4)


def row_blocks(x_rows, y_rows, c_out):
    """(x block, y block) views of at most BLOCK_FLOATS outputs each. Smaller blocks cost more
    than they save: every sgemm call packs w again (a 14x14 layer split in two runs 5% slower)."""
    block = max(1, BLOCK_FLOATS // c_out)
    return [(x_rows[r:r + block], y_rows[r:r + block]) for r in range(0, y_rows.shape[0], block)]


@jit
def bias_clamp_jit(rows, b, has_clamp, lo, hi):
    """The epilogue, in place, one pass over memory."""
    for r in range(rows.shape[0]):
        row = rows[r]
        for o in range(row.shape[0]):
            v = row[o] + b[o]
            if has_clamp:
                v = min(max(v, lo), hi)
            row[o] = v
