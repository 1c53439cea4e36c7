"""Triton kernels of platonic_fast, imported lazily by the backends that use them.

- :mod:`.knn`: fused exact kNN (GEMM tiles -> running top-k in registers).
- :mod:`.hsic`: fused centred-kernel sums for linear and RBF CKA.
"""

import os


def interpreted() -> bool:
    """True under TRITON_INTERPRET=1 (kernels run on the CPU, slowly, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
