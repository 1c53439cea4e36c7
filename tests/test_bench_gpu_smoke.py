"""bench/bench_gpu.py is ready to run: its whole harness (timing, anchors, recall and error
checks, the JSON record) runs on tiny shapes in Triton's CPU interpreter (``--smoke``), so a
broken suite is caught before a GPU is at hand. Smoke numbers are not measurements and never
go to bench/results/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
# Loads models, runs subprocesses or compiles kernels: the full lane only (pytest -m "not slow" skips it).
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"
ROW_FIELDS = {"bench", "case", "shape", "dtype", "method", "median_s", "repeats", "gflops", "pct_peak"}
FUSED = {"knn (triton, fused)", "hsic_sums (triton, fused)"}


def _run(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_smoke_run_writes_a_complete_record(tmp_path):
    proc = _run("--smoke", "--out", str(tmp_path), env_extra={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (path,) = tmp_path.glob("gpu-smoke-*.json")
    record = json.loads(path.read_text())
    assert record["smoke"] is True and "not a measurement" in record["device"]
    assert record["env"]["git"] and record["bf16_gemm_peak"]["gflops"] > 0
    methods = {(row["bench"], row["method"]) for row in record["rows"]}
    assert methods == {("knn", "knn (triton, fused)"), ("knn", "torch chunked mm+topk"),
                       ("hsic", "hsic_sums (triton, fused)"), ("hsic", "torch chunked Gram products + sums"),
                       ("metrics", "pf.mutual_knn (auto)")}
    for row in record["rows"]:
        assert row["status"] == "ok", row
        if row["method"] in FUSED:
            assert ROW_FIELDS <= set(row), row
    knn = next(row for row in record["rows"] if row["method"] == "knn (triton, fused)")
    assert knn["anchor"] == "torch chunked mm+topk" and knn["ratio"] > 0
    assert knn["agreement_vs_torch"]["recall"] > 0.95  # bf16 near-ties may swap
    ip = next(row for row in record["rows"] if row["method"] == "hsic_sums (triton, fused)" and row["kernel"] == "ip")
    assert ip["rel_err_cross_vs_anchor"] < 1e-2  # the anchor rounds its bf16 Gram products
    mutual = next(row for row in record["rows"] if row["bench"] == "metrics")
    assert 0.0 <= mutual["value"] <= 1.0


def test_smoke_refuses_to_write_into_results():
    proc = _run("--smoke", env_extra={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 2 and "--out" in proc.stdout
