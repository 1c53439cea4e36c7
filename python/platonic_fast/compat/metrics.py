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
"""

from __future__ import annotations

import torch

from .. import metrics as _m
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
