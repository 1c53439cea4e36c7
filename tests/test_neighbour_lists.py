"""The compiled neighbour-list ops against their plain-torch references (ops/neighbor_lists.py).

Random lists of distinct neighbours with a controlled overlap, k from 1 to 200 so Myers'
bit-parallel edit distance runs over one, two and four 64-bit words, and the LCS-as-LIS and
sorted-membership paths meet k near N.
"""

import pytest
import torch

from platonic_fast.ops import neighbor_lists as nl


def _lists(n: int, k: int, overlap: float, seed: int):
    """Two N x k lists of distinct indices; b keeps about `overlap` of a's entries, reordered."""
    g = torch.Generator().manual_seed(seed)
    a = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n)])
    b = a.clone()
    for i in range(n):
        mine = a[i, torch.randperm(k, generator=g)].tolist()
        fresh = [j for j in torch.randperm(n, generator=g).tolist() if j not in set(mine)]
        keep = max(int(overlap * k), k - len(fresh))  # small n: not enough fresh indices
        row = mine[:keep] + fresh[: k - keep]
        b[i] = torch.tensor(row)[torch.randperm(k, generator=g)]
    return a, b


CASES = [(5, 1), (5, 4), (37, 10), (130, 63), (130, 64), (131, 65), (300, 129), (220, 200)]


@pytest.mark.parametrize("op", nl.OPS)
@pytest.mark.parametrize("n,k", CASES, ids=[f"n{n}-k{k}" for n, k in CASES])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 1.0])
def test_cpu_core_matches_torch_reference(op, n, k, overlap):
    if k >= n:
        pytest.skip("k must be below n for lists of distinct neighbours")
    a, b = _lists(n, k, overlap, seed=n * 1000 + k)
    got = nl.run(op, a, b, backend="cpu")
    want = nl.run(op, a, b, backend="torch")
    assert got.dtype == torch.int64
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_identical_lists():
    a, _ = _lists(64, 20, 1.0, seed=1)
    assert bool((nl.run("mutual_overlap", a, a) == 20).all())
    assert bool((nl.run("lcs_lengths", a, a) == 20).all())
    assert bool((nl.run("edit_distances", a, a) == 0).all())


def test_reversed_lists_edit_distance():
    # Reversed lists of distinct symbols: the LCS is 1; the edit distance is checked against the DP.
    a, _ = _lists(200, 150, 1.0, seed=2)
    b = a.flip(1).contiguous()
    torch.testing.assert_close(nl.run("edit_distances", a, b, backend="cpu"),
                               nl.run("edit_distances", a, b, backend="torch"), rtol=0, atol=0)
    assert bool((nl.run("lcs_lengths", a, b, backend="cpu") == 1).all())


def test_out_of_range_indices_raise():
    a = torch.zeros(4, 2, dtype=torch.int64)
    b = a.clone()
    b[1, 1] = 4
    with pytest.raises(ValueError, match="outside"):
        nl.run("mutual_overlap", a, b, backend="cpu")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="N x k"):
        nl.run("cycle_hits", torch.zeros(4, 2, dtype=torch.int64), torch.zeros(4, 3, dtype=torch.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("op", nl.OPS)
@pytest.mark.parametrize("n,k", CASES, ids=[f"n{n}-k{k}" for n, k in CASES])
def test_cuda_kernels_match_cpu_core(op, n, k):
    if "cuda" not in nl._backends_available(op):
        pytest.skip("CUDA kernels not built")
    if k >= n:
        pytest.skip("k must be below n for lists of distinct neighbours")
    a, b = _lists(n, k, 0.5, seed=k)
    got = nl.run(op, a.cuda(), b.cuda(), backend="cuda")
    torch.testing.assert_close(got.cpu(), nl.run(op, a, b, backend="cpu"), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("topk", [10, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cknna_sums_on_gpu_match_cpu(unbiased, topk, dtype):
    import platonic_fast as pf

    g = torch.Generator().manual_seed(9)
    a = torch.nn.functional.normalize(torch.randn(700, 48, generator=g), dim=1).to(dtype)
    b = torch.nn.functional.normalize(a[:, :32] + torch.randn(700, 32, generator=g, dtype=dtype), dim=1)
    want = pf.cknna(a, b, topk=topk, unbiased=unbiased)
    got = pf.cknna(a.cuda(), b.cuda(), topk=topk, unbiased=unbiased, backend="cuda")
    assert got == pytest.approx(want, abs=1e-5)
