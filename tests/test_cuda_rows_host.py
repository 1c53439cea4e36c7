"""The CUDA kernels' per-row code, run on the CPU, against the compiled CPU core.

Every neighbour-list kernel in kernels/cuda/ is a thin wrapper around a host + device function
in kernels/cuda/list_rows.cuh (which thread takes which row; atomics and warp sums around it).
This test compiles those same functions for the host (tests/cuda_rows_host.cpp, with the
kernels' row -> thread mapping) and checks them against the CPU core's independent
implementations: overlap, cycle, LCS, Levenshtein (one and several 64-bit Myers words), the
CKNNA sparse sums and the k-selection merge. What it cannot check (launch geometry, atomics,
warp shuffles) runs in tests/test_neighbour_lists.py etc. on a GPU.
"""

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from platonic_fast import _core
from platonic_fast.ops.topk_merge import topk_merge_torch

ROOT = Path(__file__).resolve().parents[1]
I64 = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
F32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
F64 = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
N_, K_ = ctypes.c_int64, ctypes.c_int64


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    lib = tmp_path_factory.mktemp("cuda_rows") / "cuda_rows_host.so"
    subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", f"-I{ROOT}",
                    str(ROOT / "tests" / "cuda_rows_host.cpp"), "-o", str(lib)], check=True)
    so = ctypes.CDLL(str(lib))
    for name in ("host_mutual_overlap", "host_cycle_hits", "host_lcs_lengths", "host_edit_distances"):
        getattr(so, name).argtypes = [I64, I64, N_, K_, I64]
    so.host_cknna_sums_f32.argtypes = [I64, F32, I64, F32, N_, K_, ctypes.c_int, F64]
    so.host_cknna_sums_f64.argtypes = [I64, F64, I64, F64, N_, K_, ctypes.c_int, F64]
    so.host_topk_merge_f64.argtypes = [F64, I64, N_, N_, K_, F64, I64]
    return so


def _lists(n, k, seed, related=True):
    """Two N x k neighbour lists without self, distinct per row; B shares part of A when related."""
    rng = np.random.default_rng(seed)
    a = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
    if not related:
        b = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
        return a.astype(np.int64), b.astype(np.int64)
    b = a.copy()
    for i in range(n):  # shuffle some positions and swap in some outsiders
        swap = rng.choice(k, size=k // 2, replace=False)
        b[i, swap] = b[i, rng.permutation(swap)]
        outside = np.setdiff1d(np.delete(np.arange(n), i), a[i])
        m = min(len(outside), k // 3)
        b[i, rng.choice(k, m, replace=False)] = rng.choice(outside, m, replace=False)
    return a.astype(np.int64), b.astype(np.int64)


SHAPES = [(5, 1), (40, 7), (150, 10), (200, 63), (200, 64), (200, 65), (300, 128)]


@pytest.mark.parametrize("n,k", SHAPES, ids=[f"n{n}-k{k}" for n, k in SHAPES])
@pytest.mark.parametrize("related", [True, False], ids=["related", "random"])
@pytest.mark.slow
def test_list_rows_match_cpu_core(rows, n, k, related):
    a, b = _lists(n, k, seed=n * 1000 + k, related=related)
    for name in ("mutual_overlap", "cycle_hits", "lcs_lengths", "edit_distances"):
        out = np.empty(n, dtype=np.int64)
        getattr(rows, f"host_{name}")(a, b, n, k, out)
        np.testing.assert_array_equal(out, _core.neighbour_lists(name, a, b), err_msg=name)


@pytest.mark.parametrize("n,k", [(30, 4), (150, 10), (120, 64), (200, 128)])
@pytest.mark.parametrize("zero_diagonal", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cknna_sums_match_cpu_core(rows, n, k, zero_diagonal, dtype):
    rng = np.random.default_rng(n + k)
    a, b = _lists(n, k, seed=n + k)
    if not zero_diagonal:  # the self-included form lists i first in its own row
        a[:, 0], b[:, 0] = np.arange(n), np.arange(n)
    va, vb = rng.standard_normal((n, k)).astype(dtype), rng.standard_normal((n, k)).astype(dtype)
    out = np.empty(6)
    fn = rows.host_cknna_sums_f64 if dtype == np.float64 else rows.host_cknna_sums_f32
    fn(a, va, b, vb, n, k, int(zero_diagonal), out)
    want = _core.cknna_sums(a, va, b, vb, zero_diagonal)
    names = ("trace_kl", "sum_k", "sum_l", "k_then_l", "l_then_k", "mask_count")
    np.testing.assert_allclose(out, [want[name] for name in names], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("n,m,k", [(50, 30, 10), (20, 200, 128), (9, 5, 5)])
def test_topk_merge_rows_match_reference(rows, n, m, k):
    rng = np.random.default_rng(m)
    values = rng.integers(0, 6, (n, m)).astype(np.float64)  # many ties
    indices = np.stack([rng.permutation(10 * m)[:m] for _ in range(n)]).astype(np.int64)
    indices[rng.random((n, m)) < 0.1] = -1  # empty slots
    out_v, out_i = np.empty((n, k)), np.empty((n, k), dtype=np.int64)
    rows.host_topk_merge_f64(values, indices, n, m, k, out_v, out_i)
    ref_v, ref_i = topk_merge_torch(torch.from_numpy(values), torch.from_numpy(indices), k)
    np.testing.assert_array_equal(out_i, ref_i.numpy())
    np.testing.assert_array_equal(out_v, ref_v.numpy())


def test_list_bound_matches_the_bindings(rows):
    rows.max_list_k.restype = ctypes.c_int
    if hasattr(_core, "CUDA_MAX_LIST_K"):
        assert rows.max_list_k() == _core.CUDA_MAX_LIST_K
