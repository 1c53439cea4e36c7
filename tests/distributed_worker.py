"""One rank of a gloo process group spawned by tests/test_distributed.py (and bench scripts).

    python tests/distributed_worker.py RANK WORLD STORE_FILE CASE OUT_DIR

Every rank builds the same data (seeded), keeps its rows, runs CASE and writes what it got to
OUT_DIR/rank<R>.pt (results, or the exception each item raised). The test compares them with
one process on the whole data. Data builders live here so the test uses the very same ones.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback

import torch

N = 157  # not divisible by 2 or 3
TIMEOUT_S = 20.0


# --- data shared with the test -------------------------------------------------------------------

def sizes(n: int, world: int, kind: str = "uneven") -> list[int]:
    """Rows per rank: uneven splits, with one shard smaller than k = 10 for three ranks."""
    if world == 1:
        return [n]
    if kind == "empty":
        return [0] + sizes(n, world - 1)
    if world == 2:
        return [n // 3, n - n // 3]
    if world == 3:
        return [6, n // 2, n - 6 - n // 2]
    base = [n // world] * world
    base[-1] += n - sum(base)
    return base


def bounds(sz: list[int], rank: int) -> slice:
    lo = sum(sz[:rank])
    return slice(lo, lo + sz[rank])


def gaussian(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)


def tied(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Few-level dyadic entries (every product exact: exact ties everywhere) with whole rows
    duplicated across the ends of the sample order (so duplicates sit on different ranks)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, d), generator=g).to(torch.float64) / 4
    x[n - 12:] = x[:12]  # rows 0..11 repeated at the end
    x[n // 2: n // 2 + 5] = x[3]  # and one row five more times mid-way
    return x.to(dtype)


def pair(seed: int = 1, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    a = gaussian(N, 24, seed, dtype)
    b = (a.to(torch.float64) @ gaussian(24, 16, seed + 1, torch.float64)
         + 2 * gaussian(N, 16, seed + 2, torch.float64)).to(dtype)
    return a, b


def knn_cases(world: int) -> list[tuple[str, str, int, str, torch.dtype, bool, str]]:
    """(name, data, k, split, dtype, exclude_self, backend)."""
    sz = sizes(N, world)
    near = max(sz) - 2 if world > 1 else N - 2
    out = [("gauss_k10", "gauss", 10, "uneven", torch.float32, True, "auto"),
           ("gauss_k_near_shard", "gauss", near, "uneven", torch.float32, True, "auto"),
           ("tied_k12", "tied", 12, "uneven", torch.float32, True, "auto"),
           ("tied_f64_k7", "tied", 7, "uneven", torch.float64, True, "auto"),
           ("tied_bf16_k5", "tied", 5, "uneven", torch.bfloat16, True, "auto"),
           ("tied_torch_backend", "tied", 10, "uneven", torch.float32, True, "torch"),
           ("gauss_with_self", "gauss", 9, "uneven", torch.float64, False, "auto"),
           ("tied_k1", "tied", 1, "uneven", torch.float32, True, "auto"),
           ("tied_k_all", "tied", N - 1, "uneven", torch.float16, True, "auto")]
    if world > 1:
        out.append(("empty_shard", "gauss", 10, "empty", torch.float32, True, "auto"))
    return out


def knn_data(data: str, dtype) -> torch.Tensor:
    return gaussian(N, 20, 7, dtype) if data == "gauss" else tied(N, 8, 3, dtype)


METRIC_CASES = [
    ("mutual_knn", {"topk": 10}), ("cycle_knn", {"topk": 10}), ("lcs_knn", {"topk": 10}),
    ("edit_distance_knn", {"topk": 10}), ("cka", {}), ("unbiased_cka", {}),
    ("cka", {"kernel_metric": "rbf", "rbf_sigma": 4.0}), ("unbiased_cka", {"kernel_metric": "rbf", "rbf_sigma": 6.0}),
    ("cknna", {"topk": 10}), ("cknna", {"topk": 10, "unbiased": False}),
    ("cknna", {"topk": 10, "distance_agnostic": True}), ("cknna", {"topk": 150}), ("svcca", {"cca_dim": 6}),
    ("mutual_knn", {"topk": 150}),
]


# float32 inputs: the cases whose numbers come from float32 kNN scores or GEMMs
F32_CASES = [("mutual_knn", {"topk": 10}), ("cycle_knn", {"topk": 10}), ("cknna", {"topk": 10}), ("cka", {}),
             ("unbiased_cka", {"kernel_metric": "rbf", "rbf_sigma": 6.0}), ("svcca", {"cca_dim": 6})]


# exact ties everywhere and duplicated rows across shard boundaries (see :func:`tied`)
TIED_CASES = [("mutual_knn", {"topk": 12}), ("cycle_knn", {"topk": 12}), ("edit_distance_knn", {"topk": 12}),
              ("cknna", {"topk": 12}), ("cknna", {"topk": 12, "unbiased": False})]


def tied_pair() -> tuple[torch.Tensor, torch.Tensor]:
    return tied(N, 8, 3), tied(N, 6, 4)


EMPTY_CASES = [("cycle_knn", {"topk": 10}), ("lcs_knn", {"topk": 10}), ("cknna", {"topk": 10}), ("cka", {}),
               ("cka", {"kernel_metric": "rbf", "rbf_sigma": 4.0}), ("svcca", {"cca_dim": 6})]


def layers(seed: int = 5) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = gaussian(N * 3, 16, seed).reshape(N, 3, 16) * torch.tensor([1.0, 4.0, 0.5])[None, :, None]
    y = [(x[:, 1] @ gaussian(16, 12, seed + 1) + gaussian(N, 12, seed + 2)), gaussian(N, 8, seed + 3)]
    return x, y


def key(name: str, opts: dict) -> str:
    return name + "".join(f"|{k}={v}" for k, v in sorted(opts.items()))


# --- cases -------------------------------------------------------------------------------------------

def battery(rank: int, world: int) -> dict:
    import platonic_fast.distributed as pfd

    out: dict = {}

    def item(name, fn):
        t0 = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - recorded for the test to report
            out[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        out.setdefault("_times", {})[name] = time.perf_counter() - t0

    for name, data, k, split, dtype, excl, backend in knn_cases(world):
        rows = bounds(sizes(N, world, split), rank)
        x = knn_data(data, dtype)[rows]
        item(f"knn/{name}", lambda x=x, k=k, excl=excl, be=backend: pfd.knn(x, k, exclude_self=excl, backend=be))
    rows = bounds(sizes(N, world), rank)
    item("knn/gather", lambda: pfd.knn(knn_data("gauss", torch.float32)[rows], 10, gather=True))
    for dtype, cases in ((torch.float64, METRIC_CASES), (torch.float32, F32_CASES)):
        a, b = pair(1, dtype)
        for metric, opts in cases:
            item(f"metric/{dtype}/{key(metric, opts)}",
                 lambda m=metric, o=opts, a=a, b=b: pfd.measure(m, a[rows], b[rows], **o))
    ta, tb = tied_pair()
    for metric, opts in TIED_CASES:
        item(f"tied/{key(metric, opts)}", lambda m=metric, o=opts: pfd.measure(m, ta[rows], tb[rows], **o))
    if world > 1:  # rank 0 holds no rows
        empty = bounds(sizes(N, world, "empty"), rank)
        for metric, opts in EMPTY_CASES:
            item(f"empty/{key(metric, opts)}", lambda m=metric, o=opts: pfd.measure(m, a[empty], b[empty], **o))
        xe, ye = layers()
        item("empty/align", lambda: pfd.align(xe[empty], [l[empty] for l in ye], "cknna", topk=5, concat=True,
                                              exact=True).scores)
    a, b = pair(1, torch.float64)
    item("truncated", lambda: pfd.score(pfd.prepare("cknna", a[rows], topk=12).truncated(5),
                                        pfd.prepare("cknna", b[rows], topk=12).truncated(5)))
    x, y = layers()
    for exact in (True, False):
        item(f"outliers/{exact}", lambda e=exact: pfd.remove_outliers(x[rows], 0.9, e))
    t16 = x.to(torch.float16)
    item("outliers/f16", lambda: pfd.remove_outliers(t16[rows], 0.8, True))

    def summary(res):
        c = res.calibration
        return {"scores": res.scores, "best": res.best, "best_layers": res.best_layers, "chance": res.chance,
                "null": None if c is None else c.null, "p": None if c is None else (c.max.p_value, c.mean.p_value)}

    item("align/mutual_knn", lambda: summary(pfd.align(x[rows], [l[rows] for l in y], "mutual_knn", topk=5,
                                                       permutations=6, generator=0)))
    item("align/cka_concat", lambda: summary(pfd.align([l[rows] for l in y], x[rows], "cka", concat=True,
                                                       exact=True, permutations=2, generator=1)))
    item("align/cknna", lambda: summary(pfd.align(x[rows], x[rows], "cknna", topk=6)))
    item("scorer", lambda: {name: summary(res) for name, res in pfd.Alignment(
        {"y": [l[rows] for l in y], "x": x[rows]}, concat=True).score(x[rows], "unbiased_cka").items()})
    item("calibrate", lambda: {m: (c.observed, c.null, c.p_value, c.chance) for m, c in pfd.calibrate(
        ["mutual_knn", "cycle_knn", "cknna", "unbiased_cka", "svcca"], a[rows], b[rows], permutations=3, generator=3,
        topk=8, cca_dim=4).items()})
    if world == 3:  # a subgroup: ranks 1 and 2 only (every rank creates it; rank 0 sits it out)
        import torch.distributed as dist

        sub = dist.new_group([1, 2])
        if rank in (1, 2):
            x = knn_data("tied", torch.float32)[rows]
            item("subgroup/knn", lambda: pfd.knn(x, 9, group=sub, gather=True))
            item("subgroup/cycle", lambda: pfd.measure("cycle_knn", a[rows], b[rows], topk=7, group=sub))
    if world == 3:  # last: failures leave the group usable (every rank raised at the same point)
        out["failures"] = failures(rank, world)
    return out


def failures(rank: int, world: int) -> dict:
    """Failures that every rank must see (recorded per item: the error each rank raised)."""
    import platonic_fast.distributed as pfd
    from platonic_fast.ops import knn as _knn  # the pair tiles of the shards' block exchange
    from platonic_fast.rows import ShardRows

    out: dict = {}
    rows = bounds(sizes(N, world), rank)
    a, b = pair(1, torch.float32)

    def item(name, fn):
        t0 = time.perf_counter()
        try:
            fn()
            out[name] = {"error": None}
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {e}"}
        out[name]["elapsed"] = time.perf_counter() - t0

    def nan_on_last():
        x = a[rows].clone()
        if rank == world - 1:
            x[0, 0] = float("nan")
        return pfd.measure("mutual_knn", x, b[rows], topk=5)

    item("nan_on_one_rank", nan_on_last)
    real = _knn.pair_lists
    real_each = ShardRows._every_block

    def broken(*args, **kwargs):
        if rank == 1:
            raise MemoryError("injected failure in the ring")
        return real(*args, **kwargs)

    _knn.pair_lists = broken
    item("fail_mid_ring", lambda: pfd.knn(a[rows], 5))
    _knn.pair_lists = real
    item("ok_after_failures", lambda: pfd.measure("cka", a[rows], b[rows]))
    item("width_mismatch", lambda: pfd.knn(a[rows] if rank else a[rows, :5], 3))
    item("rows_mismatch", lambda: pfd.measure("cka", a[rows], b[rows][: max(0, rows.stop - rows.start - rank)]))
    assert ShardRows._every_block is real_each
    return out


def nearly_parallel(n: int, d: int, seed: int) -> torch.Tensor:
    """Rows all within ~1e-4 of one direction: the bf16 screen's bound covers every candidate,
    so no row can be certified (each falls back to the exact candidates)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    return (base + 1e-4 * torch.randn(n, d, generator=g, dtype=torch.float64)).to(torch.float32)


def screen_cases(world: int) -> list[tuple[str, str, int, str, torch.dtype, bool]]:
    """(name, data, k, split, dtype, exclude_self) of the sharded bf16 screen."""
    near = max(sizes(N, world)) - 2 if world > 1 else N - 2
    out = [("gauss_k10", "gauss", 10, "uneven", torch.float32, True),
           ("gauss_k_near_shard", "gauss", near, "uneven", torch.float32, True),
           ("tied_k12", "tied", 12, "uneven", torch.float32, True),
           ("tied_f64_k7", "tied", 7, "uneven", torch.float64, True),
           ("tied_bf16_k5", "tied", 5, "uneven", torch.bfloat16, True),
           ("gauss_with_self", "gauss", 9, "uneven", torch.float64, False),
           ("tied_k1", "tied", 1, "uneven", torch.float32, True),
           ("parallel_falls_back", "parallel", 6, "uneven", torch.float32, True)]
    if world > 1:
        out.append(("empty_shard", "gauss", 10, "empty", torch.float32, True))
    return out


def screen_data(data: str, dtype) -> torch.Tensor:
    return nearly_parallel(N, 24, 11).to(dtype) if data == "parallel" else knn_data(data, dtype)


def screen(rank: int, world: int) -> dict:
    """The certified bf16 screen over shards (forced on) against the float32 pair tiles (off):
    each case's lists, values and the screen's counters on this rank."""
    import platonic_fast.distributed as pfd
    from platonic_fast.ops import knn_screen

    out: dict = {"hardware": knn_screen.bf16_hardware()}
    for name, data, k, split, dtype, excl in screen_cases(world):
        x = screen_data(data, dtype)[bounds(sizes(N, world, split), rank)]
        try:
            got = {}
            for mode in ("off", "on"):
                knn_screen.stats(reset=True)
                got[mode] = pfd.knn(x, k, exclude_self=excl, screen=mode)
                got[f"stats_{mode}"] = knn_screen.stats()
            out[name] = got
        except Exception as e:  # noqa: BLE001 - recorded for the test to report
            out[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    # one rank that cannot screen (no bf16 instructions there): every rank takes the float32 path
    if world > 1 and rank == 1:
        os.environ["PLATONIC_FAST_KNN_SCREEN_NO_BF16"] = "1"
    knn_screen.stats(reset=True)
    x = knn_data("gauss", torch.float32)[bounds(sizes(N, world), rank)]
    out["one_rank_cannot"] = {"knn": pfd.knn(x, 10, screen="on"), "stats": knn_screen.stats()}
    os.environ.pop("PLATONIC_FAST_KNN_SCREEN_NO_BF16", None)
    try:  # a bad option raises on every rank (none waits in a collective)
        pfd.knn(x, 10, screen="fast" if rank == world - 1 else "on")
        out["bad_option"] = None
    except Exception as e:  # noqa: BLE001
        out["bad_option"] = f"{type(e).__name__}: {e}"
    return out


def dies(rank: int, world: int) -> dict:
    """Rank 1 exits abruptly in the middle of the kNN ring: the others must raise."""
    import platonic_fast.distributed as pfd
    from platonic_fast.ops import knn as _knn

    rows = bounds(sizes(N, world), rank)
    a, _ = pair(1, torch.float32)
    real = _knn.pair_lists

    def crash(*args, **kwargs):
        if rank == 1:
            os._exit(17)
        return real(*args, **kwargs)

    _knn.pair_lists = crash
    t0 = time.perf_counter()
    try:
        pfd.knn(a[rows], 5, timeout=5)
        return {"error": None, "elapsed": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "elapsed": time.perf_counter() - t0}


def stalls(rank: int, world: int) -> dict:
    """Rank 1 never reaches the collective: the others must time out (timeout=2 s)."""
    import platonic_fast.distributed as pfd

    rows = bounds(sizes(N, world), rank)
    a, b = pair(1, torch.float32)
    if rank == 1:
        time.sleep(60)
    t0 = time.perf_counter()
    try:
        pfd.measure("mutual_knn", a[rows], b[rows], topk=5, timeout=2)
        return {"error": None, "elapsed": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "elapsed": time.perf_counter() - t0}


def cuda(rank: int, world: int) -> dict:
    """World size 1 under NCCL with CUDA tensors: the same code path as the gloo battery."""
    import platonic_fast.distributed as pfd

    dev = torch.device("cuda", rank)
    a, b = (t.to(dev) for t in pair(1, torch.float32))
    x, y = layers()
    out = {"knn": pfd.knn(knn_data("tied", torch.float32).to(dev), 12)}
    for metric, opts in METRIC_CASES:
        out[key(metric, opts)] = pfd.measure(metric, a, b, **opts)
    out["outliers"] = pfd.remove_outliers(x.to(dev), 0.9, True)
    res = pfd.align(x.to(dev), [l.to(dev) for l in y], "mutual_knn", topk=5, permutations=4, generator=0)
    out["align"] = (res.scores, res.calibration.null)
    return out


def inputs(rank: int, world: int) -> dict:
    """A sharded sweep where each rank reads its own copy of the files (as on separate nodes):
    the same copies score as one process; a copy with other content, other N, or damaged bytes
    under an intact header stops every rank before anything is scored."""
    from pathlib import Path

    from platonic_fast.distributed._comm import Comm
    from platonic_fast.distributed._sweep import SweepShard
    from platonic_fast.features import Features
    from platonic_fast.sweep import measure_sets

    base = Path(os.environ["PF_TEST_OUT"]) / f"rank{rank}"
    shard = SweepShard(Comm())
    out = {}
    for variant in ("same", "content", "n", "damaged"):
        folder = base / variant
        folder.mkdir(parents=True)
        for m in range(2):
            seed = m + (100 if variant == "content" and rank == 1 and m == 1 else 0)
            n = 40 + (2 if variant == "n" and rank == 1 else 0)
            feats = torch.randn(n, 2, 6, generator=torch.Generator().manual_seed(seed))
            path = Features(feats, None, {"model": f"m{m}"}).save(folder / f"m{m}.safetensors")
            if variant == "damaged" and rank == 1 and m == 0:
                data = bytearray(path.read_bytes())
                data[-5] ^= 0xFF  # a tensor byte: the header (and its stored checksum) unchanged
                path.write_bytes(bytes(data))
        try:
            res = measure_sets(folder, metric="mutual_knn", topk=5, out_dir=base / f"out-{variant}", progress=False,
                               shard=shard)
            out[variant] = {"scores": res.scores}
        except Exception as e:  # noqa: BLE001
            out[variant] = {"error": f"{type(e).__name__}: {e}"}
    return out


CASES = {"battery": battery, "screen": screen, "inputs": inputs, "failures": failures, "dies": dies, "stalls": stalls,
         "cuda": cuda}


def main(argv: list[str]) -> int:
    rank, world, store, case, out_dir = int(argv[1]), int(argv[2]), argv[3], argv[4], argv[5]
    import torch.distributed as dist

    torch.set_num_threads(1)
    if case == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if case == "cuda" else "gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    t0 = time.perf_counter()
    try:
        result = CASES[case](rank, world)
    except Exception as e:  # noqa: BLE001
        result = {"fatal": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    result = {"result": result, "seconds": time.perf_counter() - t0}
    path = os.path.join(out_dir, f"rank{rank}.pt")
    torch.save(result, path + ".tmp")
    os.replace(path + ".tmp", path)
    sys.stdout.flush()
    if case in ("dies", "stalls"):
        os._exit(0)  # a peer is gone or stuck: leave without the group's teardown
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
