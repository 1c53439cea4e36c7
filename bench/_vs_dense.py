"""Public metrics against the dense reference approach (anchor a: N x N similarity, full sort,
O(N^3) HSIC), both float32, at N=4096, D=768: the loop shared by bench_neighbour_lists.py,
bench_hsic.py and bench_cknna_sums.py.

Inputs: two random feature sets, rows L2-normalised, the second correlated with the first.
The ratio column is dense time / pf time.  GFLOP/s is nominal (two N x N x D Gram matrices)
and given only for the neighbour metrics and the RBF kernel; for linear CKA pf may skip that
work altogether (feature-space form), so no flop count is claimed.  Rows keep the
``"bench": "metrics"`` label of earlier results files, so that ratios compare across runs.
"""
from __future__ import annotations

import _anchors
from _timing import add_peak, import_pf, pf_backend, run_case, set_ratios, target

TOPK = 10


def collect(cases: list[tuple], ops: tuple[str, ...], *, quick: bool = False,
            peak: float | None = None) -> tuple[list[dict], list[dict]]:
    """Rows for ``cases``: (label, metric, kwargs, nominal flops as a multiple of N^2*D or None,
    target speed-up or None); ``ops`` are the package ops the metrics are built on."""
    n, d = (512, 128) if quick else (4096, 768)
    pf, pf_err = import_pf()
    backend, note = pf_backend(ops, "cpu") if pf is not None else ("cpu", None)
    a, b = _anchors.correlated_pair(n, d, rho=0.6, seed=7)
    rows: list[dict] = []
    targets: list[dict] = []

    for label, metric, kw, flop_mult, speedup in cases:
        flops = flop_mult * n * n * d if flop_mult else None
        common = {"bench": "metrics", "case": label, "shape": f"{n}x{d}", "dtype": "float32",
                  "kwargs": kw}
        r = dict(common, method=f"pf ({backend})",
                 impl=f"platonic_fast.{metric}(a, b, **kwargs, backend={backend!r})")
        if note:
            r["note"] = note
        pf_row = run_case(r, lambda metric=metric, kw=kw: getattr(pf, metric)(a, b, **kw, backend=backend), flops=flops,
                          value_of=_anchors.scalar, skip=pf_err)
        r = dict(common, method=_anchors.DENSE, impl=_anchors.DENSE_IMPL)
        # a handful of N x N float32 matrices (K, L, masks, products)
        dense_row = run_case(r, lambda metric=metric, kw=kw: _anchors.dense_metric(metric, a, b, **kw), flops=flops,
                             est_bytes=8.0 * n * n * 4, value_of=_anchors.scalar)
        rows += [pf_row, dense_row]
        if isinstance(pf_row.get("value"), float) and isinstance(dense_row.get("value"), float):
            pf_row["abs_diff_vs_dense"] = abs(pf_row["value"] - dense_row["value"])

        if speedup is not None:
            meas = (dense_row["median_s"] / pf_row["median_s"]
                    if dense_row.get("median_s") and pf_row.get("median_s") else None)
            targets.append(target(f"{label} N={n} D={d}: dense reference time / pf time", meas,
                                  quick=quick, at_least=speedup))

    set_ratios(rows, _anchors.DENSE)
    add_peak(rows, peak)
    return rows, targets
