"""Neighbour lists of a row-permuted feature set, by relabelling: the engine of permutation nulls.

For features B (N x D) with kNN lists L and a permutation π of the rows, the lists of B[π]
(row i of B[π] is row π(i) of B) are

    L_π[i] = π⁻¹(L[π(i)]),

with the same kernel values in the same order: no kNN is recomputed, O(N·k) per permutation
(docs/metrics.md#calibration). Equal-score neighbours keep B's order (ties by the smaller *original* index), which
can differ from lists recomputed on B[π] (ties by the smaller *new* index); on tie-free data the
two are identical.

Backends: ``cpu``, the compiled core (OpenMP); ``cuda``, the compiled kernel on device lists;
``torch``, the reference ``inverse[lists[perm]]``, on any device.
"""

from __future__ import annotations

import torch

from .._backends import MIN_CUDA_CAPABILITY, launch, register, resolve
from .neighbour_lists import INDEX_DTYPES


def check_permutation(perm, n: int, name: str = "perm") -> torch.Tensor:
    """``perm`` as an int64 tensor after checking it is a permutation of 0..n-1.

    Raises
    ------
    TypeError
        Not an integer tensor or array.
    ValueError
        Wrong length, an entry out of range, or a repeated entry.
    """
    if not isinstance(perm, torch.Tensor):
        try:
            perm = torch.as_tensor(perm)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a 1-D integer tensor (a permutation of 0..N-1), got "
                            f"{type(perm).__name__}") from exc
    if perm.is_floating_point() or perm.is_complex() or perm.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers (a permutation of 0..N-1), got dtype {perm.dtype}")
    if perm.dim() != 1 or perm.shape[0] != n:
        raise ValueError(f"{name} must be a permutation of the N={n} rows (shape ({n},)), got shape "
                         f"{tuple(perm.shape)}")
    perm = perm.to(torch.int64)
    if n and (int(perm.min()) < 0 or int(perm.max()) >= n):
        raise ValueError(f"{name} holds entries outside [0, {n}): it must be a permutation of 0..{n - 1}")
    if n and bool((torch.bincount(perm, minlength=n) != 1).any()):
        raise ValueError(f"{name} repeats an entry: it must be a permutation of 0..{n - 1}, each index once")
    return perm


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """π⁻¹ of a checked permutation (``inverse[perm[i]] = i``), on perm's device."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.shape[0], device=perm.device, dtype=perm.dtype)
    return inv


def permute_lists(lists: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor | None = None, *,
                  backend: str = "auto") -> torch.Tensor:
    """The neighbour lists of the row-permuted set: ``out[i] = π⁻¹(lists[π(i)])``, int64 N x k.

    Parameters
    ----------
    lists : torch.Tensor, N x k integers
        kNN lists of the unpermuted set, indices in [0, N).
    perm : torch.Tensor, N integers
        The permutation π (row i of the permuted set is row π(i) of the original).
    inverse : torch.Tensor, optional
        π⁻¹, when the caller already has it (a null relabels every layer with one π).
    backend : str

    Raises
    ------
    ValueError, TypeError
        Lists not N x k integers, or perm not a permutation of their N rows.
    """
    if not isinstance(lists, torch.Tensor) or lists.dim() != 2 or lists.is_floating_point() \
            or lists.dtype == torch.bool:
        raise TypeError("lists must be an N x k integer tensor")
    n = lists.shape[0]
    perm = check_permutation(perm, n).to(lists.device)
    inverse = inverse_permutation(perm) if inverse is None else inverse.to(device=lists.device, dtype=torch.int64)
    if inverse.shape != perm.shape:
        raise ValueError(f"inverse must hold N={n} entries, got shape {tuple(inverse.shape)}")
    return relabel(lists, perm, inverse, backend=backend)


def relabel(lists: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """:func:`permute_lists` for a permutation already checked (a null checks each one once)."""
    device = lists.device
    _, impl = resolve("permute_lists", backend, device, dtypes=(lists.dtype,))
    return impl(lists, perm.to(device), inverse.to(device))


@register("permute_lists", "cpu", devices=("cpu",), dtypes=INDEX_DTYPES, needs=("core",))
def permute_lists_cpu(lists: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    from .. import _core

    def host(t):
        return t.to(torch.int64).contiguous().numpy()

    return torch.from_numpy(_core.permute_lists(host(lists), host(perm), host(inverse)))


@register("permute_lists", "cuda", devices=("cuda",), dtypes=INDEX_DTYPES, min_capability=MIN_CUDA_CAPABILITY,
          needs=("cuda_kernels",))
def permute_lists_cuda(lists: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    from .. import _core

    src = lists.to(torch.int64).contiguous()
    perm, inverse = perm.contiguous(), inverse.contiguous()
    n, k = src.shape
    if n and (int(src.min()) < 0 or int(src.max()) >= n):  # the kernel trusts its indices
        raise ValueError(f"lists hold indices outside [0, {n})")
    out = torch.empty_like(src)
    if n:
        launch(_core.permute_lists_cuda, src.device, src.data_ptr(), n, k, perm.data_ptr(), inverse.data_ptr(),
               out.data_ptr())
    return out


@register("permute_lists", "torch", devices=("cpu", "cuda"), dtypes=INDEX_DTYPES)
def permute_lists_torch(lists: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Reference: gather the rows π(i), then map every index through π⁻¹."""
    return inverse[lists.to(torch.int64)[perm]]


# --- whole nulls in one call (the compiled core) ------------------------------------------------


def null_counts(kind: str, lists_a: list[torch.Tensor], lists_b: list[torch.Tensor], perms: torch.Tensor
                ) -> torch.Tensor:
    """Σ over rows of neighbour-list ``kind`` for every (permutation t, a-set i, b-set j).

    ``perms`` (count x N, each row a checked permutation) relabels every b-set once; the result
    is int64 count x len(a) x len(b). Compiled core when it imports (one call, parallel over
    permutations and b-sets), else the plain loop over :func:`relabel` and the neighbour-list op.
    """
    from .._backends import core_available

    if core_available() and all(t.device.type == "cpu" for t in [*lists_a, *lists_b, perms]):
        from .. import _core

        out = _core.permute_lists_scores(kind, [_host(t) for t in lists_a], [_host(t) for t in lists_b], _host(perms))
        return torch.from_numpy(out)
    from .neighbour_lists import run

    out = torch.empty(perms.shape[0], len(lists_a), len(lists_b), dtype=torch.int64)
    for t, perm in enumerate(perms):
        inv = inverse_permutation(perm)
        for j, lb in enumerate(lists_b):
            rb = relabel(lb, perm, inv)
            for i, la in enumerate(lists_a):
                out[t, i, j] = int(run(kind, la, rb).sum())
    return out


def null_cknna_sums(idx_a, val_a, idx_b, val_b, perms: torch.Tensor, zero_diagonal: bool) -> torch.Tensor:
    """CKNNA's six sparse sums (trace_kl, sum_k, sum_l, k_then_l, l_then_k, mask_count) for every
    (permutation, a-set, b-set): float64 count x len(a) x len(b) x 6. Compiled core on CPU
    tensors of one value dtype, else the loop over :func:`relabel` and the cknna_sums op."""
    from .._backends import core_available

    tensors = [*idx_a, *val_a, *idx_b, *val_b, perms]
    dtypes = {v.dtype for v in (*val_a, *val_b)}
    if core_available() and all(t.device.type == "cpu" for t in tensors) and len(dtypes) == 1 \
            and dtypes <= {torch.float32, torch.float64}:
        from .. import _core

        def vals(v):
            return v.detach().contiguous().numpy()

        out = _core.permute_lists_cknna([_host(t) for t in idx_a], [vals(v) for v in val_a],
                                        [_host(t) for t in idx_b], [vals(v) for v in val_b], _host(perms),
                                        zero_diagonal)
        return torch.from_numpy(out)
    from .cknna_sums import cknna_sums

    keys = ("trace_kl", "sum_k", "sum_l", "k_then_l", "l_then_k", "mask_count")
    out = torch.empty(perms.shape[0], len(idx_a), len(idx_b), 6, dtype=torch.float64)
    for t, perm in enumerate(perms):
        inv = inverse_permutation(perm)
        for j, (ib, vb) in enumerate(zip(idx_b, val_b)):
            rb, rv = relabel(ib, perm, inv), vb[perm.to(vb.device)]
            for i, (ia, va) in enumerate(zip(idx_a, val_a)):
                s = cknna_sums(ia, va, rb, rv, zero_diagonal)
                out[t, i, j] = torch.tensor([s[key] for key in keys], dtype=torch.float64)
    return out


def _host(t: torch.Tensor):
    return t.detach().to("cpu", torch.int64).contiguous().numpy()
