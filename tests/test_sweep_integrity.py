"""Sweeps never reuse a result that is not provably theirs, never share an output folder, and
refuse bad files and paths with one clear line: content fingerprints, hashed record names, the
output folder lock, feature-file checksums and ``platonic-fast verify``."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import platonic_fast as pf
from platonic_fast import sweep
from platonic_fast.cli import main as cli_main
from platonic_fast.features import Features

pytest.importorskip("safetensors")

N = 64


def _feats(seed: int) -> torch.Tensor:
    return torch.randn(N, 2, 8, generator=torch.Generator().manual_seed(seed))


def _write(path, feats, fmt):
    """A feature file whose size depends on its content's shape only, never on its name."""
    if fmt == "safetensors":
        Features(feats, None, {"model": "m"}).save(path)
    else:  # torch names the archive's folder after the file: save under one name, then rename
        tmp = path.parent / "tmp.pt"
        torch.save({"feats": feats}, tmp)
        os.replace(tmp, path)
    os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))  # as cp -p / rsync -a leave them


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_double_underscore_names_never_share_a_record(tmp_path, fmt):
    # The audit's reproducer: {a, a__b} x {b__c, c}. Records used to be pairs/<x>__<y>.json, so
    # (a, b__c) and (a__b, c) were the same file, and equal sizes and mtimes made it "fresh".
    feats = {name: _feats(seed) for seed, name in enumerate(["a", "a__b", "b__c", "c"])}
    (tmp_path / "X").mkdir()
    (tmp_path / "Y").mkdir()
    for name in ("a", "a__b"):
        _write(tmp_path / "X" / f"{name}.{fmt}", feats[name], fmt)
    for name in ("b__c", "c"):
        _write(tmp_path / "Y" / f"{name}.{fmt}", feats[name], fmt)
    stats = [p.stat() for p in (*(tmp_path / "X").iterdir(), *(tmp_path / "Y").iterdir())]
    assert len({s.st_size for s in stats}) == 1 and len({s.st_mtime_ns for s in stats}) == 1

    for _ in range(2):  # computed, then read back from the records
        res = sweep.measure_sets(tmp_path / "X", tmp_path / "Y", metric="mutual_knn", topk=5,
                                 out_dir=tmp_path / "out", progress=False)
        for i, x in enumerate(res.names_x):
            for j, y in enumerate(res.names_y):
                ref = pf.align(feats[x], feats[y], "mutual_knn", topk=5).best
                assert res.scores[i, j] == pytest.approx(ref, abs=1e-12), (x, y)
    assert res.scores[1, 1] != res.scores[0, 0]  # (a__b, c) is not (a, b__c)
    assert len(list((tmp_path / "out" / "pairs").glob("*.json"))) == 4


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_new_content_with_the_same_size_and_mtime_is_recomputed(tmp_path, fmt):
    for name, seed in (("p", 0), ("q", 1)):
        _write(tmp_path / f"{name}.{fmt}", _feats(seed), fmt)
    out = tmp_path / "out"
    first = sweep.measure_sets(tmp_path, metric="cknna", topk=5, out_dir=out, progress=False)
    _write(tmp_path / f"q.{fmt}", _feats(7), fmt)  # same size, same mtime, other numbers
    second = sweep.measure_sets(tmp_path, metric="cknna", topk=5, out_dir=out, progress=False)
    ref = pf.align(_feats(0), _feats(7), "cknna", topk=5).best
    assert second.scores[0, 1] == pytest.approx(ref, abs=1e-12) and second.scores[0, 1] != first.scores[0, 1]
    assert second.fingerprints_x[1] != first.fingerprints_x[1]
    prefix = "sha256:" if fmt == "safetensors" else "file-sha256:"  # stored checksum, else the bytes
    assert all(f.startswith(prefix) for f in second.fingerprints_x)
    summary = json.loads((out / "scores.json").read_text())
    assert summary["fingerprints_x"] == second.fingerprints_x


@pytest.mark.slow
def test_a_record_whose_key_does_not_match_is_recomputed(tmp_path, count_calls):
    feats = {name: _feats(seed) for seed, name in enumerate(["p", "q", "r"])}
    for name, f in feats.items():
        _write(tmp_path / f"{name}.safetensors", f, "safetensors")
    out = tmp_path / "out"
    sweep.measure_sets(tmp_path, metric="mutual_knn", topk=5, out_dir=out, progress=False)
    records = {(r["key"]["x"]["name"], r["key"]["y"]["name"]): p
               for p in (out / "pairs").glob("*.json") for r in [json.loads(p.read_text())]}
    assert len(records) == 6

    def tamper(pair, **change):
        r = json.loads(records[pair].read_text())
        for side, (field, value) in change.items():
            r["key"][side][field] = value
        r["score"] = 123.0
        records[pair].write_text(json.dumps(r))

    tamper(("p", "q"), x=("name", "someone-else"))
    tamper(("p", "r"), y=("fingerprint", "sha256:" + "0" * 64))
    # A valid record of another pair under this pair's file name (copied records, say).
    records[("q", "r")].write_text(records[("q", "q")].read_text())

    scored = count_calls(sweep, "score_states")
    res = sweep.measure_sets(tmp_path, metric="mutual_knn", topk=5, out_dir=out, progress=False)
    assert len(scored) == 3  # exactly the three bad records
    names = res.names_x
    for x, y in (("p", "q"), ("p", "r"), ("q", "r")):
        ref = pf.align(feats[x], feats[y], "mutual_knn", topk=5).best
        assert res.scores[names.index(x), names.index(y)] == pytest.approx(ref, abs=1e-12)
        key = json.loads(records[(x, y)].read_text())["key"]
        assert (key["x"]["name"], key["y"]["name"]) == (x, y)


@pytest.mark.slow
def test_a_changed_version_or_option_is_another_key(tmp_path, monkeypatch):
    for name, seed in (("p", 0), ("q", 1)):
        _write(tmp_path / f"{name}.safetensors", _feats(seed), "safetensors")
    out = tmp_path / "out"
    sweep.measure_sets(tmp_path, metric="cka", out_dir=out, progress=False)
    sweep.measure_sets(tmp_path, metric="cka", out_dir=out, progress=False, kernel_metric="rbf")
    monkeypatch.setattr(pf, "__version__", "99.0")
    sweep.measure_sets(tmp_path, metric="cka", out_dir=out, progress=False)
    keys = [json.loads(p.read_text())["key"] for p in (out / "pairs").glob("*.json")]
    assert len(keys) == 3 * 3  # three settings x three unordered pairs
    assert len({k["version"] for k in keys}) == 2
    assert len({k["settings"]["options"].get("kernel_metric") for k in keys}) == 2


# --- a corrupted feature file ---------------------------------------------------------------------


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_command(tmp_path, capsys):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    _write(good, _feats(0), "safetensors")
    _write(bad, _feats(1), "safetensors")
    assert cli_main(["verify", str(good), str(bad)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("OK ") and "sha256:" in line for line in lines)

    _flip_last_byte(bad)
    torch.save({"feats": _feats(2)}, tmp_path / "ref.pt")
    (tmp_path / "dir.safetensors").mkdir()
    files = [good, bad, tmp_path / "ref.pt", tmp_path / "missing.safetensors", tmp_path / "dir.safetensors"]
    assert cli_main(["verify", *map(str, files)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(files)
    assert lines[0].startswith("OK ")
    assert lines[1].startswith(f"FAIL  {bad}  fails verification")
    assert lines[2].startswith("FAIL") and "nothing to verify" in lines[2]
    assert lines[3].startswith("FAIL") and "no features file" in lines[3]
    assert lines[4].startswith("FAIL") and "is a directory" in lines[4]


def test_sweep_refuses_a_file_that_fails_its_checksum(tmp_path):
    for name, seed in (("p", 0), ("q", 1)):
        _write(tmp_path / f"{name}.safetensors", _feats(seed), "safetensors")
    _flip_last_byte(tmp_path / "q.safetensors")
    with pytest.raises(ValueError, match=r"q\.safetensors.*fails verification"):
        sweep.measure_sets(tmp_path, metric="mutual_knn", topk=5, out_dir=tmp_path / "out", progress=False)


# --- the output folder ----------------------------------------------------------------------------


@pytest.fixture()
def two_models(tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    for name, seed in (("p", 0), ("q", 1)):
        _write(folder / f"{name}.safetensors", _feats(seed), "safetensors")
    return folder


def _measure_args(folder, out, *extra):
    return ["measure", str(folder), "--metric", "mutual_knn", "--topk", "5", "--out", str(out), "--no-progress",
            *extra]


def test_out_pointing_at_a_file_is_one_line_and_exit_2(two_models, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        cli_main(_measure_args(two_models, target))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.txt" in err and "not a folder" in err and "Traceback" not in err
    assert target.read_text() == "keep me"
    with pytest.raises(ValueError, match="not a folder"):
        sweep.measure_sets(two_models, out_dir=target, progress=False)


def test_a_directory_named_like_a_feature_file_is_refused(two_models, tmp_path, capsys):
    (two_models / "z.safetensors").mkdir()
    with pytest.raises(SystemExit) as exc:
        cli_main(_measure_args(two_models, tmp_path / "out"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "z.safetensors' is a directory" in err


def test_a_second_run_on_the_same_folder_stops_at_once(two_models, tmp_path, capsys):
    out = tmp_path / "out"
    with sweep.lock_folder(out):
        start = time.monotonic()
        with pytest.raises(sweep.OutputFolderLocked) as info:
            sweep.measure_sets(two_models, out_dir=out, progress=False)
        assert time.monotonic() - start < 5
        message = str(info.value)
        assert str(out) in message and f"PID {os.getpid()}" in message and "--wait" in message
        with pytest.raises(SystemExit) as exc:
            cli_main(_measure_args(two_models, out))
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use by another measure run" in err and str(out) in err
        assert not (out / "pairs").exists()  # nothing was written under the holder's feet
    # Released: the same run now goes through.
    assert cli_main(_measure_args(two_models, out)) == 0


@pytest.mark.slow
def test_wait_waits_for_the_holder(two_models, tmp_path):
    out = tmp_path / "out"
    held = sweep.lock_folder(out)
    held.__enter__()
    threading.Timer(0.5, held.__exit__, (None, None, None)).start()
    start = time.monotonic()
    assert cli_main(_measure_args(two_models, out, "--wait", "30")) == 0
    assert time.monotonic() - start >= 0.4
    assert (out / "scores.json").exists()

    with sweep.lock_folder(out):  # a wait that runs out says so
        with pytest.raises(sweep.OutputFolderLocked, match="still after waiting 0.3 s"):
            sweep.measure_sets(two_models, out_dir=out, progress=False, wait=0.3)
    with pytest.raises(ValueError, match="wait"):
        sweep.measure_sets(two_models, out_dir=out, progress=False, wait=-1)


_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, b"%d\\n" % os.getpid())
print("held", flush=True)
time.sleep(120)
"""


def test_a_lock_held_by_another_process_then_left_by_its_death(two_models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exc:
            cli_main(_measure_args(two_models, out))
        assert exc.value.code == 2
        assert f"PID {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()  # dies without releasing anything itself: the kernel drops its flock
        holder.wait()
        holder.stdout.close()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # the stale file is still there
    assert cli_main(_measure_args(two_models, out)) == 0
    assert (out / ".lock").read_text().strip() == str(os.getpid())
    saved = json.loads((out / "scores.json").read_text())
    assert np.array(saved["scores"]).shape == (2, 2)
