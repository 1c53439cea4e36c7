"""The whole CPU benchmark suite in one run, one part per op file (bench_<part>.py): knn,
neighbour_lists, hsic, cknna_sums, align, memory (the last one in a fresh subprocess).  Prints
one table plus the target checks and writes one JSON file, bench/results/cpu-<UTC timestamp>.json
(rewritten atomically after every part, so an interrupted run keeps what it measured;
``"complete": true`` once it has finished).

    .venv/bin/python bench/run_cpu.py            # full sizes (minutes; keep the machine quiet)
    .venv/bin/python bench/run_cpu.py --quick    # small sizes, seconds: smoke test
    .venv/bin/python bench/run_cpu.py --only knn,metrics   # metrics = the three metric parts
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_align  # noqa: E402
import bench_calibration  # noqa: E402
import bench_cknna_sums  # noqa: E402
import bench_hsic  # noqa: E402
import bench_knn  # noqa: E402
import bench_memory  # noqa: E402
import bench_neighbour_lists  # noqa: E402
import bench_outliers  # noqa: E402
import bench_permute_lists  # noqa: E402
import bench_topk_merge  # noqa: E402

from _timing import (  # noqa: E402
    configure,
    environment,
    error_row,
    format_table,
    format_targets,
    gemm_peak,
    header,
    timestamp,
    write_results,
)

PARTS = {
    "knn": lambda quick, peak, a: bench_knn.collect(quick=quick, peak=peak),
    "neighbour_lists": lambda quick, peak, a: bench_neighbour_lists.collect(quick=quick, peak=peak),
    "hsic": lambda quick, peak, a: bench_hsic.collect(quick=quick, peak=peak),
    "cknna_sums": lambda quick, peak, a: bench_cknna_sums.collect(quick=quick, peak=peak),
    "align": lambda quick, peak, a: bench_align.collect(quick=quick, peak=peak),
    "memory": lambda quick, peak, a: bench_memory.collect(
        quick=quick, peak=peak, torch_chunked=True if a.torch_chunked_memory else None),
}
DEFAULT = tuple(PARTS)  # the parts of cpu-20261123T071934Z.json, row for row
PARTS.update({  # parts with no counterpart in earlier results files: on request (--only)
    "outliers": lambda quick, peak, a: bench_outliers.collect(quick=quick, peak=peak),
    "topk_merge": lambda quick, peak, a: bench_topk_merge.collect(quick=quick, peak=peak),
    "permute_lists": lambda quick, peak, a: bench_permute_lists.collect(quick=quick, peak=peak),
    "calibration": lambda quick, peak, a: bench_calibration.collect(quick=quick, peak=peak),
})
# the rows of these parts carry "bench": "metrics", as in earlier results files
ALIASES = {"metrics": ("neighbour_lists", "hsic", "cknna_sums")}


def _wait_quiet(limit_s: float) -> float:
    t0 = time.perf_counter()
    while limit_s > 0 and hasattr(os, "getloadavg") and os.getloadavg()[0] >= 0.6 \
            and time.perf_counter() - t0 < limit_s:
        time.sleep(10)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="platonic_fast CPU benchmark suite")
    ap.add_argument("--quick", action="store_true", help="small sizes, seconds (smoke test)")
    ap.add_argument("--only", default=",".join(DEFAULT),
                    help=f"comma-separated parts: {','.join(PARTS)} (metrics: "
                         f"{','.join(ALIASES['metrics'])}); default {','.join(DEFAULT)}")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    ap.add_argument("--torch-chunked-memory", action="store_true",
                    help="also measure the torch chunked anchor's memory at full size (minutes)")
    ap.add_argument("--results-dir", default=None, help="where to write the JSON file")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="first wait up to S seconds for the 1-minute load average to drop "
                         "below 0.6 (a concurrent build distorts every timing)")
    args = ap.parse_args(argv)
    parts = list(dict.fromkeys(q for p in args.only.split(",") if p.strip()
                               for q in ALIASES.get(p.strip(), (p.strip(),))))
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {unknown}; choose from {list(PARTS) + list(ALIASES)}")

    waited = _wait_quiet(args.wait_quiet)
    t_start = time.perf_counter()
    configure(quick=args.quick)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    peak = gemm_peak(2048 if args.quick else 4096)
    env = environment(peak)
    env["loadavg_before_sgemm"] = load0
    env["waited_for_quiet_s"] = waited
    print(header(env), flush=True)
    load = load0 or (0.0,)  # before our own sgemm measurement raised it
    if load[0] > 0.6:
        print(f"WARNING: load average {load[0]:.2f} at start: something else is running, "
              f"timings will be distorted", flush=True)
    name = f"cpu-{'quick-' if args.quick else ''}{timestamp()}.json"
    payload = {"suite": "cpu", "quick": args.quick, "parts": parts, "env": env, "rows": [],
               "targets": [], "complete": False}
    kw = {} if args.results_dir is None else {"results_dir": args.results_dir}

    def save():
        if not args.no_save:
            return write_results(payload, name, **kw)
        return None

    for part in parts:
        t0 = time.perf_counter()
        payload.setdefault("part_loadavg_start", {})[part] = (
            os.getloadavg() if hasattr(os, "getloadavg") else None)
        print(f"\n== {part} ...", flush=True)
        try:
            rows, targets = PARTS[part](args.quick, peak["gflops"], args)
        except Exception as exc:  # one broken part must not lose the others
            rows, targets = [error_row(part, exc)], []
            print(rows[0]["traceback"], file=sys.stderr)
        payload["rows"].extend(rows)
        payload["targets"].extend(targets)
        payload.setdefault("part_wall_s", {})[part] = time.perf_counter() - t0
        print(format_table(rows), flush=True)
        save()

    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    payload["wall_s"] = time.perf_counter() - t_start
    payload["complete"] = True
    print("\n== all results")
    print(header(env))
    print(format_table(payload["rows"]))
    print()
    print(format_targets(payload["targets"]))
    print(f"total wall {payload['wall_s']:.0f} s; load avg at end {env['loadavg_end']}")
    path = save()
    if path is not None:
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
