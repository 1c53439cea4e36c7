"""``AlignmentMetrics`` with the reference's interface (platonic-rep ``metrics.py``).

Return types follow the reference: Python floats, except ``lcs_knn`` (0-d float32 tensor),
``edit_distance_knn`` (0-d float64 tensor) and ``svcca`` (NumPy float64).

``svcca`` is the reference's own estimator (``torch.svd_lowrank``, scikit-learn's CCA, 1e-10
noise; see ``_svcca_reference``), not the exact :func:`platonic_fast.svcca`: moved code keeps
its numbers, run-to-run spread included, and ``seed=`` makes a value repeatable. It needs
scikit-learn (the ``compat`` extra).

Deliberate differences, all documented in the README:
- neighbour ties are broken by the smaller index (the reference's argsort leaves them arbitrary);
- ``cknna(topk=None)`` means N - 1 neighbours (the reference raises a TypeError there), and
  ``distance_agnostic=True`` returns a score instead of the reference's matrix;
- ``cka`` clamps a rounding-negative HSIC(K,K)·HSIC(L,L) to 0 instead of returning NaN.

The module-level helpers of the reference exist too, with its signatures and return types, so
scripts that import them run unchanged: ``hsic_unbiased``, ``hsic_biased`` (0-d tensors, from
row and column sums: no N x N matrix product), ``compute_nearest_neighbors`` (exact kNN, ties to
the smaller index), ``compute_knn_accuracy``, ``longest_ordinal_sequence`` and
``compute_distance`` (float64 tensors; LCS and ``torchaudio.functional.edit_distance`` run in the
compiled core), ``lcs_length`` (the reference nests it in ``longest_ordinal_sequence``; here it
is importable) and ``remove_outliers``.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import metrics as _m
from ..ops.knn import knn
from ..ops.outliers import remove_outliers as _remove_outliers
from ._svcca_reference import reference_svcca


class AlignmentMetrics:
    # A list, as the reference's; the same names in the same order.
    SUPPORTED_METRICS = list(_m.SUPPORTED_METRICS)

    @staticmethod
    def measure(metric, *args, **kwargs):
        """Call the metric named ``metric`` with the remaining arguments."""
        if metric not in AlignmentMetrics.SUPPORTED_METRICS:
            raise ValueError(f"Unrecognized metric: {metric}")
        return getattr(AlignmentMetrics, metric)(*args, **kwargs)

    @staticmethod
    def cycle_knn(feats_A, feats_B, topk):
        return _m.cycle_knn(feats_A, feats_B, topk=topk)

    @staticmethod
    def mutual_knn(feats_A, feats_B, topk):
        return _m.mutual_knn(feats_A, feats_B, topk=topk)

    @staticmethod
    def lcs_knn(feats_A, feats_B, topk):
        return torch.tensor(_m.lcs_knn(feats_A, feats_B, topk=topk), dtype=torch.float32)

    @staticmethod
    def cka(feats_A, feats_B, kernel_metric="ip", rbf_sigma=1.0, unbiased=False):
        return _m.cka(feats_A, feats_B, kernel_metric=kernel_metric, rbf_sigma=rbf_sigma, unbiased=unbiased)

    @staticmethod
    def unbiased_cka(*args, **kwargs):
        kwargs["unbiased"] = True
        return AlignmentMetrics.cka(*args, **kwargs)

    @staticmethod
    def svcca(feats_A, feats_B, cca_dim=10, *, seed=None):
        """The reference's randomised SVCCA (see ``_svcca_reference``); ``seed=None`` draws from
        the global torch and NumPy generators as the reference does, an int makes it repeatable."""
        return reference_svcca(feats_A, feats_B, cca_dim=cca_dim, seed=seed)

    @staticmethod
    def edit_distance_knn(feats_A, feats_B, topk):
        return torch.tensor(_m.edit_distance_knn(feats_A, feats_B, topk=topk), dtype=torch.float64)

    @staticmethod
    def cknna(feats_A, feats_B, topk=None, distance_agnostic=False, unbiased=True):
        return _m.cknna(feats_A, feats_B, topk=topk, distance_agnostic=distance_agnostic, unbiased=unbiased)


def remove_outliers(feats, q, exact=False, max_threshold=None):
    """The reference's signature; ``max_threshold`` is accepted and, as there, has no effect."""
    return _remove_outliers(feats, q=q, exact=exact)


def _square_pair(K, L) -> tuple[torch.Tensor, torch.Tensor]:
    K, L = torch.as_tensor(K), torch.as_tensor(L)
    if K.dim() != 2 or K.shape[0] != K.shape[1] or K.shape != L.shape:
        raise ValueError(f"K and L must be square kernel matrices of one size, got {tuple(K.shape)} and "
                         f"{tuple(L.shape)}")
    if not (K.is_floating_point() and L.is_floating_point()):
        raise TypeError(f"K and L must be floating-point, got {K.dtype} and {L.dtype}")
    return K, L


def hsic_unbiased(K, L):
    """Unbiased HSIC of kernel matrices K and L (Song et al. 2012), a 0-d tensor of K's dtype.

    Σ_ij (K̃L̃)_ij is a dot product of K̃'s column sums and L̃'s row sums (K̃, L̃: zero diagonals),
    accumulated in float64: O(N²), no matrix product. Needs N >= 4.
    """
    K, L = _square_pair(K, L)
    m = K.shape[0]
    if m < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got {m}")
    k, l = K.to(torch.float64).clone(), L.to(torch.float64).clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    value = ((k * l.T).sum() + k.sum() * l.sum() / ((m - 1) * (m - 2))
             - 2 * (k.sum(dim=0) @ l.sum(dim=1)) / (m - 2)) / (m * (m - 3))
    return value.to(K.dtype)


def hsic_biased(K, L):
    """Biased HSIC tr(K H L H), H = I - 11ᵀ/N (not divided by (N-1)²), a 0-d tensor of K's dtype.

    Expanded for any (not necessarily symmetric) K, L: tr(KL) - (Kᵀ1)·(L1)/N - (Lᵀ1)·(K1)/N
    + (1ᵀK1)(1ᵀL1)/N², accumulated in float64.
    """
    K, L = _square_pair(K, L)
    n = K.shape[0]
    k, l = K.to(torch.float64), L.to(torch.float64)
    value = ((k * l.T).sum() - (k.sum(dim=0) @ l.sum(dim=1)) / n - (l.sum(dim=0) @ k.sum(dim=1)) / n
             + k.sum() * l.sum() / n**2)
    return value.to(K.dtype)


def compute_knn_accuracy(knn):
    """Fraction of rows i whose entries include i (``knn``: N x k, or N x k x k as cycle kNN's
    ``knn_A[knn_B]``), a 0-d float32 tensor."""
    knn = torch.as_tensor(knn)
    if knn.dim() < 2 or knn.shape[0] == 0:
        raise ValueError(f"knn must be N x k (or N x k x k) neighbour indices, got shape {tuple(knn.shape)}")
    own = torch.arange(knn.shape[0], device=knn.device).view(-1, *([1] * (knn.dim() - 1)))
    return (knn == own).flatten(1).any(dim=1).float().mean()


def compute_nearest_neighbors(feats, topk=1):
    """The ``topk`` nearest neighbours of every row of ``feats`` (N x D) by inner product, self
    excluded, most similar first: an N x topk int64 tensor on feats' device (exact; ties to the
    smaller index, where the reference's argsort leaves them arbitrary)."""
    feats = torch.as_tensor(feats)
    if feats.dim() != 2:
        raise ValueError(f"Expected feats to be 2D, got {feats.dim()}")
    return knn(feats, topk, exclude_self=True)[1]


def lcs_length(x, y):
    """Length of the longest common subsequence of two sequences (an int)."""
    x, y = list(x), list(y)
    row = [0] * (len(y) + 1)  # one row of the table at a time
    for a in x:
        diag = 0
        for j, b in enumerate(y, start=1):
            diag, row[j] = row[j], diag + 1 if a == b else max(row[j], row[j - 1])
    return row[-1]


def longest_ordinal_sequence(X, Y):
    """Per-row LCS length of two N x k index matrices: a float64 tensor of length N."""
    return compute_distance(X, Y, lcs_length)


def _is_torchaudio_edit_distance(fn) -> bool:
    return getattr(fn, "__name__", "") == "edit_distance" and getattr(fn, "__module__", "").startswith("torchaudio")


def _distinct_rows(t: torch.Tensor) -> bool:
    srt = t.sort(dim=1).values
    return not bool((srt[:, 1:] == srt[:, :-1]).any())


def compute_distance(X, Y, dist_fn):
    """``dist_fn(X[i], Y[i])`` for every row pair (NumPy rows, as the reference passes them): a
    float64 tensor of length N. :func:`lcs_length` and ``torchaudio.functional.edit_distance``
    on neighbour lists (integers, none repeated within a row) run in the compiled core, all rows
    at once."""
    X, Y = torch.as_tensor(X), torch.as_tensor(Y)
    if X.dim() != 2 or X.shape != Y.shape:
        raise ValueError(f"X and Y must be N x k of one shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    kind = ("lcs_lengths" if dist_fn is lcs_length
            else "edit_distances" if _is_torchaudio_edit_distance(dist_fn) else None)
    # the compiled op takes neighbour lists: integers, no repeats within a row
    if kind is not None and not X.is_floating_point() and not Y.is_floating_point() and _distinct_rows(X) \
            and _distinct_rows(Y):
        from ..ops.neighbour_lists import run

        return run(kind, X.cpu().to(torch.int64), Y.cpu().to(torch.int64)).to(torch.float64)
    xs, ys = X.cpu().numpy(), Y.cpu().numpy()
    return torch.tensor(np.array([dist_fn(xs[i], ys[i]) for i in range(xs.shape[0])], dtype=np.float64))
