"""mutual_knn on one process against the same call sharded over P gloo processes, side by side.

Issue 11 item 5's first benchmark: N = 32,768 two-set mutual_knn (k = 10, D = 768, float32,
rows L2-normalised) on 1 process x 1 thread (``pf.mutual_knn``, the library as it is) against
2 processes x 1 thread (``platonic_fast.distributed.mutual_knn``, each rank holding half the
rows, gloo over a file store). Every repeat starts fresh processes; the configurations
alternate (one, sharded, one, sharded, ...) so that a drifting machine load hits both alike.
Each process builds the same seeded data, warms up on a few rows, and times the call alone
(for the sharded run: from a barrier to the slowest rank's end). The score of every sharded
run must equal the one-process score exactly (integer overlap totals).

Rows carry what a scaling model needs (N, D, ranks, wall time, the kNN-pass time, bytes sent
per rank, the single-thread sgemm rate of this run) and ``ratio`` = one-process median /
sharded median (target: >= 1.8 on 2 cores).

    .venv/bin/python bench/bench_distributed.py                      # N=32768, D=768 (minutes)
    .venv/bin/python bench/bench_distributed.py --n 512 --d 32 --repeats 1 --no-save   # dry run
    .venv/bin/python bench/bench_distributed.py --n 8192,16384,32768 --ranks 2,3      # a grid

Keep the machine quiet: every configuration uses all the cores it asks for.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import environment, format_table, gemm_peak, header, timestamp, write_results  # noqa: E402

K = 10
TARGET = 1.8
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def data(n: int, d: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g)
    b = a + torch.randn(n, d, generator=g)  # correlated: the lists overlap partly
    return F.normalize(a, dim=1), F.normalize(b, dim=1)


def worker(args) -> None:
    """One process of one configuration: time the call, write a JSON line."""
    import torch

    torch.set_num_threads(1)
    a, b = data(args.n, args.d)
    out: dict = {"rank": args.rank, "world": args.world}
    if args.world == 1 and args.mode == "one":
        import platonic_fast as pf

        pf.mutual_knn(a[:64], b[:64], topk=K)  # warm-up: imports, the compiled core
        if args.knn_pass:
            tk = time.perf_counter()
            pf.knn(a, K)
            out["knn_s"] = time.perf_counter() - tk
        t0 = time.perf_counter()
        score = pf.mutual_knn(a, b, topk=K)
        out.update(seconds=time.perf_counter() - t0, score=score)
    else:
        import torch.distributed as dist

        import platonic_fast.distributed as pfd
        from platonic_fast.distributed import _comm

        dist.init_process_group("gloo", init_method=f"file://{args.store}", rank=args.rank, world_size=args.world,
                                timeout=datetime.timedelta(seconds=args.timeout))
        lo, hi = pfd.shard_bounds(args.n, args.rank, args.world)
        pfd.mutual_knn(a[lo: lo + 64], b[lo: lo + 64], topk=K)  # warm-up on a few rows
        if args.knn_pass:
            dist.barrier()
            tk = time.perf_counter()
            pfd.knn(a[lo:hi], K)
            dist.barrier()
            out["knn_s"] = time.perf_counter() - tk
        _comm.TRAFFIC.update(bytes_sent=0, messages=0, collectives=0)
        dist.barrier()
        t0 = time.perf_counter()
        score = pfd.mutual_knn(a[lo:hi], b[lo:hi], topk=K)
        mine = time.perf_counter() - t0
        dist.barrier()
        out.update(seconds=time.perf_counter() - t0, own_seconds=mine, score=score, **_comm.TRAFFIC)
        dist.destroy_process_group()
    with open(args.out, "a") as f:
        f.write(json.dumps(out) + "\n")


def run_config(n: int, d: int, world: int, mode: str, *, knn_pass: bool, timeout: float) -> list[dict]:
    """One run of one configuration in fresh processes; the ranks' JSON records."""
    with tempfile.TemporaryDirectory(prefix="pf-bench-dist-") as tmp:
        out = os.path.join(tmp, "out.jsonl")
        env = dict(os.environ, **THREAD_ENV)
        cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--d", str(d), "--world", str(world),
               "--mode", mode,
               "--store", os.path.join(tmp, "store"), "--out", out, "--timeout", str(timeout)]
        if knn_pass:
            cmd.append("--knn-pass")
        procs = [subprocess.Popen(cmd + ["--rank", str(r)], env=env) for r in range(world)]
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise RuntimeError(f"{mode} x{world} at N={n} did not finish in {timeout} s") from None
        if any(p.returncode for p in procs):
            raise RuntimeError(f"{mode} x{world} at N={n}: exit codes {[p.returncode for p in procs]}")
        with open(out) as f:
            return sorted((json.loads(line) for line in f), key=lambda r: r["rank"])


def collect(ns, d: int, ranks, repeats: int, *, knn_pass: bool, timeout: float, peak: float) -> list[dict]:
    rows = []
    for n in ns:
        configs = [(1, "one")] + [(p, "sharded") for p in ranks]
        runs: dict = {c: [] for c in configs}
        for rep in range(repeats):
            for world, mode in configs:  # alternate: one, sharded, one, sharded, ...
                rec = run_config(n, d, world, mode, knn_pass=knn_pass, timeout=timeout)
                runs[(world, mode)].append(rec)
                print(f"  N={n} {mode} x{world} repeat {rep + 1}: {rec[0]['seconds']:.3f} s", flush=True)
        base_score = runs[(1, "one")][0][0]["score"]
        base = statistics.median(r[0]["seconds"] for r in runs[(1, "one")])
        for (world, mode), recs in runs.items():
            times = [r[0]["seconds"] for r in recs]
            med = statistics.median(times)
            flops = 2 * 2 * n * n * d * 0.5  # two self-kNN passes, each half the N^2 D GEMM (symmetric)
            row = {"bench": "distributed", "case": f"mutual_knn N={n}", "shape": f"{n}x{d}", "dtype": "float32",
                   "method": "pf.mutual_knn (1 process)" if mode == "one" else f"pfd.mutual_knn ({world} ranks)",
                   "processes": world, "threads_per_process": 1, "n": n, "d": d, "k": K,
                   "median_s": med, "times_s": times, "repeats": len(times), "gflops": flops / med / 1e9,
                   "pct_peak": 100 * flops / med / 1e9 / (peak * world) if peak else None,
                   "ratio": base / med, "anchor": "pf.mutual_knn (1 process)",
                   "score": recs[0][0]["score"], "score_equal": all(r[0]["score"] == base_score for r in recs),
                   "status": "ok"}
            if knn_pass:
                row["knn_pass_median_s"] = statistics.median(r[0]["knn_s"] for r in recs)
            if mode == "sharded":
                row["bytes_sent_per_rank"] = [r["bytes_sent"] for r in recs[0]]
                row["messages_per_rank"] = [r["messages"] for r in recs[0]]
                row["collectives_per_rank"] = [r["collectives"] for r in recs[0]]
                row["rank_seconds"] = [r["own_seconds"] for r in recs[0]]
            row["summary"] = (f"score {row['score']:.6f} {'==' if row['score_equal'] else '!='} one process"
                              + (f"; sent {max(row['bytes_sent_per_rank']) / 2**20:.1f} MiB/rank"
                                 if mode == "sharded" else ""))
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="platonic_fast: one process vs sharded mutual_knn (gloo)")
    ap.add_argument("--n", default="32768", help="N, or several comma-separated (default 32768)")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--ranks", default="2", help="sharded process counts, comma-separated (default 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--knn-pass", action="store_true", help="also time one kNN pass alone in each process")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one configuration may take")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="one", help=argparse.SUPPRESS)
    ap.add_argument("--store", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.n = int(args.n)
        worker(args)
        return 0
    import torch

    ns = [int(v) for v in args.n.split(",")]
    ranks = [int(v) for v in args.ranks.split(",")]
    torch.set_num_threads(1)
    peak = gemm_peak(2048)  # one thread, as every process of the runs
    env = environment(peak)
    env["threads_env"] = THREAD_ENV
    print(header(env), flush=True)
    rows = collect(ns, args.d, ranks, args.repeats, knn_pass=args.knn_pass, timeout=args.timeout,
                   peak=peak["gflops"])
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(format_table(rows))
    for r in rows:
        if r["processes"] == 2 and r["n"] == 32768 and r["d"] == 768:
            met = r["ratio"] >= TARGET
            print(f"Target: 2 processes x 1 thread >= {TARGET}x one process at N=32768, D=768: "
                  f"{r['ratio']:.2f}x [{'MET' if met else 'NOT MET'}]")
    if not all(r["score_equal"] for r in rows):
        print("ERROR: a sharded score differs from the one-process score")
    if not args.no_save:
        path = write_results({"env": env, "rows": rows, "complete": True}, f"distributed-{timestamp()}.json")
        print(f"saved {path}")
    return 0 if all(r["score_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
