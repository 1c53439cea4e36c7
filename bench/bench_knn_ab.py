"""The exact CPU kNN of two trees side by side (an A/B of a refactor): each tree's python runs the
same self-kNN (N x 768 random unit rows, k = 10, float32, the screen off where the tree has one)
in turn, interleaved, and the lists are compared by checksum.

    .venv/bin/python bench/bench_knn_ab.py --base /work/wt-base/.venv/bin/python --rounds 3

Writes bench/results/knn-ab-<UTC timestamp>.json (times per round, medians, ratio new/base,
load averages, CPU). A tree is any python whose ``import platonic_fast`` finds that tree.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import environment, timestamp, write_results  # noqa: E402

CHILD = r"""
import inspect, json, os, sys, time, torch
import platonic_fast as pf
from platonic_fast.ops import knn as ops_knn
torch.set_num_threads(int(sys.argv[2]))
n = int(sys.argv[1])
g = torch.Generator().manual_seed(n)
x = torch.nn.functional.normalize(torch.randn(n, 768, generator=g), dim=1)
kw = {"screen": "off"} if "screen" in inspect.signature(pf.knn).parameters else {}
pf.knn(x[:2048], 10, backend="cpu", **kw)  # warm-up
t = time.perf_counter()
vals, idx = pf.knn(x, 10, backend="cpu", **kw)
dt = time.perf_counter() - t
print(json.dumps({"s": dt, "checksum": int((idx.to(torch.int64) * torch.arange(1, 11)).sum()),
                  "vals_sum": float(vals.double().sum()), "file": pf.__file__}))
"""


def run(python: str, n: int, threads: int) -> dict:
    out = subprocess.run([python, "-c", CHILD, str(n), str(threads)], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="python of the baseline tree")
    ap.add_argument("--new", default=sys.executable, help="python of the new tree (default: this one)")
    ap.add_argument("--base-label", default="base")
    ap.add_argument("--n", default="16384,32768")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sizes = [int(v) for v in args.n.split(",")]
    rows = []
    for n in sizes:
        times = {"base": [], "new": []}
        sums = {}
        load = [os.getloadavg()]
        for _ in range(args.rounds):
            for tree, py in (("base", args.base), ("new", args.new)):
                r = run(py, n, args.threads)
                times[tree].append(r["s"])
                sums[tree] = (r["checksum"], r["vals_sum"], r["file"])
        load.append(os.getloadavg())
        med = {t: sorted(v)[len(v) // 2] for t, v in times.items()}
        row = {"N": n, "D": 768, "k": 10, "dtype": "float32", "threads": args.threads, "times_s": times,
               "median_s": med, "new_over_base": med["new"] / med["base"],
               "same_lists": sums["base"][0] == sums["new"][0], "vals_sum": {t: s[1] for t, s in sums.items()},
               "trees": {t: s[2] for t, s in sums.items()}, "loadavg": [list(v) for v in load]}
        rows.append(row)
        print(f"N={n}: base {med['base']:.3f} s, new {med['new']:.3f} s, new/base {row['new_over_base']:.3f}, "
              f"same lists {row['same_lists']}", flush=True)
    payload = {"suite": "knn-ab", "base": args.base_label, "env": environment(), "rows": rows, "complete": True}
    path = write_results(payload, f"knn-ab-{timestamp()}.json")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
