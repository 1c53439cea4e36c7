"""Alignment metrics at N=4096, D=768: platonic_fast vs the dense reference approach (anchor a:
N x N similarity, full sort, O(N^3) HSIC), both float32.

Inputs: two random feature sets, rows L2-normalised, the second correlated with the first.
The ratio column is dense time / pf time.  GFLOP/s is nominal (two N x N x D Gram matrices)
and given only for the neighbour metrics and the RBF kernel; for linear CKA pf may skip that
work altogether (feature-space form), so no flop count is claimed.

    .venv/bin/python bench/bench_metrics.py [--quick]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _anchors  # noqa: E402
import _pf  # noqa: E402
from _timing import add_peak, bench_main, import_pf, run_case, set_ratios  # noqa: E402

TOPK = 10
# (label, pf function, kwargs, dense-reference function, nominal flops as a multiple of N^2*D
#  or None, target speed-up or None)
CASES = [
    ("mutual_knn", "mutual_knn", {"topk": TOPK}, "mutual_knn", 4.0, 10.0),
    ("cka (linear)", "cka", {}, "cka", None, 100.0),
    ("cknna", "cknna", {"topk": TOPK}, "cknna", 4.0, 20.0),
    ("unbiased_cka (linear)", "unbiased_cka", {}, "unbiased_cka", None, None),
    ("cycle_knn", "cycle_knn", {"topk": TOPK}, "cycle_knn", 4.0, None),
    ("lcs_knn", "lcs_knn", {"topk": TOPK}, "lcs_knn", 4.0, None),
    ("edit_distance_knn", "edit_distance_knn", {"topk": TOPK}, "edit_distance_knn", 4.0, None),
    ("cka (rbf, sigma=1)", "cka", {"kernel_metric": "rbf", "rbf_sigma": 1.0}, "cka", 4.0, None),
]


def collect(quick: bool = False, peak: float | None = None, max_seconds: float = 600.0):
    n, d = (512, 128) if quick else (4096, 768)
    pf, pf_err = import_pf()
    dense = _anchors.DenseReference()
    a, b = _anchors.correlated_pair(n, d, rho=0.6, seed=7)
    shape = f"{n}x{d}"
    rows: list[dict] = []
    targets: list[dict] = []
    ta, tb = _pf.tiny_pair()

    for label, pf_name, kw, dense_name, flop_mult, target in CASES:
        flops = flop_mult * n * n * d if flop_mult else None
        common = {"bench": "metrics", "case": label, "shape": shape, "dtype": "float32",
                  "kwargs": kw}
        fn, backend, note = _pf.resolve(pf, pf_name, lambda f: f(ta, tb, **kw))
        r = dict(common, method=f"pf ({backend})",
                 impl=f"platonic_fast.{pf_name}(a, b, **kwargs, backend={backend!r})")
        if note:
            r["note"] = note
        if fn is None:
            rows.append(run_case(r, None, skip=note or pf_err))
        else:
            rows.append(run_case(r, lambda: fn(a, b, **kw), flops=flops,
                                 value_of=_anchors.scalar))
        pf_row = rows[-1]

        dfn, impl = dense.get(dense_name)
        r = dict(common, method="dense reference", impl=impl)
        # a handful of N x N float32 matrices (K, L, masks, products)
        rows.append(run_case(r, lambda: dfn(a, b, **kw), flops=flops,
                             est_bytes=8.0 * n * n * 4, value_of=_anchors.scalar))
        dense_row = rows[-1]
        if isinstance(pf_row.get("value"), float) and isinstance(dense_row.get("value"), float):
            pf_row["abs_diff_vs_dense"] = abs(pf_row["value"] - dense_row["value"])

        if target is not None:
            meas = (dense_row["median_s"] / pf_row["median_s"]
                    if dense_row.get("median_s") and pf_row.get("median_s") else None)
            targets.append({
                "name": f"{label} N={n} D={d}: dense reference time / pf time",
                "measured": meas, "unit": "x", "need": f">= {target:g}x",
                "met": None if meas is None or quick else meas >= target,
                "note": "quick sizes, not the target shape" if quick else None,
            })

    set_ratios(rows, "dense reference")
    add_peak(rows, peak)
    return rows, targets


if __name__ == "__main__":
    sys.exit(bench_main("metrics", collect))
