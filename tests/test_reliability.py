"""Issue 22's failure classes, each tried as a hostile user would: records edited field by field,
a summary whose halves come from two runs, hand-edited scores, temporaries of killed writers,
sets that share file names, saturated intervals, and bad options that must fail with the
option's name and the data's real size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import platonic_fast as pf
from platonic_fast import report, sweep
from platonic_fast.cli import EXIT_IO_ERROR, main
from platonic_fast.features import Features
from platonic_fast.files import OutputWriteError, clean_stale_temporaries, write_atomic

pytest.importorskip("safetensors")

N = 32


def _feats(seed: int, layers: int = 2, width: int = 6) -> torch.Tensor:
    return torch.randn(N, layers, width, generator=torch.Generator().manual_seed(seed))


def _folder(path, seeds=(0, 1), layers=2, params=None):
    path.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        meta = {"model": f"m{s}"} if params is None else {"model": f"m{s}", "num_params": params[s]}
        Features(_feats(s, layers), None, meta).save(path / f"m{s}.safetensors")
    return path


def _run(*argv) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code


# --- 6 and 11: records edited field by field -----------------------------------------------------

EDITS = {
    "score": lambda r: r.update(score=r["score"] * 0.5),
    "score_resigned": lambda r: r.update(score=0.99),
    "best_layers_out_of_grid": lambda r: r.update(best_layers=[5, 7]),
    "best_layers_other_pair": lambda r: r.update(best_layers=[1 - r["best_layers"][0], r["best_layers"][1]]),
    "layer_scores_1x1": lambda r: r.update(layer_scores=[[r["score"]]], chance=None,
                                           best_layers=[0, 0]),
    "layer_scores_cell": lambda r: r["layer_scores"][0].__setitem__(0, 0.123),
    "n": lambda r: r.update(n=r["n"] + 1),
    "chance_shape": lambda r: r.update(chance=[[0.1]]),
    "extra_field": lambda r: r.update(note="hand-made"),
    "missing_field": lambda r: r.pop("chance"),
    "ci_present": lambda r: r.update(ci={"low": 0.0, "high": 1.0}),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("resign", [False, True])
@pytest.mark.slow
def test_an_edited_record_is_recomputed(tmp_path, edit, resign):
    """Every field edited, with its checksum left stale or recomputed (a careful forger): the
    rerun recomputes the record and gives the true score; it never crashes."""
    from platonic_fast.files import with_checksum

    folder = _folder(tmp_path / "f")
    out = tmp_path / "out"
    first = sweep.measure_sets(folder, metric="mutual_knn", topk=3, out_dir=out, progress=False)
    (path,) = [p for p in (out / "pairs").glob("*.json") if json.loads(p.read_text())["key"]["x"]["name"] !=
               json.loads(p.read_text())["key"]["y"]["name"]]
    record = json.loads(path.read_text())
    EDITS[edit](record)
    if resign:
        record = with_checksum(record)
    path.write_text(json.dumps(record))
    again = sweep.measure_sets(folder, metric="mutual_knn", topk=3, out_dir=out, progress=False)
    np.testing.assert_array_equal(again.scores, first.scores)
    np.testing.assert_array_equal(again.best_layers, first.best_layers)
    rewritten = json.loads(path.read_text())
    assert rewritten["score"] == first.scores[0, 1] and "note" not in rewritten


def test_a_record_for_other_layer_counts_is_recomputed(tmp_path):
    """Models re-extracted with other layers under the same fingerprint key must not reuse a
    record of another grid shape (the schema check, not only the key)."""
    from platonic_fast.files import with_checksum
    from platonic_fast.sweep_records import read_record, record_key

    settings = {"metric": "mutual_knn", "concat": False, "permutations": None, "ci": None}
    key = record_key(("a", "b"), ("sha256:x", "sha256:y"), settings, "v")
    rec = with_checksum({"key": key, "score": 0.5, "best_layers": [0, 0], "layer_scores": [[0.5]], "n": N,
                         "chance": None, "calibration": None, "ci": None})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rec))
    assert read_record(path, key, (1, 1), N) is not None
    assert read_record(path, key, (2, 2), N) is None
    assert read_record(path, key, (1, 1), N + 1) is None


def test_a_record_without_checksum_is_recomputed(tmp_path):
    folder = _folder(tmp_path / "f")
    out = tmp_path / "out"
    first = sweep.measure_sets(folder, metric="cka", out_dir=out, progress=False)
    for p in (out / "pairs").glob("*.json"):
        r = json.loads(p.read_text())
        r.pop("checksum")
        r["score"] = 0.999  # self-consistent forgery needs the grid too; without a checksum it is refused anyway
        p.write_text(json.dumps(r))
    again = sweep.measure_sets(folder, metric="cka", out_dir=out, progress=False)
    np.testing.assert_array_equal(again.scores, first.scores)


# --- 9 and 11: scores.json and scores.npz, one unit and checksummed ---------------------------------


def test_summary_halves_of_two_runs_are_refused(tmp_path):
    folder = _folder(tmp_path / "f")
    out = tmp_path / "out"
    sweep.measure_sets(folder, metric="cka", out_dir=out, progress=False)
    old_json = (out / "scores.json").read_text()
    sweep.measure_sets(folder, metric="mutual_knn", topk=3, out_dir=out, progress=False)
    summary, arrays = sweep.read_summary(out, npz=True)
    assert str(arrays["metric"]) == "mutual_knn" and json.loads(str(arrays["settings"]))["topk"] == [3]
    assert str(arrays["summary_checksum"]) == summary["checksum"]
    (out / "scores.json").write_text(old_json)  # a kill after the npz, before the JSON
    with pytest.raises(ValueError, match="not of the same run"):
        sweep.read_summary(out, npz=True)


def test_a_hand_edited_summary_is_refused_by_report(tmp_path):
    folder = _folder(tmp_path / "f", params={0: 10, 1: 20})
    out = tmp_path / "out"
    sweep.measure_sets(folder, metric="cka", out_dir=out, progress=False)
    s = json.loads((out / "scores.json").read_text())
    s["scores"][0][1] = 0.99
    (out / "scores.json").write_text(json.dumps(s))
    with pytest.raises(ValueError, match="fails its checksum"):
        report.report(out, plot=False)
    assert _run("report", out, "--no-plot") == 2


# --- 4: report decides "one set" by content ---------------------------------------------------------


def test_report_two_checkpoint_folders_with_the_same_names(tmp_path):
    """Two sets whose files share names (two checkpoints) keep their cross-checkpoint diagonal
    and each set its own parameter counts."""
    a = _folder(tmp_path / "ckpt1", seeds=(0, 1, 2), params={0: 10, 1: 100, 2: 1000})
    b = tmp_path / "ckpt2"
    b.mkdir()
    for s, p in ((0, 7), (1, 70), (2, 700)):  # same names, other content and sizes
        Features(_feats(s + 10), None, {"model": f"m{s}", "num_params": p}).save(b / f"m{s}.safetensors")
    out = tmp_path / "out"
    res = sweep.measure_sets(a, b, metric="cka", out_dir=out, progress=False)
    rep = report.report(out, plot=False)
    models = rep["results"][0]["models"]
    # subject set x (ckpt1) against reference y (ckpt2): every column counts, the diagonal too
    for i, m in enumerate(models):
        assert m["alignment"] == pytest.approx(float(np.mean(res.scores[i])), abs=1e-12)
    assert [round(10 ** m["capabilities"]["log10 params"]) for m in models] == [10, 100, 1000]


# --- 10: temporaries of killed writers --------------------------------------------------------------


@pytest.mark.slow
def test_temporaries_of_a_killed_writer_are_cleaned(tmp_path):
    code = ("import os, sys, torch; from platonic_fast.features import Features\n"
            "from platonic_fast import files\n"
            "real = files.os.replace\n"
            "def die(*a): os._exit(9)\n"
            "files.os.replace = die\n"
            f"Features(torch.randn({N}, 2, 6), None, {{'model': 'm'}}).save(sys.argv[1])\n")
    target = tmp_path / "m.safetensors"
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, timeout=120)
        assert proc.returncode == 9
    # each kill leaves its own temporary; the second writer already removed the first's
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and not target.exists()
    Features(_feats(0), None, {"model": "m"}).save(target)  # the next write cleans them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_a_running_writers_temporary_is_kept(tmp_path):
    mine = tmp_path / f".x.{os.getpid()}.abc.tmp"
    mine.mkdir()
    assert clean_stale_temporaries(tmp_path) == [] and mine.exists()


# --- 12: clear errors -------------------------------------------------------------------------------


def test_full_disk_is_an_io_error_naming_the_path(tmp_path, capsys, monkeypatch):
    import errno

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputWriteError, match=r"cannot write .*scores\.json: the disk is full \[Errno 28\]"):
        write_atomic(tmp_path / "scores.json", full)
    assert list(tmp_path.iterdir()) == []
    folder = _folder(tmp_path / "f")
    import platonic_fast.sweep_summary as summary

    monkeypatch.setattr(summary, "write_atomic", lambda path, fn: write_atomic(path, full))
    assert _run("measure", folder, "--metric", "cka", "--out", tmp_path / "out", "--no-progress") == EXIT_IO_ERROR
    err = capsys.readouterr().err
    assert "scores.npz" in err and "disk is full" in err


@pytest.mark.parametrize("argv, message", [
    (["--metric", "svcca", "--cca-dim", "0"], "min(N, D_A, D_B) = 6"),
    (["--metric", "svcca", "--cca-dim", "100000"], "min(N, D_A, D_B) = 6"),
    (["--topk", "1099511627776"], f"N={N} samples"),
    (["--metric", "cka", "--sigma", "2"], "--kernel rbf"),
    (["--metric", "cka", "--kernel", "ip", "--sigma", "2"], "--kernel rbf"),
    (["--permutations", "1000000000000000000000000000000"], "--permutations"),
    (["--permutations", "1e30"], "--permutations"),
])
def test_bad_options_name_the_option_and_the_data(tmp_path, capsys, argv, message):
    folder = _folder(tmp_path / "f")
    assert _run("measure", folder, *argv, "--out", tmp_path / "out", "--no-progress") == 2
    err = capsys.readouterr().err
    assert message in err and "1099511627776" not in err.replace("got 1099511627776", "")


@pytest.mark.parametrize("out_of_core", [False, True])
def test_npy_byte_order_and_fortran_order(tmp_path, out_of_core):
    """Big-endian .npy loads as its values; Fortran order is refused with the fix; the same in
    memory and out of core."""
    x = np.asarray(_feats(3), dtype=np.float32)
    y = np.asarray(_feats(4), dtype=np.float32)
    (tmp_path / "be").mkdir()
    np.save(tmp_path / "be" / "a.npy", x.astype(">f4"))
    np.save(tmp_path / "be" / "b.npy", y)
    res = sweep.measure_sets(tmp_path / "be", metric="mutual_knn", topk=3, out_dir=tmp_path / "o1", progress=False,
                             out_of_core=out_of_core)
    ref = pf.align(torch.from_numpy(x), torch.from_numpy(y), "mutual_knn", topk=3).best
    assert res.scores[0, 1] == pytest.approx(ref, abs=1e-12)
    (tmp_path / "fo").mkdir()
    np.save(tmp_path / "fo" / "a.npy", np.asfortranarray(x))
    np.save(tmp_path / "fo" / "b.npy", y)
    with pytest.raises(ValueError, match="Fortran order; save it C-ordered"):
        sweep.measure_sets(tmp_path / "fo", metric="mutual_knn", topk=3, out_dir=tmp_path / "o2", progress=False,
                           out_of_core=out_of_core)


# --- 5: saturated confidence intervals --------------------------------------------------------------


def test_saturated_interval_is_refused():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match="zero width"):
        pf.confidence_interval("mutual_knn", a, b, topk=1, repeats=5)
    with pytest.raises(ValueError, match="zero width"):
        pf.confidence_interval("mutual_knn", torch.randn(20, 5), torch.randn(20, 5), topk=9, repeats=5)
    pf.confidence_interval("mutual_knn", torch.randn(20, 5), torch.randn(20, 5), topk=8, repeats=5)


def test_saturated_interval_is_refused_by_a_sweep(tmp_path):
    folder = _folder(tmp_path / "f")
    with pytest.raises(ValueError, match="zero width"):
        sweep.measure_sets(folder, metric="mutual_knn", topk=N // 2 - 1, ci_repeats=4, out_dir=tmp_path / "o",
                           progress=False)


# --- kills between every pair of writes ------------------------------------------------------------

_KILL_AFTER = """
import os, sys
from platonic_fast import files, sweep
real, count = files.os.replace, [0]
def replace(src, dst):
    real(src, dst)
    count[0] += 1
    if count[0] == int(sys.argv[3]):
        os._exit(9)  # SIGKILL-like: no cleanup, no finally
files.os.replace = replace
sweep.measure_sets(sys.argv[1], metric="cknna", topk=3, out_dir=sys.argv[2], progress=False)
"""


@pytest.mark.slow
def test_a_kill_after_every_write_resumes_to_the_same_files(tmp_path):
    """Killed after the 1st, 2nd, ... write (records, npz, JSON, heat map), the same command
    gives byte-identical scores.json and scores.npz to an uninterrupted run."""
    folder = _folder(tmp_path / "f", seeds=(0, 1))
    clean = tmp_path / "clean"
    sweep.measure_sets(folder, metric="cknna", topk=3, out_dir=clean, progress=False)
    writes = len(list((clean / "pairs").glob("*.json"))) + 2  # records, npz, json (the heat map is last)
    for i in range(1, writes + 1):
        out = tmp_path / f"k{i}"
        proc = subprocess.run([sys.executable, "-c", _KILL_AFTER, str(folder), str(out), str(i)],
                              capture_output=True, timeout=300)
        assert proc.returncode == 9, proc.stderr.decode()[-2000:]
        sweep.measure_sets(folder, metric="cknna", topk=3, out_dir=out, progress=False)
        for name in ("scores.json", "scores.npz"):
            assert (out / name).read_bytes() == (clean / name).read_bytes(), (i, name)
        assert not [p for p in out.rglob("*.tmp")], i
