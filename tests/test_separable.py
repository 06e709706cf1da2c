"""The separable benchmark (benchmarks/separable.py): its counted ratios, and that it runs.

The counted ratio separable / standard must equal 1/N + 1/D_K^2 exactly (Fractions) on every
stride-1 row of the benchmark's grid and on every separable layer of V1 and V2; the measured time
ratio is reported by the script, never asserted.
"""

import csv
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from npmobile import cost, mobilenet_v1

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "separable.py"


@pytest.fixture(scope="module")
def bench():
    # The script as a module, for its row lists and counting. (Its thread settings only reach
    # libraries not yet loaded; nothing here is timed.)
    from benchmarks import separable
    return separable


def test_counted_ratio_is_exactly_one_over_n_plus_one_over_k_squared(bench):
    rows = bench.grid_rows() + bench.mobilenet_rows()
    stride1 = [r for r in rows if r[-1] == 1]
    assert len(stride1) == 75 + 9 + 13  # the grid's stride-1 half, V1's 9 and V2's 13 stride-1 layers
    for source, name, m, n, k, d_f, stride in stride1:
        c = bench.count_row(m, n, k, d_f, stride)
        assert c["ratio_counted"] == Fraction(1, n) + Fraction(1, k * k), name
        # ... and each count is the paper's own formula, eq. (2) and eq. (5), with D_F the side.
        assert c["macs_std"] == c["paper_macs_std"] == k * k * m * n * d_f * d_f, name
        assert c["macs_sep"] == c["paper_macs_sep"], name


def test_stride_two_keeps_the_ratio_but_not_the_papers_d_f(bench):
    # At stride 2 both convolutions produce the same (D_F/2)^2 grid, so the ratio still holds;
    # the paper's formulas hold with D_F read as the output side, ceil(D_F / 2).
    for source, name, m, n, k, d_f, stride in bench.grid_rows() + bench.mobilenet_rows():
        if stride == 2:
            c = bench.count_row(m, n, k, d_f, stride)
            assert c["ratio_counted"] == Fraction(1, n) + Fraction(1, k * k), name
            d_out = math.ceil(d_f / 2)
            assert c["d_out"] == d_out and c["macs_std"] * d_f ** 2 == c["paper_macs_std"] * d_out ** 2, name


def test_mobilenet_rows_are_the_graphs_separable_layers(bench):
    rows = bench.mobilenet_rows()
    v1 = [r for r in rows if r[0] == "mobilenet_v1"]
    assert len(v1) == 13 and len(rows) - len(v1) == 17
    assert v1[5][1:] == ("conv_dw_6+conv_pw_6", 256, 512, 3, 28, 2)
    # The separable layers' MACs are the graph's own: depthwise + pointwise of V1 = all of V1's
    # MACs but the first conv and the FC layer.
    full = cost.count(mobilenet_v1())
    body = sum(bench.count_row(*r[2:])["macs_sep"] for r in v1)
    assert body == full.macs - full.by_op()["conv2d"][0] - full.by_op()["dense"][0]


def test_v1_paper_table4_conv_mobilenet(bench):
    # arXiv 1704.04861 Table 4: "Conv MobileNet" (every separable layer a full conv): 4866M
    # mult-adds, 29.3M parameters. Our count is 4867.29M; the printed figure is 1.3M (0.03%) lower,
    # as if counted without the FC layer's 1.02M (docs/cost.md).
    full = cost.count(mobilenet_v1(classes=1000))
    rows = [r for r in bench.mobilenet_rows() if r[0] == "mobilenet_v1"]
    macs = full.by_op()["conv2d"][0] + full.by_op()["dense"][0] + sum(bench.count_row(*r[2:])["macs_std"] for r in rows)
    params = (full.by_op()["conv2d"][1] + full.by_op()["dense"][1] - 1000  # weights only, as Table 2
              + sum(r[4] ** 2 * r[2] * r[3] for r in rows))
    assert round(params / 1e6, 1) == 29.3
    assert abs(macs - 4866e6) < 1.5e6 and round((macs - full.by_op()["dense"][0]) / 1e6) == 4866


def test_quick_run_writes_csv_png_json(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out / "separable.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 8 and all(r["exact"] == "True" for r in rows)
    for r in rows:  # measured ratios are reported (positive, finite), not asserted
        for key in ("ratio_np", "ratio_torch", "t_std_np", "t_dw_torch"):
            assert 0 < float(r[key]) < math.inf
    png = (out / "separable.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    summary = json.loads((out / "separable.json").read_text())
    # every pool, read back after pinning: npmobile, numba, each BLAS/OpenMP library, torch
    threads = summary["threads"]
    assert {"npmobile", "numba", "torch"} <= set(threads) and any("blas" in k for k in threads), threads
    assert set(threads.values()) == {1}, threads
