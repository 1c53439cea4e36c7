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


def svcca_basis(x: torch.Tensor, cca_dim: int, *, backend: str = "auto", comm=None, layout=None) -> torch.Tensor:
    """N x cca_dim orthonormal basis (float64) of features ``x`` (N x D, validated); with a
    process group's ``comm`` and row ``layout``, this rank's rows of it (:func:`sharded_basis`)."""
    if comm is not None:
        return sharded_basis(comm, layout, x, cca_dim)
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
    _check_spectrum(s, *x64.shape, cca_dim)
    return u[:, :cca_dim]


def sharded_basis(comm, layout, x: torch.Tensor, cca_dim: int) -> torch.Tensor:
    """This rank's rows of the basis of row-sharded features (collective): columns standardised
    with all-reduced moments, the top singular directions by a tall-skinny QR (each rank's R
    factor gathered, one small SVD)."""
    n, d = layout.n, x.shape[1]
    with comm.step():
        x64 = x.to(torch.float64)
        if x.shape[0]:
            lo, hi = torch.aminmax(x64, dim=0)
        else:
            lo = torch.full((d,), torch.inf, dtype=torch.float64, device=x.device)
            hi = -lo
        colsum = x64.sum(dim=0)
    lo, hi = comm.all_reduce(lo.cpu(), "min").to(x.device), comm.all_reduce(hi.cpu(), "max").to(x.device)
    mean = (comm.all_reduce(colsum.cpu()) / n).to(x.device)
    with comm.step():
        xc = x64 - mean
        ss = xc.square().sum(dim=0)
    std = (comm.all_reduce(ss.cpu()) / (n - 1)).sqrt().to(x.device)
    with comm.step():
        xs = xc / (std + 1e-8)
        xs[:, lo == hi] = 0.0  # constant columns exactly zero, as one process does
        q_r, r_r = torch.linalg.qr(xs)  # reduced: (n_r x m_r), (m_r x D), m_r = min(n_r, D)
    counts = [min(layout.rows(p), d) for p in range(layout.size)]
    stacked = comm.all_gather_rows(r_r, counts)
    with comm.step():
        u2, s, _ = torch.linalg.svd(stacked, full_matrices=False)
        off = sum(counts[: layout.rank])
        u = q_r @ u2[off: off + counts[layout.rank], :cca_dim]
    _check_spectrum(s, n, d, cca_dim)
    return u


def _check_spectrum(s: torch.Tensor, n: int, d: int, cca_dim: int) -> None:
    """Warn when the top ``cca_dim`` directions of singular values ``s`` (N x D features) are not
    determined by the data."""
    top = float(s[0]) if s.numel() else 0.0
    rank = int((s > top * max(n, d) * torch.finfo(torch.float64).eps).sum()) if top > 0 else 0
    if rank < cca_dim:
        _warn(f"cca_dim={cca_dim} exceeds the rank {rank} of the standardised features (constant or collinear "
              "columns); the extra singular directions are arbitrary and so is their part of the score")
    elif cca_dim >= n - 1:
        _warn(f"cca_dim={cca_dim} >= N - 1 = {n - 1}: centred features span at most N - 1 "
              "directions, so both bases span the same space and svcca is 1 for any inputs")
    elif cca_dim < s.numel() and float(s[cca_dim - 1] - s[cca_dim]) <= 1e-10 * top:
        _warn(f"the {cca_dim}-th and next singular values are equal: the top-{cca_dim} directions are not "
              "unique, so the score depends on an arbitrary choice (pick another cca_dim)")


def _warn(message: str) -> None:
    warnings.warn(f"svcca: {message}", DegenerateInputWarning, stacklevel=7)


def canonical_correlations(ua: torch.Tensor, ub: torch.Tensor, comm=None) -> torch.Tensor:
    """Canonical correlations of two orthonormal bases: the singular values of UaᵀUb, in [0, 1]
    (with a process group's ``comm``: this rank's rows of each, the product all-reduced)."""
    if comm is None:
        return torch.linalg.svdvals(ua.T @ ub).clamp(0.0, 1.0)
    with comm.step():
        c = ua.T @ ub
    return torch.linalg.svdvals(comm.all_reduce(c.cpu())).clamp(0.0, 1.0)
