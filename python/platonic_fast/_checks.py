"""Input validation at the Python boundary.

Every public function calls these before any work, so bad input fails with a ValueError or
TypeError that names the argument and says what to do, never deep inside a kernel.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

# The one table of floating dtypes the library accepts (names as torch spells them).
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
               "float64": torch.float64}
FLOAT_DTYPES = tuple(DTYPE_NAMES.values())


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN or Inf: one min/max reduction (NaN propagates through both),
    about 25x faster than materialising ``torch.isfinite(t)``."""
    try:
        lo, hi = torch.aminmax(t)
    except RuntimeError:  # dtypes/devices without aminmax
        return bool(torch.isfinite(t).all())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a torch tensor (NumPy arrays are wrapped without a copy when possible)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "f":
            raise TypeError(
                f"{name} must hold floating-point values (float16/32/64), got NumPy dtype {x.dtype}; "
                f"convert it with {name}.astype(np.float32)"
            )
        if not x.flags.writeable:  # torch.from_numpy warns on read-only arrays
            x = x.copy()
        return torch.from_numpy(x)
    raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")


def check_features(x: Any, name: str, *, check_finite: bool = True) -> torch.Tensor:
    """Validate an N x D feature matrix and return it as a tensor (dtype and device unchanged)."""
    t = as_tensor(x, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}; "
            f"convert it with {name}.float()"
        )
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N samples x D features), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); it needs at least one sample and one feature")
    if check_finite and not all_finite(t):
        raise ValueError(f"{name} contains NaN or Inf; clean or drop those samples first")
    return t


def check_pair(a: Any, b: Any, names: tuple[str, str] = ("feats_A", "feats_B")) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two feature matrices describing the same N samples."""
    ta = check_features(a, names[0])
    tb = check_features(b, names[1])
    if ta.shape[0] != tb.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must describe the same samples: got N={ta.shape[0]} and N={tb.shape[0]} rows"
        )
    if ta.device != tb.device:
        raise ValueError(f"{names[0]} is on {ta.device} but {names[1]} is on {tb.device}; move both to one device")
    return ta, tb


def check_int(value: Any, name: str, *, low: int, high: int | None = None, hint: str = "") -> int:
    """Return ``value`` as int, checking ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    v = int(value)
    if v < low or (high is not None and v > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {v}{hint}")
    return v


def check_topk(topk: Any, n: int, *, name: str = "topk", self_excluded: bool = True, low: int = 1) -> int:
    """k for a self-kNN over n samples: at most n - 1 neighbours when self is excluded."""
    high = n - 1 if self_excluded else n
    if high < low:
        raise ValueError(
            f"{name}={topk!r} cannot be satisfied: {n} samples leave at most {high} neighbours; "
            f"this needs at least {low} (use more samples)"
        )
    return check_int(topk, name, low=low, high=high, hint=f" (N={n} samples)")


def check_positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not (v > 0 and np.isfinite(v)):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v
