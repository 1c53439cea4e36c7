"""GPU benchmark suite: the fused Triton kernels against torch at the same dtype, in one run.

    python bench/bench_gpu.py                        # the issue's grid (needs a CUDA GPU)
    python bench/bench_gpu.py --n 16384,131072       # a subset (a full grid can exceed 10 min)
    python bench/bench_gpu.py --ops mutual           # mutual_knn of two 1,048,576 x 1,024 sets
    python bench/bench_gpu.py --quick                # small sizes, a smoke test on a GPU
    python bench/bench_gpu.py --test-run             # also run pytest here, record the counts
    python bench/bench_gpu.py --smoke --out DIR      # no GPU: the whole harness on tiny shapes
                                                     # in Triton's CPU interpreter (for CI)

One JSON file per run, bench/results/gpu-<UTC timestamp>.json (``--out`` elsewhere), with the
device name, the commit, the bf16 GEMM rate measured with torch.matmul on the same device in the
same run, and one row per case: op, n, d, k, dtype, median seconds, TFLOP/s, % of that bf16
GEMM rate, the anchor's median seconds and the ratio anchor / fused, and for kNN the share of
the anchor's neighbours found (recall; bf16 near-ties may swap). The first call (which includes
autotuning on a proxy slice) is recorded apart from the timed calls. A case that runs out of
memory is a row with a status, not a crash. Nothing is extrapolated.

FLOP counts are the work the method must do, not what a dense method would: self-kNN 2·N²·D;
CKA sums 2·N²·D for D_a = D_b = D (one triangle of tiles, two Gram tiles each).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import RESULTS_DIR, environment, timestamp, write_results  # noqa: E402

SIZES_N = (16_384, 131_072, 1_048_576)
SIZES_D = (768, 4096)
K = 10
MUTUAL_N, MUTUAL_D, MUTUAL_TARGET_S = 1_048_576, 1024, 10.0
ANCHOR_CHUNK = 8192


class Timer:
    """Median seconds of a callable: CUDA events on a GPU, a wall clock on the CPU."""

    def __init__(self, device: str, repeats: int = 5, slow_s: float = 5.0):
        self.device, self.repeats, self.slow_s = device, repeats, slow_s

    def _once(self, fn):
        """(seconds, fn's result) of one call."""
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    def first_and_median(self, fn, repeats: int | None = None):
        """(first call's seconds, median of the next calls, their times, the first call's result);
        a slow case stops repeating after one timed call."""
        first, out = self._once(fn)
        times = []
        for _ in range(repeats or self.repeats):
            times.append(self._once(fn)[0])
            if times[-1] > self.slow_s:
                break
        return first, sorted(times)[len(times) // 2], times, out


def bf16_gemm_tflops(timer: Timer, n: int) -> float:
    """torch.matmul bfloat16 throughput (TFLOP/s) on this device, median of several calls."""
    a = torch.randn(n, n, device=timer.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=timer.device, dtype=torch.bfloat16)
    _, t, _, _ = timer.first_and_median(lambda: torch.matmul(a, b), repeats=10)
    return 2 * n**3 / t / 1e12


def torch_chunked_knn(x: torch.Tensor, k: int, chunk: int = ANCHOR_CHUNK):
    """Anchor: chunked matmul + topk at the input dtype, self excluded."""
    out_v, out_i = [], []
    for s in range(0, x.shape[0], chunk):
        sim = x[s:s + chunk] @ x.T
        rows = torch.arange(sim.shape[0], device=x.device)
        sim[rows, rows + s] = float("-inf")
        v, i = sim.topk(k, dim=1)
        out_v.append(v)
        out_i.append(i)
        del sim
    return torch.cat(out_v), torch.cat(out_i)


def torch_chunked_gram_sums(a: torch.Tensor, b: torch.Tensor, chunk: int = ANCHOR_CHUNK):
    """Anchor: Σ K∘L, Σ K∘K, Σ L∘L and row sums from chunked Gram products (linear kernel)."""
    cross = self_k = self_l = 0.0
    rows_k, rows_l = [], []
    for s in range(0, a.shape[0], chunk):
        kc = (a[s:s + chunk] @ a.T).float()
        lc = (b[s:s + chunk] @ b.T).float()
        cross += float((kc * lc).sum())
        self_k += float((kc * kc).sum())
        self_l += float((lc * lc).sum())
        rows_k.append(kc.sum(1))
        rows_l.append(lc.sum(1))
        del kc, lc
    return cross, self_k, self_l, torch.cat(rows_k), torch.cat(rows_l)


def neighbour_recall(found: torch.Tensor, reference: torch.Tensor, rows: int = 65_536) -> float:
    """Share of the reference's neighbour indices present in the same row of ``found``."""
    hits = 0
    for s in range(0, found.shape[0], rows):
        f, r = found[s:s + rows], reference[s:s + rows]
        hits += int((f.unsqueeze(2) == r.unsqueeze(1)).any(dim=2).sum())
    return hits / reference.numel()


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _case(timer, peak, op, n, d, k, dtype, fused, flops, anchor=None, anchor_name=None,
          check=None, anchor_repeats=3) -> dict:
    """Time ``fused`` (and ``anchor``), record throughput, % of peak, ratio and ``check``."""
    row = {"op": op, "n": n, "d": d, "k": k, "dtype": str(dtype).replace("torch.", ""),
           "bf16_gemm_tflops": peak, "flops": flops}
    try:
        first, t, times, out = timer.first_and_median(fused)
        row.update(status="ok", first_call_s=first, median_s=t, times=times, tflops=flops / t / 1e12)
        row["pct_of_bf16_gemm"] = 100 * row["tflops"] / peak
        if anchor is None:
            row["anchor"] = "not measured (no anchor for this case)"
        else:
            _, ta, _, reference = timer.first_and_median(anchor, repeats=anchor_repeats)
            row.update(anchor=anchor_name, anchor_median_s=ta, speedup_vs_anchor=ta / t)
            if check is not None:
                row.update(check(out, reference))
    except Exception as exc:  # one failing case must not lose the others
        if not _oom(exc):
            raise
        row.update(status=f"oom: {str(exc)[:200]}")
    finally:
        if timer.device == "cuda":
            torch.cuda.empty_cache()
    print({key: val for key, val in row.items() if key != "times"}, flush=True)
    return row


def _features(n, d, dtype, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, device=device, generator=g)
    return torch.nn.functional.normalize(x, dim=1).to(dtype)


def run(args, device: str) -> dict:
    import platonic_fast as pf
    from platonic_fast.triton.hsic_sums import hsic_sums
    from platonic_fast.triton.knn_topk import knn_triton

    timer = Timer(device, repeats=2 if args.smoke else 5)
    peak = bf16_gemm_tflops(timer, 256 if args.smoke else (4096 if args.quick else 8192))
    print(f"bf16 torch.matmul: {peak:.1f} TFLOP/s", flush=True)
    rows = []
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    for n in args.n:
        for d in args.d:
            for dtype in dtypes:
                if "knn" in args.ops:
                    x = _features(n, d, dtype, device, seed=n + d)
                    rows.append(_case(
                        timer, peak, "knn (triton, fused)", n, d, K, dtype,
                        lambda x=x: knn_triton(x, None, K, exclude_self=True), 2 * n * n * d,
                        anchor=lambda x=x: torch_chunked_knn(x, K), anchor_name="torch chunked matmul+topk",
                        check=lambda out, ref: {"recall_vs_anchor": neighbour_recall(out[1], ref[1])},
                        anchor_repeats=1 if n >= 1_000_000 else 3))
                    del x
                if "cka" in args.ops:
                    a = _features(n, d, dtype, device, seed=n + d + 1)
                    b = _features(n, d, dtype, device, seed=n + d + 2)
                    a, b = a - a.float().mean(0).to(dtype), b - b.float().mean(0).to(dtype)
                    for kernel in ("ip", "rbf"):
                        rows.append(_case(
                            timer, peak, f"cka sums {kernel} (triton, fused)", n, d, None, dtype,
                            lambda a=a, b=b, kernel=kernel: hsic_sums(a, b, kernel, 1.0), 2 * n * n * d,
                            anchor=(lambda a=a, b=b: torch_chunked_gram_sums(a, b)) if kernel == "ip" else None,
                            anchor_name="torch chunked Gram products + sums",
                            check=lambda out, ref: {"rel_err_cross_vs_anchor": abs(out["cross"] - ref[0]) / abs(ref[0])},
                            anchor_repeats=1 if n >= 1_000_000 else 3))
                    del a, b
    if "mutual" in args.ops:
        rows.append(mutual_knn_case(pf, timer, args))
    return {"bf16_gemm_tflops": peak, "rows": rows}


def mutual_knn_case(pf, timer: Timer, args) -> dict:
    """mutual_knn of two bf16 sets end to end (both kNN passes and the overlap), after one warm
    call at a small size so that autotuning is not timed."""
    n, d = (64, 32) if args.smoke else (4096, 256) if args.quick else (MUTUAL_N, MUTUAL_D)
    row = {"op": "mutual_knn (end to end)", "n": n, "d": d, "k": K, "dtype": "bfloat16",
           "target_s": None if (args.smoke or args.quick) else MUTUAL_TARGET_S}
    try:
        a = _features(n, d, torch.bfloat16, timer.device, seed=1)
        b = _features(n, d, torch.bfloat16, timer.device, seed=2)
        pf.mutual_knn(a[:min(n, 40_000)], b[:min(n, 40_000)], topk=K)  # warm: compile + tune
        _, t, times, value = timer.first_and_median(lambda: pf.mutual_knn(a, b, topk=K), repeats=2)
        row.update(status="ok", median_s=t, times=times, value=value)
        if row["target_s"]:
            row["target_met"] = t < row["target_s"]
    except Exception as exc:
        if not _oom(exc):
            raise
        row.update(status=f"oom: {str(exc)[:200]}")
    print(row, flush=True)
    return row


def test_run() -> dict:
    """The whole pytest suite on this GPU: pass / fail / skip counts for the record."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"pytest_returncode": proc.returncode, "pytest_summary": lines[-1] if lines else "",
            "failed": failed[:50]}


def _ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=_ints, default=list(SIZES_N), help="comma-separated sample counts")
    ap.add_argument("--d", type=_ints, default=list(SIZES_D), help="comma-separated feature dims")
    ap.add_argument("--dtypes", default="bfloat16", help="comma-separated: bfloat16,float16,float32")
    ap.add_argument("--ops", default="knn,cka,mutual", help="comma-separated: knn, cka, mutual")
    ap.add_argument("--quick", action="store_true", help="N=4096, D=768 (and a small mutual_knn)")
    ap.add_argument("--smoke", action="store_true",
                    help="no GPU needed: tiny shapes in Triton's CPU interpreter, to test the harness")
    ap.add_argument("--test-run", action="store_true", help="also run pytest on this GPU and record it")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = ap.parse_args(argv)
    args.ops = set(args.ops.split(","))
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--smoke runs in Triton's interpreter: set TRITON_INTERPRET=1")
            return 2
        if args.out == RESULTS_DIR:
            print("--smoke results are not measurements: give --out outside bench/results")
            return 2
        args.n, args.d = [48], [24]
        device, name = "cpu", "cpu (Triton interpreter, smoke test: not a measurement)"
    elif not torch.cuda.is_available():
        print("no CUDA device: the GPU suite needs one (nothing measured, nothing written)")
        return 2
    else:
        device, name = "cuda", torch.cuda.get_device_name(0)
        if args.quick:
            args.n, args.d = [4096], [768]
    payload = {"suite": "gpu", "quick": args.quick, "smoke": args.smoke, "device": name,
               "env": environment(None), "args": {k: sorted(v) if isinstance(v, set) else v
                                                   for k, v in vars(args).items() if k != "out"}}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        payload["device_properties"] = {"sm_count": props.multi_processor_count,
                                        "memory_gb": round(props.total_memory / 2**30, 1),
                                        "capability": f"{props.major}.{props.minor}"}
    if args.test_run:
        payload["tests"] = test_run()
        print(payload["tests"], flush=True)
    payload.update(run(args, device))
    tag = "smoke-" if args.smoke else "quick-" if args.quick else ""
    path = write_results(payload, f"gpu-{tag}{timestamp()}.json", args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
