"""platonic_fast: exact representational-alignment metrics, fast at any N.

The metrics of "The Platonic Representation Hypothesis" (Huh et al., ICML 2024) — mutual kNN,
cycle/LCS/edit-distance kNN, CKA (linear/RBF, biased/unbiased), CKNNA, SVCCA — with the same
numbers as the reference code, computed without N x N matrices.

>>> import torch, platonic_fast as pf
>>> a, b = torch.randn(1000, 256), torch.randn(1000, 128)
>>> score = pf.mutual_knn(a, b, topk=10)
"""

# First: the modules below take its communicator (distributed._comm), and it wraps them.
from . import distributed  # noqa: F401
from ._checks import ConstantFeaturesError, DegenerateInputWarning, MemoryUseWarning
from .align import AlignResult, align
from .calibration import Calibration, LayerCalibration, calibrate, null_calibration
from .metrics import (
    METRICS,
    SUPPORTED_METRICS,
    MetricSpec,
    Prepared,
    cka,
    cknna,
    cycle_knn,
    edit_distance_knn,
    lcs_knn,
    measure,
    metric_spec,
    mutual_knn,
    prepare,
    score,
    svcca,
    unbiased_cka,
)
from .ops.knn import knn
from .ops.outliers import remove_outliers
from .scorer import Alignment
from .uncertainty import Interval, confidence_interval

__version__ = "0.1.0"

__all__ = [
    "AlignResult",
    "Alignment",
    "Calibration",
    "ConstantFeaturesError",
    "DegenerateInputWarning",
    "Interval",
    "LayerCalibration",
    "MemoryUseWarning",
    "METRICS",
    "MetricSpec",
    "Prepared",
    "SUPPORTED_METRICS",
    "align",
    "calibrate",
    "cka",
    "cknna",
    "confidence_interval",
    "cycle_knn",
    "edit_distance_knn",
    "knn",
    "lcs_knn",
    "measure",
    "metric_spec",
    "mutual_knn",
    "null_calibration",
    "prepare",
    "remove_outliers",
    "score",
    "svcca",
    "unbiased_cka",
]
