"""Dense, plain-torch reference for docs/metrics.md (platonic_fast metric semantics).

Written for clarity, not speed: every metric materialises the N×N similarity matrix, sorts
every row with a *stable* descending sort (so ties go to the smaller index, as docs/metrics.md#knn
requires) and computes HSIC with explicit O(N³) matrix products, as platonic-rep's metrics.py
does. Every function takes ``dtype=`` (default ``torch.float64``) and computes in that dtype on
the input's device.

The benchmarks (bench/) import this module too: their anchor (a), "the reference's own approach",
is these functions with ``dtype=torch.float32, approach="reference"``. The formulas are the same;
``approach="reference"`` only swaps in platonic-rep's operation choices where they cost a
different amount of time: the kNN lists from an unstable full ``argsort``, CKNNA's neighbour sets
from ``torch.topk`` on the N×N matrices, and LCS / edit distance in a Python loop over rows.
On tie-free data both approaches give the same values. Left as they are, since they cost
milliseconds at N=4,096: boolean rather than float N×N masks in mutual_knn, the squared-norm
expansion rather than ``cdist`` for the RBF kernel, -inf rather than -1e8 on the diagonal.

Nothing here imports platonic_fast: the tests compare the package against this module.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "SUPPORTED_METRICS",
    "as_tensor",
    "similarity",
    "knn",
    "knn_cross",
    "neighbour_lists",
    "mutual_knn",
    "cycle_knn",
    "lcs_knn",
    "edit_distance_knn",
    "lcs_length_plain",
    "levenshtein_plain",
    "batched_lcs",
    "batched_levenshtein",
    "hsic_biased",
    "hsic_unbiased",
    "cka",
    "unbiased_cka",
    "cknna",
    "svcca",
    "measure",
    "remove_outliers",
    "align_dense",
]

DEFAULT_DTYPE = torch.float64
# "oracle": the tie rule (docs/metrics.md#knn), vectorised; "reference": platonic-rep's operations (module doc).
APPROACHES = ("oracle", "reference")

# Same order as platonic-rep's AlignmentMetrics.SUPPORTED_METRICS.
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


def as_tensor(x, dtype: torch.dtype = DEFAULT_DTYPE) -> torch.Tensor:
    """Torch tensor (NumPy arrays accepted) converted to ``dtype``; never aliases the input."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.detach().to(dtype=dtype).clone()


# ----------------------------------------------------------------------------------------------
# nearest neighbours
# ----------------------------------------------------------------------------------------------

def similarity(a, b=None, *, dtype: torch.dtype = DEFAULT_DTYPE) -> torch.Tensor:
    """Inner-product matrix ``a @ b.T`` (``b`` defaults to ``a``), computed in ``dtype``."""
    a = as_tensor(a, dtype)
    b = a if b is None else as_tensor(b, dtype)
    return a @ b.T


def _check_approach(approach: str) -> str:
    if approach not in APPROACHES:
        raise ValueError(f"approach must be one of {APPROACHES}, got {approach!r}")
    return approach


def _top(scores: torch.Tensor, k: int, approach: str = "oracle", *, full_sort: bool = True):
    """(values, indices) of the k largest scores of every row, most similar first.

    "oracle": a stable descending sort keeps equal scores in index order (ties -> smaller index).
    "reference": platonic-rep's calls, ties in any order: a full descending ``argsort`` (its kNN
    lists) or, with ``full_sort=False``, ``torch.topk`` (its CKNNA sets).
    """
    if _check_approach(approach) == "oracle":
        vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
        return vals[:, :k], idx[:, :k]
    if not full_sort:
        return torch.topk(scores, k, dim=1)
    idx = torch.argsort(scores, dim=1, descending=True)[:, :k]
    return scores.gather(1, idx), idx


def knn(x, k: int, exclude_self: bool = True, *, dtype: torch.dtype = DEFAULT_DTYPE,
        approach: str = "oracle"):
    """Self-form kNN: (values N×k, indices int64 N×k), most similar first.

    With ``exclude_self`` the diagonal is set to -inf so that i is never its own neighbour
    (for k <= N-1, -inf always sorts after every finite score).
    """
    s = similarity(x, dtype=dtype)
    if exclude_self:
        s.fill_diagonal_(float("-inf"))
    return _top(s, k, approach)


def knn_cross(queries, keys, k: int, *, dtype: torch.dtype = DEFAULT_DTYPE):
    """Cross-form kNN of every query among ``keys`` (no self exclusion)."""
    return _top(similarity(queries, keys, dtype=dtype), k)


def neighbour_lists(x, k: int, *, dtype: torch.dtype = DEFAULT_DTYPE,
                    approach: str = "oracle") -> torch.Tensor:
    """kNN index lists (N×k, int64) with self excluded: the input of every k-metric."""
    return knn(x, k, exclude_self=True, dtype=dtype, approach=approach)[1]


def _lists(a, b, topk, knn_a, knn_b, dtype, approach):
    if knn_a is None:
        knn_a = neighbour_lists(a, topk, dtype=dtype, approach=approach)
    if knn_b is None:
        knn_b = neighbour_lists(b, topk, dtype=dtype, approach=approach)
    return torch.as_tensor(knn_a).long().cpu(), torch.as_tensor(knn_b).long().cpu()


def _membership_mask(lists: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.zeros(lists.shape[0], n, dtype=torch.bool)
    mask.scatter_(1, lists, True)
    return mask


# ----------------------------------------------------------------------------------------------
# neighbour-list metrics
# ----------------------------------------------------------------------------------------------

def mutual_knn(a, b, topk: int = 10, *, dtype: torch.dtype = DEFAULT_DTYPE,
               knn_a=None, knn_b=None, approach: str = "oracle") -> float:
    """Mean over i of |kNN_A(i) ∩ kNN_B(i)| / k.

    ``knn_a``/``knn_b`` let a caller supply neighbour lists ("given the same neighbour lists").
    """
    la, lb = _lists(a, b, topk, knn_a, knn_b, dtype, approach)
    n, k = la.shape
    overlap = (_membership_mask(la, n) & _membership_mask(lb, n)).sum(dim=1).to(torch.float64)
    return float((overlap / k).mean())


def cycle_knn(a, b, topk: int = 10, *, dtype: torch.dtype = DEFAULT_DTYPE,
              knn_a=None, knn_b=None, approach: str = "oracle") -> float:
    """Fraction of i such that i ∈ kNN_A(j) for some j ∈ kNN_B(i)."""
    la, lb = _lists(a, b, topk, knn_a, knn_b, dtype, approach)
    n = la.shape[0]
    # la[lb] is N×k×k: the A-neighbours of every B-neighbour of i.
    hit = (la[lb] == torch.arange(n).view(n, 1, 1)).flatten(1).any(dim=1)
    return float(hit.to(torch.float64).mean())


def lcs_length_plain(x: Sequence[int], y: Sequence[int]) -> int:
    """Textbook O(len(x)·len(y)) LCS dynamic programme (used to check the batched one)."""
    m, n = len(x), len(y)
    dp = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            if x[i - 1] == y[j - 1]:
                dp[i][j] = dp[i - 1][j - 1] + 1
            else:
                dp[i][j] = max(dp[i - 1][j], dp[i][j - 1])
    return dp[m][n]


def levenshtein_plain(x: Sequence[int], y: Sequence[int]) -> int:
    """Textbook unit-cost Levenshtein distance dynamic programme."""
    m, n = len(x), len(y)
    dp = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(m + 1):
        dp[i][0] = i
    for j in range(n + 1):
        dp[0][j] = j
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            sub = dp[i - 1][j - 1] + (0 if x[i - 1] == y[j - 1] else 1)
            dp[i][j] = min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, sub)
    return dp[m][n]


def batched_lcs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LCS length of every row pair (x[r], y[r]); the same DP as ``lcs_length_plain``.

    Vectorised over rows and over j: the left-neighbour term of the recurrence,
    dp[i][j] = max(c[j], dp[i][j-1]), unrolls into a running maximum (cummax) over j, so a
    DP row is computed in one shot. Needed to keep k = N-1 cases affordable.
    """
    x = x.long().cpu()
    y = y.long().cpu()
    b, m = x.shape
    n = y.shape[1]
    prev = torch.zeros(b, n + 1, dtype=torch.int64)
    for i in range(m):
        match = (x[:, i : i + 1] == y).to(torch.int64)                  # b×n
        cand = torch.maximum(prev[:, :-1] + match, prev[:, 1:])          # diagonal / up
        cur = torch.zeros_like(prev)
        cur[:, 1:] = torch.cummax(cand, dim=1).values                   # left, unrolled
        prev = cur
    return prev[:, -1]


def batched_levenshtein(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unit-cost Levenshtein distance of every row pair; the same DP as ``levenshtein_plain``.

    The left-neighbour term dp[i][j] = min(c[j], dp[i][j-1] + 1) unrolls into
    dp[i][j] - j = cummin over j' <= j of (c[j'] - j'), with c[0] = i.
    """
    x = x.long().cpu()
    y = y.long().cpu()
    b, m = x.shape
    n = y.shape[1]
    cols = torch.arange(n + 1, dtype=torch.int64)
    prev = cols.expand(b, n + 1).clone()                                 # dp[0][j] = j
    for i in range(1, m + 1):
        cost = (x[:, i - 1 : i] != y).to(torch.int64)
        c = torch.empty_like(prev)
        c[:, 0] = i
        c[:, 1:] = torch.minimum(prev[:, 1:] + 1, prev[:, :-1] + cost)  # up / diagonal
        prev = torch.cummin(c - cols, dim=1).values + cols              # left, unrolled
    return prev[:, -1]


def _per_row(plain, batched, la: torch.Tensor, lb: torch.Tensor, approach: str) -> torch.Tensor:
    """float64 value of a list DP for every row pair: batched, or ("reference") a Python loop."""
    if approach == "reference":
        return torch.tensor([plain(x, y) for x, y in zip(la.tolist(), lb.tolist())],
                            dtype=torch.float64)
    return batched(la, lb).to(torch.float64)


def lcs_knn(a, b, topk: int = 10, *, dtype: torch.dtype = DEFAULT_DTYPE,
            knn_a=None, knn_b=None, approach: str = "oracle") -> float:
    """Mean over i of LCS(kNN_A(i), kNN_B(i)) (ordered lists; not divided by k)."""
    la, lb = _lists(a, b, topk, knn_a, knn_b, dtype, approach)
    return float(_per_row(lcs_length_plain, batched_lcs, la, lb, approach).mean())


def edit_distance_knn(a, b, topk: int = 10, *, dtype: torch.dtype = DEFAULT_DTYPE,
                      knn_a=None, knn_b=None, approach: str = "oracle") -> float:
    """1 - mean over i of Levenshtein(kNN_A(i), kNN_B(i)) / k."""
    la, lb = _lists(a, b, topk, knn_a, knn_b, dtype, approach)
    k = la.shape[1]
    return float(1.0 - _per_row(levenshtein_plain, batched_levenshtein, la, lb, approach).mean() / k)


# ----------------------------------------------------------------------------------------------
# HSIC / CKA
# ----------------------------------------------------------------------------------------------

def hsic_biased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """tr(K H L H), H = I - 11ᵀ/N, with H explicit (valid for non-symmetric K, L too)."""
    n = K.shape[0]
    H = torch.eye(n, dtype=K.dtype, device=K.device) - 1.0 / n
    return torch.trace(K @ H @ L @ H)


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012) unbiased HSIC; needs N >= 4. Written like the formula of docs/metrics.md#hsic."""
    n = K.shape[0]
    Kt = K.clone().fill_diagonal_(0)
    Lt = L.clone().fill_diagonal_(0)
    value = (
        torch.sum(Kt * Lt.T)
        + torch.sum(Kt) * torch.sum(Lt) / ((n - 1) * (n - 2))
        - 2 * torch.sum(Kt @ Lt) / (n - 2)
    )
    return value / (n * (n - 3))


def _kernel(x: torch.Tensor, kernel_metric: str, rbf_sigma: float) -> torch.Tensor:
    if kernel_metric == "ip":
        return x @ x.T
    if kernel_metric == "rbf":
        sq = (x * x).sum(dim=1)
        d2 = (sq[:, None] + sq[None, :] - 2 * (x @ x.T)).clamp_min(0)
        d2.fill_diagonal_(0)
        return torch.exp(-d2 / (2 * rbf_sigma**2))
    raise ValueError(f"kernel_metric must be 'ip' or 'rbf', got {kernel_metric!r}")


def cka(a, b, kernel_metric: str = "ip", rbf_sigma: float = 1.0, unbiased: bool = False, *,
        dtype: torch.dtype = DEFAULT_DTYPE) -> float:
    """HSIC(K, L) / (sqrt(HSIC(K, K)·HSIC(L, L)) + 1e-6)."""
    K = _kernel(as_tensor(a, dtype), kernel_metric, rbf_sigma)
    L = _kernel(as_tensor(b, dtype), kernel_metric, rbf_sigma)
    hsic = hsic_unbiased if unbiased else hsic_biased
    kl, kk, ll = hsic(K, L), hsic(K, K), hsic(L, L)
    return float(kl / (torch.sqrt(kk * ll) + 1e-6))


def unbiased_cka(a, b, kernel_metric: str = "ip", rbf_sigma: float = 1.0, *,
                 dtype: torch.dtype = DEFAULT_DTYPE) -> float:
    return cka(a, b, kernel_metric, rbf_sigma, unbiased=True, dtype=dtype)


def _cknna_sets(K: torch.Tensor, k: int, unbiased: bool, approach: str) -> torch.Tensor:
    Khat = K.clone()
    if unbiased:
        Khat.fill_diagonal_(float("-inf"))  # self excluded; with unbiased=False it competes
    _, idx = _top(Khat, k, approach, full_sort=False)
    return torch.zeros_like(K).scatter_(1, idx, 1.0)


def cknna(a, b, topk: int = 10, distance_agnostic: bool = False, unbiased: bool = True, *,
          dtype: torch.dtype = DEFAULT_DTYPE, knn_a=None, knn_b=None,
          approach: str = "oracle") -> float:
    """CKNNA per docs/metrics.md#cknna (linear kernel; masks M from the K-set and the L-set of each row).

    ``knn_a``/``knn_b`` optionally supply the neighbour sets (N×topk index lists, self
    excluded when ``unbiased``, else the diagonal competing).
    """
    K = similarity(a, dtype=dtype)
    L = similarity(b, dtype=dtype)
    if knn_a is None:
        mK = _cknna_sets(K, topk, unbiased, approach)
    else:
        mK = torch.zeros_like(K).scatter_(1, torch.as_tensor(knn_a).long().to(K.device), 1.0)
    if knn_b is None:
        mL = _cknna_sets(L, topk, unbiased, approach)
    else:
        mL = torch.zeros_like(L).scatter_(1, torch.as_tensor(knn_b).long().to(L.device), 1.0)
    if approach == "reference" and knn_a is None and knn_b is None:
        # platonic-rep selects both sets again for each of its three HSIC terms: part of its cost
        for X in (K, L, K, L):
            _cknna_sets(X, topk, unbiased, approach)
    mKL = mK * mL
    if distance_agnostic:
        # Deliberate difference from the reference (which returns a matrix): masks only.
        return float(mKL.sum() / torch.sqrt(mK.sum() * mL.sum()))
    hsic = hsic_unbiased if unbiased else hsic_biased
    s_kl = hsic(mKL * K, mKL * L)
    s_kk = hsic(mK * K, mK * K)
    s_ll = hsic(mL * L, mL * L)
    return float(s_kl / (torch.sqrt(s_kk * s_ll) + 1e-6))


# ----------------------------------------------------------------------------------------------
# SVCCA
# ----------------------------------------------------------------------------------------------

def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Columns minus their mean, over their unbiased std + 1e-8 (docs/metrics.md#svcca). An exactly constant
    column is exactly 0 (0 / 1e-8), not the rounding of its mean divided by 1e-8."""
    const = (x == x[:1]).all(dim=0)
    x = x - x.mean(dim=0, keepdim=True)
    x = x / (x.std(dim=0, keepdim=True) + 1e-8)
    x[:, const] = 0.0
    return x


def svcca(a, b, cca_dim: int = 10, *, dtype: torch.dtype = DEFAULT_DTYPE) -> float:
    """Mean singular value of U_Aᵀ U_B, U = top-``cca_dim`` left singular vectors (exact SVD)."""
    xa = _standardise(as_tensor(a, dtype))
    xb = _standardise(as_tensor(b, dtype))
    ua = torch.linalg.svd(xa, full_matrices=False).U[:, :cca_dim]
    ub = torch.linalg.svd(xb, full_matrices=False).U[:, :cca_dim]
    return float(torch.linalg.svdvals(ua.T @ ub).mean())


# ----------------------------------------------------------------------------------------------
# dispatch, outliers, layer search
# ----------------------------------------------------------------------------------------------

_METRIC_FNS = {
    "cycle_knn": cycle_knn,
    "mutual_knn": mutual_knn,
    "lcs_knn": lcs_knn,
    "cka": cka,
    "unbiased_cka": unbiased_cka,
    "cknna": cknna,
    "svcca": svcca,
    "edit_distance_knn": edit_distance_knn,
}


# The metrics whose neighbour selection ``approach`` changes; HSIC and SVCCA are the same in both.
_PICK_NEIGHBOURS = ("cycle_knn", "mutual_knn", "lcs_knn", "edit_distance_knn", "cknna")


def measure(name: str, a, b, *, approach: str = "oracle", **kwargs) -> float:
    if name not in _METRIC_FNS:
        raise ValueError(f"unknown metric {name!r}; supported: {SUPPORTED_METRICS}")
    if _check_approach(approach) != "oracle" and name in _PICK_NEIGHBOURS:
        kwargs["approach"] = approach
    return _METRIC_FNS[name](a, b, **kwargs)


def _interp_quantile_sorted(v: torch.Tensor, q: float) -> torch.Tensor:
    """Linearly interpolated q-quantile of every row of ``v`` (rows sorted ascending).

    Same definition as numpy/torch 'linear': position q·(n-1) between the two order statistics.
    """
    n = v.shape[1]
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return v[:, lo] + frac * (v[:, hi] - v[:, lo])


def remove_outliers(feats, q: float = 0.95, exact: bool = False, *,
                    dtype: torch.dtype = DEFAULT_DTYPE) -> torch.Tensor:
    """Clamp entries to [-t, t] (docs/metrics.md#clamping), computed in ``dtype``.

    exact=True: t = sorted |x| (whole tensor) at position floor(q·numel).
    exact=False: t = mean over samples (dim 0) of each sample's interpolated q-quantile of |x|.
    Sorting replaces torch.quantile so any tensor size works.
    """
    x = as_tensor(feats, dtype)
    if q == 1:
        return x
    if exact:
        t = x.abs().flatten().sort().values[int(q * x.numel())]
    else:
        per_sample = x.abs().flatten(start_dim=1).sort(dim=1).values
        t = _interp_quantile_sorted(per_sample, q).mean()
    return x.clamp(-t, t)


def _split_layers(feats, q, exact, dtype):
    # As the reference's prepare_features: a tensor is clamped as a whole (thresholds over all
    # layers), a list is clamped layer by layer.
    if isinstance(feats, (list, tuple)):
        return [remove_outliers(f, q, exact, dtype=dtype) for f in feats]
    x = remove_outliers(feats, q, exact, dtype=dtype)
    if x.ndim != 3:
        raise ValueError(f"features must be N×L×D or a list of N×D matrices, got {tuple(x.shape)}")
    return [x[:, i, :] for i in range(x.shape[1])]


def align_dense(x, y, metric: str = "mutual_knn", topk: int = 10, q: float = 0.95,
                concat: bool = False, *, exact: bool = False, normalize: bool = True,
                dtype: torch.dtype = DEFAULT_DTYPE, **metric_kwargs):
    """Layer search like the reference's compute_score, every pair from scratch.

    Returns (scores Lx×Ly float64 tensor, best float, best_layers tuple or None). With
    ``concat`` the concatenation of all (clamped) layers of a model is one more, last
    row/column, reported as layer -1 in best_layers.
    """
    xs = _split_layers(x, q, exact, dtype)
    ys = _split_layers(y, q, exact, dtype)
    if concat:
        xs = xs + [torch.cat(xs, dim=1)]
        ys = ys + [torch.cat(ys, dim=1)]
    if normalize:
        xs = [F.normalize(t, p=2, dim=-1) for t in xs]
        ys = [F.normalize(t, p=2, dim=-1) for t in ys]
    kwargs = dict(metric_kwargs)
    if "knn" in metric:  # as the reference: cknna's name contains "knn" too
        kwargs["topk"] = topk
    scores = torch.zeros(len(xs), len(ys), dtype=torch.float64)
    best, best_layers = 0.0, None
    for i, xi in enumerate(xs):
        for j, yj in enumerate(ys):
            s = measure(metric, xi, yj, dtype=dtype, **kwargs)
            scores[i, j] = s
            if s > best:
                best = s
                best_layers = (
                    -1 if (concat and i == len(xs) - 1) else i,
                    -1 if (concat and j == len(ys) - 1) else j,
                )
    return scores, best, best_layers
