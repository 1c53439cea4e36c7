"""Sharded metrics under torch.distributed (docs/metrics.md#sharded): 1, 2 and 3 gloo processes, spawned here.

Each group runs tests/distributed_worker.py in fresh processes (file store, no ports), with a
timeout on the whole group: no test can hang. Every rank's results are compared with one
process on the concatenated rows: identical neighbour lists, scores within 1e-12 (float64
computation) or the float32 rounding of the kNN scores (float32 inputs, cknna).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import distributed_worker as W
import numpy as np
import pytest
import torch

import platonic_fast as pf
import platonic_fast.distributed as pfd

from conftest import requires_cuda

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")
GROUP_TIMEOUT_S = 150  # the whole spawned group, whatever happens inside
TOL64 = 1e-12


def run_group(tmp_path, world: int, case: str, *, timeout: float = GROUP_TIMEOUT_S, wait_all: bool = True) -> dict:
    """Spawn ``world`` ranks of ``case``; return {rank: result} for the ranks that wrote one.

    With ``wait_all=False`` the group is over once every rank but 1 has written (rank 1 is the
    one the case makes die or stall); stragglers are killed.
    """
    out = tmp_path / f"{case}-{world}"
    out.mkdir()
    store = tmp_path / f"store-{case}-{world}"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", PF_TEST_OUT=str(out))
    logs = [open(out / f"log{r}.txt", "wb") for r in range(world)]  # files: a full pipe cannot block a rank
    procs = [subprocess.Popen([sys.executable, WORKER, str(r), str(world), str(store), case, str(out)],
                              stdout=log, stderr=subprocess.STDOUT, env=env) for r, log in enumerate(logs)]
    needed = [r for r in range(world) if wait_all or r != 1]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if wait_all and all(p.poll() is not None for p in procs):
                break
            if not wait_all and all((out / f"rank{r}.pt").exists() for r in needed):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"{case} with {world} ranks did not finish in {timeout} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    logs = [(out / f"log{r}.txt").read_text(errors="replace") for r in range(world)]
    results = {}
    for r in range(world):
        path = out / f"rank{r}.pt"
        if path.exists():
            results[r] = torch.load(path, weights_only=False)["result"]
    for r in needed:
        assert r in results, f"rank {r} of {case} wrote nothing:\n{logs[r][-3000:]}"
        assert "fatal" not in results[r], results[r].get("trace")
    return results


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda p: f"P{p}")
def battery(request, tmp_path_factory):
    world = request.param
    t0 = time.perf_counter()
    results = run_group(tmp_path_factory.mktemp("battery"), world, "battery")
    print(f"battery with {world} ranks: {time.perf_counter() - t0:.1f} s")
    return world, results


def _ok(value, name):
    if isinstance(value, dict) and "error" in value:
        pytest.fail(f"{name} raised: {value['error']}\n{value.get('trace', '')}")
    return value


def _local_rows(results: dict, name: str) -> list:
    return [_ok(results[r][name], name) for r in sorted(results)]


def _same_on_every_rank(results: dict, name: str):
    values = _local_rows(results, name)
    for v in values[1:]:
        assert _equal(v, values[0]), f"{name}: ranks disagree ({values[0]} vs {v})"
    return values[0]


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0)))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


# --- kNN -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [c[0] for c in W.knn_cases(3)])
@pytest.mark.slow
def test_knn_lists_identical(battery, case):
    world, results = battery
    cases = {c[0]: c for c in W.knn_cases(world)}
    if case not in cases:
        pytest.skip("needs several ranks")
    _, data, k, split, dtype, excl, backend = cases[case]
    x = W.knn_data(data, dtype)
    ref_v, ref_i = pf.knn(x, k, exclude_self=excl, backend=backend)
    parts = _local_rows(results, f"knn/{case}")
    sz = W.sizes(W.N, world, split)
    for r, (_, i) in enumerate(parts):
        assert i.shape == (sz[r], k)
    got_v = torch.cat([p[0] for p in parts])
    got_i = torch.cat([p[1] for p in parts])
    assert torch.equal(got_i, ref_i), f"{case}: lists differ in {(got_i != ref_i).any(dim=1).sum()} rows"
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(got_v.double(), ref_v.double(), rtol=0, atol=tol)


@pytest.mark.slow
def test_knn_gather(battery):
    world, results = battery
    v, i = _same_on_every_rank(results, "knn/gather")
    ref_v, ref_i = pf.knn(W.knn_data("gauss", torch.float32), 10)
    assert torch.equal(i, ref_i)
    assert torch.allclose(v, ref_v, rtol=0, atol=1e-5)


# --- the certified bf16 screen over shards ---------------------------------------------------------

def _bf16_hardware() -> bool:
    from platonic_fast.ops import knn_screen

    return knn_screen.bf16_hardware() is not None


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda p: f"P{p}")
def screened(request, tmp_path_factory):
    if not _bf16_hardware():
        pytest.skip("no bf16 instructions (avx512_bf16/amx_bf16) on this CPU")
    return request.param, run_group(tmp_path_factory.mktemp("screen"), request.param, "screen")


@pytest.mark.slow
def test_screen_over_shards_is_the_exact_path(screened):
    """Screen forced on over 1-3 ranks (uneven splits, a shard smaller than k, an empty shard,
    k near the shard size, ties and duplicated rows across shards, every dtype, rows that all
    fall back): every rank's lists and values bitwise those of the float32 pair tiles, whose
    lists are the one process's."""
    world, results = screened
    for name, data, k, split, dtype, excl in W.screen_cases(world):
        parts = _local_rows(results, name)
        sz = W.sizes(W.N, world, split)
        for r, got in enumerate(parts):
            off, on = got["off"], got["on"]
            assert on[1].shape == (sz[r], k)
            assert torch.equal(on[1], off[1]), f"{name}, rank {r}: lists differ from the exact path"
            assert on[0].dtype == off[0].dtype and torch.equal(on[0], off[0]), f"{name}, rank {r}: values differ"
            assert got["stats_off"]["calls"] == 0 and got["stats_on"]["calls"] == 1
            assert got["stats_on"]["rows"] == sz[r]
        ref_v, ref_i = pf.knn(W.screen_data(data, dtype), k, exclude_self=excl, screen="off")
        assert torch.equal(torch.cat([p["on"][1] for p in parts]), ref_i), f"{name}: lists differ from one process"
        got_v = torch.cat([p["on"][0] for p in parts])
        assert torch.equal(got_v, ref_v), f"{name}: values differ from one process"
        fell = sum(p["stats_on"]["fallback_rows"] for p in parts)
        if data == "parallel":
            assert fell == W.N, f"{name}: {fell} of {W.N} rows fell back"
        elif data == "gauss":
            assert fell < W.N // 2, f"{name}: {fell} of {W.N} rows fell back"


@pytest.mark.slow
def test_screen_over_shards_runs_on_every_rank_or_none(screened):
    world, results = screened
    ref_v, ref_i = pf.knn(W.knn_data("gauss", torch.float32), 10, screen="off")
    parts = _local_rows(results, "one_rank_cannot")
    assert torch.equal(torch.cat([p["knn"][1] for p in parts]), ref_i)
    assert torch.equal(torch.cat([p["knn"][0] for p in parts]), ref_v)
    calls = {p["stats"]["calls"] for p in parts}
    assert calls == ({0} if world > 1 else {1})  # rank 1 cannot screen: nobody does
    errors = [results[r]["bad_option"] for r in sorted(results)]
    assert all(e is not None for e in errors), errors
    assert "screen must be one of" in errors[-1]


# --- metrics ---------------------------------------------------------------------------------------

METRIC_PARAMS = [pytest.param(m, o, torch.float64, id=f"f64-{W.key(m, o)}") for m, o in W.METRIC_CASES] + [
    pytest.param(m, o, torch.float32, id=f"f32-{W.key(m, o)}") for m, o in W.F32_CASES]


@pytest.mark.parametrize("metric,opts,dtype", METRIC_PARAMS)
def test_metric_equals_one_process(battery, metric, opts, dtype):
    world, results = battery
    got = _same_on_every_rank(results, f"metric/{dtype}/{W.key(metric, opts)}")
    a, b = W.pair(1, dtype)
    ref = pf.measure(metric, a, b, **opts)
    # float32 inputs: the kNN scores (cknna's kernel values) are float32 GEMM results, whose
    # rounding depends on the tiling; everything else is float64 at these sizes
    tol = 1e-6 if dtype == torch.float32 and metric == "cknna" and not opts.get("distance_agnostic") else TOL64
    assert abs(got - ref) <= tol, (got, ref)
    if metric in ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"):
        assert got == ref  # integer totals: exact


@pytest.mark.parametrize("metric,opts", W.TIED_CASES, ids=[W.key(m, o) for m, o in W.TIED_CASES])
def test_metric_with_ties_across_shards(battery, metric, opts):
    """Exact ties and duplicated rows on different ranks: the same lists, so the same scores
    (exactly for the list metrics; cknna's sums in another order, within 1e-12: its kernel
    values are exact small dyadic products here)."""
    world, results = battery
    got = _same_on_every_rank(results, f"tied/{W.key(metric, opts)}")
    ref = pf.measure(metric, *W.tied_pair(), **opts)
    assert abs(got - ref) <= (TOL64 if metric == "cknna" else 0.0), (got, ref)


@pytest.mark.parametrize("metric,opts", W.EMPTY_CASES, ids=[W.key(m, o) for m, o in W.EMPTY_CASES])
def test_metric_with_an_empty_shard(battery, metric, opts):
    world, results = battery
    if world == 1:
        pytest.skip("needs several ranks")
    got = _same_on_every_rank(results, f"empty/{W.key(metric, opts)}")
    a, b = W.pair(1, torch.float32)
    ref = pf.measure(metric, a, b, **opts)
    assert abs(got - ref) <= (1e-6 if metric == "cknna" else TOL64), (got, ref)


def test_align_with_an_empty_shard(battery):
    world, results = battery
    if world == 1:
        pytest.skip("needs several ranks")
    x, y = W.layers()
    ref = pf.align(x, y, "cknna", topk=5, concat=True, exact=True).scores
    assert torch.allclose(_same_on_every_rank(results, "empty/align"), ref, rtol=0, atol=1e-6)


def test_truncated(battery):
    world, results = battery
    got = _same_on_every_rank(results, "truncated")
    a, b = W.pair(1, torch.float64)
    ref = pf.score(pf.prepare("cknna", a, topk=12).truncated(5), pf.prepare("cknna", b, topk=12).truncated(5))
    assert abs(got - ref) <= TOL64


@pytest.mark.parametrize("exact", [True, False])
def test_remove_outliers(battery, exact):
    world, results = battery
    x, _ = W.layers()
    got = torch.cat(_local_rows(results, f"outliers/{exact}"))
    assert torch.equal(got, pf.remove_outliers(x, 0.9, exact))


def test_remove_outliers_half(battery):
    world, results = battery
    x, _ = W.layers()
    got = torch.cat(_local_rows(results, "outliers/f16"))
    assert torch.equal(got, pf.remove_outliers(x.to(torch.float16), 0.8, True))


# --- layer search and calibration ------------------------------------------------------------------

def _check_align(got, ref, tol=TOL64):
    assert torch.allclose(got["scores"], ref.scores, rtol=0, atol=tol, equal_nan=True)
    assert got["best_layers"] == ref.best_layers
    assert abs(got["best"] - ref.best) <= tol
    if ref.chance is None:
        assert got["chance"] is None
    else:
        assert torch.allclose(got["chance"], ref.chance, rtol=0, atol=TOL64, equal_nan=True)
    if ref.calibration is not None:
        assert torch.allclose(got["null"], ref.calibration.null, rtol=0, atol=TOL64, equal_nan=True)
        assert got["p"] == (ref.calibration.max.p_value, ref.calibration.mean.p_value)


def test_align_mutual_knn_calibrated(battery):
    world, results = battery
    x, y = W.layers()
    _check_align(_same_on_every_rank(results, "align/mutual_knn"),
                 pf.align(x, y, "mutual_knn", topk=5, permutations=6, generator=0))


def test_align_cka_lists_concat(battery):
    world, results = battery
    x, y = W.layers()
    _check_align(_same_on_every_rank(results, "align/cka_concat"),
                 pf.align(y, x, "cka", concat=True, exact=True, permutations=2, generator=1))


def test_align_cknna(battery):
    world, results = battery
    x, _ = W.layers()
    # align works on float32 layers: cknna's kernel values are float32 kNN scores
    _check_align(_same_on_every_rank(results, "align/cknna"), pf.align(x, x, "cknna", topk=6), tol=1e-6)


def test_scorer(battery):
    world, results = battery
    x, y = W.layers()
    got = _same_on_every_rank(results, "scorer")
    ref = pf.Alignment({"y": y, "x": x}, concat=True).score(x, "unbiased_cka")
    assert list(got) == list(ref)
    for name, r in ref.items():
        _check_align(got[name], r)


def test_calibrate(battery):
    world, results = battery
    got = _same_on_every_rank(results, "calibrate")
    a, b = W.pair(1, torch.float64)
    ref = pf.calibrate(["mutual_knn", "cycle_knn", "cknna", "unbiased_cka", "svcca"], a, b, permutations=3,
                       generator=3, topk=8, cca_dim=4)
    for m, c in ref.items():
        obs, null, p, chance = got[m]
        assert abs(obs - c.observed) <= TOL64
        assert torch.allclose(null, c.null, rtol=0, atol=TOL64)
        assert p == c.p_value
        assert abs(chance - c.chance) <= TOL64


def test_subgroup(battery):
    """group=: ranks 1 and 2 of three shard the rows they hold between them."""
    world, results = battery
    if world != 3:
        pytest.skip("run by the three-rank group")
    sz = W.sizes(W.N, 3)
    rows = slice(sz[0], W.N)
    v, i = _ok(results[1]["subgroup/knn"], "subgroup/knn")
    assert _equal((v, i), _ok(results[2]["subgroup/knn"], "subgroup/knn"))
    assert "subgroup/knn" not in results[0]
    ref_v, ref_i = pf.knn(W.knn_data("tied", torch.float32)[rows], 9)
    assert torch.equal(i, ref_i)
    a, b = W.pair(1, torch.float64)
    for r in (1, 2):
        assert results[r]["subgroup/cycle"] == pf.measure("cycle_knn", a[rows], b[rows], topk=7)


# --- failures --------------------------------------------------------------------------------------

def test_failures_raise_on_every_rank(battery):
    """A rank that fails (bad input on one rank, an error inside the kNN ring, inconsistent
    shapes) makes every rank raise, at once, and the group stays usable (run at the end of the
    three-rank battery)."""
    world, results = battery
    if world != 3:
        pytest.skip("run by the three-rank group")
    for r in range(3):
        got = results[r]["failures"]
        nan = got["nan_on_one_rank"]["error"]
        assert nan is not None
        assert ("ValueError" in nan and "NaN" in nan) if r == 2 else ("ShardError" in nan and "rank 2" in nan)
        ring = got["fail_mid_ring"]["error"]
        assert ("MemoryError" in ring) if r == 1 else ("ShardError" in ring and "injected" in ring)
        assert got["ok_after_failures"]["error"] is None
        assert "different widths" in got["width_mismatch"]["error"]
        assert "same rows" in got["rows_mismatch"]["error"]
        for item in got.values():
            assert item["elapsed"] < 10.0  # agreement, not a timeout


@pytest.mark.slow
def test_dead_rank_makes_the_others_raise(tmp_path):
    results = run_group(tmp_path, 3, "dies", wait_all=False)
    for r in (0, 2):
        assert results[r]["error"] is not None
        assert results[r]["elapsed"] < 15.0


@pytest.mark.slow
def test_stalled_rank_times_out(tmp_path):
    results = run_group(tmp_path, 2, "stalls", wait_all=False, timeout=60)
    assert results[0]["error"] is not None
    assert results[0]["elapsed"] < 15.0


@requires_cuda
def test_nccl_world_size_one_cuda(tmp_path):
    """One rank under NCCL with CUDA tensors through the same code (NCCL refuses two ranks on
    one GPU; several GPUs are untested here)."""
    got = run_group(tmp_path, 1, "cuda")[0]
    dev = torch.device("cuda")
    a, b = (t.to(dev) for t in W.pair(1, torch.float32))
    assert torch.equal(got["knn"][1].cpu(), pf.knn(W.knn_data("tied", torch.float32).to(dev), 12)[1].cpu())
    for metric, opts in W.METRIC_CASES:
        ref = pf.measure(metric, a, b, **opts)
        assert abs(got[W.key(metric, opts)] - ref) <= (1e-6 if metric == "cknna" else TOL64), (metric, opts)
    x, y = W.layers()
    assert torch.equal(got["outliers"].cpu(), pf.remove_outliers(x.to(dev), 0.9, True).cpu())
    res = pf.align(x.to(dev), [l.to(dev) for l in y], "mutual_knn", topk=5, permutations=4, generator=0)
    assert torch.equal(got["align"][0], res.scores) and torch.equal(got["align"][1], res.calibration.null)


# --- in process ------------------------------------------------------------------------------------

def test_without_process_group_is_one_process():
    """No initialised group: the sharded functions run as one process on the same code path."""
    a, b = W.pair(2, torch.float32)
    assert torch.equal(pfd.knn(a, 7)[1], pf.knn(a, 7)[1])
    assert pfd.measure("mutual_knn", a, b, topk=7) == pf.measure("mutual_knn", a, b, topk=7)


def test_bad_arguments_in_process():
    a, b = W.pair(2, torch.float32)
    with pytest.raises(ValueError, match="k must be"):
        pfd.knn(a, W.N)
    with pytest.raises(ValueError, match="timeout"):
        pfd.knn(a, 3, timeout=-1)
    with pytest.raises(ValueError, match="metric must be one of"):
        pfd.measure("nope", a, b)
    with pytest.raises(TypeError, match="ShardedPrepared"):
        pfd.score(pf.prepare("cka", a), pf.prepare("cka", b))


# --- torchrun -m platonic_fast measure ---------------------------------------------------------------

def _models(folder, n: int = 203):
    folder.mkdir()
    shared = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
    for seed, (name, layers, width) in enumerate((("alpha", 3, 24), ("beta", 4, 16), ("gamma", 2, 32)), 1):
        g = torch.Generator().manual_seed(seed)
        feats = torch.stack([shared @ torch.randn(6, width, generator=g) + (1 + l) * torch.randn(n, width, generator=g)
                             for l in range(layers)], dim=1)
        torch.save({"feats": feats}, folder / f"{name}.pt")
    return folder


def _torchrun(args, world: int = 2, timeout: float = GROUP_TIMEOUT_S):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                           "-m", "platonic_fast", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_torchrun_measure_equals_one_process_and_resumes(tmp_path):
    """`torchrun -m platonic_fast measure`: each rank its rows, rank 0 writes; the same records
    (keys, scores, nulls) as one process, reused by either on a second run."""
    import json

    from platonic_fast.sweep import measure_sets

    folder = _models(tmp_path / "feats")
    args = ["measure", str(folder), "--metric", "cknna", "--topk", "5", "--permutations", "4", "--no-progress"]
    proc = _torchrun([*args, "--out", str(tmp_path / "sharded")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("raw score of the best layer pair") == 1  # rank 0 reports
    one = measure_sets(folder, metric="cknna", topk=5, permutations=4, out_dir=tmp_path / "one", progress=False)
    saved = json.loads((tmp_path / "sharded" / "scores.json").read_text())
    assert saved["run"]["ranks"] == 2
    assert np.allclose(saved["scores"], one.scores, rtol=0, atol=1e-12)
    assert saved["best_layers"] == one.best_layers.tolist()
    pairs = sorted(p.name for p in (tmp_path / "sharded" / "pairs").iterdir())
    assert pairs == sorted(p.name for p in (tmp_path / "one" / "pairs").iterdir())
    for name in pairs:
        a = json.loads((tmp_path / "sharded" / "pairs" / name).read_text())
        b = json.loads((tmp_path / "one" / "pairs" / name).read_text())
        assert a["key"] == b["key"]
        assert np.allclose(np.array(a["layer_scores"], float), np.array(b["layer_scores"], float), atol=1e-12)
        assert np.allclose(a["calibration"]["max"]["null"], b["calibration"]["max"]["null"], atol=1e-12)
    # resumed: a sharded run over the one-process folder computes nothing and writes the same
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one" / "pairs").iterdir()}
    proc = _torchrun([*args, "--out", str(tmp_path / "one")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one" / "pairs").iterdir()}
    assert np.allclose(json.loads((tmp_path / "one" / "scores.json").read_text())["scores"], one.scores, atol=1e-12)


def test_torchrun_refuses_what_is_not_sharded(monkeypatch, capsys):
    """Under torchrun only `measure` runs, without confidence intervals or --out-of-core."""
    from platonic_fast.__main__ import run as run_cli
    from platonic_fast.distributed._comm import Comm
    from platonic_fast.distributed._sweep import SweepShard

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_cli(["env"]) == 2
    assert "only `measure`" in capsys.readouterr().err
    shard = SweepShard(Comm())
    with pytest.raises(ValueError, match="not computed by a sharded sweep"):
        shard.check({"ci": {"repeats": 5}}, {}, None)
    with pytest.raises(ValueError, match="out-of-core"):
        shard.check({"ci": None}, {}, True)
    inputs = {"out_of_core": True}
    shard.check({"ci": None}, inputs, None)
    assert inputs["out_of_core"] is False


@pytest.mark.slow
def test_ranks_that_read_different_inputs_stop_before_scoring(tmp_path):
    """Issue 22 item 1: each rank its own copy of the files. Equal copies score as one process;
    a copy with other content, other N or damaged data (header intact) stops every rank."""
    from platonic_fast.features import Features
    from platonic_fast.sweep import measure_sets

    results = run_group(tmp_path, 2, "inputs")
    one = tmp_path / "one"
    one.mkdir()
    for m in range(2):
        Features(torch.randn(40, 2, 6, generator=torch.Generator().manual_seed(m)), None,
                 {"model": f"m{m}"}).save(one / f"m{m}.safetensors")
    ref = measure_sets(one, metric="mutual_knn", topk=5, out_dir=tmp_path / "one-out", progress=False)
    for r in range(2):
        got = results[r]
        assert "error" not in got["same"], got["same"]
        assert np.allclose(got["same"]["scores"], ref.scores, atol=1e-12)
        assert "different feature files" in got["content"]["error"]
        assert "different feature files" in got["n"]["error"]
        assert "fails verification" in got["damaged"]["error"] or "rank 1" in got["damaged"]["error"]
        assert not (tmp_path / "inputs-2" / "rank0" / "out-content" / "pairs").exists()
    assert "m1.safetensors differs in its fingerprint" in results[1]["content"]["error"]
    assert "N=42" in results[1]["n"]["error"]
