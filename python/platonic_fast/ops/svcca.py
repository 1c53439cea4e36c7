"""SVCCA's per-feature-set step: the top singular directions of the standardised features.

SPEC §1: standardise each column (subtract the mean, divide by the unbiased std + 1e-8) and
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
    rank = int((s > s[0] * max(x64.shape) * torch.finfo(torch.float64).eps).sum()) if s.numel() and s[0] > 0 else 0
    if rank < cca_dim:
        warnings.warn(
            f"svcca: cca_dim={cca_dim} exceeds the rank {rank} of the standardised features (constant or "
            "collinear columns); the extra singular directions are arbitrary and so is their part of the score",
            DegenerateInputWarning, stacklevel=5)
    return u[:, :cca_dim]


def canonical_correlations(ua: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
    """Canonical correlations of two orthonormal bases: the singular values of UaᵀUb, in [0, 1]."""
    return torch.linalg.svdvals(ua.T @ ub).clamp(0.0, 1.0)
