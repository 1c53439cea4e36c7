"""Outlier clamping (docs/metrics.md#clamping, q = 0.95, per-sample quantiles) of one synthetic model's
N x L x D features, as the layer search does before scoring: ``pf.remove_outliers`` end to end,
the op's per-sample order statistics with every backend that runs here, and the dense
reference (a full sort of every sample's |x|, float32). Not in run_cpu.py's default parts (the
default file matches earlier results row for row); ``--only outliers`` adds it.

The ratio column is dense reference time / method time.

    .venv/bin/python bench/bench_outliers.py [--quick] [--no-save]
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _anchors  # noqa: E402
from _timing import add_peak, bench_main, import_pf, run_case, set_ratios  # noqa: E402

Q = 0.95


def collect(quick: bool = False, peak: float | None = None):
    n, layers, d = (256, 4, 64) if quick else (1024, 33, 768)
    pf, pf_err = import_pf()
    x = _anchors.correlated_layers(n, layers, d, shared=torch.zeros(n, d), seed=1, peak_at=0.5)
    common = {"bench": "outliers", "case": f"remove_outliers q={Q}", "shape": f"{n}x{layers}x{d}",
              "dtype": "float32"}
    clamp = lambda out: float(out.abs().max())  # noqa: E731  the threshold t the clamp applied
    rows = [run_case(dict(common, method="pf.remove_outliers (auto)", impl=f"platonic_fast.remove_outliers(x, q={Q})"),
                     lambda: pf.remove_outliers(x, q=Q), value_of=clamp, skip=pf_err)]
    if pf is not None:
        from platonic_fast import _backends

        m = layers * d
        lo = math.floor(Q * (m - 1))
        for backend in _backends.available("outliers", "cpu", dtypes=(x.dtype,)):
            _, fn = _backends.resolve("outliers", backend, "cpu", dtypes=(x.dtype,))
            rows.append(run_case(dict(common, method=f"order statistics ({backend})",
                                      impl=f"_backends.resolve('outliers', {backend!r}, 'cpu'): entries {lo}, "
                                           f"{lo + 1} of each sample's sorted |x|"),
                                 lambda fn=fn: fn(x.reshape(n, -1), lo, lo + 1)))
    rows.append(run_case(dict(common, method=_anchors.DENSE, impl="tests/dense_reference.py remove_outliers, float32"),
                         lambda: _anchors.dense_reference.remove_outliers(x, Q, dtype=_anchors.DENSE_DTYPE),
                         value_of=clamp))
    if isinstance(rows[0].get("value"), float) and isinstance(rows[-1].get("value"), float):
        rows[0]["abs_diff_vs_dense"] = abs(rows[0]["value"] - rows[-1]["value"])
    set_ratios(rows, _anchors.DENSE)
    add_peak(rows, peak)
    return rows, []


if __name__ == "__main__":
    sys.exit(bench_main("outliers", collect))
