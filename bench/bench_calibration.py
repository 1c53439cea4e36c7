"""A calibrated layer search (issue 10's target): Lx x Ly layers, K row permutations of the second
model's features, the same permutation for every layer, max and mean aggregates.

- ours: ``pf.align(x, y, metric, topk=10, permutations=K)`` from the raw N x L x D features
  (outlier clamp, normalisation, one kNN pass per layer, then the null by relabelling the cached
  lists in the compiled core);
- anchor: ``calibrated_similarity.calibrate_layers(X_layers, Y_layers, sim, K=K)`` (the package
  of the "Aristotelian" paper, 0.1.1) given platonic_fast's own metric as ``sim`` and the same
  clamped, normalised layers: it recomputes every permuted score from the features, two kNN
  passes per pair per permutation.

The anchor costs (K + 1)·Lx·Ly metric calls, exactly linear in K, so at full size it is timed on
``observed + ANCHOR_K`` permutations (measured), and its time at K is reported as a
*projection* from that measurement (``projected: true`` in the row); ours is measured at both.
Ratios against a projection say so in ``ratio_note``.

    .venv/bin/python bench/bench_calibration.py [--quick] [--no-save]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import add_peak, bench_main, import_pf, run_case, target  # noqa: E402

METRICS = ("mutual_knn", "cknna")
TOPK = 10
ANCHOR = "calibrated_similarity.calibrate_layers"


def _sizes(quick: bool) -> dict:
    if quick:
        return {"n": 512, "d": 64, "layers": 4, "k": 20, "anchor_k": 2}
    return {"n": 4096, "d": 768, "layers": 12, "k": 200, "anchor_k": 1}


def collect(quick: bool = False, peak: float | None = None, device: str = "cpu"):
    s = _sizes(quick)
    n, d, layers, k, anchor_k = s["n"], s["d"], s["layers"], s["k"], s["anchor_k"]
    pf, pf_err = import_pf()
    try:
        import calibrated_similarity as cs
    except ImportError as exc:
        cs, cs_err = None, f"calibrated-similarity not installed ({exc}); pip install '.[bench]'"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, layers, d, generator=g)
    y = 0.3 * x + torch.randn(n, layers, d, generator=g)  # related models: a non-trivial null
    rows, targets = [], []
    if pf is None:
        return [{"bench": "calibration", "case": "-", "method": "pf.align", "status": f"not run: {pf_err}"}], []
    from platonic_fast.align import prepare_layers

    xs, ys = prepare_layers(x, "x"), prepare_layers(y, "y")
    for metric in METRICS:
        case = f"{metric} {layers}x{layers} layers, K={k}"
        common = {"bench": "calibration", "shape": f"{n}x{layers}x{d}", "dtype": "float32", "k": TOPK,
                  "metric": metric, "layers": layers}

        def ours(kk, metric=metric):
            return pf.align(x, y, metric, topk=TOPK, permutations=kk, generator=0)

        def ours_value(res):
            c = res.calibration
            return {"max_p": c.max.p_value, "max_tau": c.max.tau, "mean_p": c.mean.p_value, "best_score": res.best}

        full = run_case(dict(common, case=case, method="pf.align(permutations=K)", permutations=k,
                             impl=f"pf.align(x, y, {metric!r}, topk={TOPK}, permutations={k})"),
                        lambda: ours(k), value_of=ours_value, max_repeats=1, budget_s=None)
        rows.append(full)
        sub_case = f"{metric} {layers}x{layers} layers, K={anchor_k}"
        sub = run_case(dict(common, case=sub_case, method="pf.align(permutations=K)", permutations=anchor_k,
                            impl=f"pf.align(x, y, {metric!r}, topk={TOPK}, permutations={anchor_k})"),
                       lambda: ours(anchor_k), value_of=ours_value, max_repeats=1, budget_s=None)
        rows.append(sub)

        def sim(a, b, metric=metric):
            return pf.measure(metric, a, b, topk=TOPK)

        anchor_row = dict(common, case=sub_case, method=ANCHOR, permutations=anchor_k,
                          impl=f"calibrate_layers(X_layers, Y_layers, sim=pf.{metric}, K={anchor_k})")
        if cs is None:
            rows.append(run_case(anchor_row, None, skip=cs_err))
            continue
        measured = run_case(anchor_row, lambda: cs.calibrate_layers(xs, ys, sim, K=anchor_k, generator=g),
                            value_of=lambda r: {"calibrated": float(r[0]), "p": float(r[1]), "tau": float(r[2])},
                            max_repeats=1, budget_s=None)
        rows.append(measured)
        if sub.get("median_s") and measured.get("median_s"):
            sub["anchor"], sub["ratio"] = ANCHOR, measured["median_s"] / sub["median_s"]
        if measured.get("median_s") and full.get("median_s"):
            projected = measured["median_s"] * (k + 1) / (anchor_k + 1)
            rows.append(dict(common, case=case, method=ANCHOR, permutations=k, status="ok", projected=True,
                             median_s=projected, times=[], repeats=0,
                             impl=f"projection: the measured K={anchor_k} time x (K + 1) / ({anchor_k} + 1) "
                                  f"(the anchor makes (K + 1)·{layers}·{layers} metric calls)"))
            full["anchor"], full["ratio"] = ANCHOR, projected / full["median_s"]
            full["ratio_note"] = f"anchor time projected from its measured K={anchor_k} run"
            targets.append(target(f"{metric}: calibrated {layers}x{layers} layer search, K={k}, vs {ANCHOR}",
                                  full["ratio"], quick=quick, at_least=100.0,
                                  note=f"anchor projected from its measured K={anchor_k} run"))
    add_peak(rows, peak)
    return rows, targets


if __name__ == "__main__":
    sys.exit(bench_main("calibration", collect))
