"""measure --n-grid: the sweep on nested seeded subsets of the samples gives, at every N, the
scores of a sweep of feature files holding just those samples; records are keyed by the subset
(resume, sharing with a sweep without a grid at N); results, plot and table per N."""

import json

import numpy as np
import pytest
import torch

from platonic_fast import features, sweep
from platonic_fast.cli import main as cli_main

N = 240


def _model(seed: int, layers: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(N, 5, generator=torch.Generator().manual_seed(0))
    return torch.stack([shared @ torch.randn(5, width, generator=g) + (1 + l) * torch.randn(N, width, generator=g)
                        for l in range(layers)], dim=1)


MODELS = {"alpha": (1, 3, 16), "beta": (2, 2, 12), "gamma": (3, 2, 20)}


@pytest.fixture()
def folder(tmp_path):
    out = tmp_path / "feats"
    out.mkdir()
    for name, spec in MODELS.items():
        features.Features(_model(*spec), meta={"model": name}).save(out / f"{name}.safetensors")
    return out


def test_subsets_are_nested_seeded_and_fixed():
    order = sweep.subset_order(1000, 7)
    assert sorted(order.tolist()) == list(range(1000))
    small, large = sweep.subset_rows(1000, 50, 7), sweep.subset_rows(1000, 400, 7)
    assert np.all(np.diff(small) > 0) and set(small) <= set(large)
    assert not np.array_equal(sweep.subset_rows(1000, 50, 8), small)
    # defined by integer arithmetic only: these never change
    assert sweep.subset_order(10, 0).tolist() == [1, 4, 5, 7, 6, 9, 0, 3, 2, 8]
    assert sweep.subset_rows(N, 5, 0).tolist() == sorted(sweep.subset_order(N, 0)[:5].tolist())
    with pytest.raises(ValueError, match="n must be"):
        sweep.subset_rows(10, 11, 0)


@pytest.mark.parametrize("out_of_core", [False, True])
@pytest.mark.slow
def test_each_n_equals_a_sweep_of_just_those_samples(folder, tmp_path, out_of_core):
    sizes = [40, 120, N]
    res = sweep.measure_sets(folder, metric="mutual_knn", topk=[4, 6], n_grid=[120, 40, N, 40], n_grid_seed=3,
                             out_dir=tmp_path / "grid", progress=False, out_of_core=out_of_core)
    assert res.n_sizes == sizes and res.n == N and res.n_grid == {"n": sizes, "seed": 3}
    assert sorted(res.by_topk) == [4, 6] and res.by_topk[6].n_sizes == sizes
    for n in sizes[:-1]:
        rows = torch.from_numpy(sweep.subset_rows(N, n, 3))
        sub = tmp_path / f"sub{n}"
        sub.mkdir()
        for name, spec in MODELS.items():
            features.Features(_model(*spec)[rows], meta={"model": name}).save(sub / f"{name}.safetensors")
        ref = sweep.measure_sets(sub, metric="mutual_knn", topk=[4, 6], out_dir=tmp_path / f"ref{n}", progress=False)
        for k in (4, 6):
            got = res.by_topk[k].by_n[n]
            assert got.n == n and got.settings["subset"] == {"n": n, "seed": 3}
            np.testing.assert_array_equal(got.scores, ref.by_topk[k].scores)
            np.testing.assert_array_equal(got.best_layers, ref.by_topk[k].best_layers)
    # the whole set is the plain sweep: same scores, same records
    plain = sweep.measure_sets(folder, metric="mutual_knn", topk=[4, 6], out_dir=tmp_path / "plain", progress=False)
    np.testing.assert_array_equal(res.by_n[N].scores, plain.scores)
    assert "subset" not in res.by_n[N].settings
    grid_files = {p.name for p in (tmp_path / "grid" / "pairs").iterdir()}
    assert {p.name for p in (tmp_path / "plain" / "pairs").iterdir()} < grid_files
    assert len(grid_files) == 6 * 2 * 3  # 6 symmetric pairs x 2 topk x 3 sizes

    # chance per N: mutual kNN's k / (n - 1)
    chance = res.n_grid_matrix("chance")
    for g, n in enumerate(sizes):
        np.testing.assert_allclose(chance[g], 4 / (n - 1))
    saved = json.loads((tmp_path / "grid" / "scores.json").read_text())
    grid = saved["n_grid"]
    assert grid["n"] == sizes and grid["seed"] == 3 and "splitmix64" in grid["order"]
    entry = {e["topk"]: e for e in grid["results"]}[4]
    np.testing.assert_array_equal(np.array(entry["scores"]), res.n_grid_matrix("scores"))
    np.testing.assert_allclose(np.array(entry["chance"]), chance)
    assert [(c["x"], c["y"]) for c in entry["curves"]] == [("alpha", "beta"), ("alpha", "gamma"), ("beta", "gamma")]
    npz = np.load(tmp_path / "grid" / "scores.npz")
    np.testing.assert_array_equal(npz["k4_ngrid_n"], sizes)
    np.testing.assert_array_equal(npz["k6_ngrid_scores"], res.by_topk[6].n_grid_matrix("scores"))
    assert npz["k4_ngrid_best_layers"].shape == (3, 3, 3, 2)
    assert (tmp_path / "grid" / "n_grid_k4.png").stat().st_size > 0 and "n_grid_png_k6" in res.files


@pytest.mark.slow
def test_resume_and_keys(folder, tmp_path, monkeypatch):
    kw = dict(metric="cycle_knn", topk=5, n_grid=[30, 90], out_dir=tmp_path / "out", progress=False)
    first = sweep.measure_sets(folder, **kw)
    monkeypatch.setattr(sweep, "_compute_record", lambda *a, **k: pytest.fail("a finished pair was recomputed"))
    again = sweep.measure_sets(folder, **kw)
    np.testing.assert_array_equal(first.n_grid_matrix(), again.n_grid_matrix())
    # another seed is another subset: new records
    with pytest.raises(pytest.fail.Exception):
        sweep.measure_sets(folder, **{**kw, "n_grid": [30]}, n_grid_seed=1)


@pytest.mark.slow
def test_permutations_and_intervals_per_n(folder, tmp_path):
    res = sweep.measure_sets([folder / "alpha.safetensors"], [folder / "beta.safetensors"], metric="cknna", topk=4,
                             n_grid=[60, N], permutations=5, ci_repeats=2, out_dir=tmp_path / "out", progress=False)
    assert res.n_grid_matrix("calibrated").shape == res.n_grid_matrix("ci_low").shape == (2, 1, 1)
    assert np.isnan(res.n_grid_matrix("chance")).sum() == 0  # the null mean of the best pair
    assert res.curve_pairs() == [(0, 0)]
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())["n_grid"]["results"][0]
    assert {"calibrated", "p_value", "ci_low", "ci_high"} <= set(saved)
    table = sweep.format_n_grid_table(res)
    assert "alpha / beta" in table and "N=60" in table and "chance level" in table


def test_bad_grids(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "read_inputs", lambda *a: pytest.fail("read the files before checking options"))
    for bad, match in (([], "at least one"), ([1000, 1], ">= 2"), (["10"], ">= 2"), ("100", "list"),
                       ([10.5], ">= 2")):
        with pytest.raises((ValueError, TypeError), match=match):
            sweep.measure_sets(folder, n_grid=bad, out_dir=tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="n_grid_seed"):
        sweep.measure_sets(folder, n_grid=[10], n_grid_seed=-1, out_dir=tmp_path / "o", progress=False)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=f"n_grid value 1000 exceeds the N={N}"):
        sweep.measure_sets(folder, n_grid=[10, 1000], out_dir=tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="n_grid value 8: topk"):
        sweep.measure_sets(folder, topk=10, n_grid=[8, 100], out_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "pairs").exists()


@pytest.mark.slow
def test_cli_n_grid(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["measure", str(folder), "--topk", "5", "--n-grid", "50, 1e2,200", "--n-grid-seed", "2",
                     "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "against N (nested random subsets, seed 2)" in text and "N=100" in text and "n_grid.png" in text
    assert json.loads((out / "scores.json").read_text())["n_grid"]["n"] == [50, 100, 200]
    for bad in ("50,x", "1.5e1,2"):
        with pytest.raises(SystemExit):
            cli_main(["measure", str(folder), "--n-grid", bad, "--out", str(out)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(["measure", str(folder), "--n-grid", "500", "--out", str(out), "--no-progress"])
    assert exc.value.code == 2 and "n_grid value 500 exceeds" in capsys.readouterr().err
