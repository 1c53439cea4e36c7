"""Neighbour-list metrics (mutual / cycle / LCS / edit distance over kNN lists), end to end:
platonic_fast vs the dense reference approach at N=4096, D=768, float32 (see _vs_dense.py);
on a GPU (``gpu_mutual_case``, run by bench_gpu.py) ``mutual_knn`` of two 1,048,576 x 1,024
bfloat16 sets against a 10 s target.

    .venv/bin/python bench/bench_neighbour_lists.py [--quick] [--no-save]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _anchors  # noqa: E402
import _vs_dense  # noqa: E402
from _timing import bench_main, run_case  # noqa: E402

TOPK = _vs_dense.TOPK
OPS = ("knn", "neighbour_lists")
# (label, metric, kwargs, nominal flops / (N^2 D): two self-kNN passes, target speed-up)
CASES = [
    ("mutual_knn", "mutual_knn", {"topk": TOPK}, 4.0, 10.0),
    ("cycle_knn", "cycle_knn", {"topk": TOPK}, 4.0, None),
    ("lcs_knn", "lcs_knn", {"topk": TOPK}, 4.0, None),
    ("edit_distance_knn", "edit_distance_knn", {"topk": TOPK}, 4.0, None),
]
MUTUAL_N, MUTUAL_D, MUTUAL_TARGET_S = 1_048_576, 1024, 10.0


def collect(quick: bool = False, peak: float | None = None):
    return _vs_dense.collect(CASES, OPS, quick=quick, peak=peak)


def gpu_mutual_case(device: str, size: str = "full") -> dict:
    """``pf.mutual_knn`` of two bfloat16 sets end to end (both kNN passes and the overlap), after
    a warm call on at most 40,000 rows so that compilation and autotuning are not timed.
    ``size``: "full" (the 1,048,576 x 1,024 target), "quick" or "smoke"."""
    import platonic_fast as pf

    n, d = {"smoke": (64, 32), "quick": (4096, 256)}.get(size, (MUTUAL_N, MUTUAL_D))
    a = _anchors.features(n, d, seed=1, device=device, dtype=torch.bfloat16)
    b = _anchors.features(n, d, seed=2, device=device, dtype=torch.bfloat16)
    row = {"bench": "metrics", "case": "mutual_knn (end to end)", "shape": f"{n}x{d}", "k": TOPK,
           "dtype": "bfloat16", "method": "pf.mutual_knn (auto)",
           "impl": f"platonic_fast.mutual_knn(a, b, topk={TOPK})",
           "target_s": MUTUAL_TARGET_S if size == "full" else None}
    m = min(n, 40_000)
    pf.mutual_knn(a[:m], b[:m], topk=TOPK)
    run_case(row, lambda: pf.mutual_knn(a, b, topk=TOPK), flops=2 * 2.0 * n * n * d, max_repeats=2,
             value_of=_anchors.scalar)
    if row["target_s"] and row.get("median_s"):
        row["target_met"] = row["median_s"] < row["target_s"]
    return row


if __name__ == "__main__":
    sys.exit(bench_main("neighbour_lists", collect))
