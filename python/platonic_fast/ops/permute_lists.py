"""Neighbour lists of a row-permuted feature set, by relabelling: the engine of permutation nulls.

For features B (N x D) with kNN lists L and a permutation π of the rows, the lists of B[π]
(row i of B[π] is row π(i) of B) are

    L_π[i] = π⁻¹(L[π(i)]),

with the same kernel values in the same order: no kNN is recomputed, O(N·k) per permutation
(SPEC §1b). Equal-score neighbours keep B's order (ties by the smaller *original* index), which
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
