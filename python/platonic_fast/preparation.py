"""The one layer preparation of the layer search (docs/metrics.md#layer-search): clamp, scale, L2-normalise.

In memory (:func:`platonic_fast.align.prepare_layers`), out of core
(:class:`platonic_fast.outofcore.StreamedLayers`) and sharded
(:func:`platonic_fast.distributed.align`) differ only in how they find a layer's largest
magnitude and its clamp threshold (one reduction over rows, a pass over file blocks, an
all-reduce); what is done with them is written here once, so the three prepare bitwise the same
rows.

The order matters (issue 22):

1. ``pre``: a power of two from the largest *raw* magnitude (of the whole N x L x D tensor, or
   of one layer of a list), only so that the float32 conversion neither overflows nor
   underflows. Exact, and order statistics commute with it.
2. The clamp threshold, on those float32 entries.
3. ``post``: per layer, a power of two from the largest *clamped* magnitude. Taking the scale
   before the clamp let one entry of 1e13 (which the clamp removes) or a neighbouring layer
   a million times larger push every row under ``F.normalize``'s 1e-12 floor, where rows stay
   unnormalised. After the clamp each layer's largest entry sits near 1.
4. L2 normalisation of every row (scale-free: powers of two change no bit of the result).

Layers whose clamped entries already lie in [2**-20, 2**20] are not rescaled at all.

:func:`plan_layers` is steps 1-3 for every layer from the raw maxima and a threshold callback,
whatever holds the rows (out of core: :class:`platonic_fast.outofcore.StreamedLayers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ._checks import unit_exponent

SAFE_EXPONENT = 20  # entries in [2**-20, 2**20]: squares and row norms stay well inside float32


def pre_exponent(top: float, normalize: bool) -> int:
    """The power of two raw entries are divided by before the clamp (0 without normalisation:
    then the features keep their units)."""
    return unit_exponent(top, SAFE_EXPONENT) if normalize else 0


def clamped_top(top: float, pre: int, threshold) -> float:
    """The largest magnitude after dividing by 2**pre, converting to float32 and clamping: what
    a pass over the clamped rows would find, from the raw maximum and the threshold alone."""
    scaled = float(torch.tensor(top * 2.0 ** -pre, dtype=torch.float32))
    return scaled if threshold is None else min(scaled, float(threshold))


@dataclass(frozen=True)
class LayerScale:
    """How the rows of one layer (or of the concatenation) are prepared.

    ``pre`` and ``threshold`` (0-d float32, None for q = 1) are steps 1-2 of the module's
    order, ``post`` step 3; ``normalize`` False keeps the clamped rows in their units.
    """

    pre: int
    threshold: torch.Tensor | None
    post: int
    normalize: bool = True

    @classmethod
    def of(cls, top: float, pre: int, threshold, normalize: bool) -> "LayerScale":
        """The scale of a layer whose largest magnitude after steps 1-2 is ``top``
        (:func:`clamped_top` finds it from the raw maximum)."""
        post = unit_exponent(top, SAFE_EXPONENT) if normalize else 0
        return cls(pre, threshold, post, normalize)

    def clamp(self, t: torch.Tensor) -> torch.Tensor:
        """Steps 1-2: raw rows (any float dtype) -> float32, divided by 2**pre, clamped."""
        t = (t * 2.0 ** -self.pre if self.pre else t).float()
        if self.threshold is None:
            return t
        # a Python float (exactly the float32 threshold): the same selection, twice as fast as
        # clamp's tensor-bound form (the streamed kNN re-prepares every row it gathers)
        top = float(self.threshold)
        return t.clamp(-top, top)

    def finish(self, t: torch.Tensor) -> torch.Tensor:
        """Steps 3-4 on clamped rows."""
        if self.post:
            t = t * 2.0 ** -self.post
        return F.normalize(t, p=2, dim=-1) if self.normalize else t

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """Prepared rows from raw rows (float32, contiguous)."""
        return self.finish(self.clamp(t)).contiguous()


def joined_scale(scales: list[LayerScale], tops: list[float]) -> tuple[list[int], LayerScale]:
    """The concatenation of clamped layers: each layer's shift (a power of two restoring the
    layers' true relative scale, as the reference concatenates them) and the scale of the
    joined rows (its own ``post``). ``tops``: each layer's largest clamped magnitude."""
    common = max(s.pre for s in scales)
    shifts = [s.pre - common for s in scales]
    normalize = scales[0].normalize
    post = unit_exponent(max(t * 2.0 ** d for t, d in zip(tops, shifts)), SAFE_EXPONENT) if normalize else 0
    return shifts, LayerScale(common, None, post, normalize)


def join(parts: list[torch.Tensor], shifts: list[int], scale: LayerScale) -> torch.Tensor:
    """Prepared rows of the concatenation from each layer's clamped rows."""
    if any(shifts):
        parts = [p * 2.0 ** d if d else p for p, d in zip(parts, shifts)]
    t = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return scale.finish(t).contiguous()


def plan_layers(tops: list[float], stacked: bool, normalize: bool,
                threshold: Callable) -> tuple[list[LayerScale], tuple[list[int], LayerScale]]:
    """Every layer's :class:`LayerScale` and the concatenation's (:func:`joined_scale`), wherever
    the rows live. ``tops``: each layer's largest raw magnitude; ``stacked``: the layers of one
    N x L x D tensor, clamped as a whole (one pre-scale and one threshold, as the reference);
    ``threshold(layer, pre)``: the clamp value (None for q = 1) of one layer, or of the whole
    tensor for ``layer`` None, after dividing the raw rows by 2**pre and converting to float32."""
    if stacked:
        pres = [pre_exponent(max(tops), normalize)] * len(tops)
        thresholds = [threshold(None, pres[0])] * len(tops)
    else:
        pres = [pre_exponent(top, normalize) for top in tops]
        thresholds = [threshold(i, e) for i, e in enumerate(pres)]
    clamped = [clamped_top(t, e, thr) for t, e, thr in zip(tops, pres, thresholds)]
    scales = [LayerScale.of(t, e, thr, normalize) for t, e, thr in zip(clamped, pres, thresholds)]
    return scales, joined_scale(scales, clamped)
