"""Drop-in replacements for code copied from the platonic-rep repository.

``from platonic_fast.compat import AlignmentMetrics`` replaces ``from metrics import
AlignmentMetrics``: same class, method names, arguments, defaults, SUPPORTED_METRICS and return
types, computed by platonic_fast.
"""

from .metrics import (
                      AlignmentMetrics,
                      compute_distance,
                      compute_knn_accuracy,
                      compute_nearest_neighbors,
                      hsic_biased,
                      hsic_unbiased,
                      lcs_length,
                      longest_ordinal_sequence,
                      remove_outliers,
)

__all__ = ["AlignmentMetrics", "compute_distance", "compute_knn_accuracy", "compute_nearest_neighbors", "hsic_biased",
           "hsic_unbiased", "lcs_length", "longest_ordinal_sequence", "remove_outliers"]
