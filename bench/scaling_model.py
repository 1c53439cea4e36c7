"""A scaling model of sharded mutual_knn, fitted to the measured runs, and a labelled projection.

Reads every ``bench/results/distributed-*.json`` (``bench_distributed.py``: one process against
P gloo ranks, one thread each, over N and D), fits

    t(N, D, P) = c0 + c1 · N²D / P + c2 · N² / P + c3 · bytes_per_rank

by non-negative least squares on the medians (scipy.optimize.nnls), where N²D / P is each
rank's share of the two kNN passes' GEMM work (each pass computes the N x N upper triangle:
N²D multiply-adds in all, 2N²D flops), N² / P its share of candidates offered to the top-k
merger, and bytes_per_rank what the busiest rank sent (measured by the run). It also fits the
bytes sent per rank, bytes = b1 · N·D·(P−1)/P + b2 · N·(P−1)/P (key blocks of A and B in float32,
plus the lists and ordering-pass traffic), and prints measured against fitted times.

Then a **projection** (not a measurement: nothing here ran on a GPU) for N = 10⁷, D = 1024 on
8 GPUs: the GEMM term at an assumed fraction of a GPU's peak, the merger at the same share of
the GEMM time that the CPU fit gives at D = 1024 (an assumption: the GPU kernel fuses its top-k
into the GEMM, whose overhead was never measured), the bytes from the fitted traffic model over
an assumed link bandwidth, not overlapped (an upper bound). Every assumption is in the output
and the JSON.

    .venv/bin/python bench/scaling_model.py            # fit, print, save bench/results/scaling-model-*.json
    .venv/bin/python bench/scaling_model.py --no-save
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import RESULTS_DIR, git_rev, timestamp, write_results  # noqa: E402

# Projection assumptions (H100/H200 SXM datasheet rates, as /work/.library/device/H200.md cites them)
GPU_FP32_PEAK = 67e12  # plain float32 FLOP/s: the exact default (tf32 not allowed)
GPU_TF32_PEAK = 495e12  # dense tf32 tensor-core FLOP/s: with torch.set_float32_matmul_precision("high")
GEMM_EFFICIENCY = 0.7  # assumed fraction of peak the kNN GEMM reaches
LINK_BYTES_S = {"NVLink (one node of 8)": 450e9, "InfiniBand NDR 400 Gb/s (across nodes)": 50e9}
TARGET = {"n": 10_000_000, "d": 1024, "ranks": 8, "k": 10}


def load_points(pattern: str) -> list[dict]:
    points = []
    for path in sorted(glob.glob(pattern)):
        data = json.loads(Path(path).read_text())
        for r in data.get("rows", []):
            if r.get("status") != "ok" or r.get("median_s") is None:
                continue
            sent = max(r.get("bytes_sent_per_rank") or [0])
            points.append({"file": Path(path).name, "n": r["n"], "d": r["d"], "ranks": r["processes"],
                           "seconds": r["median_s"], "bytes_per_rank": sent})
    return points


def _features(n: float, d: float, p: float, sent: float) -> list[float]:
    return [1.0, n * n * d / p, n * n / p, sent]


def fit(points: list[dict]) -> dict:
    import numpy as np
    from scipy.optimize import nnls

    x = np.array([_features(q["n"], q["d"], q["ranks"], q["bytes_per_rank"]) for q in points])
    y = np.array([q["seconds"] for q in points])
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(x / scale, y)
    coef = coef / scale
    fitted = x @ coef
    sharded = [q for q in points if q["ranks"] > 1]
    bx = np.array([[q["n"] * q["d"] * (q["ranks"] - 1) / q["ranks"], q["n"] * (q["ranks"] - 1) / q["ranks"]]
                   for q in sharded])
    by = np.array([q["bytes_per_rank"] for q in sharded])
    bcoef, _ = nnls(bx, by)
    return {"c0_s": coef[0], "c1_s_per_n2d": coef[1], "c2_s_per_n2": coef[2], "c3_s_per_byte": coef[3],
            "gemm_gflops_per_rank": 2.0 / coef[1] / 1e9 if coef[1] else None,
            "bytes_model": {"b1_per_nd": bcoef[0], "b2_per_n": bcoef[1]},
            "residuals": [{**q, "fitted_s": float(f), "error_pct": 100 * (float(f) - q["seconds"]) / q["seconds"]}
                          for q, f in zip(points, fitted)]}


def project(model: dict) -> dict:
    n, d, p = TARGET["n"], TARGET["d"], TARGET["ranks"]
    flops = 2.0 * n * n * d  # two kNN passes, N x N upper triangle each: N²D multiply-adds in all
    gemm_cpu = model["c1_s_per_n2d"] * n * n * d
    merge_share = model["c2_s_per_n2"] * n * n / gemm_cpu if gemm_cpu else 0.0  # of the GEMM time, at D
    sent = (model["bytes_model"]["b1_per_nd"] * n * d + model["bytes_model"]["b2_per_n"] * n) * (p - 1) / p
    out = {"n": n, "d": d, "ranks": p, "flops": flops, "bytes_per_rank": sent, "merge_share_of_gemm": merge_share,
           "assumptions": {"gemm_efficiency": GEMM_EFFICIENCY, "fp32_peak_flops": GPU_FP32_PEAK,
                           "tf32_peak_flops": GPU_TF32_PEAK, "links_bytes_per_s": LINK_BYTES_S,
                           "merge": "the CPU fit's merger/GEMM time ratio at this D",
                           "transfers": "not overlapped with compute (upper bound)"},
           "cases": []}
    for precision, peak in (("float32 (exact default)", GPU_FP32_PEAK), ("tf32 (opt-in)", GPU_TF32_PEAK)):
        gemm = flops / (p * peak * GEMM_EFFICIENCY)
        for link, bw in LINK_BYTES_S.items():
            total = gemm * (1 + merge_share) + sent / bw
            out["cases"].append({"precision": precision, "link": link, "gemm_s": gemm,
                                 "merge_s": gemm * merge_share, "transfer_s": sent / bw, "total_s": total})
    out["one_cpu_process_s"] = model["c0_s"] + gemm_cpu + model["c2_s_per_n2"] * n * n
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="fit the sharded mutual_knn scaling model; project N=1e7 on 8 GPUs")
    ap.add_argument("--results", default=str(RESULTS_DIR / "distributed-*.json"))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    points = load_points(args.results)
    if len(points) < 5:
        print(f"need at least 5 measured points, found {len(points)} in {args.results}")
        return 1
    model = fit(points)
    print(f"fitted on {len(points)} measured medians ({len({q['file'] for q in points})} result files):")
    print(f"  t = {model['c0_s']:.3g} s + {model['c1_s_per_n2d']:.3e} s · N²D/P + {model['c2_s_per_n2']:.3e} s · N²/P"
          f" + {model['c3_s_per_byte']:.3e} s/byte · bytes_per_rank")
    print(f"  GEMM term: {model['gemm_gflops_per_rank']:.1f} GFLOP/s per rank (one thread)")
    b = model["bytes_model"]
    print(f"  bytes per rank = {b['b1_per_nd']:.2f} · N·D·(P−1)/P + {b['b2_per_n']:.1f} · N·(P−1)/P")
    print(f"  {'N':>6} {'D':>5} {'P':>2} {'measured s':>11} {'fitted s':>9} {'error':>7}")
    for r in model["residuals"]:
        print(f"  {r['n']:>6} {r['d']:>5} {r['ranks']:>2} {r['seconds']:>11.3f} {r['fitted_s']:>9.3f} "
              f"{r['error_pct']:>6.1f}%")
    proj = project(model)
    print(f"PROJECTION (not measured; assumptions in the JSON): mutual_knn N={proj['n']:.0e}, D={proj['d']}, "
          f"{proj['ranks']} GPUs, {proj['bytes_per_rank'] / 1e9:.0f} GB sent per rank, merger "
          f"{100 * proj['merge_share_of_gemm']:.0f}% of GEMM time:")
    for c in proj["cases"]:
        print(f"  {c['precision']:<24} {c['link']:<40} {c['total_s'] / 60:7.1f} min "
              f"(GEMM {c['gemm_s']:.0f} s, merge {c['merge_s']:.0f} s, transfers {c['transfer_s']:.0f} s)")
    print(f"  for scale: one CPU process of this machine, one thread, by the fit: "
          f"{proj['one_cpu_process_s'] / 86400:.0f} days")
    if not args.no_save:
        path = write_results({"suite": "scaling_model", "git": git_rev(), "points": points, "model": model,
                              "projection": proj, "complete": True, "label": "fit to measured runs + projection"},
                             f"scaling-model-{timestamp()}.json")
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
