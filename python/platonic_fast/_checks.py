"""Input validation at the Python boundary.

Every public function calls these before any work, so bad input fails with a ValueError or
TypeError that names the argument and says what to do, never deep inside a kernel.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch

# The one table of floating dtypes the library accepts (names as torch spells them).
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
               "float64": torch.float64}
FLOAT_DTYPES = tuple(DTYPE_NAMES.values())


class ConstantFeaturesError(ValueError):
    """Every sample has the same features: no metric can say anything about them."""


class DegenerateInputWarning(UserWarning):
    """Legal input on which a score carries little or no information (the message says why)."""


class MemoryUseWarning(UserWarning):
    """A call will hold much more memory than its inputs (e.g. k close to N neighbours)."""


# Extra memory above which a call warns before it starts.
WARN_BYTES = 1 << 30


def warn_memory(what: str, nbytes: float, hint: str) -> None:
    if nbytes > WARN_BYTES:
        warnings.warn(f"{what} will hold about {nbytes / 2**30:.1f} GiB beyond the inputs; {hint}",
                      MemoryUseWarning, stacklevel=4)


def _column_range(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return torch.aminmax(t, dim=0)  # O(D) memory: no N x D temporary
    except RuntimeError:  # dtypes/devices without aminmax
        return t.float().amin(dim=0), t.float().amax(dim=0)


def check_not_constant(t: torch.Tensor, name: str, metric: str, column_range=None) -> None:
    """Raise :class:`ConstantFeaturesError` when all rows of ``t`` are identical.

    Such a representation would otherwise score as perfectly aligned with another constant one
    (every neighbour ties, so both lists are 0, 1, 2, ...) or as pure rounding noise.
    """
    if t.shape[0] < 2:
        return
    lo, hi = column_range if column_range is not None else _column_range(t)
    if bool((lo == hi).all()):
        raise ConstantFeaturesError(
            f"{name} is constant: all {t.shape[0]} samples have the same features, so {metric} has "
            "nothing to measure (check the layer or the extraction)")


def guarded_ratio(metric: str, num: float, norm: float, exponent: float, *, warn: bool = True) -> float:
    """num / (norm + 1e-6), the CKA/CKNNA ratio of docs/metrics.md#cka, with num and norm in scaled units where
    the guard 1e-6 reads 1e-6 · 2**exponent; warns (unless ``warn`` is False) when the guard
    moves the score by over 10%."""
    guard = math.ldexp(1e-6, int(exponent)) * 2.0 ** (exponent - int(exponent)) if exponent < 1000 else math.inf
    guard = max(guard, 5e-324)  # an underflow to 0 would turn 0 / 0 into an exception
    if warn and not guard <= 0.1 * norm:
        # One message per metric (no values in it), so a layer search warns once, not L² times.
        warnings.warn(
            f"{metric}: sqrt(HSIC(K,K)·HSIC(L,L)) is not large against the formula's 1e-6 guard, which "
            "pulls the score towards 0 (tiny features or a constant kernel; the reference's formula does "
            "the same). L2-normalise the rows (align does) for a scale-free score.",
            DegenerateInputWarning, stacklevel=5)
    return num / (norm + guard)


def unit_exponent(top: float, safe: int) -> int:
    """e such that dividing by 2**e (exact) brings a largest magnitude ``top`` near 1, or 0 when
    ``top`` is 0 or already within [2**-safe, 2**safe] (then nothing needs rescaling)."""
    if top == 0.0 or 2.0 ** -safe <= top <= 2.0 ** safe:
        return 0
    return int(np.frexp(top)[1])


def max_abs(t: torch.Tensor) -> float:
    """max |t| without materialising |t|."""
    lo, hi = torch.aminmax(t.detach())
    return max(-float(lo), float(hi))


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
        if (not x.flags.writeable or any(st < 0 for st in x.strides)
                or not x.dtype.isnative):
            # torch.from_numpy takes neither negative strides nor other byte orders (and warns on
            # read-only arrays): a native, contiguous copy then
            x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
            if not x.flags.writeable:
                x = x.copy()
        return torch.from_numpy(x)
    raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")


def check_features(x: Any, name: str, *, check_finite: bool = True, metric: str | None = None) -> torch.Tensor:
    """Validate an N x D feature matrix and return it as a tensor (dtype and device unchanged).

    With ``metric``, constant features (all rows equal) raise :class:`ConstantFeaturesError` too,
    from the same pass over the data as the finiteness check.
    """
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
    if check_finite:
        check_values(t, name, metric)
    return t


def check_values(t: torch.Tensor, name: str, metric: str | None = None) -> None:
    """NaN/Inf raise a ValueError; with ``metric``, constant features raise
    :class:`ConstantFeaturesError`, from the same pass over the data."""
    if metric is None:
        if not all_finite(t):
            raise ValueError(f"{name} contains NaN or Inf; clean or drop those samples first")
        return
    lo, hi = _column_range(t)  # NaN and ±Inf propagate into the column extremes
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        raise ValueError(f"{name} contains NaN or Inf; clean or drop those samples first")
    check_not_constant(t, name, metric, (lo, hi))


def check_pair(a: Any, b: Any, names: tuple[str, str] = ("feats_A", "feats_B"), *,
               metric: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two feature matrices describing the same N samples (see :func:`check_features`)."""
    # types and shapes of both first, then the values (one pass each)
    ta = check_features(a, names[0], check_finite=False)
    tb = check_features(b, names[1], check_finite=False)
    if ta.shape[0] != tb.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must describe the same samples: got N={ta.shape[0]} and N={tb.shape[0]} rows"
        )
    if ta.device != tb.device:
        raise ValueError(f"{names[0]} is on {ta.device} but {names[1]} is on {tb.device}; move both to one device")
    check_values(ta, names[0], metric)
    check_values(tb, names[1], metric)
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
