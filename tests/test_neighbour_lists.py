"""The neighbour-list op (ops/neighbour_lists.py): every backend against the plain-torch reference.

Random lists of distinct neighbours with a controlled overlap, k from 1 to 200 so Myers'
bit-parallel edit distance runs over one, two and four 64-bit words, and the LCS-as-LIS and
sorted-membership paths meet k near N.
"""

import functools

import pytest
import torch

from platonic_fast.ops import neighbour_lists as nl

from conftest import backend_device_params


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


@functools.lru_cache(maxsize=None)
def _reference(kind: str, n: int, k: int, overlap: float) -> torch.Tensor:
    """The torch reference, once per case (its LCS and edit distance are Python loops)."""
    return nl.run(kind, *_lists(n, k, overlap, seed=n * 1000 + k), backend="torch")


CASES = [(5, 1), (5, 4), (37, 10), (130, 63), (130, 64), (131, 65),
         pytest.param(300, 129, marks=pytest.mark.slow), pytest.param(220, 200, marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend,device", backend_device_params("neighbour_lists"))
@pytest.mark.parametrize("kind", nl.KINDS)
@pytest.mark.parametrize("n,k", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("overlap", [0.0, 0.5, 1.0])
def test_backend_matches_torch_reference(kind, n, k, overlap, backend, device):
    assert k < n, "lists of distinct neighbours need k < n"
    a, b = _lists(n, k, overlap, seed=n * 1000 + k)
    want = _reference(kind, n, k, overlap)
    if backend == "cuda" and k > nl.cuda_max_list_k():
        with pytest.raises(ValueError, match="k <="):  # the registry says so; nothing falls back
            nl.run(kind, a.to(device), b.to(device), backend=backend)
        return
    got = nl.run(kind, a.to(device), b.to(device), backend=backend)
    assert got.dtype == torch.int64 and got.device.type == device
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


def test_identical_lists():
    a, _ = _lists(64, 20, 1.0, seed=1)
    assert bool((nl.run("mutual_overlap", a, a) == 20).all())
    assert bool((nl.run("lcs_lengths", a, a) == 20).all())
    assert bool((nl.run("edit_distances", a, a) == 0).all())


@pytest.mark.slow
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
