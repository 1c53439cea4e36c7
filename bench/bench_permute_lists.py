"""Relabelled neighbour lists of a row-permuted set (the permutation-null step), every backend of
the op against the plain torch indexing ``inverse[lists[perm]]``; and a whole null (K
permutations, Lx x Ly list sets) in one compiled call against the per-pair loop of relabel +
neighbour-list op calls. Not in run_cpu.py's default parts; ``--only permute_lists`` adds it.

The ratio column is anchor time / method time.

    .venv/bin/python bench/bench_permute_lists.py [--quick] [--no-save]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import add_peak, bench_main, import_pf, run_case, set_ratios  # noqa: E402

K = 10
ANCHOR = "torch indexing"
LOOP = "per-pair loop"


def collect(quick: bool = False, peak: float | None = None, device: str = "cpu"):
    n = 4096 if quick else 65536
    pf, pf_err = import_pf()
    g = torch.Generator().manual_seed(5)
    lists = torch.randint(0, n, (n, K), generator=g)
    perm = torch.randperm(n, generator=g)
    inv = torch.argsort(perm)
    common = {"bench": "permute_lists", "case": f"relabel N={n}, k={K}", "shape": f"{n}x{K}", "dtype": "int64",
              "k": K}
    rows = [run_case(dict(common, method=ANCHOR, impl="inverse[lists[perm]]"), lambda: inv[lists[perm]])]
    if pf is None:
        rows.append(run_case(dict(common, method="permute_lists"), None, skip=pf_err))
        return rows, []
    from platonic_fast import _backends
    from platonic_fast.ops import permute_lists as op
    from platonic_fast.ops.neighbour_lists import run

    for backend in _backends.available("permute_lists", device, dtypes=(lists.dtype,)):
        rows.append(run_case(dict(common, method=f"permute_lists ({backend})",
                                  impl=f"relabel(lists, perm, inverse, backend={backend!r})"),
                             lambda backend=backend: op.relabel(lists, perm, inv, backend=backend)))
    # a whole null: count permutations x la x lb list sets
    nn, la, lb, count = (1024, 3, 3, 8) if quick else (4096, 12, 12, 16)
    sets = [torch.randint(0, nn, (nn, K), generator=g) for _ in range(la + lb)]
    perms = torch.stack([torch.randperm(nn, generator=g) for _ in range(count)])
    null_common = {"bench": "permute_lists", "case": f"mutual_overlap null {la}x{lb} sets, {count} perms, N={nn}",
                   "shape": f"{count}x{la}x{lb}x{nn}x{K}", "dtype": "int64", "k": K}

    def loop():
        out = torch.empty(count, la, lb, dtype=torch.int64)
        for t, p in enumerate(perms):
            pi = torch.argsort(p)
            relabelled = [op.relabel(b, p, pi) for b in sets[la:]]
            for i in range(la):
                for j in range(lb):
                    out[t, i, j] = run("mutual_overlap", sets[i], relabelled[j]).sum()
        return out

    found = {}

    def keep(result):
        found[LOOP] = result
        return int(result.sum())

    rows.append(run_case(dict(null_common, method=LOOP, impl="relabel + neighbour_lists per pair"), loop,
                         value_of=keep))
    rows.append(run_case(dict(null_common, method="null_counts (one call)",
                              impl="ops.permute_lists.null_counts('mutual_overlap', a_sets, b_sets, perms)"),
                         lambda: op.null_counts("mutual_overlap", sets[:la], sets[la:], perms),
                         value_of=lambda r: {"total": int(r.sum()), "same_as_loop":
                                             bool(torch.equal(r, found[LOOP])) if LOOP in found else None}))
    set_ratios(rows, ANCHOR)
    set_ratios([r for r in rows if r["case"] == null_common["case"]], LOOP)
    add_peak(rows, peak)
    return rows, []


if __name__ == "__main__":
    sys.exit(bench_main("permute_lists", collect))
