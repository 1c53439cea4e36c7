"""GPU benchmark suite: the fused Triton kernels against torch at the same dtype, in one run.

    python bench/bench_gpu.py                        # the issue's grid (needs a CUDA GPU)
    python bench/bench_gpu.py --n 16384,131072       # a subset (a full grid can exceed 10 min)
    python bench/bench_gpu.py --ops mutual_knn       # mutual_knn of two 1,048,576 x 1,024 sets
    python bench/bench_gpu.py --quick                # small sizes, a smoke test on a GPU
    python bench/bench_gpu.py --test-run             # also run pytest here, record the counts
    python bench/bench_gpu.py --smoke --out DIR      # no GPU: the whole harness on tiny shapes
                                                     # in Triton's CPU interpreter (for CI)
    python bench/bench_gpu.py --ops screen           # certified fp32 kNN (bf16/tf32 screen) vs
                                                     # the exact fp32 kernel, N = --screen-n

This file is the driver; the cases are the ops' own: ``bench_knn.gpu_case`` (fused kNN vs torch
chunked matmul + topk), ``bench_hsic.gpu_case`` (fused linear and RBF kernel sums vs torch
chunked Gram products) and ``bench_neighbour_lists.gpu_mutual_case`` (``mutual_knn`` end to
end), timed by the same ``_timing.measure`` as the CPU suite (CUDA events). ``screen_case`` (here)
times the certified fp32 kNN through a bf16 / tf32 screen against the exact fp32 kernel when
the tree has one (else its rows say "not run" and why).

One JSON file per run, bench/results/gpu-<UTC timestamp>.json (``--out`` elsewhere), with the
device name, the commit, the bf16 GEMM rate measured with torch.mm on the same device in the
same run (``bf16_gemm_peak``), and rows in the CPU suite's format: method, dtype, median
seconds, the first call apart (``first_call_s``: compilation and autotuning on a proxy slice),
GFLOP/s, % of that bf16 GEMM rate (``pct_peak``), ratio anchor / method, and for kNN the share
of the anchor's neighbours found (bf16 near-ties may swap). A case that runs out of memory is a
row with a status, not a crash. Nothing is extrapolated. The file is rewritten (atomically)
after every case with ``"complete": false`` until the last, so a run cut short keeps its rows.

FLOP counts are the work the method must do, not what a dense method would: self-kNN 2·N²·D;
kernel sums 2·N²·D for D_a = D_b = D (one triangle of tiles, two Gram tiles each).
"""

from __future__ import annotations

import argparse
import inspect
import json
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
    _MEASURE,
    RESULTS_DIR,
    add_peak,
    configure,
    environment,
    error_row,
    format_table,
    gemm_peak,
    run_case,
    set_ratios,
    timestamp,
    write_results,
)

SIZES_N = (16_384, 131_072, 1_048_576)
SIZES_D = (768, 4096)
OPS = ("knn", "hsic", "mutual_knn")  # the default run
ALL_OPS = OPS + ("screen",)
SCREENS = ("bf16", "tf32")
EXACT32 = "knn fp32 exact (triton)"


def _guarded(bench: str, fn, *args) -> list[dict]:
    """A case's rows; one that raises outside its timings becomes an error row."""
    try:
        out = fn(*args)
    except Exception as exc:  # one failing case must not lose the others
        out = error_row(bench, exc, case=" ".join(map(str, args)))
    rows = out if isinstance(out, list) else [out]
    print(format_table(rows), flush=True)
    return rows


def screen_entry():
    """``(fn, None)``: the certified fp32 kNN of this tree, ``fn(x, k, screen)`` -> (values,
    indices, ...); or ``(None, reason)`` when the tree has none.

    The contract looked for: ``ops.knn.neighbours(x, k, backend="triton", screen=s)`` with ``s``
    in SCREENS returns the exact float32 lists (issue 19 item 6 writes it). Change this one
    function if that API lands under another name."""
    from platonic_fast.ops import knn as ops_knn

    if "screen" not in inspect.signature(ops_knn.neighbours).parameters:
        return None, "not in this tree: platonic_fast.ops.knn.neighbours has no screen= option"
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        return (lambda x, k, screen: ops_knn.neighbours(x, k, backend="triton", screen=screen)), None
    # the rehearsal (Triton's interpreter, no GPU): the registry offers Triton only with a GPU, so
    # the same screen and ordering pass are composed below it, as tests/test_knn_screen.py does
    from platonic_fast.ops import knn_screen
    from platonic_fast.rows import as_rows

    def interpreted(x, k, screen):
        q = as_rows(x)
        vals, idx, settled = knn_screen.candidates(q, None, k, k + 4, exclude_self=True, n_cand=q.n - 1,
                                                   more=ops_knn.more_candidates, backend="triton", option=screen)
        return ops_knn.settle(q, q, vals, idx, k, exclude_self=True, n_cand=q.n - 1, settled=settled)
    return interpreted, None


def screen_case(n: int, d: int, device: str) -> list[dict]:
    """Certified fp32 self-kNN through each screen vs the exact fp32 Triton kernel: time, ratio
    (exact / certified) and whether the lists are identical (they must be)."""
    from platonic_fast.triton.knn import knn_triton

    x = bench_knn._anchors.features(n, d, seed=n + d + 1, device=device, dtype=torch.float32)
    common = {"bench": "knn_screen", "case": f"N={n} D={d} k={bench_knn.K}", "shape": f"{n}x{d}",
              "k": bench_knn.K, "dtype": "float32"}
    lists: dict[str, torch.Tensor] = {}

    def keep(method):
        def value_of(res):
            lists[method] = torch.as_tensor(res[1]).to(torch.int64)
        return value_of

    rows = [run_case(dict(common, method=EXACT32, impl="knn_triton(x, None, k, exclude_self=True), ieee"),
                     lambda: knn_triton(x, None, bench_knn.K, exclude_self=True), flops=2.0 * n * n * d,
                     value_of=keep(EXACT32))]
    fn, why = screen_entry()
    for screen in SCREENS:
        method = f"knn fp32 certified ({screen} screen)"
        row = dict(common, method=method, impl=f"ops.knn.neighbours(x, k, backend='triton', screen={screen!r})")
        rows.append(run_case(row, None if fn is None else (lambda s=screen: fn(x, bench_knn.K, s)),
                             flops=2.0 * n * n * d, skip=why, value_of=keep(method)))
    for row in rows[1:]:
        if row["method"] in lists and EXACT32 in lists:
            row["lists_identical_to_exact"] = bool(torch.equal(lists[row["method"]].cpu(), lists[EXACT32].cpu()))
    set_ratios(rows, EXACT32)
    return rows


def run(args, device: str, save=lambda rows: None) -> dict:
    """The cases in order of importance (smaller N first), ``save(rows)`` after each one."""
    from platonic_fast._checks import DTYPE_NAMES

    configure(quick=args.smoke, device=device)
    if args.max_repeats:
        _MEASURE["max_repeats"] = args.max_repeats
    peak = gemm_peak(256 if args.smoke else (4096 if args.quick else 8192), dtype=torch.bfloat16,
                     device=device, repeats=10)
    print(f"bf16 torch.mm: {peak['gflops'] / 1e3:.1f} TFLOP/s", flush=True)
    unknown = [name for name in args.dtypes if name not in DTYPE_NAMES]
    if unknown:
        raise SystemExit(f"--dtypes: unknown {unknown}; one of {sorted(DTYPE_NAMES)}")
    rows = []

    def add(bench, fn, *case):
        rows.extend(_guarded(bench, fn, *case))
        add_peak(rows, peak["gflops"])
        save({"bf16_gemm_peak": peak, "rows": rows})

    for n in args.n:
        for d in args.d:
            for name in args.dtypes:
                if "knn" in args.ops:
                    add("knn", bench_knn.gpu_case, n, d, DTYPE_NAMES[name], device)
                if "hsic" in args.ops:
                    add("hsic", bench_hsic.gpu_case, n, d, DTYPE_NAMES[name], device)
            if "screen" in args.ops and n == args.n[0]:
                add("knn_screen", screen_case, args.screen_n, d, device)
    if "mutual_knn" in args.ops:
        size = "smoke" if args.smoke else "quick" if args.quick else "full"
        add("metrics", bench_neighbour_lists.gpu_mutual_case, device, size)
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
    ap.add_argument("--ops", type=_names, default=list(OPS),
                    help=f"comma-separated: {', '.join(ALL_OPS)} (default: {', '.join(OPS)})")
    ap.add_argument("--screen-n", type=int, default=131_072,
                    help="N of the certified-screen rows (the exact fp32 kernel is slow at 10^6)")
    ap.add_argument("--max-repeats", type=int, default=None,
                    help="timed calls per case after the first (default 5, --quick 2)")
    ap.add_argument("--quick", action="store_true", help="N=4096, D=768 (and a small mutual_knn)")
    ap.add_argument("--smoke", action="store_true",
                    help="no GPU needed: tiny shapes in Triton's CPU interpreter, to test the harness")
    ap.add_argument("--test-run", action="store_true", help="also run pytest on this GPU and record it")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    ap.add_argument("--plan", action="store_true",
                    help="check the arguments and print the cases in run order; run nothing")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.ops) - set(ALL_OPS))
    if unknown:
        ap.error(f"--ops: unknown {unknown}; choose from {list(ALL_OPS)}")
    if args.max_repeats is not None and args.max_repeats < 1:
        ap.error(f"--max-repeats must be >= 1, got {args.max_repeats}")
    if args.plan:  # the proof's rehearsal checks the GPU arguments with this, on any machine
        cases = []
        for n in args.n:  # the order of run()
            cases += [(op, n, d, name) for d in args.d for name in args.dtypes for op in ("knn", "hsic")
                      if op in args.ops]
            if "screen" in args.ops and n == args.n[0]:
                cases += [("screen", args.screen_n, d, "float32") for d in args.d]
        if "mutual_knn" in args.ops:
            cases.append(("mutual_knn", "quick" if args.quick else "full"))
        print(json.dumps({"cases": cases, "max_repeats": args.max_repeats, "out": str(args.out)}))
        return 0
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--smoke runs in Triton's interpreter: set TRITON_INTERPRET=1")
            return 2
        if args.out == RESULTS_DIR:
            print("--smoke results are not measurements: give --out outside bench/results")
            return 2
        args.n, args.d, args.screen_n = [48], [24], 48
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
    tag = "smoke-" if args.smoke else "quick-" if args.quick else ""
    name = f"gpu-{tag}{timestamp()}.json"

    def save(part, complete=False):
        write_results({**payload, **part, "complete": complete}, name, args.out)

    part = run(args, device, save)
    print(format_table(part["rows"]))
    save(part, complete=True)
    print(f"saved {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
