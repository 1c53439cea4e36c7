"""Drop-in replacements for code copied from the platonic-rep repository.

``from platonic_fast.compat import AlignmentMetrics`` replaces ``from metrics import
AlignmentMetrics``: same class, method names, arguments, defaults, SUPPORTED_METRICS and return
types, computed by platonic_fast.
"""

from .metrics import AlignmentMetrics, remove_outliers

__all__ = ["AlignmentMetrics", "remove_outliers"]
