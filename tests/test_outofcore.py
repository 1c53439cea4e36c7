"""Out-of-core layer search (platonic_fast.outofcore, features.blocks, measure --out-of-core): feature
files read a block of rows at a time give bitwise the prepared layers, neighbour lists and scores
of the in-memory path, and the pages read are handed back (RSS stays flat)."""

import json
import warnings

import numpy as np
import pytest
import torch

import platonic_fast as pf
from platonic_fast import features, outofcore, sweep
from platonic_fast.align import prepare_layers, prepare_states, resolve_options
from platonic_fast.features.blocks import FeatureFile, streamed_checksum
from platonic_fast.ops.knn import neighbours

from conftest import DEVICES

N = 700


def _stacked(seed: int = 0, n: int = N, layers: int = 3, width: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 5, generator=torch.Generator().manual_seed(99))
    out = [shared @ torch.randn(5, width, generator=g) + (1 + l) * torch.randn(n, width, generator=g)
           for l in range(layers)]
    x = torch.stack(out, dim=1) * torch.tensor([1.0, 7.0, 30.0, 0.5][:layers])[None, :, None]
    x[11] = x[12]  # an exact duplicate: ties settled by the index rule
    return x


@pytest.fixture()
def stacked_file(tmp_path):
    x = _stacked()
    path = tmp_path / "m.safetensors"
    features.Features(x, meta={"model": "m"}).save(path)
    return path, x


def _blocks_of(s, layer, step):
    return torch.cat([s.block(layer, r0, min(s.n, r0 + step)) for r0 in range(0, s.n, step)])


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("concat", [False, True])
def test_prepared_layers_are_bitwise_the_in_memory_ones(stacked_file, tmp_path, exact, concat):
    path, x = stacked_file
    ref = prepare_layers(x, "x", exact=exact, concat=concat)
    np.save(tmp_path / "m.npy", x.numpy())
    for source in (path, tmp_path / "m.npy"):
        with outofcore.StreamedLayers(source, exact=exact, concat=concat, block_bytes=20_000) as s:
            assert s.num_layers == len(ref) and s.widths == [t.shape[1] for t in ref]
            for layer, want in enumerate(ref):
                assert torch.equal(_blocks_of(s, layer, 97), want)
                assert torch.equal(s.gather(layer, torch.tensor([5, 3, 5, N - 1])), want[[5, 3, 5, N - 1]])
                assert torch.equal(s.layer(layer), want)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("concat", [False, True])
def test_layers_of_different_widths_and_scales(tmp_path, exact, concat):
    g = torch.Generator().manual_seed(3)
    layers = [torch.randn(300, 16, generator=g), torch.randn(300, 40, generator=g) * 1e-30,
              torch.randn(300, 8, generator=g) * 1e25]
    features.Features(layers, meta={"model": "l"}).save(tmp_path / "l.safetensors")
    ref = prepare_layers(layers, "x", exact=exact, concat=concat)
    with outofcore.StreamedLayers(tmp_path / "l.safetensors", exact=exact, concat=concat, block_bytes=5000) as s:
        for layer, want in enumerate(ref):
            assert torch.equal(_blocks_of(s, layer, 64), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_stored_dtypes(tmp_path, dtype):
    x = _stacked(n=200).to(dtype)
    features.Features(x, meta={"model": "d"}).save(tmp_path / "d.safetensors")
    for exact in (False, True):
        ref = prepare_layers(x, "x", exact=exact)
        with outofcore.StreamedLayers(tmp_path / "d.safetensors", exact=exact, block_bytes=3000) as s:
            for layer, want in enumerate(ref):
                assert torch.equal(_blocks_of(s, layer, 50), want)


def test_q_one_and_the_exact_quantile_of_a_large_tensor(tmp_path):
    x = _stacked(n=400)
    path = tmp_path / "q.safetensors"
    features.Features(x, meta={"model": "q"}).save(path)
    with outofcore.StreamedLayers(path, q=1.0) as s:
        assert s.thresholds == [None] * 3
        assert torch.equal(_blocks_of(s, 1, 100), prepare_layers(x, "x", q=1.0)[1])
    # the radix selection against a sort, on values with many repeats and both signs
    g = torch.Generator().manual_seed(5)
    v = torch.randint(-300, 300, (50_000,), generator=g).float() / 7
    for q in (0.0, 0.37, 0.95, 0.999999):
        pos = int(q * v.numel())
        want = v.abs().sort().values[pos]
        got = outofcore._radix_select(lambda: iter(v.split(3001)), pos)
        assert torch.equal(got, want)


@pytest.mark.slow
def test_streamed_knn_equals_the_in_memory_knn(stacked_file, count_calls):
    path, x = stacked_file
    x = x.clone()
    x[100:160] = x[200]  # 61 identical rows: their near-tie clusters reach past k + 4 candidates
    features.Features(x, meta={"model": "m"}).save(path)
    ref = prepare_layers(x, "x")
    more = count_calls(outofcore, "_more_candidates")
    with outofcore.StreamedLayers(path) as s:
        for layer in (0, 2):
            for k, exclude in ((10, True), (7, False), (300, True)):
                got = outofcore.stream_neighbours(s, layer, k, exclude_self=exclude, panel_bytes=1 << 14)
                want = neighbours(ref[layer], k, exclude_self=exclude)
                assert torch.equal(got[1], want[1]) and got[2] == want[2]
                assert torch.equal(got[0], want[0])
    assert len(more) > 0


@pytest.mark.parametrize("metric,options", [
    ("mutual_knn", {}), ("cycle_knn", {}), ("lcs_knn", {}), ("edit_distance_knn", {}), ("cknna", {}),
    ("cknna", {"unbiased": False}), ("cka", {}), ("unbiased_cka", {}), ("svcca", {"cca_dim": 5})])
def test_prepared_states_score_as_in_memory(stacked_file, metric, options):
    path, x = stacked_file
    y = _stacked(seed=4, layers=2, width=16)
    opts = resolve_options(metric, N, [24, 16], topk=10, **options)
    in_memory = prepare_states(prepare_layers(x, "x", concat=True), metric, opts)
    streamed = outofcore.prepare_file(path, metric, opts, concat=True)
    other = prepare_states(prepare_layers(y, "y"), metric, opts)
    assert len(streamed) == len(in_memory) == 4
    if metric in ("cka", "unbiased_cka"):  # float64 sums over blocks, not one GEMM's order
        for a, b in zip(in_memory, streamed):
            assert isinstance(b.state.features, outofcore.LayerRows)
            assert pf.score(b, b) == pytest.approx(pf.score(a, a), rel=1e-12)
            assert pf.score(a, b) == pytest.approx(pf.score(a, a), rel=1e-12)
            for o in other:
                assert pf.score(b, o) == pytest.approx(pf.score(a, o), rel=1e-12, abs=1e-15)
        return
    for a, b in zip(in_memory, streamed):
        assert pf.score(a, a) == pf.score(b, b) == pf.score(a, b)
        for o in other:
            assert pf.score(a, o) == pf.score(b, o)


def _state_elements(state) -> int:
    """The largest tensor a prepared state holds (LayerRows views hold none)."""
    return max((v.numel() for v in vars(state).values() if isinstance(v, torch.Tensor)), default=0)


@pytest.mark.parametrize("options,n,width", [
    ({}, 700, 24),                                          # feature space, float64 work
    ({}, 2200, 360),                                        # feature space, float32 work (N·D² > 2**28)
    ({"unbiased": True}, 2200, 360),
    ({}, 150, 400),                                         # linear tiles: N below the width
    ({"kernel_metric": "rbf", "rbf_sigma": 0.7}, 700, 24),  # RBF tiles (shifted form)
    ({"kernel_metric": "rbf", "rbf_sigma": 0.15}, 3500, 24),  # narrow RBF, float32: exact close distances
    ({"kernel_metric": "rbf", "rbf_sigma": 3.0, "unbiased": True}, 500, 24),  # σ above the distances: the shifted form
])
@pytest.mark.slow
def test_streamed_hsic_stats_hold_no_layer_and_score_as_in_memory(tmp_path, options, n, width):
    x = _stacked(seed=1, n=n, layers=2, width=width)
    x[3] = x[4]  # a duplicate row
    y = _stacked(seed=2, n=n, layers=2, width=width // 2 + 3)
    for name, t in (("x", x), ("y", y)):
        features.Features(t, meta={"model": name}).save(tmp_path / f"{name}.safetensors")
    opts = resolve_options("cka", n, [width, width // 2 + 3], **options)
    mem = [prepare_states(prepare_layers(t, name), "cka", opts) for name, t in (("x", x), ("y", y))]
    ooc = [outofcore.prepare_file(tmp_path / f"{name}.safetensors", "cka", opts) for name in ("x", "y")]
    float64_work = n * width * width <= (1 << 28) if width <= n and options.get("kernel_metric", "ip") == "ip" \
        else n * n * width <= (1 << 28)
    rel = 1e-12 if float64_work else 2e-6
    for sx_mem, sx_ooc in zip(mem[0], ooc[0]):
        assert _state_elements(sx_ooc.state) <= max(n, width * width)  # O(N) statistics, no N x D
        for sy_mem, sy_ooc in zip(mem[1], ooc[1]):
            want = pf.score(sx_mem, sy_mem)
            assert pf.score(sx_ooc, sy_ooc) == pytest.approx(want, rel=rel, abs=1e-12)
            assert pf.score(sx_ooc, sy_mem) == pytest.approx(want, rel=rel, abs=1e-12)


def test_cka_grid_reads_each_layer_once_per_group_and_equals_pair_by_pair(tmp_path, monkeypatch):
    from platonic_fast.ops import hsic

    x = _stacked(seed=3, n=900, layers=3, width=40)
    y = _stacked(seed=4, n=900, layers=2, width=24)
    for name, t in (("x", x), ("y", y)):
        features.Features(t, meta={"model": name}).save(tmp_path / f"{name}.safetensors")
    reads = []
    real = outofcore.StreamedLayers.block

    def counted(self, layer, r0, r1):
        reads.append(layer)
        return real(self, layer, r0, r1)

    for metric in ("cka", "unbiased_cka"):
        opts = resolve_options(metric, 900, [40, 24])
        sx = [p.state for p in outofcore.prepare_file(tmp_path / "x.safetensors", metric, opts, concat=True)]
        sy = [p.state for p in outofcore.prepare_file(tmp_path / "y.safetensors", metric, opts)]
        pairwise = [[hsic.cka_from_stats(a, b, unbiased=opts["unbiased"]) for b in sy] for a in sx]
        monkeypatch.setattr(outofcore.StreamedLayers, "block", counted)
        for budget in (None, 8 * 40 * 48 + 1):  # one group; one X layer per group
            reads.clear()
            grid = hsic.cka_grid(sx, sy, unbiased=opts["unbiased"], budget=budget)
            np.testing.assert_allclose(grid, pairwise, rtol=1e-12, atol=1e-15)
            groups = 1 if budget is None else len(sx)
            blocks = len(range(0, 900, max(1, hsic.BLOCK_PRODUCT_BYTES // (4 * 12))))  # at most 900 rows a block
            assert len(reads) == (len(sx) + groups * len(sy)) * blocks  # once per step and group, never per pair
        monkeypatch.undo()
        in_memory = [p.state for p in prepare_states(prepare_layers(x, "x"), metric, opts)]
        assert hsic.cka_grid(in_memory, in_memory, unbiased=opts["unbiased"]) is None  # pair by pair


@pytest.mark.parametrize("device", DEVICES)
def test_streamed_hsic_on_a_device_scores_as_in_memory(tmp_path, device):
    """Streamed states on ``device`` (CUDA: blocks copied through pinned buffers) against the
    in-memory states on the same device, for the feature-space and the tile forms."""
    x = _stacked(seed=5, n=600, layers=2, width=20)
    y = _stacked(seed=6, n=600, layers=2, width=14)
    for name, t in (("x", x), ("y", y)):
        features.Features(t, meta={"model": name}).save(tmp_path / f"{name}.safetensors")
    for options in ({}, {"kernel_metric": "rbf", "rbf_sigma": 0.8}):
        opts = resolve_options("cka", 600, [20, 14], backend="torch", **options)
        assert outofcore.streamable("cka", opts, device)
        mem = [prepare_states([t.to(device) for t in prepare_layers(v, "v")], "cka", opts) for v in (x, y)]
        ooc = [outofcore.prepare_file(tmp_path / f"{name}.safetensors", "cka", opts, device=device)
               for name in ("x", "y")]
        assert ooc[0][0].state.features.device.type == torch.device(device).type
        for a_mem, a_ooc in zip(mem[0], ooc[0]):
            for b_mem, b_ooc in zip(mem[1], ooc[1]):
                assert pf.score(a_ooc, b_ooc) == pytest.approx(pf.score(a_mem, b_mem), rel=1e-10, abs=1e-13)


def test_align_files_cka_with_permutations_equals_align(stacked_file, tmp_path):
    path, x = stacked_file
    y = _stacked(seed=8, layers=2, width=12)
    np.save(tmp_path / "y.npy", y.numpy())
    for metric in ("cka", "unbiased_cka"):
        got = outofcore.align_files(path, tmp_path / "y.npy", metric, permutations=7, generator=3, concat=True)
        want = pf.align(x, y, metric, permutations=7, generator=3, concat=True)
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-12, atol=1e-14)
        assert got.best_layers == want.best_layers
        torch.testing.assert_close(got.chance, want.chance, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(torch.as_tensor(got.calibration.null), torch.as_tensor(want.calibration.null),
                                   rtol=1e-12, atol=1e-14)


def test_align_files_equals_align(stacked_file, tmp_path):
    path, x = stacked_file
    y = _stacked(seed=8, layers=4, width=12)
    np.save(tmp_path / "y.npy", y.numpy())
    got = outofcore.align_files(path, tmp_path / "y.npy", "mutual_knn", topk=7, permutations=9, generator=1)
    want = pf.align(x, y, "mutual_knn", topk=7, permutations=9, generator=1)
    assert torch.equal(got.scores, want.scores) and got.best_layers == want.best_layers
    assert torch.equal(got.chance, want.chance)
    assert got.calibration.as_dict() == want.calibration.as_dict()
    rows = np.arange(0, N, 3)
    sub = outofcore.align_files(path, tmp_path / "y.npy", "cknna", topk=5, rows=rows)
    assert torch.equal(sub.scores, pf.align(x[rows], y[rows], "cknna", topk=5).scores)


def test_a_constant_layer_is_nan_with_a_warning(tmp_path):
    x = _stacked(n=200)
    x[:, 1] = 3.0
    features.Features(x, meta={"model": "c"}).save(tmp_path / "c.safetensors")
    opts = resolve_options("mutual_knn", 200, [24], topk=5)
    with pytest.warns(pf.DegenerateInputWarning, match="layer 1 is constant"):
        states = outofcore.prepare_file(tmp_path / "c.safetensors", "mutual_knn", opts)
    assert states[1] is None and states[0] is not None


def test_non_finite_features_are_refused(tmp_path):
    x = _stacked(n=100)
    x[50, 2, 3] = float("nan")
    features.Features(x, meta={"model": "bad"}).save(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="NaN or Inf"):
        outofcore.StreamedLayers(tmp_path / "bad.safetensors", name="bad")


def test_feature_file_reads_rows_subsets_and_refuses_bad_files(stacked_file, tmp_path):
    path, x = stacked_file
    rows = np.array([0, 4, 5, 6, 300, N - 1])
    with FeatureFile(path, rows=rows) as f:
        assert (f.n, f.num_layers, f.widths, f.stacked) == (6, 3, [24] * 3, True)
        assert torch.equal(f.read(2, 1, 4), x[rows[1:4], 2])
        assert torch.equal(f.read_all(0, 6), x[rows])
        assert torch.equal(f.gather(1, [5, 0, 5]), x[rows[[5, 0, 5]], 1])
        stored, actual = f.checksum()
        assert stored == actual == features.storage.stored_checksum(path) == streamed_checksum(path)
    for bad in ([3, 2], [0, N], [-1, 2]):
        with pytest.raises(ValueError, match="increasing row numbers"):
            FeatureFile(path, rows=bad)
    np.save(tmp_path / "f.npy", np.asfortranarray(x.numpy()))
    with pytest.raises(ValueError, match="Fortran"):
        FeatureFile(tmp_path / "f.npy")
    np.save(tmp_path / "i.npy", np.zeros((4, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="float"):
        FeatureFile(tmp_path / "i.npy")
    data = path.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        FeatureFile(tmp_path / "t.safetensors")


def _rss_file_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status RssFile here")


@pytest.mark.slow
def test_pages_read_are_handed_back(tmp_path):
    """Reading a 96 MiB file through FeatureFile leaves RSS where it was; touching the same file
    through a plain mapping adds all of it (the measurement sees mapped pages)."""
    n, layers, width = 8192, 4, 768
    path = tmp_path / "big.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, layers, width))
    for r in range(0, n, 1024):
        arr[r:r + 1024] = np.random.default_rng(r).standard_normal((1024, layers, width), dtype=np.float32)
    arr.flush()
    del arr
    before = _rss_file_mib()
    with FeatureFile(path) as f:
        total = 0.0
        for layer in range(layers):
            for r in range(0, n, 1000):
                total += float(f.read(layer, r, min(n, r + 1000)).sum())
        for r in range(0, n, 500):
            f.read_all(r, min(n, r + 500))
        f.gather(2, np.arange(0, n, 7))
        grown = _rss_file_mib() - before
    assert grown < 8, f"RssFile grew by {grown:.1f} MiB"
    plain = np.load(path, mmap_mode="r")
    float(plain.sum())
    assert _rss_file_mib() - before > 64  # the check would see pages left mapped
    del plain


@pytest.mark.slow
def test_sweep_out_of_core_equals_in_memory(tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    for i, (layers, width) in enumerate(((3, 24), (2, 16))):
        features.Features(_stacked(seed=i, n=200, layers=layers, width=width), meta={"model": f"m{i}"}).save(
            folder / f"m{i}.safetensors")
    torch.save({"feats": _stacked(seed=7, n=200, layers=2, width=12)}, folder / "ref.pt")  # read whole
    kw = dict(metric="mutual_knn", topk=[5, 8], permutations=5, ci_repeats=2, progress=False, concat=True)
    mem = sweep.measure_sets(folder, out_dir=tmp_path / "mem", out_of_core=False, **kw)
    ooc = sweep.measure_sets(folder, out_dir=tmp_path / "ooc", out_of_core=True, **kw)
    assert ooc.run["out_of_core"] and not mem.run["out_of_core"]
    for k in (5, 8):
        assert ooc.by_topk[k].records == mem.by_topk[k].records
    # the same keys: a run in the other mode finds every record
    assert sorted(p.name for p in (tmp_path / "mem" / "pairs").iterdir()) == \
        sorted(p.name for p in (tmp_path / "ooc" / "pairs").iterdir())
    saved = json.loads((tmp_path / "ooc" / "scores.json").read_text())
    assert saved["run"]["out_of_core"] is True


def test_sweep_out_of_core_refuses_a_file_that_fails_its_checksum(tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    for i in range(2):
        features.Features(_stacked(seed=i, n=100), meta={"model": f"m{i}"}).save(folder / f"m{i}.safetensors")
    path = folder / "m1.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # a bit flip in the data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"m1\.safetensors.*fails verification"):
        sweep.measure_sets(folder, topk=5, out_dir=tmp_path / "out", out_of_core=True, progress=False)


def test_out_of_core_is_chosen_for_files_large_against_memory(tmp_path, monkeypatch):
    folder = tmp_path / "feats"
    folder.mkdir()
    for i in range(2):
        features.Features(_stacked(seed=i, n=80), meta={"model": f"m{i}"}).save(folder / f"m{i}.safetensors")
    res = sweep.measure_sets(folder, topk=5, out_dir=tmp_path / "a", progress=False)
    assert res.run["out_of_core"] is False
    monkeypatch.setattr(outofcore, "memory_available", lambda: 1000)
    res = sweep.measure_sets(folder, topk=5, out_dir=tmp_path / "b", progress=False)
    assert res.run["out_of_core"] is True
    with pytest.raises(TypeError, match="out_of_core"):
        sweep.measure_sets(folder, topk=5, out_dir=tmp_path / "c", out_of_core="yes", progress=False)


def test_cli_out_of_core(tmp_path, capsys):
    from platonic_fast.cli import main

    folder = tmp_path / "feats"
    folder.mkdir()
    for i in range(2):
        features.Features(_stacked(seed=i, n=120), meta={"model": f"m{i}"}).save(folder / f"m{i}.safetensors")
    with warnings.catch_warnings():
        assert main(["measure", str(folder), "--topk", "5", "--out", str(tmp_path / "o"), "--out-of-core",
                     "--no-progress"]) == 0
    assert json.loads((tmp_path / "o" / "scores.json").read_text())["run"]["out_of_core"] is True
    assert "mutual_knn" in capsys.readouterr().out


def test_each_file_is_verified_once_per_sweep(tmp_path, monkeypatch):
    from platonic_fast.features import blocks

    folder = tmp_path / "feats"
    folder.mkdir()
    for i in range(2):
        features.Features(_stacked(seed=i, n=120), meta={"model": f"m{i}"}).save(folder / f"m{i}.safetensors")
    calls = []
    real = blocks.streamed_checksum
    monkeypatch.setattr(blocks, "streamed_checksum", lambda fh: calls.append(fh.name) or real(fh))
    sweep.measure_sets(folder, topk=5, n_grid=[40, 80, 120], out_dir=tmp_path / "o", out_of_core=True,
                       progress=False)
    assert sorted(calls) == sorted(str(folder / f"m{i}.safetensors") for i in range(2))


@pytest.mark.parametrize("metric", ["mutual_knn", "cka"])
@pytest.mark.slow
def test_sweep_reads_npy_files_in_memory_and_out_of_core(tmp_path, metric):
    folder = tmp_path / "feats"
    folder.mkdir()
    np.save(folder / "a.npy", _stacked(seed=0, n=160, layers=3, width=20).numpy())
    np.save(folder / "b.npy", _stacked(seed=1, n=160, layers=1, width=12)[:, 0].numpy())  # N x D: one layer
    features.Features(_stacked(seed=2, n=160, layers=2, width=16), meta={"model": "c"}).save(
        folder / "c.safetensors")
    loaded = features.load(folder / "b.npy")
    assert loaded.num_layers == 1 and loaded.meta["source_format"] == "numpy .npy"
    with pytest.raises(ValueError, match="no checksum"):
        features.load(folder / "a.npy", verify=True)
    mem = sweep.measure_sets(folder, metric=metric, topk=5, out_dir=tmp_path / "mem", out_of_core=False,
                             progress=False)
    ooc = sweep.measure_sets(folder, metric=metric, topk=5, out_dir=tmp_path / "ooc", out_of_core=True,
                             progress=False)
    assert mem.names_x == ["a", "b", "c"]
    if metric == "mutual_knn":
        assert ooc.records == mem.records
    else:
        np.testing.assert_allclose(ooc.scores, mem.scores, rtol=1e-12)
    summary = json.loads((tmp_path / "ooc" / "scores.json").read_text())
    assert summary["run"]["out_of_core"] is True


def test_npy_files_that_are_not_features_are_refused(tmp_path):
    np.save(tmp_path / "ints.npy", np.arange(12).reshape(3, 4))
    np.save(tmp_path / "flat.npy", np.zeros(5, dtype=np.float32))
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="float16, float32 or float64"):
        features.load(tmp_path / "ints.npy")
    with pytest.raises(ValueError, match="N x L x D or N x D"):
        features.load(tmp_path / "flat.npy")
    with pytest.raises(ValueError, match="could not be read as a NumPy"):
        features.load(tmp_path / "bad.npy")
