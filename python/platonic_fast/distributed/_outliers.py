"""Outlier clamping of row-sharded features (SPEC §1) without gathering them.

- ``exact=True``: the entry at position ⌊q·numel⌋ of the sorted |x| of the whole tensor, by a
  distributed radix selection on the bits of |x| (non-negative floats order as integers):
  16-bit digits from the top, one all-reduced histogram per digit (2 passes for float32).
- ``exact=False``: each sample's interpolated quantile is local; the N per-sample values (one
  number per sample) are gathered and averaged exactly as one process averages them.
"""

from __future__ import annotations

import math

import torch

from ..ops.outliers import per_sample_order_stats
from ._comm import Comm, Layout

_CHUNK = 1 << 24
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def exact_threshold(comm: Comm, t: torch.Tensor, q: float) -> torch.Tensor:
    """The entry at position floor(q · numel) of the ascending |x| over every rank's ``t``."""
    numel = int(comm.all_reduce(torch.tensor([t.numel()], dtype=torch.int64))[0])
    rem = int(q * numel)
    size = t.element_size()
    bits = 8 * size - 1  # the sign bit of |x| is 0
    digits = []
    top = bits
    while top > 0:
        width = min(16, top)
        digits.append((top - width, width))
        top -= width
    flat = t.detach().reshape(-1)
    prefix, mask = 0, 0
    for shift, width in digits:
        with comm.step():
            hist = torch.zeros(1 << width, dtype=torch.int64, device=t.device)
            for c0 in range(0, flat.numel(), _CHUNK):
                b = flat[c0: c0 + _CHUNK].abs().view(_INT_VIEW[size]).to(torch.int64)
                if mask:
                    b = b[(b & mask) == prefix]
                hist += torch.bincount((b >> shift) & ((1 << width) - 1), minlength=1 << width)
        hist = comm.all_reduce(hist.cpu())
        cum = hist.cumsum(0)
        digit = int(torch.searchsorted(cum, torch.tensor([rem]), right=True)[0])
        if digit:
            rem -= int(cum[digit - 1])
        prefix |= digit << shift
        mask |= ((1 << width) - 1) << shift
    return torch.tensor([prefix], dtype=torch.int64).to(_INT_VIEW[size]).view(t.dtype)[0].to(t.device)


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
