"""Outlier clamping as the reference pipeline does before scoring layers (SPEC §1).

Quantiles come from ``torch.kthvalue`` rather than ``torch.quantile``, which refuses inputs of
more than 2**24 elements; the result is the same order statistic.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._checks import as_tensor

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def outlier_threshold(feats: torch.Tensor, q: float, exact: bool) -> torch.Tensor:
    """The clamp value t (0-d tensor, feats' dtype) for a validated tensor."""
    mag = feats.detach().abs()
    if exact:
        # Entry at position floor(q * numel) of the ascending sort (0-based) = the (pos+1)-th smallest.
        pos = int(q * mag.numel())
        return mag.reshape(-1).kthvalue(pos + 1).values
    # Per sample: torch.quantile's "linear" interpolation, then the mean over samples.
    per_sample = mag.reshape(mag.shape[0], -1).to(torch.float64 if feats.dtype == torch.float64 else torch.float32)
    m = per_sample.shape[1]
    pos = q * (m - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, m - 1)
    v_lo = per_sample.kthvalue(lo + 1, dim=1).values
    v_hi = per_sample.kthvalue(hi + 1, dim=1).values if hi != lo else v_lo
    return (v_lo + (pos - lo) * (v_hi - v_lo)).mean().to(feats.dtype)


def remove_outliers(feats, q: float = 0.95, exact: bool = False):
    """Clamp every entry of ``feats`` to [-t, t] (SPEC §1).

    Parameters
    ----------
    feats : torch.Tensor or np.ndarray, shape (N, ...)
        Features of N samples (any number of trailing dimensions, e.g. N x L x D).
    q : float in (0, 1]
        Quantile; ``q == 1`` returns ``feats`` unchanged.
    exact : bool
        True: t is the entry at position floor(q * numel) of the sorted |feats| (whole tensor).
        False: t is the mean over samples of each sample's interpolated q-quantile of |x|.

    Returns
    -------
    Same type, shape and dtype as ``feats``.

    Examples
    --------
    >>> x = torch.tensor([[1.0, -5.0, 2.0, 100.0]])
    >>> remove_outliers(x, q=0.5, exact=True)
    tensor([[ 1., -5.,  2.,  5.]])
    """
    if isinstance(q, bool) or not isinstance(q, numbers.Real):
        raise TypeError(f"q must be a number in (0, 1], got {type(q).__name__}")
    if not (0.0 < float(q) <= 1.0):
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be True or False, got {exact!r}")
    was_numpy = isinstance(feats, np.ndarray)
    t = as_tensor(feats, "feats")
    if t.dtype not in _FLOATS:
        raise TypeError(f"feats must be a floating-point tensor, got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"feats is empty (shape {tuple(t.shape)})")
    if not exact and t.dim() < 2:
        raise ValueError(f"feats must be at least 2-D (N samples x features) for exact=False, got shape {tuple(t.shape)}")
    if float(q) == 1.0:
        return feats
    if not bool(torch.isfinite(t).all()):
        raise ValueError("feats contains NaN or Inf; clean or drop those samples first")
    thr = outlier_threshold(t, float(q), exact)
    out = t.clamp(-thr, thr)
    return out.numpy() if was_numpy else out
