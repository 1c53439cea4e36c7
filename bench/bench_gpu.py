"""GPU benchmark suite: fused Triton kNN and fused CKA sums against torch, in one run.

    python bench/bench_gpu.py              # full grid (needs a CUDA GPU; minutes)
    python bench/bench_gpu.py --quick      # small sizes, a smoke test
    python bench/bench_gpu.py --test-run   # run pytest on this GPU and record the pass count

Writes one JSON file per run, bench/results/gpu-<UTC timestamp>.json, with the device name,
commit, and per row: op, n, d, k, dtype, median seconds, TFLOP/s (2·N²·D per self-kNN), the
bf16 GEMM TFLOP/s measured with torch.matmul on the same device in the same run, the share of
that peak, and the ratio to torch chunked matmul + topk at the same dtype. A case that runs out
of memory is recorded as a row with a status, not a crash. Numbers are only ever measured:
nothing here extrapolates.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import environment, timestamp, write_results  # noqa: E402

SIZES_N = (16_384, 131_072, 1_048_576)
SIZES_D = (768, 4096)
K = 10


def _cuda_time(fn, repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Median seconds of fn() with CUDA events (a slow case runs once)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
        if times[-1] > 5.0:
            break
    return sorted(times)[len(times) // 2], times


def bf16_gemm_tflops(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t, _ = _cuda_time(lambda: torch.matmul(a, b), repeats=10, warmup=3)
    return 2 * n**3 / t / 1e12


def torch_chunked_knn(x: torch.Tensor, k: int, chunk: int = 8192):
    """Anchor: chunked matmul + topk (self excluded) in the input dtype."""
    out_v, out_i = [], []
    for s in range(0, x.shape[0], chunk):
        sim = x[s:s + chunk] @ x.T
        rows = torch.arange(sim.shape[0], device=x.device)
        sim[rows, rows + s] = float("-inf")
        v, i = sim.topk(k, dim=1)
        out_v.append(v)
        out_i.append(i)
    return torch.cat(out_v), torch.cat(out_i)


def _row(op, n, d, k, dtype, fn, flops, peak, anchor=None):
    row = {"op": op, "n": n, "d": d, "k": k, "dtype": str(dtype).replace("torch.", "")}
    try:
        t, times = _cuda_time(fn)
        row.update(status="ok", median_s=t, times=times, tflops=flops / t / 1e12 if flops else None)
        if flops and peak:
            row["pct_of_bf16_gemm"] = 100 * row["tflops"] / peak
        if anchor is not None:
            ta, _ = _cuda_time(anchor, repeats=3)
            row.update(anchor="torch chunked matmul+topk", anchor_median_s=ta, speedup_vs_anchor=ta / t)
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status=f"oom: {str(exc)[:200]}")
    finally:
        torch.cuda.empty_cache()
    print({k_: v for k_, v in row.items() if k_ != "times"}, flush=True)
    return row


def run(quick: bool) -> dict:
    import platonic_fast as pf
    from platonic_fast.triton.hsic_sums import hsic_sums
    from platonic_fast.triton.knn_topk import knn_triton

    peak = bf16_gemm_tflops(4096 if quick else 8192)
    rows = []
    sizes = [(4096, 768)] if quick else [(n, d) for n in SIZES_N for d in SIZES_D]
    for n, d in sizes:
        x = torch.nn.functional.normalize(torch.randn(n, d, device="cuda"), dim=1).to(torch.bfloat16)
        anchor = (lambda x=x: torch_chunked_knn(x, K)) if n <= 131_072 else None
        rows.append(_row("knn (triton, fused)", n, d, K, x.dtype,
                         lambda x=x: knn_triton(x, None, K, exclude_self=True), 2 * n * n * d, peak, anchor))
        # Two Gram tiles (K and L) over the upper triangle: 2 x N²·D flops.
        rows.append(_row("cka sums (triton, fused)", n, d, None, x.dtype,
                         lambda x=x: hsic_sums(x, x, "rbf"), 2 * n * n * d, peak))
        del x
    if not quick:
        n, d = 1_048_576, 1024
        a = torch.nn.functional.normalize(torch.randn(n, d, device="cuda"), dim=1).to(torch.bfloat16)
        b = torch.nn.functional.normalize(torch.randn(n, d, device="cuda"), dim=1).to(torch.bfloat16)
        t0 = time.perf_counter()
        try:
            score = pf.mutual_knn(a, b, topk=K)
            torch.cuda.synchronize()
            rows.append({"op": "mutual_knn (end to end)", "n": n, "d": d, "k": K, "dtype": "bfloat16",
                         "status": "ok", "median_s": time.perf_counter() - t0, "times": [time.perf_counter() - t0],
                         "value": score, "target_s": 10.0})
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({"op": "mutual_knn (end to end)", "n": n, "status": f"oom: {str(exc)[:200]}"})
        print(rows[-1], flush=True)
    return {"bf16_gemm_tflops": peak, "rows": rows}


def test_run() -> dict:
    """The whole pytest suite on this GPU: pass / fail / skip counts for the record."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"pytest_returncode": proc.returncode, "pytest_summary": tail}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--test-run", action="store_true", help="also run pytest on this GPU and record it")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU suite needs one (nothing measured, nothing written)")
        return 2
    payload = {"suite": "gpu", "quick": args.quick, "env": environment(None),
               "device": torch.cuda.get_device_name(0)}
    if args.test_run:
        payload["tests"] = test_run()
        print(payload["tests"], flush=True)
    payload.update(run(args.quick))
    path = write_results(payload, f"gpu-{'quick-' if args.quick else ''}{timestamp()}.json")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
