"""Layer search: pf.align over 33 x 40 layers (N=1024, D=768, mutual_knn, topk=10) vs scoring
each of the 1320 layer pairs from scratch with pf.mutual_knn (clamp outliers once per model
as align does, then per pair L2-normalise both layers and score: the reference's
compute_score loop). Both are measured in full.

The ratio column is (from-scratch time) / (method time).  GFLOP/s counts each method's own
nominal GEMM work: align computes Lx + Ly kNN passes (2*N^2*D each), the from-scratch loop
2*Lx*Ly of them.

    .venv/bin/python bench/bench_align.py [--quick]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _anchors  # noqa: E402
from _timing import add_peak, bench_main, import_pf, pf_backend, run_case, set_ratios, target  # noqa: E402

TOPK = 10
Q = 0.95
SCRATCH = "pf.mutual_knn per pair (from scratch)"
OPS = ("knn", "neighbour_lists")  # what mutual_knn is built on; the clamping takes no backend


def make_models(n: int, lx: int, ly: int, d: int):
    g = torch.Generator().manual_seed(33)
    shared = torch.randn(n, d, generator=g)
    x = _anchors.correlated_layers(n, lx, d, shared=shared, seed=1, peak_at=0.6)
    y = _anchors.correlated_layers(n, ly, d, shared=shared, seed=2, peak_at=0.4)
    return x, y


def collect(quick: bool = False, peak: float | None = None, max_seconds: float = 900.0):
    n, lx, ly, d = (256, 4, 5, 64) if quick else (1024, 33, 40, 768)
    pf, pf_err = import_pf()
    x, y = make_models(n, lx, ly, d)
    shape = f"N={n} {lx}x{ly} layers D={d}"
    case = f"align mutual_knn topk={TOPK}"
    common = {"bench": "align", "case": case, "shape": shape, "dtype": "float32",
              "pairs": lx * ly}
    knn_pass = 2.0 * n * n * d
    rows: list[dict] = []
    scores: dict[str, torch.Tensor] = {}
    backend, note = pf_backend(OPS, "cpu") if pf is not None else ("cpu", None)
    if note:
        common["note"] = note

    # --- pf.align (skipped, with the reason, when platonic_fast does not import) -------
    r = dict(common, method=f"pf.align ({backend})",
             impl=f"platonic_fast.align(x, y, metric='mutual_knn', topk={TOPK}, q={Q}, "
                  f"backend={backend!r})")

    def keep_align(res):
        scores["align"] = torch.as_tensor(res.scores, dtype=torch.float64)
        return {"best": float(res.best), "best_layers": list(res.best_layers or [])}

    rows.append(run_case(r, lambda: pf.align(x, y, metric="mutual_knn", topk=TOPK, q=Q, backend=backend),
                         flops=(lx + ly) * knn_pass, value_of=keep_align, skip=pf_err))

    # --- every pair from scratch with pf.mutual_knn --------------------------------------
    r = dict(common, method=SCRATCH,
             impl=f"remove_outliers(q={Q}) per model, then per pair F.normalize + "
                  f"platonic_fast.mutual_knn(topk={TOPK}, backend={backend!r})")

    def scratch():
        xc = pf.remove_outliers(x, q=Q)
        yc = pf.remove_outliers(y, q=Q)
        out = torch.zeros(lx, ly, dtype=torch.float64)
        for i in range(lx):
            for j in range(ly):
                xi = F.normalize(xc[:, i, :], p=2, dim=-1)
                yj = F.normalize(yc[:, j, :], p=2, dim=-1)
                out[i, j] = float(pf.mutual_knn(xi, yj, topk=TOPK, backend=backend))
        return out

    def keep_scratch(res):
        scores["scratch"] = res
        return None

    rows.append(run_case(r, scratch, flops=2 * lx * ly * knn_pass, value_of=keep_scratch, skip=pf_err))

    if "align" in scores and "scratch" in scores:
        rows[0]["max_abs_diff_vs_scratch"] = (scores["align"] - scores["scratch"]).abs().max().item()

    set_ratios(rows, SCRATCH)
    al = rows[0]
    add_peak(rows, peak)

    meas = al.get("ratio") if al.get("status") == "ok" else None
    return rows, [target(f"align {lx}x{ly} layers N={n} mutual_knn: from-scratch time / pf.align time",
                         meas, quick=quick, at_least=30.0)]


if __name__ == "__main__":
    sys.exit(bench_main("align", collect))
