"""Outlier clamping of row-sharded features (docs/metrics.md#clamping) without gathering them.

- ``exact=True``: the entry at position ⌊q·numel⌋ of the sorted |x| of the whole tensor, by a
  distributed radix selection on the bits of |x| (non-negative floats order as integers):
  16-bit digits from the top, one all-reduced histogram per digit (2 passes for float32).
- ``exact=False``: each sample's interpolated quantile is local; the N per-sample values (one
  number per sample) are gathered and averaged exactly as one process averages them.
"""

from __future__ import annotations

import math

import torch

from ..ops.outliers import per_sample_order_stats, radix_select
from ._comm import Comm, Layout

_CHUNK = 1 << 24


def exact_threshold(comm: Comm, t: torch.Tensor, q: float) -> torch.Tensor:
    """The entry at position floor(q · numel) of the ascending |x| over every rank's ``t``
    (:func:`platonic_fast.ops.outliers.radix_select`, histograms all-reduced)."""
    numel = int(comm.all_reduce(torch.tensor([t.numel()], dtype=torch.int64))[0])
    flat = t.detach().reshape(-1)
    out = radix_select(lambda: (flat[c0: c0 + _CHUNK] for c0 in range(0, flat.numel(), _CHUNK)), int(q * numel),
                       t.dtype, total=comm.all_reduce, step=comm.step)
    return out.to(t.device)


def sample_threshold(comm: Comm, layout: Layout, t: torch.Tensor, q: float) -> torch.Tensor:
    """The mean over all samples of each sample's linearly interpolated q-quantile of |x|."""
    m = math.prod(t.shape[1:])
    pos = q * (m - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, m - 1)
    with comm.step():
        if t.shape[0]:
            v_lo, v_hi = per_sample_order_stats(t, lo, hi)
            per = v_lo + (pos - lo) * (v_hi - v_lo)
        else:
            per = torch.zeros(0, dtype=torch.float64 if t.dtype == torch.float64 else torch.float32, device=t.device)
    per = comm.all_gather_rows(per, [layout.rows(p) for p in range(layout.size)])
    return per.mean().to(t.dtype)
