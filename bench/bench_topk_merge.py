"""k-selection merge: the best k of T partial top-k lists per row (T tiles or shards side by side,
as the kNN kernels and multi-GPU callers produce them), with every backend of the op that runs
here, against a plain ``torch.topk`` of the values (no tie rule, no empty slots). Not in
run_cpu.py's default parts (the default file matches earlier results row for row);
``--only topk_merge`` adds it.

The ratio column is torch.topk time / method time.

    .venv/bin/python bench/bench_topk_merge.py [--quick] [--no-save]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import add_peak, bench_main, import_pf, run_case, set_ratios  # noqa: E402

K = 10
TILES = 8
ANCHOR = "torch.topk"


def collect(quick: bool = False, peak: float | None = None, device: str = "cpu"):
    n = 4096 if quick else 65536
    pf, pf_err = import_pf()
    g = torch.Generator(device=device).manual_seed(11)
    values = torch.randn(n, TILES * K, device=device, generator=g)  # tie-free
    indices = torch.randint(0, 2**40, (n, TILES * K), device=device, generator=g)
    common = {"bench": "topk_merge", "case": f"{TILES} lists of k={K}", "shape": f"{n}x{TILES * K}",
              "dtype": "float32", "k": K}
    found = {}

    def keep(name):
        def f(res):
            found[name] = res[1]
        return f

    def plain():
        v, pos = values.topk(K, dim=1)
        return v, indices.gather(1, pos)

    rows = [run_case(dict(common, method=ANCHOR, impl="values.topk(k), indices gathered"), plain,
                     value_of=keep(ANCHOR))]
    if pf is None:
        rows.append(run_case(dict(common, method="topk_merge"), None, skip=pf_err))
    else:
        from platonic_fast import _backends
        from platonic_fast.ops.topk_merge import topk_merge

        for backend in _backends.available("topk_merge", device, dtypes=(values.dtype,), k=K):
            rows.append(run_case(dict(common, method=f"topk_merge ({backend})",
                                      impl="platonic_fast.ops.topk_merge.topk_merge(values, indices, k, "
                                           f"backend={backend!r})"),
                                 lambda backend=backend: topk_merge(values, indices, K, backend=backend),
                                 value_of=keep(backend)))
            if backend in found and ANCHOR in found:
                rows[-1]["same_lists_as_anchor"] = bool(torch.equal(found[backend], found[ANCHOR]))
    set_ratios(rows, ANCHOR)
    add_peak(rows, peak)
    return rows, []


if __name__ == "__main__":
    sys.exit(bench_main("topk_merge", collect))
