"""The eight alignment metrics of SPEC §1, with the reference's names and defaults.

Each metric is split into ``prepare`` (everything that depends on one feature set: its
neighbour lists, its kernel statistics, its singular vectors) and ``pair`` (the cheap part that
needs both). A single call does both; :func:`platonic_fast.align` prepares each layer once and
then scores every layer pair from the prepared states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ._backends import core_available, cuda_kernels_available, for_op, register, resolve
from ._checks import check_int, check_pair, check_positive_float, check_topk
from .ops import hsic, neighbor_lists
from .ops.neighbor_lists import checked_device_lists
from .ops.knn import neighbors

SUPPORTED_METRICS = (
    "cycle_knn",
    "mutual_knn",
    "lcs_knn",
    "cka",
    "unbiased_cka",
    "cknna",
    "svcca",
    "edit_distance_knn",
)


# --- prepared states --------------------------------------------------------------------------


@dataclass
class Neighbours:
    """kNN lists of one feature set (self excluded unless a metric says otherwise)."""

    indices: torch.Tensor  # N x k int64
    values: torch.Tensor | None = None  # N x k kernel values, when a metric needs them
    self_sums: dict | None = None  # CKNNA: masked sums of the set with itself


@dataclass(frozen=True)
class MetricSpec:
    """How a metric splits into per-feature-set preparation and a pairwise score."""

    name: str
    prepare: Callable[..., Any]  # (x, **options) -> state
    pair: Callable[..., float]  # (state_a, state_b, **options) -> score
    uses_topk: bool


def _list_metric(op: str, reduce: Callable[[torch.Tensor, int], float]) -> MetricSpec:
    def prepare(x, *, topk, backend="auto"):
        _, idx = neighbors(x, topk, exclude_self=True, backend=for_op("knn", backend, ("knn", op)))
        return Neighbours(idx)

    def pair(sa: Neighbours, sb: Neighbours, *, topk=None, backend="auto"):
        per_row = neighbor_lists.run(op, sa.indices, sb.indices, backend=for_op(op, backend, ("knn", op)))
        return reduce(per_row, sa.indices.shape[1])

    return MetricSpec(op, prepare, pair, uses_topk=True)


_MUTUAL = _list_metric("mutual_overlap", lambda r, k: float(r.sum(dtype=torch.float64)) / (r.numel() * k))
_CYCLE = _list_metric("cycle_hits", lambda r, k: float(r.sum(dtype=torch.float64)) / r.numel())
_LCS = _list_metric("lcs_lengths", lambda r, k: float(r.sum(dtype=torch.float64)) / r.numel())
_EDIT = _list_metric("edit_distances", lambda r, k: 1.0 - float(r.sum(dtype=torch.float64)) / (r.numel() * k))


_CKNNA_OPS = ("knn", "cknna_sums")


def _masked_sums(a: Neighbours, b: Neighbours, zero_diagonal: bool, backend: str = "auto") -> dict:
    """CKNNA's sparse sums of two neighbour lists with their kernel values."""
    _, impl = resolve("cknna_sums", for_op("cknna_sums", backend, _CKNNA_OPS), a.indices.device)
    return impl(a, b, zero_diagonal)


def _sums_dtype(a: Neighbours, b: Neighbours) -> torch.dtype:
    return torch.float64 if torch.float64 in (a.values.dtype, b.values.dtype) else torch.float32


@register("cknna_sums", "cpu", devices=("cpu", "cuda"), is_available=core_available)
def _masked_sums_host(a: Neighbours, b: Neighbours, zero_diagonal: bool) -> dict:
    """The compiled core, O(N·k log k) (CUDA inputs are copied to the host)."""
    from . import _core

    dtype = _sums_dtype(a, b)

    def host(t, dtype=None):
        return t.detach().to("cpu", dtype or t.dtype).contiguous().numpy()

    fn = _core.masked_kernel_sums_f64 if dtype == torch.float64 else _core.masked_kernel_sums_f32
    return fn(host(a.indices), host(a.values, dtype), host(b.indices), host(b.values, dtype), zero_diagonal)


_SUM_NAMES = ("trace_kl", "sum_k", "sum_l", "k_then_l", "l_then_k", "mask_count")


@register("cknna_sums", "cuda", devices=("cuda",), is_available=cuda_kernels_available)
def _masked_sums_cuda(a: Neighbours, b: Neighbours, zero_diagonal: bool) -> dict:
    """The CUDA kernels (k <= CUDA_MAX_LIST_K; larger k goes to the compiled core)."""
    from . import _core

    if a.indices.shape[1] > _core.CUDA_MAX_LIST_K:
        return _masked_sums_host(a, b, zero_diagonal)
    dtype = _sums_dtype(a, b)
    dev = a.indices.device
    ia, ib = checked_device_lists(a.indices, b.indices)  # the kernels trust every index
    va, vb = a.values.to(dev, dtype).contiguous(), b.values.to(dev, dtype).contiguous()
    n, k = ia.shape
    work = torch.empty(_core.masked_kernel_sums_workspace_cuda(n, k), dtype=torch.uint8, device=dev)
    out = torch.empty(6, dtype=torch.float64, device=dev)
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        _core.masked_kernel_sums_cuda(ia.data_ptr(), va.data_ptr(), ib.data_ptr(), vb.data_ptr(), n, k,
                                      zero_diagonal, dtype == torch.float64, work.data_ptr(), out.data_ptr(),
                                      stream)
    return dict(zip(_SUM_NAMES, out.tolist()))


def _cknna_similarity(s: dict, n: int, *, unbiased: bool, distance_agnostic: bool) -> float:
    """HSIC of the masked kernels M∘K, M∘L from their sparse sums (SPEC §1, CKNNA)."""
    if distance_agnostic:
        return s["mask_count"]
    if unbiased:
        return (
            s["trace_kl"] + s["sum_k"] * s["sum_l"] / ((n - 1) * (n - 2)) - 2.0 * s["k_then_l"] / (n - 2)
        ) / (n * (n - 3))
    return s["trace_kl"] - s["k_then_l"] / n - s["l_then_k"] / n + s["sum_k"] * s["sum_l"] / n**2


def _cknna_prepare(x, *, topk, unbiased=True, distance_agnostic=False, backend="auto"):
    vals, idx = neighbors(x, topk, exclude_self=unbiased, backend=for_op("knn", backend, _CKNNA_OPS))
    st = Neighbours(idx, vals)
    st.self_sums = _masked_sums(st, st, zero_diagonal=unbiased, backend=backend)
    return st


def _cknna_pair(sa: Neighbours, sb: Neighbours, *, topk=None, unbiased=True, distance_agnostic=False, backend="auto"):
    n = sa.indices.shape[0]
    opts = dict(unbiased=unbiased, distance_agnostic=distance_agnostic)
    kl = _cknna_similarity(_masked_sums(sa, sb, zero_diagonal=unbiased, backend=backend), n, **opts)
    kk = _cknna_similarity(sa.self_sums, n, **opts)
    ll = _cknna_similarity(sb.self_sums, n, **opts)
    if distance_agnostic:
        return kl / max(kk * ll, 1e-300) ** 0.5
    return kl / (max(kk * ll, 0.0) ** 0.5 + 1e-6)


_CKNNA = MetricSpec("cknna", _cknna_prepare, _cknna_pair, uses_topk=True)


def _cka_prepare(x, *, kernel_metric="ip", rbf_sigma=1.0, unbiased=False, backend="auto"):
    _, kernel_stats = resolve("hsic", backend, x.device)
    return kernel_stats(x, kernel_metric, rbf_sigma)


def _cka_pair(sa, sb, *, kernel_metric="ip", rbf_sigma=1.0, unbiased=False, backend="auto"):
    return hsic.cka_from_stats(sa, sb, unbiased=unbiased)


_CKA = MetricSpec("cka", _cka_prepare, _cka_pair, uses_topk=False)


def _svcca_prepare(x, *, cca_dim=10, backend="auto"):
    _, basis = resolve("svcca", backend, x.device)
    return basis(x, cca_dim)


@register("svcca", "cpu", devices=("cpu",))
@register("svcca", "torch", devices=("cpu", "cuda"))
def _svcca_basis(x: torch.Tensor, cca_dim: int) -> torch.Tensor:
    """Top ``cca_dim`` left singular vectors of the column-standardised features (float64)."""
    x64 = x.to(torch.float64)
    x64 = x64 - x64.mean(dim=0, keepdim=True)
    x64 = x64 / (x64.std(dim=0) + 1e-8)
    u, _, _ = torch.linalg.svd(x64, full_matrices=False)
    return u[:, :cca_dim]


def _svcca_pair(ua, ub, *, cca_dim=10, backend="auto"):
    # Canonical correlations of two orthonormal bases are the singular values of UaᵀUb.
    s = torch.linalg.svdvals(ua.T @ ub)
    return float(s.clamp(0.0, 1.0).mean())


_SVCCA = MetricSpec("svcca", _svcca_prepare, _svcca_pair, uses_topk=False)

SPECS: dict[str, MetricSpec] = {
    "mutual_knn": _MUTUAL,
    "cycle_knn": _CYCLE,
    "lcs_knn": _LCS,
    "edit_distance_knn": _EDIT,
    "cka": _CKA,
    "unbiased_cka": _CKA,
    "cknna": _CKNNA,
    "svcca": _SVCCA,
}


def check_options(metric: str, n: int, widths: tuple[int, int], options: dict) -> dict:
    """Validate a metric's options for N samples and feature widths; return them normalised."""
    if metric not in SPECS:
        raise ValueError(f"metric must be one of {SUPPORTED_METRICS}, got {metric!r}")
    opts = dict(options)
    backend = opts.pop("backend", "auto")
    if metric in ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"):
        out = {"topk": check_topk(opts.pop("topk", 10), n)}
    elif metric == "cknna":
        unbiased = opts.pop("unbiased", True)
        distance_agnostic = opts.pop("distance_agnostic", False)
        for name, v in (("unbiased", unbiased), ("distance_agnostic", distance_agnostic)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be True or False, got {v!r}")
        topk = opts.pop("topk", 10)
        if topk is None:  # the reference's default: every other sample
            topk = n - 1
        topk = check_topk(topk, n, self_excluded=unbiased, low=2)
        if unbiased and not distance_agnostic and n < 4:
            raise ValueError(f"cknna with unbiased=True needs N >= 4 samples, got N={n}")
        out = {"topk": topk, "unbiased": unbiased, "distance_agnostic": distance_agnostic}
    elif metric in ("cka", "unbiased_cka"):
        kernel = opts.pop("kernel_metric", "ip")
        if kernel not in hsic.KERNELS:
            raise ValueError(f"kernel_metric must be one of {hsic.KERNELS}, got {kernel!r}")
        sigma = check_positive_float(opts.pop("rbf_sigma", 1.0), "rbf_sigma")
        unbiased = opts.pop("unbiased", metric == "unbiased_cka")
        if metric == "unbiased_cka":
            unbiased = True
        if not isinstance(unbiased, bool):
            raise TypeError(f"unbiased must be True or False, got {unbiased!r}")
        if unbiased and n < 4:
            raise ValueError(f"unbiased HSIC needs N >= 4 samples, got N={n}")
        out = {"kernel_metric": kernel, "rbf_sigma": sigma, "unbiased": unbiased}
    else:  # svcca
        if n < 2:
            raise ValueError(f"svcca needs N >= 2 samples to standardise columns, got N={n}")
        limit = min(n, *widths)
        out = {"cca_dim": check_int(opts.pop("cca_dim", 10), "cca_dim", low=1, high=limit,
                                    hint=f" (min(N, D_A, D_B) = {limit})")}
    if opts:
        raise TypeError(f"{metric}() got unexpected option(s) {sorted(opts)}")
    out["backend"] = backend
    return out


def measure(metric: str, feats_A, feats_B, **options) -> float:
    """Score two feature sets of the same N samples with the metric named ``metric``.

    Parameters
    ----------
    metric : str
        One of :data:`SUPPORTED_METRICS`.
    feats_A, feats_B : torch.Tensor or np.ndarray, shapes (N, Da) and (N, Db)
        Row i of each describes sample i. Any float dtype, any strides, CPU or CUDA.
    **options
        The metric's own options (``topk``, ``kernel_metric``, ``rbf_sigma``, ``unbiased``,
        ``distance_agnostic``, ``cca_dim``) and ``backend``.

    Returns
    -------
    float

    Examples
    --------
    >>> a, b = torch.randn(500, 64), torch.randn(500, 32)
    >>> 0.0 <= measure("mutual_knn", a, b, topk=10) <= 1.0
    True
    """
    if not isinstance(metric, str) or metric not in SPECS:
        raise ValueError(f"metric must be one of {SUPPORTED_METRICS}, got {metric!r}")
    a, b = check_pair(feats_A, feats_B)
    opts = check_options(metric, a.shape[0], (a.shape[1], b.shape[1]), options)
    spec = SPECS[metric]
    return spec.pair(spec.prepare(a, **opts), spec.prepare(b, **opts), **opts)


def mutual_knn(feats_A, feats_B, topk: int = 10, *, backend: str = "auto") -> float:
    """Mean over samples of |kNN_A(i) ∩ kNN_B(i)| / k, in [0, 1] (self excluded)."""
    return measure("mutual_knn", feats_A, feats_B, topk=topk, backend=backend)


def cycle_knn(feats_A, feats_B, topk: int = 10, *, backend: str = "auto") -> float:
    """Fraction of samples i found in kNN_A(j) for some j in kNN_B(i), in [0, 1]."""
    return measure("cycle_knn", feats_A, feats_B, topk=topk, backend=backend)


def lcs_knn(feats_A, feats_B, topk: int = 10, *, backend: str = "auto") -> float:
    """Mean length of the longest common subsequence of the ordered kNN lists, in [0, k]."""
    return measure("lcs_knn", feats_A, feats_B, topk=topk, backend=backend)


def edit_distance_knn(feats_A, feats_B, topk: int = 10, *, backend: str = "auto") -> float:
    """1 - mean Levenshtein distance between the ordered kNN lists / k, in [0, 1]."""
    return measure("edit_distance_knn", feats_A, feats_B, topk=topk, backend=backend)


def cka(feats_A, feats_B, kernel_metric: str = "ip", rbf_sigma: float = 1.0, unbiased: bool = False,
        *, backend: str = "auto") -> float:
    """Centred kernel alignment HSIC(K,L) / (sqrt(HSIC(K,K)·HSIC(L,L)) + 1e-6).

    ``kernel_metric`` is "ip" (linear) or "rbf" (exp(-‖x-y‖²/(2σ²)), σ = ``rbf_sigma``);
    ``unbiased`` selects the unbiased HSIC estimator (needs N >= 4).
    """
    return measure("cka", feats_A, feats_B, kernel_metric=kernel_metric, rbf_sigma=rbf_sigma,
                   unbiased=unbiased, backend=backend)


def unbiased_cka(feats_A, feats_B, kernel_metric: str = "ip", rbf_sigma: float = 1.0, *,
                 backend: str = "auto") -> float:
    """:func:`cka` with the unbiased HSIC estimator."""
    return measure("unbiased_cka", feats_A, feats_B, kernel_metric=kernel_metric, rbf_sigma=rbf_sigma,
                   backend=backend)


def cknna(feats_A, feats_B, topk: int = 10, distance_agnostic: bool = False, unbiased: bool = True,
          *, backend: str = "auto") -> float:
    """CKA restricted to mutual nearest neighbours (linear kernels), topk >= 2.

    ``distance_agnostic=True`` scores the neighbour masks alone, Σ M_KL / sqrt(Σ M_KK · Σ M_LL)
    (the reference returns a matrix there: a deliberate difference).
    """
    return measure("cknna", feats_A, feats_B, topk=topk, distance_agnostic=distance_agnostic,
                   unbiased=unbiased, backend=backend)


def svcca(feats_A, feats_B, cca_dim: int = 10, *, backend: str = "auto") -> float:
    """Mean canonical correlation of the top ``cca_dim`` singular directions (exact SVD)."""
    return measure("svcca", feats_A, feats_B, cca_dim=cca_dim, backend=backend)
