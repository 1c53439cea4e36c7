"""Outlier clamping as the reference pipeline does before scoring layers (docs/metrics.md#clamping).

Quantiles come from ``torch.topk`` rather than ``torch.quantile``, which refuses inputs of more
than 2**24 elements; the result is the same order statistic.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import numpy as np
import torch

from .._backends import register, resolve
from .._checks import FLOAT_DTYPES, all_finite, as_tensor
from ..distributed._comm import LOCAL, layout_of

_CHUNK = 1 << 24  # entries of this rank's rows histogrammed at a time by the sharded selection


def _ascending_order_stats(values: torch.Tensor, positions: list[int]) -> list[torch.Tensor]:
    """Entries at 0-based ``positions`` of each row of ``values`` sorted ascending.

    Uses one ``torch.topk`` from whichever end of the sort is nearer (q = 0.95 needs only the top
    5%), several times faster than a full sort or ``kthvalue``, and free of quantile's size limit.
    """
    m = values.shape[-1]
    lo, hi = min(positions), max(positions)
    if m - lo <= hi + 1:  # nearer the top: the (m - lo) largest, ascending
        part = values.topk(m - lo, dim=-1, largest=True, sorted=False).values.sort(dim=-1).values
        return [part[..., p - lo] for p in positions]
    part = values.topk(hi + 1, dim=-1, largest=False, sorted=True).values
    return [part[..., p] for p in positions]


def per_sample_order_stats(feats: torch.Tensor, lo: int, hi: int, *, backend: str = "auto"):
    """Entries lo and hi of each sample's ascending sorted |x| (two tensors of N values)."""
    rows = feats.detach().reshape(feats.shape[0], -1)
    _, impl = resolve("outliers", backend, rows.device, dtypes=(rows.dtype,))
    return impl(rows, lo, hi)


@register("outliers", "cpu", devices=("cpu",), dtypes=(torch.float32,), needs=("core",))
def per_sample_order_stats_cpu(rows: torch.Tensor, lo: int, hi: int):
    """O(m) selection per row with |x| taken on the fly: no copy of the features."""
    from .. import _core

    v_lo, v_hi = _core.outliers_abs_order_stats(rows.contiguous().numpy(), lo, hi)
    return torch.from_numpy(v_lo), torch.from_numpy(v_hi)


@register("outliers", "torch", devices=("cpu", "cuda"))
def per_sample_order_stats_torch(rows: torch.Tensor, lo: int, hi: int):
    mag = rows.abs().to(torch.float64 if rows.dtype == torch.float64 else torch.float32)
    v_lo, v_hi = _ascending_order_stats(mag, [lo, hi])
    return v_lo, v_hi


_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def radix_select(blocks, position: int, dtype: torch.dtype, *, total=None, step=contextlib.nullcontext
                 ) -> torch.Tensor:
    """The entry at 0-based ``position`` of the ascending sort of |x| over every block, without
    holding them: for non-negative floats the order of the bit patterns is the order of the
    values, so one histogram per 16-bit digit (from the top) finds it (2 passes for float32).

    ``blocks()`` returns a fresh iterator of 1-D blocks of ``dtype`` (file blocks out of core,
    chunks of this rank's rows when sharded); ``total`` sums a histogram over every rank and
    ``step`` wraps the local work (:meth:`platonic_fast.distributed._comm.Comm.step`); both are
    the identity in one process.
    """
    size = torch.finfo(dtype).bits // 8
    digits, top = [], 8 * size - 1  # the sign bit of |x| is 0
    while top > 0:
        width = min(16, top)
        digits.append((top - width, width))
        top -= width
    rem, prefix, mask, device = position, 0, 0, None
    for shift, width in digits:
        with step():
            hist = torch.zeros(1 << width, dtype=torch.int64)
            for t in blocks():
                b = t.abs().view(_INT_VIEW[size]).to(torch.int64)
                device = b.device
                if mask:
                    b = b[(b & mask) == prefix]
                hist += torch.bincount((b >> shift) & ((1 << width) - 1), minlength=1 << width).cpu()
        if total is not None:
            hist = total(hist)
        cum = hist.cumsum(0)
        digit = int(torch.searchsorted(cum, torch.tensor([rem]), right=True)[0])
        if digit:
            rem -= int(cum[digit - 1])
        prefix |= digit << shift
        mask |= ((1 << width) - 1) << shift
    out = torch.tensor([prefix], dtype=torch.int64).to(_INT_VIEW[size]).view(dtype)[0]
    return out if device is None else out.to(device)


def outlier_threshold(feats: torch.Tensor, q: float, exact: bool, comm=LOCAL, layout=None) -> torch.Tensor:
    """The clamp value t (0-d tensor, feats' dtype) for a validated tensor: over every rank's
    rows when ``comm`` is a process group's (``layout``: the rows each rank holds)."""
    if exact and comm.size == 1:
        # The entry at position floor(q * numel) of the ascending sort of the whole tensor.
        (t,) = _ascending_order_stats(feats.detach().abs().reshape(-1), [int(q * feats.numel())])
        return t
    if exact:  # the same entry, by a radix selection whose histograms are summed over the ranks
        numel = int(comm.all_reduce(torch.tensor([feats.numel()], dtype=torch.int64))[0])
        flat = feats.detach().reshape(-1)
        return radix_select(lambda: (flat[c0: c0 + _CHUNK] for c0 in range(0, flat.numel(), _CHUNK)),
                            int(q * numel), feats.dtype, total=comm.all_reduce, step=comm.step).to(feats.device)
    # Per sample, then the mean over (every rank's) samples.
    with comm.step():
        if feats.shape[0]:
            per = sample_quantiles(feats, q)
        else:
            per = torch.zeros(0, dtype=torch.float64 if feats.dtype == torch.float64 else torch.float32,
                              device=feats.device)
    if comm.size > 1:
        per = comm.all_gather_rows(per, [layout.rows(p) for p in range(layout.size)])
    return per.mean().to(feats.dtype)


def sample_quantiles(feats: torch.Tensor, q: float) -> torch.Tensor:
    """Each sample's q-quantile of its |x| with torch.quantile's "linear" interpolation (N values;
    the exact=False threshold is their mean over all samples, however they are read)."""
    m = math.prod(feats.shape[1:])
    pos = q * (m - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, m - 1)
    v_lo, v_hi = per_sample_order_stats(feats, lo, hi)
    return v_lo + (pos - lo) * (v_hi - v_lo)


def check_clamp_args(q, exact) -> None:
    """The clamp's options, checked the same way for one process and for shards."""
    if isinstance(q, bool) or not isinstance(q, numbers.Real):
        raise TypeError(f"q must be a number in (0, 1], got {type(q).__name__}")
    if not (0.0 < float(q) <= 1.0):
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be True or False, got {exact!r}")


def remove_outliers(feats, q: float = 0.95, exact: bool = False, *, comm=None):
    """Clamp every entry of ``feats`` to [-t, t] (docs/metrics.md#clamping).

    Parameters
    ----------
    feats : torch.Tensor or np.ndarray, shape (N, ...)
        Features of N samples (any number of trailing dimensions, e.g. N x L x D).
    q : float in (0, 1]
        Quantile; ``q == 1`` returns ``feats`` unchanged.
    exact : bool
        True: t is the entry at position floor(q * numel) of the sorted |feats| (whole tensor).
        False: t is the mean over samples of each sample's interpolated q-quantile of |x|.
    comm : optional
        A process group's communicator (:func:`platonic_fast.distributed.remove_outliers`):
        ``feats`` is this rank's rows (possibly none) and t comes from every rank's. None: one process.

    Returns
    -------
    Same type, shape and dtype as ``feats``.

    Examples
    --------
    >>> x = torch.tensor([[1.0, -5.0, 2.0, 100.0]])
    >>> remove_outliers(x, q=0.5, exact=True)
    tensor([[ 1., -5.,  2.,  5.]])
    """
    shard = comm is not None
    comm = comm if shard else LOCAL
    was_numpy = isinstance(feats, np.ndarray)
    with comm.step():
        check_clamp_args(q, exact)
        t = as_tensor(feats, "feats")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"feats must be a floating-point tensor, got {t.dtype}")
        if not shard and t.numel() == 0:
            raise ValueError(f"feats is empty (shape {tuple(t.shape)})")
        if (shard or not exact) and t.dim() < 2:
            raise ValueError(f"feats must be at least 2-D (N samples x features){'' if shard else ' for exact=False'}"
                             f", got shape {tuple(t.shape)}")
        if float(q) != 1.0 and not all_finite(t):
            raise ValueError("feats contains NaN or Inf; clean or drop those samples first")
    if float(q) == 1.0:
        return feats
    layout = None
    if shard:
        layout = layout_of(comm, [t.reshape(t.shape[0], math.prod(t.shape[1:]))], ["feats"])
        if math.prod(t.shape[1:]) == 0:
            raise ValueError(f"feats is empty (shape {tuple(t.shape)})")
    thr = outlier_threshold(t, float(q), exact, comm, layout)
    out = t.clamp(-thr, thr)
    return out.numpy() if was_numpy else out
