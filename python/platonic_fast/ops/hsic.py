"""Centred-kernel (HSIC) sums without an N x N matrix.

Biased and unbiased HSIC of kernels K (from A) and L (from B) need only
    Σ K∘L,  and per kernel: Σ K∘K, row sums K1, diagonal diag(K)
(SPEC §1). They are gathered here in one of two ways:

- feature space, linear kernel only: with column-centred features Ā, B̄ (both HSIC estimators
  are invariant to centring the features of a linear kernel), Σ K̄∘L̄ = ‖ĀᵀB̄‖²_F, the row sums
  vanish and diag(K̄) = ‖ā_i‖². Cost O(N·Da·Db), chosen when cheaper than tiles.
- tiles: one pass over the upper-triangular b x b tiles of K and L (linear or RBF), each tile
  built by a GEMM, used for both itself and its transpose, and dropped. O(N) extra memory.

All sums are accumulated in float64; tiles are computed in float32 (float64 for float64 input).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .._backends import MIN_CUDA_CAPABILITY, register
from .knn import compute_dtype

KERNELS = ("ip", "rbf")
# Rows per tile: a 2048 x 2048 float32 tile is 16 MiB.
TILE_ROWS = 2048


@dataclass
class KernelStats:
    """One feature set's kernel, summarised for HSIC: everything but the cross term."""

    kernel: str
    sigma: float
    features: torch.Tensor  # centred (linear) or as given (rbf), in the compute dtype
    sq_norms: torch.Tensor | None  # ‖x_i‖² for RBF tiles
    self_sum: float | None  # Σ K∘K (None: filled by the first fused pass, Triton backend)
    row_sums: torch.Tensor | None  # K1, float64
    diag: torch.Tensor  # diag(K), float64
    fused: bool = False  # sums come from the Triton kernel's one pass over a pair

    @property
    def n(self) -> int:
        return self.features.shape[0]


def _blocks(n: int, size: int):
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _kernel_tile(st: KernelStats, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
    x = st.features
    g = x[i0:i1] @ x[j0:j1].T
    if st.kernel == "ip":
        return g
    sq = (st.sq_norms[i0:i1, None] + st.sq_norms[None, j0:j1] - 2 * g).clamp_min_(0)
    if i0 == j0:
        sq.fill_diagonal_(0)  # exact zero distance to self
    return torch.exp_(sq.mul_(-1.0 / (2 * st.sigma**2)))


def _tile_pairs(n: int):
    """Upper-triangular tile pairs with their weight (2 for off-diagonal: the transpose counts)."""
    blocks = _blocks(n, TILE_ROWS)
    for bi, (i0, i1) in enumerate(blocks):
        for j0, j1 in blocks[bi:]:
            yield i0, i1, j0, j1, (1.0 if i0 == j0 else 2.0)


def _gram_frob2(x: torch.Tensor) -> float:
    """‖XᵀX‖²_F, computing only the upper-triangular blocks of XᵀX (about 5/8 of the GEMM)."""
    width = x.shape[1]
    blocks = _blocks(width, max(192, -(-width // 4)))
    total = 0.0
    for bi, (p0, p1) in enumerate(blocks):
        for q0, q1 in blocks[bi:]:
            g = x[:, p0:p1].T @ x[:, q0:q1]
            total += (1.0 if p0 == q0 else 2.0) * float(g.square().sum(dtype=torch.float64))
    return total


def _use_feature_space(n: int, da: int, db: int) -> bool:
    # GEMM flops: ‖ĀᵀB̄‖² costs 2·N·Da·Db; the tiles cost N²·(Da+Db) (upper triangle only).
    return 2 * n * da * db <= n * n * (da + db)


# One implementation on torch GEMM tiles serves both names: on the CPU it is the CPU path
# (MKL/oneDNN GEMMs), and it runs unchanged on CUDA tensors.
@register("hsic", "cpu", devices=("cpu",))
@register("hsic", "torch", devices=("cpu", "cuda"))
def kernel_stats(x: torch.Tensor, kernel: str = "ip", sigma: float = 1.0) -> KernelStats:
    """Summarise the kernel of features ``x`` (N x D, validated) for HSIC."""
    dtype = compute_dtype(x)
    n, d = x.shape
    with torch.no_grad():
        if kernel == "ip":
            # Both HSIC estimators are exactly invariant to shifting a linear kernel's features,
            # so the centring need not be exact: it only tames cancellation.
            xd = x.to(dtype)
            centred = xd - xd.mean(dim=0, keepdim=True)
            diag = centred.square().sum(dim=1).to(torch.float64)
            zeros = torch.zeros(n, dtype=torch.float64, device=x.device)
            if _use_feature_space(n, d, d):
                self_sum = _gram_frob2(centred if d <= n else centred.T)
                return KernelStats(kernel, sigma, centred, None, self_sum, zeros, diag)
            st = KernelStats(kernel, sigma, centred, None, 0.0, zeros, diag)
        elif kernel == "rbf":
            xf = x.to(dtype)
            sq = xf.to(torch.float64).square().sum(dim=1).to(dtype)
            ones = torch.ones(n, dtype=torch.float64, device=x.device)
            st = KernelStats(kernel, sigma, xf, sq, 0.0, torch.zeros_like(ones), ones)
        else:
            raise ValueError(f"kernel_metric must be one of {KERNELS}, got {kernel!r}")
        self_sum = 0.0
        rows = torch.zeros(n, dtype=torch.float64, device=x.device)
        for i0, i1, j0, j1, w in _tile_pairs(n):
            t = _kernel_tile(st, i0, i1, j0, j1)
            self_sum += w * float(t.square().sum(dtype=torch.float64))
            rows[i0:i1] += t.sum(dim=1, dtype=torch.float64)
            if w == 2.0:
                rows[j0:j1] += t.sum(dim=0, dtype=torch.float64)
        st.self_sum = self_sum
        if kernel == "rbf":
            st.row_sums = rows
        # For centred linear features the exact row sums are zero; the float rounding is not kept.
        return st


# float64 is not served: the kernel accumulates tiles in float32.
@register("hsic", "triton", devices=("cuda",), dtypes=(torch.float32, torch.float16, torch.bfloat16),
          min_capability=MIN_CUDA_CAPABILITY, needs=("triton",))
def kernel_stats_fused(x: torch.Tensor, kernel: str = "ip", sigma: float = 1.0) -> KernelStats:
    """Triton backend: the features only; every sum comes from the fused pass over a pair."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel_metric must be one of {KERNELS}, got {kernel!r}")
    with torch.no_grad():
        if kernel == "ip":
            feats = x - x.float().mean(dim=0, keepdim=True).to(x.dtype)
            diag = feats.float().square().sum(dim=1).to(torch.float64)
        else:
            feats = x
            diag = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    return KernelStats(kernel, sigma, feats, None, None, None, diag, fused=True)


def _fused_cross_sum(ka: KernelStats, kb: KernelStats) -> float:
    from ..triton.hsic import hsic_sums

    sums = hsic_sums(ka.features, kb.features, ka.kernel, ka.sigma)
    # One pass gives both kernels' own sums too: fill whatever the stats still miss.
    if ka.self_sum is None:
        ka.self_sum, ka.row_sums = sums["self_k"], sums["rows_k"]
    if kb.self_sum is None:
        kb.self_sum, kb.row_sums = sums["self_l"], sums["rows_l"]
    return sums["cross"]


def _unfuse(st: KernelStats) -> None:
    """Turn Triton-backend stats into torch-backend stats in place (their features suffice:
    re-centring centred features changes nothing)."""
    full = kernel_stats(st.features, st.kernel, st.sigma)
    for field in dataclasses.fields(KernelStats):
        setattr(st, field.name, getattr(full, field.name))


def cross_sum(ka: KernelStats, kb: KernelStats) -> float:
    """Σ K∘L for the kernels of two feature sets of the same samples.

    Call it before :func:`hsic_from_sums`: with the Triton backend it also fills the stats'
    own sums from the same fused pass.
    """
    if ka.fused and kb.fused:
        return _fused_cross_sum(ka, kb)
    # One side fused, the other not (a float64 side, which the Triton kernel does not take):
    # the pair is summed by the torch tiles from both sides' features.
    for st in (ka, kb):
        if st.fused:
            _unfuse(st)
    with torch.no_grad():
        linear = ka.kernel == "ip" and kb.kernel == "ip"
        if linear and _use_feature_space(ka.n, ka.features.shape[1], kb.features.shape[1]):
            a, b = ka.features, kb.features
            if a.dtype != b.dtype:
                a, b = a.to(torch.float64), b.to(torch.float64)
            return float((a.T @ b).square().sum(dtype=torch.float64))
        total = 0.0
        for i0, i1, j0, j1, w in _tile_pairs(ka.n):
            ta = _kernel_tile(ka, i0, i1, j0, j1)
            tb = _kernel_tile(kb, i0, i1, j0, j1)
            if ta.dtype != tb.dtype:
                ta, tb = ta.to(torch.float64), tb.to(torch.float64)
            total += w * float((ta * tb).sum(dtype=torch.float64))
        return total


def hsic_from_sums(cross: float, ka: KernelStats, kb: KernelStats, *, unbiased: bool) -> float:
    """Biased HSIC tr(KHLH) or the unbiased estimator of Song et al. (2012), from the sums."""
    n = ka.n
    ra, rb = ka.row_sums, kb.row_sums
    if not unbiased:
        return cross - 2.0 * float(ra @ rb) / n + float(ra.sum()) * float(rb.sum()) / n**2
    if n < 4:
        raise ValueError(f"unbiased HSIC needs N >= 4 samples, got N={n}")
    da, db = ka.diag, kb.diag
    cross_t = cross - float(da @ db)
    sum_a = float(ra.sum() - da.sum())
    sum_b = float(rb.sum() - db.sum())
    rows_t = float((ra - da) @ (rb - db))
    return (cross_t + sum_a * sum_b / ((n - 1) * (n - 2)) - 2.0 * rows_t / (n - 2)) / (n * (n - 3))


def cka_from_stats(ka: KernelStats, kb: KernelStats, *, unbiased: bool) -> float:
    """HSIC(K,L) / (sqrt(HSIC(K,K)·HSIC(L,L)) + 1e-6), as the reference defines CKA."""
    hkl = hsic_from_sums(cross_sum(ka, kb), ka, kb, unbiased=unbiased)
    hkk = hsic_from_sums(ka.self_sum, ka, ka, unbiased=unbiased)
    hll = hsic_from_sums(kb.self_sum, kb, kb, unbiased=unbiased)
    prod = hkk * hll
    # sqrt of a product that rounding made slightly negative: the reference gets NaN there;
    # clamp to zero so the 1e-6 guard applies.
    return hkl / (max(prod, 0.0) ** 0.5 + 1e-6)
