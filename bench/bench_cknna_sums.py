"""CKNNA end to end (two kNN passes, then the sparse masked-kernel sums): ``pf.cknna`` vs the
dense reference approach (N x N masks from torch.topk, O(N^3) HSIC) at N=4096, D=768, float32
(see _vs_dense.py).

    .venv/bin/python bench/bench_cknna_sums.py [--quick] [--no-save]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _vs_dense  # noqa: E402
from _timing import bench_main  # noqa: E402

OPS = ("knn", "cknna_sums")
# (label, metric, kwargs, nominal flops / (N^2 D): two self-kNN passes, target speed-up)
CASES = [("cknna", "cknna", {"topk": _vs_dense.TOPK}, 4.0, 20.0)]


def collect(quick: bool = False, peak: float | None = None):
    return _vs_dense.collect(CASES, OPS, quick=quick, peak=peak)


if __name__ == "__main__":
    sys.exit(bench_main("cknna_sums", collect))
