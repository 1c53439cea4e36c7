"""Alignment versus capability (platonic_fast.report, `platonic-fast report`): a measure sweep with
permutations, then the report from the models' metadata and from a user's table."""

import itertools
import json
import math
import sys

import numpy as np
import pytest
import torch

from platonic_fast import report as report_mod
from platonic_fast import sweep
from platonic_fast.cli import main as cli_main

pytest.importorskip("safetensors")
scipy_stats = pytest.importorskip("scipy.stats")

N = 80
SHARED = torch.randn(N, 5, generator=torch.Generator().manual_seed(0))


def _model(seed: int, strength: float, layers: int = 2, width: int = 12) -> torch.Tensor:
    """Layers that carry the shared signal with the given strength, plus noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([strength * SHARED @ torch.randn(5, width, generator=g) + torch.randn(N, width, generator=g)
                        for _ in range(layers)], dim=1)


# language models: the larger and the lower their bits-per-byte, the more of the shared signal
LANGUAGE = [("org/lm-tiny", 0.2, 2.0, 10**6), ("org/lm-small", 0.6, 1.6, 10**7), ("org/lm-base", 1.2, 1.2, 10**8),
            ("org/lm-large", 2.0, 0.9, 10**9), ("org/lm-huge", 3.5, 0.7, 10**10)]
VISION = [("vit_small_patch16_224", 3.0, 22 * 10**6), ("vit_base_patch16_224.augreg_in21k", 3.0, 86 * 10**6),
          ("vit_large_patch14_dinov2.lvd142m", 3.0, 304 * 10**6)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from platonic_fast.features import Features

    root = tmp_path_factory.mktemp("report")
    (root / "lang").mkdir()
    (root / "vis").mkdir()
    for seed, (name, strength, bpb, params) in enumerate(LANGUAGE):
        per_sample = torch.full((N,), bpb) + 0.01 * torch.randn(N, generator=torch.Generator().manual_seed(seed))
        per_sample[0] = float("nan")  # a sample without a prediction
        Features(_model(seed + 1, strength), per_sample, {"model": name, "num_params": params}).save(
            root / "lang" / f"{name.replace('/', '_')}_pool-avg.safetensors")
    for seed, (name, strength, params) in enumerate(VISION):
        Features(_model(seed + 50, strength, layers=3, width=16), None, {"model": name, "num_params": params}).save(
            root / "vis" / f"{name}_pool-cls.safetensors")
    return root


@pytest.fixture(scope="module")
def measured(sets):
    out = sets / "scores"
    assert cli_main(["measure", str(sets / "lang"), "--against", str(sets / "vis"), "--metric", "mutual_knn",
                     "--topk", "5", "--permutations", "19", "--seed", "0", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_report_end_to_end(measured, capsys):
    capsys.readouterr()
    assert cli_main(["report", str(measured)]) == 0
    printed = capsys.readouterr().out
    assert "lang (5 models) to vis (3 models)" in printed and "1 - bpb" in printed and "rho" in printed
    assert (measured / "report.png").stat().st_size > 0
    rep = json.loads((measured / "report.json").read_text())
    assert rep["reference_set"]["which"] == "y" and rep["subject_set"]["name"] == "lang"
    assert rep["capabilities"] == ["1 - bpb", "log10 params"]

    scores = json.loads((measured / "scores.json").read_text())
    raw = np.array(scores["scores"])
    cal = np.array(scores["calibration"]["max"]["calibrated"])
    entry = rep["results"][0]
    by_name = {m["name"]: m for m in entry["models"]}
    for i, name in enumerate(scores["models_x"]):
        m = by_name[name]
        assert m["alignment"] == pytest.approx(raw[i].mean())
        assert m["alignment_calibrated"] == pytest.approx(cal[i].mean())
        info = next(x for x in scores["models"]["x"] if x["name"] == name)
        assert m["capabilities"]["1 - bpb"] == pytest.approx(1 - info["bpb"])
        assert m["capabilities"]["log10 params"] == pytest.approx(math.log10(info["num_params"]))
    corr = {(c["capability"], c["scores"]): c for c in entry["correlations"]}
    assert set(corr) == {(c, k) for c in ("1 - bpb", "log10 params") for k in ("raw", "calibrated")}
    ys = [by_name[n]["alignment"] for n in scores["models_x"]]
    xs = [by_name[n]["capabilities"]["1 - bpb"] for n in scores["models_x"]]
    want = scipy_stats.spearmanr(xs, ys)
    got = corr[("1 - bpb", "raw")]
    assert got["rho"] == pytest.approx(want.statistic) and got["n"] == 5
    assert got["rho"] > 0.8  # the more capable, the more aligned, as built
    # five models: the exact two-sided p over all 120 orderings
    assert got["p_method"] == "exact" and got["p_value"] == pytest.approx(
        np.mean([abs(scipy_stats.spearmanr(xs, [ys[j] for j in p]).statistic) >= abs(got["rho"]) - 1e-12
                 for p in itertools.permutations(range(5))]))
    assert corr[("log10 params", "calibrated")]["rho"] is not None


@pytest.mark.slow
def test_report_from_a_table(measured, tmp_path):
    table = tmp_path / "capability.csv"
    table.write_text("name,imagenet top1,source\n"
                     "vit_small_patch16_224,0.79,timm\n"
                     "VIT_BASE_PATCH16_224.AUGREG_IN21K,0.81,timm\n"  # another case: still matched
                     "vit_large_patch14_dinov2.lvd142m,0.86,paper\n"
                     "resnet50,0.76,timm\n")
    out = report_mod.report(measured, table, reference_set="x", out_dir=tmp_path / "rep")
    assert out["subject_set"]["which"] == "y" and out["reference_set"]["name"] == "lang"
    assert out["capabilities"] == ["log10 params", "imagenet top1"]  # no bpb for vision; 'source' is text
    assert out["unmatched"] == ["resnet50"]
    entry = out["results"][0]
    assert [m["matched_row"] for m in entry["models"]] == [
        "VIT_BASE_PATCH16_224.AUGREG_IN21K", "vit_large_patch14_dinov2.lvd142m", "vit_small_patch16_224"]
    raw = np.array(json.loads((measured / "scores.json").read_text())["scores"])
    assert entry["models"][0]["alignment"] == pytest.approx(raw[:, 0].mean())  # mean over the language models
    assert entry["models"][0]["capabilities"]["imagenet top1"] == 0.81
    assert (tmp_path / "rep" / "report.json").exists() and (tmp_path / "rep" / "report.png").exists()
    assert not (measured / "report_k5.png").exists()


@pytest.mark.slow
def test_report_of_a_set_against_itself_and_several_topk(sets, tmp_path):
    res = sweep.measure_sets(sets / "lang", metric="mutual_knn", topk=[3, 6], out_dir=tmp_path / "self",
                             progress=False)
    out = report_mod.report(tmp_path / "self", plot=True)
    assert [e["topk"] for e in out["results"]] == [3, 6]
    assert (tmp_path / "self" / "report_k3.png").exists() and (tmp_path / "self" / "report_k6.png").exists()
    for entry in out["results"]:
        scores = res.by_topk[entry["topk"]].scores
        for i, m in enumerate(entry["models"]):  # each model's own score (1.0) is left out
            assert m["alignment"] == pytest.approx(np.delete(scores[i], i).mean())
            assert m["alignment_calibrated"] is None
        assert {c["scores"] for c in entry["correlations"]} == {"raw"}
    only = report_mod.report(tmp_path / "self", topk=6, plot=False)
    assert [e["topk"] for e in only["results"]] == [6] and "png" not in only["files"]


def test_report_errors(measured, tmp_path, capsys, monkeypatch):
    def error(*argv) -> str:
        with pytest.raises(SystemExit) as exc:
            cli_main(["report", *map(str, argv)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    assert "holds no scores.json" in error(tmp_path)
    assert "is not a folder" in error(tmp_path / "missing")
    assert "reference set must be x, y" in error(measured, "--reference-set", "z")
    assert "no results for topk=7" in error(measured, "--topk", "7")
    assert "does not exist" in error(measured, "--capability", tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("model,notes\nvit,good\n")
    assert "no numeric column" in error(measured, "--capability", tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("model,acc\nvit,1\nvit,2\n")
    assert "appears twice" in error(measured, "--capability", tmp_path / "dup.csv")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "scores.json").write_text(json.dumps({"scores": [[1.0]]}))
    assert "not written by this version" in error(tmp_path / "old")

    # Reference-pipeline files record no capability: the report says what to pass.
    folder = tmp_path / "pt"
    folder.mkdir()
    for seed in range(3):
        torch.save({"feats": _model(seed, 1.0)}, folder / f"m{seed}.pt")
    sweep.measure_sets(folder, metric="mutual_knn", topk=3, out_dir=tmp_path / "pt_out", progress=False)
    with pytest.raises(ValueError, match="--capability"):
        report_mod.report(tmp_path / "pt_out", plot=False)

    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # scipy missing: the error names the fix
    with pytest.raises(ImportError, match=r"pip install scipy"):
        report_mod.report(measured, plot=False)
