"""bench/gpu_proof.sh, rehearsed without a GPU: lent GPU time is short (15 minutes, machine start
included), so every step's plumbing, arguments and output layout are checked here first
(``--dry-run``: Triton's interpreter, tiny shapes, no compute-sanitizer), and the Triton kernels
are compiled ahead of time with the GPU image's Triton (3.6) when it is installed beside ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_proof.sh"
sys.path.insert(0, str(ROOT / "bench"))

import gpu_proof  # noqa: E402

STEPS = ["build", "tests", "memcheck", "racecheck", "bench"]


def _proof(out: Path | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PF_PROOF_") and k != "OUT"}
    base.update(PF_PROOF_PYTHON=sys.executable, **env)
    if out is not None:
        base["OUT"] = str(out)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=base,
                          timeout=900, cwd=ROOT)


def test_bad_arguments_stop_before_any_work(tmp_path):
    proc = _proof(tmp_path, "--bogus")
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr
    proc = _proof(None)
    assert proc.returncode == 2 and "set OUT" in proc.stderr
    proc = _proof(tmp_path, "--dry-run", PF_PROOF_STEPS="build,bogus")
    assert proc.returncode == 2 and "unknown step 'bogus'" in proc.stderr
    proc = _proof(tmp_path, "--dry-run", PF_PROOF_TESTS_S="2m")
    assert proc.returncode == 2 and "whole seconds" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_layout_check_names_what_would_not_come_back(tmp_path):
    for i in range(9):
        (tmp_path / f"f{i}.log").write_text("x")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.json").write_text("{}")
    (tmp_path / "bad name.txt").write_text("x")
    problems = gpu_proof.layout_problems(tmp_path)
    assert any("11 files" in p for p in problems)
    assert any("deep.json: more than 2 folders down" in p for p in problems)
    assert any("bad name.txt" in p for p in problems)
    good = tmp_path / "good"
    (good / "icl").mkdir(parents=True)
    (good / "proof.json").write_text("{}")
    (good / "icl" / "log.txt").write_text("x")
    assert gpu_proof.layout_problems(good) == []


def test_test_counts_survive_a_line_cut_by_a_kill(tmp_path):
    lines = [{"nodeid": "t::a", "outcome": "passed", "duration_s": 0.1},
             {"nodeid": "t::b", "outcome": "skipped", "duration_s": 0.0, "reason": "no CUDA device"},
             {"nodeid": "t::c", "outcome": "failed", "duration_s": 2.0, "longrepr": "assert 1 == 2"}]
    (tmp_path / "tests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"nodeid": "t::d", "outc')
    assert gpu_proof.main(["tests", "--out", str(tmp_path)]) == 0
    tests = json.loads((tmp_path / "proof.json").read_text())["tests"]
    assert tests["counts"] == {"failed": 1, "passed": 1, "skipped": 1}
    assert tests["failures"] == [{"nodeid": "t::c", "outcome": "failed", "longrepr": "assert 1 == 2"}]
    assert tests["skip_reasons"] == {"no CUDA device": 1} and "absent" in tests["junit"]


@pytest.mark.slow
def test_dry_run_rehearses_every_step(tmp_path):
    out = tmp_path / "out"
    proc = _proof(out, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    record = json.loads((out / "proof.json").read_text())
    assert [s["name"] for s in record["steps"]] == STEPS
    assert all(s["status"] == "ok" for s in record["steps"]), record["steps"]
    assert record["complete"] and record["env"]["dry_run"] and record["env"]["commit"]
    assert record["build"]["path"].startswith("dry-run") and "build_info" in record["build"]
    # the tests step: the plugin's lines and pytest's junit XML agree, the XML is then removed
    assert record["tests"]["counts"].get("skipped", 0) == record["tests"]["junit"]["skipped"] > 0
    for tool in ("memcheck", "racecheck"):
        launches = record["sanitizer"][tool]["launches"]
        assert launches["bad"] == 0 and launches["launches"], record["sanitizer"][tool]
    # without a GPU the CUDA calls go to the CPU backend: their arguments are checked all the same
    status = {x["launch"]: x["status"] for x in record["sanitizer"]["memcheck"]["launches"]["launches"]}
    for name in ("cuda topk_merge", "cuda permute_lists", "cuda cknna_sums", "cuda neighbour_lists lcs_lengths",
                 "triton knn bfloat16 k=10", "triton knn float32 k=10 tf32", "triton hsic_sums rbf bfloat16"):
        assert status[name] == "ok", (name, status)
    (bench,) = out.glob("gpu-smoke-*.json")
    payload = json.loads(bench.read_text())
    assert payload["complete"] and record["bench_record"] == bench.name
    screen = [r for r in payload["rows"] if r["bench"] == "knn_screen"]
    assert [r["method"] for r in screen] == ["knn fp32 exact (triton)", "knn fp32 certified (bf16 screen)",
                                             "knn fp32 certified (tf32 screen)"]
    assert screen[0]["status"] == "ok"
    assert all(r["status"] == "ok" or r["status"].startswith("not run: not in this tree") or
               r.get("lists_identical_to_exact") for r in screen[1:])
    assert '"cases": [["knn", 131072, 768, "bfloat16"]' in (out / "bench.log").read_text()  # the GPU plan
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["proof.json", "build.log", "tests.log", "tests.jsonl", "sanitizer.log", "bench.log", bench.name])
    assert gpu_proof.layout_problems(out) == []


@pytest.mark.slow
def test_time_box_and_the_icl_slot(tmp_path):
    # The study's interface (scripts/icl_gpu.sh [--dry-run] [OUT_FOLDER], PYTHON, ICL_GPU_BUDGET).
    study = tmp_path / "icl_gpu.sh"
    study.write_text('dest="${@: -1}"; echo "$* budget $ICL_GPU_BUDGET" > "$dest/args.txt"; '
                     '[ -x "$PYTHON" ] && sleep 60\n')
    out = tmp_path / "out"
    proc = _proof(out, "--dry-run", PF_PROOF_STEPS="", PF_PROOF_ICL="1", PF_PROOF_ICL_SCRIPT=str(study),
                  PF_PROOF_ICL_S="5")
    assert proc.returncode == 1, proc.stdout[-3000:]  # the study was stopped: the proof says so
    record = json.loads((out / "proof.json").read_text())
    assert [(s["name"], s["status"]) for s in record["steps"]] == [("icl", "timeout")]
    with tarfile.open(out / "proof-logs.tar.gz") as tar:
        assert tar.getnames() == ["build.log"]  # the environment step's log
    with tarfile.open(out / "icl.tar.gz") as tar:
        args = tar.extractfile("icl/args.txt").read().decode().split()
    assert args == ["--dry-run", str(out / "icl"), "budget", "5"]
    assert sorted(p.name for p in out.iterdir()) == ["icl.log", "icl.tar.gz", "proof-logs.tar.gz", "proof.json"]
    assert gpu_proof.layout_problems(out) == []

    out2 = tmp_path / "out2"
    proc = _proof(out2, "--dry-run", PF_PROOF_STEPS="", PF_PROOF_ICL="1",
                  PF_PROOF_ICL_SCRIPT=str(tmp_path / "absent.sh"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    icl = json.loads((out2 / "proof.json").read_text())["steps"][-1]
    assert icl["status"] == "skipped" and "absent.sh is not in this tree" in icl["note"]


TRITON36 = Path(os.environ.get("PF_TRITON36_DIR", "/tmp/triton36"))


@pytest.mark.slow
@pytest.mark.skipif(not (TRITON36 / "triton").is_dir(),
                    reason=f"no Triton 3.6 at {TRITON36} (pip install --target {TRITON36} 'triton==3.6.*')")
def test_kernels_compile_with_the_gpu_images_triton():
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join([str(TRITON36), str(ROOT / "python"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_aot.py")], capture_output=True,
                          text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["triton"].startswith("3.6"), report["triton"]
    failed = [c for c in report["cases"] if c["ok"] is not True]
    assert not failed, failed
    for case in report["cases"]:
        if case["arch"] == 90 and case["dtype"] == "bfloat16":
            assert case["wgmma"] and case["cp_async"], case
