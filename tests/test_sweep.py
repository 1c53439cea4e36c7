"""Model-set sweeps (platonic_fast.sweep, `platonic-fast measure`): scores equal pf.align per
pair, symmetric pairs are scored once, and an interrupted sweep resumes to the same result."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import platonic_fast as pf
from platonic_fast import sweep, sweep_sources
from platonic_fast.cli import main as cli_main

N = 96


def _model(seed: int, layers: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(N, 6, generator=torch.Generator().manual_seed(0))
    out = [shared @ torch.randn(6, width, generator=g) + (1 + l) * torch.randn(N, width, generator=g)
           for l in range(layers)]
    return torch.stack(out, dim=1)


@pytest.fixture()
def model_files(tmp_path):
    """Three models saved as reference-pipeline .pt files ({"feats": N x L x D})."""
    folder = tmp_path / "feats"
    folder.mkdir()
    models = {"alpha": _model(1, 3, 24), "beta": _model(2, 4, 16), "gamma": _model(3, 2, 32)}
    for name, feats in models.items():
        torch.save({"feats": feats}, folder / f"{name}.pt")
    return folder, models


@pytest.mark.slow
def test_symmetric_sweep_matches_align(model_files, tmp_path):
    folder, models = model_files
    res = sweep.measure_sets(folder, metric="mutual_knn", topk=5, out_dir=tmp_path / "out", progress=False)
    assert res.names_x == res.names_y == ["alpha", "beta", "gamma"]
    np.testing.assert_allclose(res.scores, res.scores.T)
    for i, a in enumerate(res.names_x):
        for j, b in enumerate(res.names_y):
            ref = pf.align(models[a], models[b], "mutual_knn", topk=5)
            assert res.scores[i, j] == pytest.approx(ref.best, abs=1e-12)
            if i <= j:
                assert tuple(res.best_layers[i, j]) == ref.best_layers
    # symmetric pairs were scored once: 3 + 2 + 1 records
    assert len(list((tmp_path / "out" / "pairs").glob("*.json"))) == 6
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    np.testing.assert_allclose(np.array(saved["scores"]), res.scores)
    npz = np.load(tmp_path / "out" / "scores.npz")
    np.testing.assert_allclose(npz["scores"], res.scores)


def test_cycle_knn_is_not_treated_as_symmetric(model_files, tmp_path):
    folder, _ = model_files
    sweep.measure_sets(folder, metric="cycle_knn", topk=5, out_dir=tmp_path / "out", progress=False)
    assert len(list((tmp_path / "out" / "pairs").glob("*.json"))) == 9


@pytest.mark.slow
def test_interrupted_sweep_resumes_to_the_same_result(model_files, tmp_path, monkeypatch):
    folder, _ = model_files
    full = sweep.measure_sets(folder, metric="cknna", topk=5, out_dir=tmp_path / "full", progress=False)

    calls = {"n": 0}
    real = sweep.score_states

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the user stops the sweep mid-way
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "score_states", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep.measure_sets(folder, metric="cknna", topk=5, out_dir=tmp_path / "resumed", progress=False)
    assert len(list((tmp_path / "resumed" / "pairs").glob("*.json"))) == 3
    assert not list((tmp_path / "resumed" / "pairs").glob(".*.tmp"))  # nothing half-written

    calls["n"] = 100  # no more interruptions; count what the resumed run computes
    resumed = sweep.measure_sets(folder, metric="cknna", topk=5, out_dir=tmp_path / "resumed", progress=False)
    assert calls["n"] == 100 + 9 - 3  # only the unfinished pairs were scored
    np.testing.assert_array_equal(resumed.scores, full.scores)
    np.testing.assert_array_equal(resumed.best_layers, full.best_layers)


def _record_of(out, x, y, topk):
    """The record file of pair (x, y) at this topk (records are named by a hash of their key)."""
    found = [p for p in (out / "pairs").glob("*.json")
             if (k := json.loads(p.read_text())["key"])["x"]["name"] == x and k["y"]["name"] == y
             and k["settings"]["topk"] == topk]
    assert len(found) == 1
    return found[0]


@pytest.mark.slow
def test_changed_settings_or_corrupt_records_are_recomputed(model_files, tmp_path):
    folder, models = model_files
    out = tmp_path / "out"
    sweep.measure_sets(folder, metric="mutual_knn", topk=5, out_dir=out, progress=False)
    record = _record_of(out, "alpha", "beta", 5)
    record.write_text("{ truncated")
    res = sweep.measure_sets(folder, metric="mutual_knn", topk=5, out_dir=out, progress=False)
    assert json.loads(record.read_text())["key"]["settings"]["topk"] == 5  # rewritten whole
    ref = pf.align(models["alpha"], models["beta"], "mutual_knn", topk=5)
    assert res.scores[0, 1] == pytest.approx(ref.best, abs=1e-12)
    # Other settings are another key, hence another record; the first one stays valid.
    res = sweep.measure_sets(folder, metric="mutual_knn", topk=3, out_dir=out, progress=False)
    assert json.loads(_record_of(out, "alpha", "beta", 3).read_text())["key"]["settings"]["topk"] == 3
    ref = pf.align(models["alpha"], models["beta"], "mutual_knn", topk=3)
    assert res.scores[0, 1] == pytest.approx(ref.best, abs=1e-12)


def test_mismatched_samples_are_rejected(tmp_path):
    torch.save({"feats": torch.randn(40, 2, 8)}, tmp_path / "a.pt")
    torch.save({"feats": torch.randn(41, 2, 8)}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="N=41"):
        sweep.measure_sets(tmp_path, metric="mutual_knn", topk=3, out_dir=tmp_path / "out", progress=False)


def test_missing_inputs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sweep.feature_files([tmp_path / "nope.pt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no feature files"):
        sweep.feature_files(tmp_path / "empty")


def test_cli_measure(model_files, tmp_path, capsys):
    folder, _ = model_files
    out = tmp_path / "cli"
    assert cli_main(["measure", str(folder / "alpha.pt"), str(folder / "beta.pt"), "--against",
                     str(folder / "gamma.pt"), "--metric", "unbiased_cka", "--out", str(out),
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "alpha" in printed and "gamma" in printed
    assert (out / "scores.json").exists() and (out / "scores.npz").exists()
    saved = json.loads((out / "scores.json").read_text())
    assert np.array(saved["scores"]).shape == (2, 1)


def test_cli_measure_reports_bad_metric(model_files, tmp_path):
    folder, _ = model_files
    with pytest.raises(SystemExit) as exc:
        cli_main(["measure", str(folder), "--metric", "nope", "--out", str(tmp_path / "o"), "--no-progress"])
    assert exc.value.code == 2


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the fake file
def test_corrupt_feature_file_leaves_results_untouched(model_files, tmp_path):
    folder, _ = model_files
    out = tmp_path / "out"
    sweep.measure_sets(folder, metric="mutual_knn", topk=5, out_dir=out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (folder / "beta.pt").write_bytes(b"\x80\x04 not a torch file")
    with pytest.raises(ValueError, match="beta.pt"):
        sweep.measure_sets(folder, metric="mutual_knn", topk=5, out_dir=out, progress=False)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before


# --- permutation nulls --------------------------------------------------------------------------


@pytest.mark.slow
def test_permutations_match_align_and_are_stored(model_files, tmp_path):
    folder, models = model_files
    res = sweep.measure_sets(folder, metric="mutual_knn", topk=5, out_dir=tmp_path / "out", progress=False,
                             permutations=19, alpha=0.1, seed=3)
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    npz = np.load(tmp_path / "out" / "scores.npz")
    for i, a in enumerate(res.names_x):
        for j, b in enumerate(res.names_y):
            # A symmetric metric scores (b, a) as (a, b): m(b, a[π]) = m(a, b[π⁻¹]), the same null
            # distribution from the inverse permutations; matrices transposed.
            first, second = (a, b) if i <= j else (b, a)
            ref = pf.align(models[first], models[second], "mutual_knn", topk=5, permutations=19, alpha=0.1,
                           generator=3)
            if i > j:
                ref.calibration = dataclasses.replace(ref.calibration, pair_p=ref.calibration.pair_p.T)
            cal = res.records[(i, j)]["calibration"]
            for how in ("max", "mean"):
                want = getattr(ref.calibration, how)
                np.testing.assert_allclose(cal[how]["null"], want.null.numpy(), rtol=0, atol=1e-12)
                for f in ("observed", "p_value", "tau", "calibrated"):
                    assert cal[how][f] == pytest.approx(getattr(want, f), abs=1e-12), (a, b, how, f)
            assert res.calibration_matrix("chance")[i, j] == pytest.approx(ref.calibration.max.chance, abs=1e-12)
            # each layer pair's p-value, oriented as (layers of x, layers of y), mirrored pairs too
            np.testing.assert_allclose(np.array(cal["pair_p"]), ref.calibration.pair_p.numpy(), atol=1e-12)
            np.testing.assert_allclose(npz[f"k5_pair_p_{i}_{j}"], ref.calibration.pair_p.numpy(), atol=1e-12)
            np.testing.assert_allclose(npz["null_max"][i, j], ref.calibration.max.null.numpy(), atol=1e-12)
            assert saved["calibration"]["max"]["p_value"][i][j] == pytest.approx(ref.calibration.max.p_value)
            assert saved["calibration"]["max"]["calibrated"][i][j] == pytest.approx(ref.calibration.max.calibrated)
            assert saved["chance"][i][j] == pytest.approx(ref.calibration.max.chance)
    assert saved["settings"]["permutations"] == 19 and saved["settings"]["seed"] == 3
    pairs = {(p["x"], p["y"]): p for p in saved["results"][0]["pairs"]}
    assert len(pairs) == 9 and len(pairs[("alpha", "beta")]["calibration"]["max"]["null"]) == 19


@pytest.mark.slow
def test_permutations_do_not_depend_on_pair_order_or_resuming(model_files, tmp_path, monkeypatch):
    folder, _ = model_files
    kw = dict(metric="cknna", topk=4, progress=False, permutations=9, seed=11)
    full = sweep.measure_sets(folder, out_dir=tmp_path / "full", **kw)
    again = sweep.measure_sets(folder, out_dir=tmp_path / "again", **kw)
    # Another order of models (and hence of pairs): the same numbers for the same pairs.
    order = [folder / "gamma.pt", folder / "alpha.pt", folder / "beta.pt"]
    shuffled = sweep.measure_sets(order, out_dir=tmp_path / "shuffled", **kw)
    perm = [shuffled.names_x.index(n) for n in full.names_x]
    for what in ("p_value", "calibrated", "tau", "observed"):
        np.testing.assert_array_equal(full.calibration_matrix(what), again.calibration_matrix(what))
        np.testing.assert_array_equal(full.calibration_matrix(what),
                                      shuffled.calibration_matrix(what)[np.ix_(perm, perm)])

    real = sweep.score_states
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "score_states", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep.measure_sets(folder, out_dir=tmp_path / "resumed", **kw)
    resumed = sweep.measure_sets(folder, out_dir=tmp_path / "resumed", **kw)
    for what in ("p_value", "calibrated", "tau", "chance"):
        np.testing.assert_array_equal(full.calibration_matrix(what), resumed.calibration_matrix(what))
    # Another seed is another key: new records, other nulls.
    other = sweep.measure_sets(folder, out_dir=tmp_path / "full", **{**kw, "seed": 12})
    assert len(list((tmp_path / "full" / "pairs").glob("*.json"))) == 18
    assert not np.array_equal(other.records[(0, 1)]["calibration"]["max"]["null"],
                              full.records[(0, 1)]["calibration"]["max"]["null"])


def test_bad_calibration_options_fail_before_loading(model_files, tmp_path, monkeypatch):
    folder, _ = model_files

    def no_loading(*args, **kwargs):
        raise AssertionError("a feature file was loaded")

    monkeypatch.setattr(sweep_sources, "load_layers", no_loading)
    for kw, match in (({"permutations": 0}, "permutations"), ({"permutations": 10, "alpha": 1.5}, "alpha"),
                      ({"permutations": 10, "seed": -1}, "seed"), ({"permutations": 2.5}, "permutations")):
        with pytest.raises(ValueError, match=match):
            sweep.measure_sets(folder, out_dir=tmp_path / "o", progress=False, **kw)


def test_cli_measure_with_permutations(model_files, tmp_path, capsys):
    folder, _ = model_files
    out = tmp_path / "cli"
    assert cli_main(["measure", str(folder / "alpha.pt"), str(folder / "beta.pt"), "--against", str(folder),
                     "--metric", "mutual_knn", "--topk", "5", "--permutations", "9", "--seed", "1",
                     "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "raw score" in printed and "calibrated" in printed and "p-value" in printed
    assert "chance level" in printed and "0.0526" in printed  # k/(N-1) = 5/95 under each null... of one pair
    saved = json.loads((out / "scores.json").read_text())
    assert np.array(saved["calibration"]["max"]["p_value"]).shape == (2, 3)


# --- several topk, metric options, validation -----------------------------------------------------


@pytest.mark.parametrize("metric", ["mutual_knn", "cknna"])
@pytest.mark.slow
def test_several_topk_equal_separate_runs(model_files, tmp_path, monkeypatch, metric):
    folder, _ = model_files
    prepares = {"n": 0}
    real = sweep_sources.prepare_states

    def counting(layers, *args, **kwargs):
        prepares["n"] += 1
        return real(layers, *args, **kwargs)

    monkeypatch.setattr(sweep_sources, "prepare_states", counting)
    kw = dict(metric=metric, progress=False, permutations=9, seed=5)
    multi = sweep.measure_sets(folder, topk=[8, 3, 5, 8], out_dir=tmp_path / "multi", **kw)
    assert prepares["n"] == 3  # one preparation per model, at the largest k
    assert multi.topks == [3, 5, 8] and multi.topk == 3
    for k in (3, 5, 8):
        single = sweep.measure_sets(folder, topk=k, out_dir=tmp_path / f"k{k}", **kw)
        got = multi.by_topk[k]
        np.testing.assert_array_equal(got.scores, single.scores)
        np.testing.assert_array_equal(got.best_layers, single.best_layers)
        for what in ("p_value", "calibrated", "chance"):
            np.testing.assert_array_equal(got.calibration_matrix(what), single.calibration_matrix(what))
        for ij, r in single.records.items():
            assert got.records[ij]["layer_scores"] == r["layer_scores"]
            assert got.records[ij]["calibration"] == r["calibration"]
    # Each k is its own, unambiguous entry; records are keyed by it, so a single-k run reuses them.
    saved = json.loads((tmp_path / "multi" / "scores.json").read_text())
    assert saved["topk"] == [3, 5, 8] and "scores" not in saved
    assert [r["topk"] for r in saved["results"]] == [3, 5, 8]
    np.testing.assert_array_equal(np.array(saved["results"][1]["scores"]), multi.by_topk[5].scores)
    npz = np.load(tmp_path / "multi" / "scores.npz")
    np.testing.assert_array_equal(npz["k8_scores"], multi.by_topk[8].scores)
    assert "scores" not in npz.files
    for k in (3, 5, 8):
        assert (tmp_path / "multi" / f"heatmap_k{k}.png").exists()
    calls = {"n": 0}
    real_score = sweep.score_states
    monkeypatch.setattr(sweep, "score_states", lambda *a, **k: calls.__setitem__("n", calls["n"] + 1)
                        or real_score(*a, **k))
    sweep.measure_sets(folder, topk=5, out_dir=tmp_path / "multi", **kw)
    assert calls["n"] == 0


def test_metric_options_reach_the_metric(model_files, tmp_path):
    folder, models = model_files
    res = sweep.measure_sets([folder / "alpha.pt", folder / "beta.pt"], metric="cka", out_dir=tmp_path / "o",
                             progress=False, kernel_metric="rbf", rbf_sigma=0.7, device="cpu", backend="auto")
    ref = pf.align(models["alpha"], models["beta"], "cka", kernel_metric="rbf", rbf_sigma=0.7)
    assert res.scores[0, 1] == pytest.approx(ref.best, abs=1e-12)
    assert res.topk is None and res.settings["options"] == {"kernel_metric": "rbf", "rbf_sigma": 0.7}


@pytest.mark.parametrize("kw, match", [
    ({"metric": "nope"}, "metric must be one of"),
    ({"topk": 0}, "topk"),
    ({"topk": [5, "a"]}, "topk"),
    ({"topk": []}, "topk"),
    ({"metric": "cka", "topk": [5, 10]}, "uses no neighbour lists"),
    ({"metric": "cka", "kernel_metric": "poly"}, "kernel_metric"),
    ({"metric": "cka", "kernel_metric": "rbf", "rbf_sigma": -1.0}, "rbf_sigma"),
    ({"metric": "mutual_knn", "unbiased": True}, "unexpected option"),
    ({"metric": "unbiased_cka", "unbiased": False}, "always uses unbiased"),
    ({"backend": "gpu"}, "backend"),
    ({"device": "tpu"}, "device"),
    ({"device": "banana"}, "device"),
])
def test_bad_options_fail_before_loading(model_files, tmp_path, monkeypatch, kw, match):
    folder, _ = model_files
    from platonic_fast import features

    def no_loading(*args, **kwargs):
        raise AssertionError("a feature file was read")

    monkeypatch.setattr(features, "load", no_loading)
    monkeypatch.setattr(sweep_sources, "load_layers", no_loading)
    monkeypatch.setattr(sweep, "feature_files", no_loading)
    with pytest.raises((ValueError, TypeError), match=match):
        sweep.measure_sets(folder, out_dir=tmp_path / "o", progress=False, **kw)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda(model_files, tmp_path):
    with pytest.raises(ValueError, match="no CUDA device"):
        sweep.measure_sets(model_files[0], out_dir=tmp_path / "o", progress=False, device="cuda")


def test_options_that_do_not_fit_the_data_fail_before_scoring(model_files, tmp_path, monkeypatch):
    folder, _ = model_files
    monkeypatch.setattr(sweep_sources, "load_layers", lambda *a, **k: pytest.fail("loaded for scoring"))
    with pytest.raises(ValueError, match=r"topk.*N=96"):
        sweep.measure_sets(folder, topk=[5, 96], out_dir=tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="cca_dim"):  # gamma is 32 wide, beta 16
        sweep.measure_sets(folder, metric="svcca", cca_dim=20, out_dir=tmp_path / "o", progress=False)


def _cli_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli_main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_cli_metric_options_and_errors(model_files, tmp_path, capsys):
    folder, models = model_files
    out = tmp_path / "o"
    assert cli_main(["measure", str(folder), "--metric", "cknna", "--topk", "4", "6", "--no-unbiased",
                     "--backend", "auto", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "=== topk=4 ===" in printed and "=== topk=6 ===" in printed
    saved = json.loads((out / "scores.json").read_text())
    assert saved["settings"]["options"] == {"unbiased": False} and saved["topk"] == [4, 6]
    ref = pf.align(models["alpha"], models["gamma"], "cknna", topk=6, unbiased=False)
    assert saved["results"][1]["scores"][0][2] == pytest.approx(ref.best, abs=1e-12)

    err = _cli_error(capsys, "measure", str(folder), "--metric", "mutual_knn", "--kernel", "rbf", "--out", str(out))
    assert err.count("\n") == 1 and "--kernel does not apply to --metric mutual_knn" in err and "cka" in err
    err = _cli_error(capsys, "measure", str(folder), "--metric", "nope", "--out", str(out))
    assert "invalid choice" in err
    err = _cli_error(capsys, "measure", str(folder), "--topk", "0", "--out", str(out))
    assert err.count("\n") == 1 and "topk" in err
    err = _cli_error(capsys, "measure", str(folder), "--permutations", "0", "--out", str(out))
    assert err.count("\n") == 1 and "permutations" in err
    err = _cli_error(capsys, "measure", str(folder), "--metric", "svcca", "--cca-dim", "0", "--out", str(out))
    assert err.count("\n") == 1 and "cca_dim" in err


def test_cli_help_lists_the_metrics(capsys):
    with pytest.raises(SystemExit):
        cli_main(["measure", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for m in pf.SUPPORTED_METRICS:
        assert m in text
    for flag in ("--kernel", "--sigma", "--unbiased", "--cca-dim", "--distance-agnostic", "--backend", "--device",
                 "--permutations", "--alpha", "--seed"):
        assert flag in text


# --- what the summary keeps ---------------------------------------------------------------------


def test_summary_keeps_model_metadata_and_every_layer_matrix(tmp_path):
    pytest.importorskip("safetensors")
    from platonic_fast.features import Features

    folder = tmp_path / "lm"
    folder.mkdir()
    bpb = torch.linspace(0.5, 1.5, N)
    bpb[:10] = float("nan")  # samples without a prediction are left out of the mean
    Features(_model(1, 3, 24), bpb, {"model": "org/lm-small", "num_params": 1234}).save(folder / "small.safetensors")
    Features(_model(2, 2, 16), None, {"model": "org/lm-big"}).save(folder / "big.safetensors")
    res = sweep.measure_sets(folder, metric="mutual_knn", topk=[3, 4], out_dir=tmp_path / "out", progress=False)
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert saved["n"] == N and saved["version"] == pf.__version__ and saved["topk"] == [3, 4]
    assert saved["format"] == "platonic_fast.sweep"
    info = {m["name"]: m for m in saved["models"]["x"]}
    assert info["small"]["bpb"] == pytest.approx(float(bpb[10:].double().mean()))
    assert info["small"]["bpb_samples"] == N - 10
    assert info["small"]["num_params"] == 1234 and info["small"]["model"] == "org/lm-small"
    assert info["small"]["num_layers"] == 3 and info["small"]["width"] == 24
    assert info["big"]["bpb"] is None and info["big"]["num_params"] is None
    assert saved["models"]["y"] == saved["models"]["x"] and res.models_x[0]["name"] == "big"
    assert "fingerprints" in saved["samples"]
    for part in saved["results"]:
        pairs = {(p["x"], p["y"]): p for p in part["pairs"]}
        assert len(pairs) == 4
        grid = np.array(pairs[("big", "small")]["layer_scores"])
        assert grid.shape == (2, 3)
        ref = pf.align(_model(2, 2, 16), _model(1, 3, 24), "mutual_knn", topk=part["topk"])
        np.testing.assert_allclose(grid, ref.scores.numpy(), atol=1e-12)
        # without permutations: the exact chance of one layer pair, k / (N - 1)
        assert pairs[("big", "small")]["chance"][0][0] == pytest.approx(part["topk"] / (N - 1))
        assert part["chance"][0][1] == pytest.approx(part["topk"] / (N - 1))


# --- the heat map ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_heatmap_scale_names_chance_and_significance(model_files, tmp_path):
    pytest.importorskip("matplotlib")
    folder, _ = model_files
    long_x = "vit_large_patch14_clip_224.openai_with_a_very_long_suffix"
    files = []
    for name, src in ((long_x, "alpha"), ("vit_large_patch14_dinov2.lvd142m", "beta")):
        (tmp_path / "X").mkdir(exist_ok=True)
        files.append(tmp_path / "X" / f"{name}.pt")
        files[-1].write_bytes((folder / f"{src}.pt").read_bytes())
    res = sweep.measure_sets(tmp_path / "X", folder / "gamma.pt", metric="mutual_knn", topk=5, progress=False,
                             out_dir=tmp_path / "out", permutations=19, set_names=(None, "vision set"))
    assert res.set_names == ("X", "vision set")
    assert (tmp_path / "out" / "heatmap.png").stat().st_size > 0
    fig = sweep.heatmap_figure(res)
    raw, calibrated = fig.axes[0], fig.axes[1]  # the panels, then their colour bars
    assert raw.images[0].get_clim() == (0.0, 1.0) and calibrated.images[0].get_clim() == (0.0, 1.0)
    assert raw.get_ylabel() == "X" and raw.get_xlabel() == "vision set"
    names = [t.get_text().replace("\n", "") for t in raw.get_yticklabels()]
    assert names == res.names_x and long_x in names  # full names, wrapped, never cut
    assert "chance" in fig.get_suptitle() and "not significant" in fig.get_suptitle()
    hatched = sum(1 for p in raw.patches if p.get_hatch())
    assert hatched == int((res.calibration_matrix("p_value") > 0.05).sum())
    auto = sweep.heatmap_figure(res, auto_scale=True).axes[0].images[0].get_clim()
    assert auto == (res.scores.min(), res.scores.max())

    lcs = sweep.measure_sets(folder, metric="lcs_knn", topk=4, progress=False, out_dir=tmp_path / "lcs")
    fig = sweep.heatmap_figure(lcs)
    assert len(fig.axes) == 2 and fig.axes[0].images[0].get_clim() == (0.0, 4.0)
    assert not any(p.get_hatch() for p in fig.axes[0].patches)  # no null: nothing marked
    assert fig.axes[0].get_ylabel() == "feats"


def test_wrap_name_keeps_every_character():
    for name in ("a", "vit_large_patch14_clip_224.openai", "x" * 60, "org/model-name_v2:rev", "a b c"):
        wrapped = sweep.wrap_name(name, width=12)
        assert wrapped.replace("\n", "") == name
        assert all(len(line) <= 12 for line in wrapped.split("\n"))


def test_cli_heatmap_labels(model_files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    folder, _ = model_files
    out = tmp_path / "o"
    assert cli_main(["measure", str(folder), "--metric", "mutual_knn", "--topk", "5", "--name-x", "language",
                     "--name-y", "vision", "--auto-scale", "--out", str(out), "--no-progress"]) == 0
    saved = json.loads((out / "scores.json").read_text())
    assert saved["set_names"] == {"x": "language", "y": "vision"}
    assert (out / "heatmap.png").exists()


def test_without_matplotlib_the_sweep_still_writes_its_scores(model_files, tmp_path, monkeypatch, capsys):
    folder, _ = model_files

    def missing():
        raise ImportError("plots need matplotlib: pip install 'platonic_fast[plot]' (or matplotlib)")

    from platonic_fast import sweep_views

    monkeypatch.setattr(sweep_views, "_figure_class", missing)
    out = tmp_path / "o"
    assert cli_main(["measure", str(folder), "--topk", "5", "--out", str(out), "--no-progress"]) == 0
    assert "no heat map: matplotlib is not installed" in capsys.readouterr().out
    assert (out / "scores.json").exists() and not (out / "heatmap.png").exists()
    with pytest.raises(ImportError, match=r"platonic_fast\[plot\]"):
        sweep.heatmap_figure(sweep.measure_sets(folder, topk=5, out_dir=out, progress=False))


# --- confidence intervals ---------------------------------------------------------------------------


@pytest.mark.slow
def test_confidence_intervals_of_the_best_pairs(model_files, tmp_path):
    from platonic_fast.align import prepare_layers

    folder, models = model_files
    kw = dict(metric="mutual_knn", topk=[4, 6], progress=False, ci_repeats=12, seed=2)
    x, y = [folder / "alpha.pt", folder / "gamma.pt"], folder / "beta.pt"
    res = sweep.measure_sets(x, y, out_dir=tmp_path / "out", **kw)
    for k in (4, 6):
        r = res.by_topk[k]
        for i, a in enumerate(r.names_x):
            for j, b in enumerate(r.names_y):
                li, lj = r.best_layers[i, j]
                want = pf.confidence_interval("mutual_knn", prepare_layers(models[a], "x")[li],
                                              prepare_layers(models[b], "y")[lj], repeats=12, generator=2, topk=k)
                assert r.ci_matrix("low")[i, j] == pytest.approx(want.low, abs=1e-12)
                assert r.ci_matrix("high")[i, j] == pytest.approx(want.high, abs=1e-12)
                assert r.ci_matrix("estimate")[i, j] == pytest.approx(r.scores[i, j], abs=1e-12)
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    part = saved["results"][1]
    assert part["ci"]["repeats"] == 12 and part["ci"]["level"] == 0.95
    np.testing.assert_allclose(np.array(part["ci"]["high"]), res.by_topk[6].ci_matrix("high"))
    npz = np.load(tmp_path / "out" / "scores.npz")
    np.testing.assert_allclose(npz["k4_ci_low"], res.ci_matrix("low"))
    # read back from the records: the same; another level is another key
    again = sweep.measure_sets(x, y, out_dir=tmp_path / "out", **kw)
    np.testing.assert_array_equal(again.ci_matrix("low"), res.ci_matrix("low"))
    wider = sweep.measure_sets(x, y, out_dir=tmp_path / "out", ci_level=0.99, **kw)
    assert (wider.ci_matrix("high") - wider.ci_matrix("low") >= res.ci_matrix("high") - res.ci_matrix("low")).all()


def test_bad_ci_options(model_files, tmp_path, capsys):
    folder, _ = model_files
    for kw, match in (({"ci_repeats": 1}, "ci_repeats"), ({"ci_repeats": 5, "ci_level": 1.0}, "ci_level"),
                      ({"ci_repeats": 5, "ci_method": "bootstrap"}, "ci_method"),
                      ({"ci_repeats": 5, "topk": 60}, "subsamples of m=48")):
        with pytest.raises(ValueError, match=match):
            sweep.measure_sets(folder, out_dir=tmp_path / "o", progress=False, **kw)
    with pytest.raises(SystemExit) as exc:
        cli_main(["measure", str(folder), "--ci-repeats", "1", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "ci_repeats" in capsys.readouterr().err
