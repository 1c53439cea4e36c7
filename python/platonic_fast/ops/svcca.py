"""SVCCA's per-feature-set step: the top singular directions of the standardised features.

docs/metrics.md#svcca: standardise each column (subtract the mean, divide by the unbiased std + 1e-8) and
keep the top ``cca_dim`` left singular vectors. The canonical correlations of two such
orthonormal bases are the singular values of U_Aᵀ U_B (:func:`canonical_correlations`).
One implementation on torch (LAPACK on the CPU, cuSOLVER on CUDA), in float64.
"""

from __future__ import annotations

import warnings

import torch

from .._backends import register, resolve
from .._checks import DegenerateInputWarning


def svcca_basis(x: torch.Tensor, cca_dim: int, *, backend: str = "auto") -> torch.Tensor:
    """N x cca_dim orthonormal basis (float64) of features ``x`` (N x D, validated)."""
    _, impl = resolve("svcca", backend, x.device, dtypes=(x.dtype,))
    return impl(x, cca_dim)


# One implementation serves both names, as for hsic: on the CPU it is the CPU path (LAPACK).
@register("svcca", "cpu", devices=("cpu",))
@register("svcca", "torch", devices=("cpu", "cuda"))
def svcca_basis_torch(x: torch.Tensor, cca_dim: int) -> torch.Tensor:
    x64 = x.to(torch.float64)
    lo, hi = torch.aminmax(x64, dim=0)
    x64 = x64 - x64.mean(dim=0, keepdim=True)
    x64 = x64 / (x64.std(dim=0) + 1e-8)
    # A constant column is exactly zero after standardising (the rounding of its mean would
    # otherwise be divided by 1e-8 into a column of noise).
    x64[:, lo == hi] = 0.0
    u, s, _ = torch.linalg.svd(x64, full_matrices=False)
    top = float(s[0]) if s.numel() else 0.0
    rank = int((s > top * max(x64.shape) * torch.finfo(torch.float64).eps).sum()) if top > 0 else 0
    if rank < cca_dim:
        _warn(f"cca_dim={cca_dim} exceeds the rank {rank} of the standardised features (constant or collinear "
              "columns); the extra singular directions are arbitrary and so is their part of the score")
    elif cca_dim >= x64.shape[0] - 1:
        _warn(f"cca_dim={cca_dim} >= N - 1 = {x64.shape[0] - 1}: centred features span at most N - 1 "
              "directions, so both bases span the same space and svcca is 1 for any inputs")
    elif cca_dim < s.numel() and float(s[cca_dim - 1] - s[cca_dim]) <= 1e-10 * top:
        _warn(f"the {cca_dim}-th and next singular values are equal: the top-{cca_dim} directions are not "
              "unique, so the score depends on an arbitrary choice (pick another cca_dim)")
    return u[:, :cca_dim]


def _warn(message: str) -> None:
    warnings.warn(f"svcca: {message}", DegenerateInputWarning, stacklevel=6)


def canonical_correlations(ua: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
    """Canonical correlations of two orthonormal bases: the singular values of UaᵀUb, in [0, 1]."""
    return torch.linalg.svdvals(ua.T @ ub).clamp(0.0, 1.0)
