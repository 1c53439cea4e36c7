"""GPU benchmark suite: the fused Triton kernels against torch at the same dtype, in one run.

    python bench/bench_gpu.py                        # the issue's grid (needs a CUDA GPU)
    python bench/bench_gpu.py --n 16384,131072       # a subset (a full grid can exceed 10 min)
    python bench/bench_gpu.py --ops mutual_knn       # mutual_knn of two 1,048,576 x 1,024 sets
    python bench/bench_gpu.py --quick                # small sizes, a smoke test on a GPU
    python bench/bench_gpu.py --test-run             # also run pytest here, record the counts
    python bench/bench_gpu.py --smoke --out DIR      # no GPU: the whole harness on tiny shapes
                                                     # in Triton's CPU interpreter (for CI)

This file is the driver; the cases are the ops' own: ``bench_knn.gpu_case`` (fused kNN vs torch
chunked matmul + topk), ``bench_hsic.gpu_case`` (fused linear and RBF kernel sums vs torch
chunked Gram products) and ``bench_neighbour_lists.gpu_mutual_case`` (``mutual_knn`` end to
end), timed by the same ``_timing.measure`` as the CPU suite (CUDA events).

One JSON file per run, bench/results/gpu-<UTC timestamp>.json (``--out`` elsewhere), with the
device name, the commit, the bf16 GEMM rate measured with torch.mm on the same device in the
same run (``bf16_gemm_peak``), and rows in the CPU suite's format: method, dtype, median
seconds, the first call apart (``first_call_s``: compilation and autotuning on a proxy slice),
GFLOP/s, % of that bf16 GEMM rate (``pct_peak``), ratio anchor / method, and for kNN the share
of the anchor's neighbours found (bf16 near-ties may swap). A case that runs out of memory is a
row with a status, not a crash. Nothing is extrapolated.

FLOP counts are the work the method must do, not what a dense method would: self-kNN 2·N²·D;
kernel sums 2·N²·D for D_a = D_b = D (one triangle of tiles, two Gram tiles each).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_hsic  # noqa: E402
import bench_knn  # noqa: E402
import bench_neighbour_lists  # noqa: E402
import torch  # noqa: E402

from _timing import (  # noqa: E402
    RESULTS_DIR,
    add_peak,
    configure,
    environment,
    error_row,
    format_table,
    gemm_peak,
    timestamp,
    write_results,
)

SIZES_N = (16_384, 131_072, 1_048_576)
SIZES_D = (768, 4096)
OPS = ("knn", "hsic", "mutual_knn")


def _guarded(bench: str, fn, *args) -> list[dict]:
    """A case's rows; one that raises outside its timings becomes an error row."""
    try:
        out = fn(*args)
    except Exception as exc:  # one failing case must not lose the others
        out = error_row(bench, exc, case=" ".join(map(str, args)))
    rows = out if isinstance(out, list) else [out]
    print(format_table(rows), flush=True)
    return rows


def run(args, device: str) -> dict:
    from platonic_fast._checks import DTYPE_NAMES

    configure(quick=args.smoke, device=device)
    peak = gemm_peak(256 if args.smoke else (4096 if args.quick else 8192), dtype=torch.bfloat16,
                     device=device, repeats=10)
    print(f"bf16 torch.mm: {peak['gflops'] / 1e3:.1f} TFLOP/s", flush=True)
    unknown = [name for name in args.dtypes if name not in DTYPE_NAMES]
    if unknown:
        raise SystemExit(f"--dtypes: unknown {unknown}; one of {sorted(DTYPE_NAMES)}")
    rows = []
    for n in args.n:
        for d in args.d:
            for name in args.dtypes:
                if "knn" in args.ops:
                    rows += _guarded("knn", bench_knn.gpu_case, n, d, DTYPE_NAMES[name], device)
                if "hsic" in args.ops:
                    rows += _guarded("hsic", bench_hsic.gpu_case, n, d, DTYPE_NAMES[name], device)
    if "mutual_knn" in args.ops:
        size = "smoke" if args.smoke else "quick" if args.quick else "full"
        rows += _guarded("metrics", bench_neighbour_lists.gpu_mutual_case, device, size)
    add_peak(rows, peak["gflops"])
    return {"bf16_gemm_peak": peak, "rows": rows}


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


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=_ints, default=list(SIZES_N), help="comma-separated sample counts")
    ap.add_argument("--d", type=_ints, default=list(SIZES_D), help="comma-separated feature dims")
    ap.add_argument("--dtypes", type=_names, default=["bfloat16"],
                    help="comma-separated: bfloat16,float16,float32")
    ap.add_argument("--ops", type=_names, default=list(OPS), help=f"comma-separated: {', '.join(OPS)}")
    ap.add_argument("--quick", action="store_true", help="N=4096, D=768 (and a small mutual_knn)")
    ap.add_argument("--smoke", action="store_true",
                    help="no GPU needed: tiny shapes in Triton's CPU interpreter, to test the harness")
    ap.add_argument("--test-run", action="store_true", help="also run pytest on this GPU and record it")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.ops) - set(OPS))
    if unknown:
        ap.error(f"--ops: unknown {unknown}; choose from {list(OPS)}")
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
               "env": environment(None), "args": {k: v for k, v in vars(args).items() if k != "out"}}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        payload["device_properties"] = {"sm_count": props.multi_processor_count,
                                        "memory_gb": round(props.total_memory / 2**30, 1),
                                        "capability": f"{props.major}.{props.minor}"}
    if args.test_run:
        payload["tests"] = test_run()
        print(payload["tests"], flush=True)
    payload.update(run(args, device))
    print(format_table(payload["rows"]))
    tag = "smoke-" if args.smoke else "quick-" if args.quick else ""
    path = write_results(payload, f"gpu-{tag}{timestamp()}.json", args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
