"""Centred-kernel (HSIC) sums without an N x N matrix.

Biased and unbiased HSIC of kernels K (from A) and L (from B) need only
    Σ K∘L,  and per kernel: Σ K∘K, row sums K1, diagonal diag(K)
(docs/metrics.md#hsic). They are gathered here in one of two ways:

- feature space, linear kernel only: with column-centred features Ā, B̄ (both HSIC estimators
  are invariant to centring the features of a linear kernel), Σ K̄∘L̄ = ‖ĀᵀB̄‖²_F, the row sums
  vanish and diag(K̄) = ‖ā_i‖². Cost O(N·Da·Db), chosen when cheaper than tiles.
- tiles: one pass over the upper-triangular b x b tiles of K and L (linear or RBF), each tile
  built by a GEMM, used for both itself and its transpose, and dropped. O(N) extra memory.

All sums are accumulated in float64; tiles are computed in float32, or in float64 for float64
input and for problems small enough that float64 costs nothing (few samples and wide features
is where float32 Grams lose the unbiased estimator to cancellation).

Exact at any scale. Each kernel is held as ``scale · K̂`` with K̂ of order one:
- linear: centred features times a power of two (exact), so squares of Gram entries neither
  overflow nor underflow float32; ``scale`` = 4^e.
- RBF: features centred (the kernel is translation invariant). When σ is large against the
  typical squared distance m (γ·m <= 1, γ = 1/(2σ²)), every entry of K is close to 1 and the
  HSIC sums would cancel; the kernel is then shifted by its value at the typical distance,
  K̃ = K − c·11ᵀ = c·expm1(γ(m − d²)), c = exp(−γm), and held as K̂ = expm1(γ(m − d²)) / h with
  h = −expm1(−γm): entries of order one on both sides of zero, computed without cancellation.
  Biased HSIC is invariant to adding a constant to every entry of K (the unbiased one zeroes
  the diagonal and is invariant to adding it off the diagonal), so HSIC(K̃, ·) = HSIC(K, ·)
  exactly. Otherwise K̂ = K.
CKA then applies the 1e-6 guard (docs/metrics.md#cka) in true units: HSIC(K,L) / (√(HSIC(K,K)·HSIC(L,L)) + 1e-6).

Any row source (:mod:`platonic_fast.rows`): a tensor, a prepared layer read from its file a block
at a time, or a rank's shard. On a shard every global quantity (column means, maxima, the
typical distance, D x D products, the sums over rows) is all-reduced through the source's
communicator, and the tiles of the rank's rows meet the other ranks' rows one block at a time.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch

from .._backends import MIN_CUDA_CAPABILITY, register
from .._checks import DegenerateInputWarning, guarded_ratio, unit_exponent
from ..rows import LOCAL, ShardRows, as_rows
from .knn import compute_dtype

KERNELS = ("ip", "rbf")
# Rows per tile: a 2048 x 2048 float32 tile is 16 MiB.
TILE_ROWS = 2048
# Multiply-adds below which the sums are computed in float64 whatever the input dtype (~10 ms).
FLOAT64_WORK = 1 << 28
_F32_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class KernelStats:
    """One feature set's kernel, summarised for HSIC: everything but the cross term.

    The kernel is ``2**scale_exp · scale · K̂``; every tensor and sum here is in K̂ units.
    """

    kernel: str
    sigma: float  # as given
    rbf: tuple  # RBF: (γ, m, b, 1/h): K̂ = (expm1(γ(m − d²)) + b) / h, in the units of ``features``
    features: torch.Tensor  # centred (and scaled) features in the compute dtype
    sq_norms: torch.Tensor | None  # ‖x_i‖² for RBF tiles
    self_sum: float | None  # Σ K̂∘K̂ (None: filled by the first fused pass, Triton backend)
    row_sums: torch.Tensor | None  # K̂1, float64
    diag: torch.Tensor  # diag(K̂), float64
    fused: bool = False  # sums come from the Triton kernel's one pass over a pair
    scale: float = 1.0  # RBF: c·h (K̃ = scale · K̂)
    scale_exp: int = 0  # linear: the power of two the features were divided by, twice
    source: torch.Tensor | None = None  # the features as given (Triton stats, to re-derive)
    exact_close: bool = False  # RBF narrow enough that d²'s rounding matters near 0
    shard: ShardRows | None = None  # features of a rank's rows (a group of several); None: every row here
    own_parts: list | None = None  # shards: the all-reduced row_parts(self, self), kept from preparation

    @property
    def n(self) -> int:
        return self.features.shape[0] if self.shard is None else self.shard.n

    @property
    def comm(self):
        return LOCAL if self.shard is None else self.shard.comm


def _blocks(n: int, size: int):
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _shifted_rbf(sq: torch.Tensor, rbf: tuple) -> torch.Tensor:
    """K̂ = (expm1(γ(m − d²)) + b) / h in place on squared distances ``sq`` (γ clamped to float32)."""
    gamma, m, b, inv_h = rbf
    # γ·d² overflowing to inf gives exp(−inf) = 0, the exact limit; 0·γ stays 0 (duplicates).
    out = torch.expm1_(sq.sub_(m).mul_(-min(gamma, _F32_MAX)))
    return (out.add_(b) if b else out).mul_(inv_h)


def _kernel_tile(st: KernelStats, i0: int, i1: int, j0: int, j1: int, y=None, sqy=None) -> torch.Tensor:
    """K̂ of rows [i0, i1) of ``st`` against rows [j0, j1) of its own or of another rank's ``y``."""
    x, sq = st.features, st.sq_norms
    own = y is None
    y, sqy = (x, sq) if own else (y, sqy)
    return block_tile(st, x[i0:i1], _part(sq, i0, i1), y[j0:j1], _part(sqy, j0, j1), same=own and i0 == j0)


def block_tile(st: KernelStats, xi: torch.Tensor, sqi, xj: torch.Tensor, sqj, *, same: bool) -> torch.Tensor:
    """K̂ between the feature rows ``xi`` and ``xj`` (squared norms ``sqi``, ``sqj`` for RBF);
    ``same``: they are the very same rows (a diagonal tile: zero distance to self)."""
    g = xi @ xj.T
    if st.kernel == "ip":
        return g
    ni, nj = sqi[:, None], sqj[None, :]
    sq = (ni + nj - 2 * g).clamp_min_(0)
    if st.exact_close:
        _exact_close_distances(sq, ni, nj, xi, xj, same)
    if same:
        sq.fill_diagonal_(0)  # exact zero distance to self
    return _shifted_rbf(sq, st.rbf)


def needs_exact_close(rbf: tuple, dtype: torch.dtype, width: int, top_sq: float) -> bool:
    """Whether an RBF kernel's tiles must recompute near-zero distances from differences: the
    no-shift form (b = 1) with γ times d²'s rounding error past float32 precision. ``top_sq``:
    the largest squared row norm of the set (over every row, every rank)."""
    u = float(torch.finfo(dtype).eps)
    return rbf[2] == 1.0 and rbf[0] * (6 * u + 2 * width * u) * top_sq > 1e-7


def _exact_close_distances(sq, ni, nj, xi, xj, same: bool) -> None:
    """Recompute, from explicit differences, the squared distances within rounding error of 0.

    ‖x‖² + ‖y‖² − 2x·y cancels for (near-)duplicate rows; with a narrow kernel (γ·error ≫ 0)
    that error alone would turn exp(−γd²) = 1 into anything in [0, 1].
    """
    u = float(torch.finfo(xi.dtype).eps)
    bound = 3.0 * u * (ni + nj) + 2.0 * xi.shape[1] * u * (ni * nj).sqrt()
    rows, cols = (sq <= bound).nonzero(as_tuple=True)
    if same:  # the diagonal is set to 0 by the caller
        off = rows != cols
        rows, cols = rows[off], cols[off]
    step = max(1, (1 << 21) // max(1, xi.shape[1]))  # 16 MiB blocks: duplicates can be many
    for s0 in range(0, rows.numel(), step):
        r, c = rows[s0: s0 + step], cols[s0: s0 + step]
        diff = xi[r].to(torch.float64) - xj[c].to(torch.float64)
        sq[r, c] = diff.square().sum(dim=1).to(sq.dtype)


def rbf_form(sigma: float, typical_sq: float, e: int = 0) -> tuple[tuple, float, float]:
    """The RBF kernel's held form for bandwidth σ on features divided by 2**e, whose typical
    squared distance (in those units) is m.

    Returns ``((γ, m, b, 1/h), scale, diag)``: K̂ = (expm1(γ(m − d²)) + b) / h, the true kernel
    (up to an HSIC-invariant constant) is ``scale · K̂``, and ``diag`` is K̂'s diagonal.

    Raises
    ------
    ValueError
        σ so small that 1/(2σ²) leaves float64, or so large that the kernel is constant.

    Warns
    -----
    DegenerateInputWarning
        σ so small against the distances that the kernel is the identity.
    """
    s = sigma * 2.0 ** -e
    two_s2 = 2.0 * s * s
    if two_s2 == 0.0 or not math.isfinite(1.0 / two_s2):
        raise ValueError(f"rbf_sigma={sigma!r} is too small: 1/(2σ²) overflows float64")
    gamma = 1.0 / two_s2  # 0 when σ² overflows: caught below as a constant kernel
    typical = math.sqrt(typical_sq) * 2.0 ** e  # in the features' own units, for messages
    if typical_sq == 0.0 or gamma * typical_sq > 1.0:
        if gamma * typical_sq > 100.0:  # exp(-γm) < 4e-44: below float32 at a typical distance
            warnings.warn(
                f"rbf_sigma={sigma:.3g} is tiny against the features' typical distance {typical:.3g}: the RBF "
                "kernel is ~the identity (every pair looks unrelated), so CKA says nothing about the data "
                "(biased CKA tends to 1 for any inputs)", DegenerateInputWarning, stacklevel=6)
        return (gamma, 0.0, 1.0, 1.0), 1.0, 1.0  # K itself: entries decay, nothing cancels
    h = -math.expm1(-gamma * typical_sq)
    if h == 0.0:
        raise ValueError(f"rbf_sigma={sigma!r} is too large for these features (typical distance {typical:.3g}): "
                         "exp(-d²/(2σ²)) is 1 to float64 precision for every pair")
    c = math.exp(-gamma * typical_sq)
    return (gamma, typical_sq, 0.0, 1.0 / h), c * h, 1.0 / c


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


def _compute_dtype(src, feature_space: bool) -> torch.dtype:
    n, d = src.n, src.width
    work = n * d * d if feature_space else n * n * d
    return torch.float64 if work <= FLOAT64_WORK else compute_dtype(src)


def _cat(parts: list, like) -> torch.Tensor:
    """Per-row float64 values of a process's row blocks (none on an empty shard)."""
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=like.device)


def _prepared_features(src, kernel: str, sigma: float, dtype: torch.dtype, *, squares: bool = True):
    """Centred, scaled features and the kernel's form: (features source, rbf, scale, scale_exp,
    rbf_diag, squared row norms in float64 for RBF tiles, when ``squares``)."""
    centred = src.centred(dtype)
    # Squares of Gram entries stay inside float32 for entries in [2**-16, 2**16] (D < 2**24):
    # only features outside that range pay for the (exact, power-of-two) rescaling pass.
    e = unit_exponent(centred.max_abs(), 16)
    feats = centred.scaled(e)
    if kernel == "ip":
        return feats, (), 1.0, 2 * e, None, None
    # For centred rows the mean squared distance between samples is 2·mean‖c_i‖²; each row's
    # squared norm (for the tiles) from the same pass. Squares in float64: a float16 entry of
    # 256 would square to inf in its own dtype.
    norms, sq = [], []
    with src.comm.step():
        for _, f in feats.own_blocks():
            norms.append(torch.linalg.vector_norm(f, dim=1, dtype=torch.float64))
            if squares:
                sq.append(f.to(torch.float64).square().sum(dim=1))
        norms2, sq = _cat(norms, feats).square(), _cat(sq, feats) if squares else None
    if src.comm.size == 1:
        typical = 2.0 * float(norms2.mean())
    else:
        typical = 2.0 * src.comm.sum([float(norms2.sum())])[0] / src.n
    rbf, scale, diag = rbf_form(sigma, typical, e)
    return feats, rbf, scale, 0, diag, sq


# One implementation on torch GEMM tiles serves both names: on the CPU it is the CPU path
# (MKL/oneDNN GEMMs), and it runs unchanged on CUDA tensors.
@register("hsic", "cpu", devices=("cpu",))
@register("hsic", "torch", devices=("cpu", "cuda"))
def kernel_stats(x, kernel: str = "ip", sigma: float = 1.0) -> KernelStats:
    """Summarise the kernel of features ``x`` (N x D, validated; a tensor or any
    :class:`platonic_fast.rows.RowSource`: collective on a shard) for HSIC."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel_metric must be one of {KERNELS}, got {kernel!r}")
    src = as_rows(x)
    n, d, comm = src.n, src.width, src.comm
    space = kernel == "ip" and _use_feature_space(n, d, d)
    with torch.no_grad():
        fsrc, rbf, scale, scale_exp, rbf_diag, sq64 = _prepared_features(src, kernel, sigma,
                                                                        _compute_dtype(src, space))
        feats = fsrc.local()
        zeros = torch.zeros(src.n_local, dtype=torch.float64, device=fsrc.device)
        st = KernelStats(kernel, sigma, rbf, feats, None, None, zeros, None, scale=scale, scale_exp=scale_exp,
                         shard=fsrc if comm.size > 1 else None)
        if kernel == "ip":
            # Both HSIC estimators are exactly invariant to shifting a linear kernel's features:
            # for centred features the exact row sums are zero (the float rounding is not kept).
            with comm.step():
                if space and not isinstance(feats, torch.Tensor):  # a file: the diagonal in the Gram's pass
                    diags: list = []
                    gram = blocked_cross_product(
                        feats, feats, visit=lambda r0, f: diags.append(f.square().sum(dim=1, dtype=torch.float64)))
                    st.diag, st.self_sum = _cat(diags, fsrc), float(gram.square().sum())
                else:
                    st.diag = _cat([f.square().sum(dim=1, dtype=torch.float64) for _, f in fsrc.own_blocks()], fsrc)
            if space and st.self_sum is None:
                st.self_sum = _gram_frob2(feats if d <= n else feats.T) if comm.size == 1 else \
                    _frob2(feats, feats, comm)
        else:
            st.sq_norms, st.diag = sq64.to(feats.dtype), torch.full_like(zeros, rbf_diag)
            top_sq = float(st.sq_norms.max()) if st.sq_norms.numel() else 0.0
            st.exact_close = needs_exact_close(rbf, feats.dtype, d, comm.max(top_sq))
        if st.self_sum is None:
            st.self_sum, rows = _tile_sums(st)
            if kernel == "rbf":
                st.row_sums = rows
        if st.shard is not None:  # kept, so that null means need no communication
            st.own_parts = _parts(st, st)
        return st


def _tile_sums(ka: KernelStats, kb: KernelStats | None = None) -> tuple[float, torch.Tensor]:
    """(Σ K̂∘L̂, K̂1 of this process's rows): its own rows' upper-triangular tiles (each used for
    itself and its transpose), then on a shard each other rank's block as it arrives (row sums
    stay with their rows). ``kb`` None: L = K, and the row sums are taken."""
    one = kb is None
    kb, xa, comm = ka if one else kb, ka.features, ka.comm
    rows = torch.zeros(xa.shape[0], dtype=torch.float64, device=xa.device)
    total = 0.0
    with comm.step():
        for i0, i1, j0, j1, w in _tile_pairs(xa.shape[0]):
            ta = _kernel_tile(ka, i0, i1, j0, j1)
            tb = ta if one else _kernel_tile(kb, i0, i1, j0, j1)
            total += w * _tile_product(ta, tb, one)
            if one:
                rows[i0:i1] += ta.sum(dim=1, dtype=torch.float64)
                if w == 2.0:
                    rows[j0:j1] += ta.sum(dim=0, dtype=torch.float64)
    for t in range(1, comm.size):
        ya = ka.shard.peer_block(t)[2]
        yb = ya if one else kb.shard.peer_block(t)[2]
        with comm.step():
            sqa, sqb = _peer_sq(ka, ya), _peer_sq(kb, yb)
            for i0, i1 in _blocks(xa.shape[0], TILE_ROWS):
                for j0, j1 in _blocks(ya.shape[0], TILE_ROWS):
                    ta = _kernel_tile(ka, i0, i1, j0, j1, ya, sqa)
                    tb = ta if one else _kernel_tile(kb, i0, i1, j0, j1, yb, sqb)
                    total += _tile_product(ta, tb, one)
                    if one:
                        rows[i0:i1] += ta.sum(dim=1, dtype=torch.float64)
        del ya, yb
    return (total if comm.size == 1 else comm.sum([total])[0]), rows


def _part(t, r0: int, r1: int):
    return None if t is None else t[r0:r1]


def _peer_sq(st: KernelStats, y: torch.Tensor):
    """Squared norms of another rank's rows, as their owner computed them (RBF only)."""
    return None if st.kernel == "ip" else y.to(torch.float64).square().sum(dim=1).to(y.dtype)


def _tile_product(ta: torch.Tensor, tb: torch.Tensor, one: bool) -> float:
    if one:
        return float(ta.square().sum(dtype=torch.float64))
    if ta.dtype != tb.dtype:
        ta, tb = ta.to(torch.float64), tb.to(torch.float64)
    return float((ta * tb).sum(dtype=torch.float64))


def _frob2(a, b, comm=LOCAL) -> float:
    """‖AᵀB‖²_F over all rows (all ranks): features in memory, or read a block at a time."""
    with comm.step():
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.dtype != b.dtype:
                a, b = a.to(torch.float64), b.to(torch.float64)
            p = a.T @ b
        else:  # out of core
            p = blocked_cross_product(a, b)
    if comm.size == 1:
        return float(p.square().sum(dtype=torch.float64))
    return float(comm.all_reduce(p.to(torch.float64)).square().sum())


def blocked_cross_product(a, b, *, visit=None) -> torch.Tensor:
    """AᵀB (float64) accumulated over row blocks: for features that are read a block of rows at
    a time (``a[r0:r1]``: a tensor, or :class:`platonic_fast.outofcore.LayerRows`), never whole.
    ``visit(r0, block_of_a)``, when given, sees each block of A as it goes by (in row order)."""
    seen = None if visit is None else (lambda i, r0, block: visit(r0, block))
    return blocked_cross_products([a], [b], visit=seen)[0][0]


# float64 is not served: the kernel accumulates tiles in float32.
@register("hsic", "triton", devices=("cuda",), dtypes=(torch.float32, torch.float16, torch.bfloat16),
          min_capability=MIN_CUDA_CAPABILITY, needs=("triton",))
def kernel_stats_fused(x: torch.Tensor, kernel: str = "ip", sigma: float = 1.0) -> KernelStats:
    """Triton backend: the prepared features only; every sum comes from the fused pass over a pair."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel_metric must be one of {KERNELS}, got {kernel!r}")
    with torch.no_grad():
        # Half types stay half (the kernel's tensor-core dots); centring and a power-of-two
        # scale are exact enough there and keep the tiles in range.
        src, rbf, scale, scale_exp, rbf_diag, _ = _prepared_features(as_rows(x), kernel, sigma, x.dtype, squares=False)
        feats = src.local()
        if kernel == "ip":
            diag = feats.float().square().sum(dim=1, dtype=torch.float64)
        else:
            diag = torch.full((x.shape[0],), rbf_diag, dtype=torch.float64, device=x.device)
    return KernelStats(kernel, sigma, rbf, feats, None, None, None, diag, fused=True, scale=scale,
                       scale_exp=scale_exp, source=x)


def _fused_cross_sum(ka: KernelStats, kb: KernelStats) -> float:
    from ..triton.hsic import hsic_sums

    sums = hsic_sums(ka.features, kb.features, ka.kernel, rbf=(ka.rbf, kb.rbf) if ka.kernel == "rbf" else None)
    # One pass gives both kernels' own sums too: fill whatever the stats still miss.
    if ka.self_sum is None:
        ka.self_sum, ka.row_sums = sums["self_k"], sums["rows_k"]
    if kb.self_sum is None:
        kb.self_sum, kb.row_sums = sums["self_l"], sums["rows_l"]
    return sums["cross"]


def _unfuse(st: KernelStats) -> None:
    """Turn Triton-backend stats into torch-backend stats in place, from the features as given."""
    full = kernel_stats(st.source, st.kernel, st.sigma)
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
            return _frob2(ka.features, kb.features, ka.comm)
        return _tile_sums(ka, kb)[0]


def row_parts(ka: KernelStats, kb: KernelStats) -> list[float]:
    """The sums over rows HSIC needs besides the cross term Σ K̂∘L̂: Σ K1·L1, Σ K1, Σ L1,
    Σ diag K·diag L, Σ diag K, Σ diag L, Σ (K1 − diag K)·(L1 − diag L). Each is a sum over
    rows, so on row shards the ranks' parts add up (:func:`_parts`)."""
    da, db = ka.diag, kb.diag
    ra = torch.zeros_like(da) if ka.row_sums is None else ka.row_sums
    rb = torch.zeros_like(db) if kb.row_sums is None else kb.row_sums
    return [float(ra @ rb), float(ra.sum()), float(rb.sum()), float(da @ db), float(da.sum()), float(db.sum()),
            float((ra - da) @ (rb - db))]


def hsic_from_parts(cross: float, parts: list[float], n: int, *, unbiased: bool) -> float:
    """Biased HSIC tr(KHLH) or the unbiased estimator of Song et al. (2012), from the cross
    term and :func:`row_parts` (docs/metrics.md)."""
    s_rab, s_ra, s_rb, s_dab, s_da, s_db, s_t = parts
    if not unbiased:
        return cross - 2.0 * s_rab / n + s_ra * s_rb / n**2
    if n < 4:
        raise ValueError(f"unbiased HSIC needs N >= 4 samples, got N={n}")
    sum_a, sum_b = s_ra - s_da, s_rb - s_db
    return (cross - s_dab + sum_a * sum_b / ((n - 1) * (n - 2)) - 2.0 * s_t / (n - 2)) / (n * (n - 3))


def _parts(ka: KernelStats, kb: KernelStats) -> list[float]:
    """:func:`row_parts` over every row (all-reduced on shards; a set's own, kept there)."""
    if ka is kb and ka.own_parts is not None:
        return ka.own_parts
    parts = row_parts(ka, kb)
    return parts if ka.shard is None else ka.comm.sum(parts)


def hsic_from_sums(cross: float, ka: KernelStats, kb: KernelStats, *, unbiased: bool) -> float:
    """:func:`hsic_from_parts` of two sets (collective on shards, unless ka is kb)."""
    return hsic_from_parts(cross, _parts(ka, kb), ka.n, unbiased=unbiased)


def null_mean_from_parts(parts_a: list[float], parts_b: list[float], n: int, hkk: float, hll: float,
                         units: float) -> float:
    """The biased CKA's exact permutation mean from each set's own :func:`row_parts` and HSIC:
    tr(K̄)·tr(L̄)/(N − 1) over the guard (see :func:`cka_null_mean`); ``units``: log2 of the
    factor to true units."""
    # tr(HK̂H) = tr(K̂) − 1ᵀK̂1/N; one sample: the centred kernels are 0, and so is every HSIC
    trace_a, trace_b = parts_a[4] - parts_a[1] / n, parts_b[4] - parts_b[1] / n
    mean = trace_a * trace_b / (n - 1) if n > 1 else 0.0
    return guarded_ratio("cka", mean, max(hkk * hll, 0.0) ** 0.5, -units, warn=False)


def _true_units(ka: KernelStats, kb: KernelStats) -> float:
    """log2 of the factor that takes HSIC(K̂a, K̂b) to HSIC(Ka, Kb)."""
    return ka.scale_exp + kb.scale_exp + math.log2(ka.scale) + math.log2(kb.scale)


def cka_from_stats(ka: KernelStats, kb: KernelStats, *, unbiased: bool) -> float:
    """HSIC(K,L) / (sqrt(HSIC(K,K)·HSIC(L,L)) + 1e-6), as the reference defines CKA.

    The HSICs are taken of the scaled kernels K̂, L̂; the 1e-6 guard is moved into the same
    units (1e-6 / (scale_K · scale_L)), so the result is docs/metrics.md#cka's in true units, at any scale.
    """
    return _cka_from_cross(cross_sum(ka, kb), ka, kb, unbiased=unbiased)


# float64 bytes of the products one pass of cka_grid accumulates at once
GRID_PRODUCT_BYTES = 256 << 20


def cka_grid(stats_x: list, stats_y: list, *, unbiased: bool, budget: int | None = None) -> list[list[float]] | None:
    """CKA of every pair (stats_x[i], stats_y[j]) from one pass over the rows, for features read
    from files a block at a time (:class:`platonic_fast.outofcore.LayerRows`) whose pairs all
    take the feature-space form: each row block of every layer is read once and multiplied into
    every Da x Db product it takes part in (in groups of X layers whose products fit ``budget``
    bytes, default ``GRID_PRODUCT_BYTES``), instead of both layers being read again for each pair.
    None when that does not apply (features in memory, a kernel or a pair in tile form): score
    pair by pair."""
    if not stats_x or not stats_y or all(isinstance(st.features, torch.Tensor) for st in stats_x + stats_y):
        return None
    for ka in stats_x:
        for kb in stats_y:
            if ka.fused or kb.fused or ka.kernel != "ip" or kb.kernel != "ip" or \
                    not _use_feature_space(ka.n, ka.features.shape[1], kb.features.shape[1]):
                return None
    products = blocked_cross_products([st.features for st in stats_x], [st.features for st in stats_y], budget)
    return [[_cka_from_cross(float(products[i][j].square().sum()), ka, kb, unbiased=unbiased)
             for j, kb in enumerate(stats_y)] for i, ka in enumerate(stats_x)]


# float32 bytes of the row blocks one step of the blocked products holds (every set's block)
BLOCK_PRODUCT_BYTES = 32 << 20


def blocked_cross_products(xs: list, ys: list, budget: int | None = None, *, visit=None) -> list[list[torch.Tensor]]:
    """Every XᵢᵀYⱼ (float64), accumulated over row blocks (``x[r0:r1]``: tensors or
    :class:`platonic_fast.outofcore.LayerRows`) read once per group of X layers whose products
    fit ``budget`` bytes (default ``GRID_PRODUCT_BYTES``). ``visit(i, r0, block)``, when given,
    sees each block of Xᵢ as it is read."""
    budget = GRID_PRODUCT_BYTES if budget is None else budget
    n, widest_y = xs[0].shape[0], sum(y.shape[1] for y in ys)
    groups, size = [[]], 0
    for i, x in enumerate(xs):
        need = 8 * x.shape[1] * widest_y
        if groups[-1] and size + need > budget:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += need
    out: list[list] = [[None] * len(ys) for _ in xs]
    for group in groups:
        step = max(1, BLOCK_PRODUCT_BYTES // (4 * (sum(xs[i].shape[1] for i in group) + widest_y)))
        acc = {(i, j): torch.zeros(xs[i].shape[1], y.shape[1], dtype=torch.float64, device=xs[i].device)
               for i in group for j, y in enumerate(ys)}
        for r0 in range(0, n, step):
            read: dict = {}  # each set's block read once per step (a Gram reads X against itself)
            for t in [*(xs[i] for i in group), *ys]:
                if id(t) not in read:
                    read[id(t)] = t[r0: r0 + step]
            blocks_y = [read[id(y)] for y in ys]
            for i in group:
                xb = read[id(xs[i])]
                if visit is not None:
                    visit(i, r0, xb)
                for j, yb in enumerate(blocks_y):
                    a, b = (xb, yb) if xb.dtype == yb.dtype else (xb.to(torch.float64), yb.to(torch.float64))
                    acc[(i, j)] += (a.T @ b).to(torch.float64)
        for (i, j), v in acc.items():
            out[i][j] = v
    return out


def _cka_from_cross(cross: float, ka: KernelStats, kb: KernelStats, *, unbiased: bool) -> float:
    hkl = hsic_from_sums(cross, ka, kb, unbiased=unbiased)
    hkk = hsic_from_sums(ka.self_sum, ka, ka, unbiased=unbiased)
    hll = hsic_from_sums(kb.self_sum, kb, kb, unbiased=unbiased)
    # sqrt of a product that rounding made slightly negative: the reference gets NaN there;
    # clamp to zero so the 1e-6 guard applies.
    return guarded_ratio("cka", hkl, max(hkk * hll, 0.0) ** 0.5, -_true_units(ka, kb))


def permute_stats(st: KernelStats, perm: torch.Tensor) -> KernelStats:
    """The stats of the row-permuted features x[perm]: every per-row tensor permuted.

    The kernel of x[perm] is K[perm][:, perm]: its own sums (Σ K̂∘K̂) are unchanged, its row
    sums and diagonal are permuted, and the cross term with another set is recomputed from the
    permuted features (linear: ‖ĀᵀB̄_π‖², O(N·Da·Db); RBF: tiles).
    """

    def rows(t):
        if t is None:
            return None
        # features read from a file (LayerRows) permute as a view: rows are gathered when read
        return t[perm.to(t.device)] if isinstance(t, torch.Tensor) else t.permuted(perm)

    return dataclasses.replace(st, features=rows(st.features), sq_norms=rows(st.sq_norms),
                               row_sums=rows(st.row_sums), diag=rows(st.diag), source=rows(st.source))


def cka_null_mean(ka: KernelStats, kb: KernelStats, *, unbiased: bool) -> float:
    """The exact mean of CKA(K, L_π) over all row permutations π of the second set.

    The denominator √(HSIC(K,K)·HSIC(L,L)) does not change under π, so the mean is the mean
    HSIC over its guard. For biased HSIC, E_π tr(K̄ L̄_π) = tr(K̄)·tr(L̄)/(N − 1) (K̄ = HKH: the
    diagonal of L̄_π is a random diagonal entry, the off-diagonal sum is −tr(L̄)); the unbiased
    estimator's permutation mean is exactly 0. This is why biased CKA of independent features
    grows with their width: tr(K̄)² / ‖K̄‖²_F grows with the kernel's effective rank.
    """
    if unbiased:
        return 0.0
    if ka.fused or kb.fused:  # the Triton stats hold no row sums yet: take them from a pass
        cka_from_stats(ka, kb, unbiased=False)
    pa, pb = _parts(ka, ka), _parts(kb, kb)
    hkk = hsic_from_parts(ka.self_sum, pa, ka.n, unbiased=False)
    hll = hsic_from_parts(kb.self_sum, pb, kb.n, unbiased=False)
    return null_mean_from_parts(pa, pb, ka.n, hkk, hll, _true_units(ka, kb))
