"""What was built is inspectable (STYLE habit 5): the env report and the compiled core."""

import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_env_module_runs_and_prints_backends():
    proc = subprocess.run([sys.executable, "-m", "platonic_fast.env"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.lower()
    assert "backend" in out
    assert "knn" in out
    assert "cpu" in out
    assert "platonic_fast" in out


def test_env_report_is_structured():
    from platonic_fast import env

    info = env.report()
    assert isinstance(info, dict)
    assert "backends" in info and "knn" in info["backends"]


def test_core_imports_and_exposes_build_info():
    from platonic_fast import _core

    info = _core.build_info()
    assert isinstance(info, dict) and info
    # what the env report relies on
    for key in ("compiler", "openmp", "cuda"):
        assert key in info, f"build_info lacks {key!r}: {sorted(info)}"
    assert isinstance(info["cuda"], bool)


def _stub_names():
    """Public names the .pyi stub declares at top level: (all, the CUDA-only ones)."""
    import ast

    import platonic_fast

    stub = os.path.join(os.path.dirname(platonic_fast.__file__), "_core.pyi")
    if not os.path.exists(stub):
        pytest.fail("python/platonic_fast/_core.pyi is missing")
    with open(stub, encoding="utf-8") as f:
        text = f.read()
    marker = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith("# --- CUDA-only")]
    assert len(marker) == 1, "_core.pyi must mark its CUDA-only block once with '# --- CUDA-only'"
    names, cuda_only = set(), set()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        else:
            continue
        if name.startswith("_"):
            continue  # stub-only helpers (type aliases)
        names.add(name)
        if node.lineno > marker[0]:
            cuda_only.add(name)
    return names, cuda_only


def test_core_stub_matches_module():
    # Both ways: every name the .pyi stub declares exists in the built module (its CUDA-only
    # block only in CUDA builds), and every public name of the module is declared in the stub.
    from platonic_fast import _core

    names, cuda_only = _stub_names()
    assert names and cuda_only
    has_cuda = bool(_core.build_info().get("cuda"))
    expected = names if has_cuda else names - cuda_only
    missing = sorted(n for n in expected if not hasattr(_core, n))
    assert not missing, f"_core.pyi declares {missing} but the module lacks them"
    if not has_cuda:
        leaked = sorted(n for n in cuda_only if hasattr(_core, n))
        assert not leaked, f"a build without CUDA exposes the CUDA-only {leaked}"
    public = {n for n in dir(_core) if not n.startswith("_")}
    undeclared = sorted(public - names)
    assert not undeclared, f"the module exposes {undeclared}, missing from _core.pyi"


def test_neighbour_lists_rejects_unknown_names():
    import numpy as np

    from platonic_fast import _core

    a = np.array([[1], [0]], dtype=np.int64)
    assert _core.neighbour_lists("mutual_overlap", a, a).tolist() == [1, 1]
    with pytest.raises(ValueError, match="unknown neighbour-list metric"):
        _core.neighbour_lists("mutual_knn", a, a)
    if _core.build_info()["cuda"]:
        # the name is checked before any pointer is touched
        with pytest.raises(ValueError, match="unknown neighbour-list metric"):
            _core.neighbour_lists_cuda("overlap", 8, 8, 2, 1, 8, 8, 0)


def test_cuda_backends_only_when_usable():
    import torch

    from platonic_fast import _backends, metrics  # noqa: F401

    avail = _backends.available("knn", "cuda")
    if not torch.cuda.is_available():
        assert not any(b in avail for b in ("cuda", "triton"))
    assert "torch" in _backends.available("knn", "cpu")


def test_public_api_names():
    import platonic_fast as pf

    for name in ("knn", "mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cka",
                 "unbiased_cka", "cknna", "svcca", "measure", "remove_outliers", "align",
                 "SUPPORTED_METRICS"):
        assert hasattr(pf, name), name
        assert name in pf.__all__, f"{name} missing from __all__"


def test_cuda_kernels_built_when_nvcc_present():
    # The build compiles kernels/cuda whenever nvcc is found (CMake option AUTO); the module
    # must still import and work with no GPU driver.
    import shutil

    from platonic_fast import _core

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH: the build is CPU-only by design")
    info = _core.build_info()
    assert info["cuda"] is True
    status, count = _core.cuda_status()
    assert isinstance(status, str) and count >= 0


def test_cuda_launch_without_gpu_raises_cleanly():
    import torch

    from platonic_fast import _core

    if not _core.build_info()["cuda"]:
        pytest.skip("built without CUDA kernels")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: launching on fake pointers would be invalid there")
    with pytest.raises(ValueError, match="null"):
        _core.neighbour_lists_cuda("mutual_overlap", 0, 0, 4, 2, 0, 0, 0)
    # No driver: the CUDA runtime's error comes back as an exception, not a crash.
    for name in ("mutual_overlap", "cycle_hits", "lcs_lengths", "edit_distances"):
        with pytest.raises(RuntimeError, match=name):
            _core.neighbour_lists_cuda(name, 8, 8, 4, 2, 8, 8, 0)
    with pytest.raises(RuntimeError, match="cknna_sums_cuda"):
        _core.cknna_sums_cuda(8, 8, 8, 8, 4, 2, True, False, 8, 8, 0)
    with pytest.raises(RuntimeError, match="topk_merge_cuda"):
        _core.topk_merge_cuda(8, 8, 4, 3, 2, 8, 8, False, 0)


def test_composite_metrics_take_an_explicit_backend_per_step(monkeypatch):
    # backend="torch" for a list metric: torch kNN, and the list step has a torch version too;
    # backend="cpu" on CPU tensors: every step that has it. A backend no step has is an error.
    import platonic_fast as pf
    from platonic_fast import _backends

    a, b = torch.randn(40, 8), torch.randn(40, 6)
    want = pf.mutual_knn(a, b, topk=5)
    assert pf.mutual_knn(a, b, topk=5, backend="torch") == want
    assert pf.cknna(a, b, topk=5, backend="torch") == pytest.approx(pf.cknna(a, b, topk=5), abs=1e-9)
    assert _backends.for_op("cknna_sums", "triton", ("knn", "cknna_sums")) == "auto"
    with pytest.raises(ValueError, match="implements none"):
        _backends.for_op("svcca", "triton", ("svcca",))
