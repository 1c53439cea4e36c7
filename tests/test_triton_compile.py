"""The Triton kernels compile for real NVIDIA GPUs (sm_80, sm_90), checked without one.

Triton's interpreter, which runs the kernels' numerics in CI, never compiles them, so it cannot
catch code that only fails in the compiler (it missed one such bug). This test compiles the
kernels ahead of time in a subprocess (the interpreter must be off there) and reads the cubins'
resources: bfloat16 GEMM tiles must use Hopper's wgmma with asynchronous copies, fit in an
H100's shared memory, and not spill registers (the k >= 64 sort-and-merge path may spill a
little; it is reported, not failed).

`python tests/triton_aot.py --all-configs` checks every autotuning configuration (minutes).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

H100_MAX_SHARED = 227 * 1024


# Loads models, runs subprocesses or compiles kernels: the full lane only (pytest -m "not slow" skips it).
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def report():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("triton_aot.py"))],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    if all(case["ok"] is None for case in report["cases"]):
        pytest.skip(report["cases"][0]["error"])
    return report


def test_every_kernel_variant_compiles(report):
    failed = [c for c in report["cases"] if c["ok"] is not True]
    assert not failed, "\n".join(f"{c['kernel']} {c['dtype']} sm_{c['arch']}: {c['error']}" for c in failed)
    kernels = {c["kernel"] for c in report["cases"]}
    assert kernels == {"_knn_kernel", "_hsic_sums_kernel"}


def test_hopper_builds_use_tensor_cores_and_fit(report):
    for case in report["cases"]:
        if case["arch"] == 90 and case["dtype"] == "bfloat16":
            assert case["wgmma"] and case["cp_async"], case
        if case["arch"] == 90:
            assert case["shared_bytes"] <= H100_MAX_SHARED, case


def test_no_register_spills_on_the_main_paths(report):
    cases = [c for c in report["cases"] if "stack" in c]
    if not cases:
        pytest.skip("Triton's cuobjdump is not available to read the cubins' resources")
    for case in cases:
        sort_merge = case.get("SORT_MERGE", False)
        if case["dtype"] in ("bfloat16", "float16") and not sort_merge:
            assert case["stack"] == 0, f"register spills: {case}"


def test_autotuners_name_real_arguments_and_prune_sensibly():
    # Autotuning only runs on a GPU: a misspelt key or reset name would fail there first.
    from platonic_fast.triton import hsic, knn

    for tuner in (knn._knn_kernel_tuned, hsic._hsic_sums_tuned):
        assert set(tuner.keys) <= set(tuner.arg_names), tuner.keys
        assert set(getattr(tuner, "reset_to_zero", None) or []) <= set(tuner.arg_names)
    for k in (1, 10, 16, 17, 33, 64, 100, 128):
        top = max(16, knn._next_pow2(k))
        kept = knn._prune(knn._CONFIGS, {"TOP": top})
        assert kept and all(c.kwargs["BLOCK_N"] >= top for c in kept)
        if top > 32:
            assert all(c.kwargs["BLOCK_M"] == 64 and c.num_warps == 8 for c in kept)
