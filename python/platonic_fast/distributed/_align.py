"""Outlier clamping, the layer search and permutation nulls on row-sharded features.

The same steps as :func:`platonic_fast.align` / :func:`platonic_fast.calibrate`, each one
sharded: the global scale exponent and clamp threshold are agreed on by all ranks, each layer
is prepared once (sharded kNN, kernel statistics, basis), every pair scored collectively. A
permutation π of B's rows is drawn once (on rank 0, broadcast) and applied to every layer by
fetching the rows each rank needs (π⁻¹(kNN_B(π(i))) for the lists): nothing is recomputed.
"""

from __future__ import annotations

import math
import warnings

import torch

from .._checks import FLOAT_DTYPES, ConstantFeaturesError, DegenerateInputWarning, as_tensor, max_abs
from ..align import AlignResult, resolve_options, score_states
from ..calibration import (
    LayerCalibration,
    calibrate_prepared,
    check_alpha,
    check_s_max,
    exact_chance,
    metric_names,
    options_per_metric,
    permutation_source,
)
from ..calibration import calibrate_states as _calibrate_states
from ..ops.outliers import check_clamp_args
from ..preparation import LayerScale, clamped_top, join, joined_scale, pre_exponent
from . import _outliers
from ._comm import Comm, Layout
from ._knn import layout_of, local_features
from ._metrics import ShardedPrepared, prepare_local


def _threshold(comm: Comm, layout: Layout, t: torch.Tensor, q: float, exact: bool) -> torch.Tensor:
    if exact:
        return _outliers.exact_threshold(comm, t, q)
    return _outliers.sample_threshold(comm, layout, t, q)


def remove_outliers(feats, q: float = 0.95, exact: bool = False, *, group=None, timeout=None):
    """Clamp this rank's rows of ``feats`` to [-t, t] with t from all ranks' rows (docs/metrics.md#clamping;
    :func:`platonic_fast.remove_outliers` on the concatenation, this rank's part returned).

    ``exact=True``: t is the entry at position floor(q · numel) of the sorted |x| of the whole
    (global) tensor, found by a distributed radix selection (nothing gathered);
    ``exact=False``: the mean over all samples of each sample's interpolated q-quantile.
    """
    comm = Comm(group, timeout)
    with comm.step():
        check_clamp_args(q, exact)
        was_numpy = not isinstance(feats, torch.Tensor)
        t = as_tensor(feats, "feats")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"feats must be a floating-point tensor, got {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"feats must be at least 2-D (this rank's samples x features), got shape {tuple(t.shape)}")
        if t.shape[0] and math.prod(t.shape[1:]) and not bool(torch.isfinite(t).all()):
            raise ValueError("feats contains NaN or Inf; clean or drop those samples first")
    layout = layout_of(comm, [t.reshape(t.shape[0], math.prod(t.shape[1:]))], ["feats"])
    if math.prod(t.shape[1:]) == 0:
        raise ValueError(f"feats is empty (shape {tuple(t.shape)})")
    if float(q) == 1.0:
        return feats
    thr = _threshold(comm, layout, t, float(q), exact)
    out = t.clamp(-thr, thr)
    return out.numpy() if was_numpy else out


def _global_tops(comm: Comm, tops: torch.Tensor) -> list[float]:
    """Each layer's largest magnitude over all ranks."""
    return comm.all_reduce(tops.double().cpu(), "max").tolist()


def prepare_layers(comm: Comm, feats, name: str, *, q: float = 0.95, exact: bool = False, normalize: bool = True,
                   concat: bool = False) -> tuple[list[torch.Tensor], Layout]:
    """Sharded :func:`platonic_fast.align.prepare_layers`: this rank's rows of every layer (the one
    preparation of :mod:`platonic_fast.preparation`, maxima and thresholds agreed by all ranks)."""
    if isinstance(feats, (list, tuple)):
        with comm.step():
            if not feats:
                raise ValueError(f"{name} is an empty list; it needs at least one layer")
            layers = [local_features(f, f"{name}[{i}]") for i, f in enumerate(feats)]
            local = torch.tensor([max_abs(l) if l.numel() else 0.0 for l in layers], dtype=torch.float64)
        layout = layout_of(comm, layers, [f"{name}[{i}]" for i in range(len(layers))])
        tops = _global_tops(comm, local)
        pres = [pre_exponent(t, normalize) for t in tops]
        scales, clamped = [], []
        for l, t, e in zip(layers, tops, pres):
            x = LayerScale(e, None, 0).clamp(l)  # divided by 2**e, float32
            thr = None if q == 1 else _threshold(comm, layout, x, q, exact)
            scales.append(LayerScale.of(clamped_top(t, e, thr), e, thr, normalize))
            clamped.append(x if thr is None else x.clamp(-thr, thr))
    else:
        with comm.step():
            t = as_tensor(feats, name)
            if t.dim() != 3:
                raise ValueError(f"{name} must be N x L x D (this rank's samples x layers x features) or a list of "
                                 f"n_r x D_l matrices, got shape {tuple(t.shape)}")
            if t.shape[1] == 0 or t.shape[2] == 0:
                raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); it needs layers and features")
            flat = local_features(t.reshape(t.shape[0], t.shape[1] * t.shape[2]), name)
            local = torch.maximum(-t.amin(dim=(0, 2)), t.amax(dim=(0, 2))) if t.shape[0] else \
                torch.zeros(t.shape[1])
        layout = layout_of(comm, [flat], [name])
        tops = _global_tops(comm, local)
        e = pre_exponent(max(tops), normalize)
        x = LayerScale(e, None, 0).clamp(t)
        thr = None if q == 1 else _threshold(comm, layout, x, q, exact)
        scales = [LayerScale.of(clamped_top(top, e, thr), e, thr, normalize) for top in tops]
        whole = x if thr is None else x.clamp(-thr, thr)
        clamped = list(whole.transpose(0, 1).contiguous().unbind(0))
    out = [s.finish(c) for s, c in zip(scales, clamped)]
    if concat:
        shifts, joined = joined_scale(scales, [clamped_top(top, s.pre, s.threshold) for top, s in zip(tops, scales)])
        out.append(join(clamped, shifts, joined))
    return out, layout


def prepare_states(comm: Comm, layout: Layout, layers: list[torch.Tensor], metric: str, opts: dict
                   ) -> list[ShardedPrepared | None]:
    from ._knn import check_not_constant

    states = []
    for i, layer in enumerate(layers):
        try:
            check_not_constant(comm, layout, layer, f"layer {i}", metric)
        except ConstantFeaturesError:  # the same decision on every rank (global min/max)
            warnings.warn(f"layer {i} is constant (all samples equal): its scores are NaN",
                          DegenerateInputWarning, stacklevel=3)
            states.append(None)
            continue
        states.append(prepare_local(metric, comm, layout, layer, opts))
    return states


def align(feats_x, feats_y, metric: str = "mutual_knn", topk: int = 10, *, group=None, timeout=None, q: float = 0.95,
          exact: bool = False, normalize: bool = True, concat: bool = False, backend: str = "auto",
          permutations: int | None = None, alpha: float = 0.05, generator=None, perm=None,
          **metric_options) -> AlignResult:
    """The layer search of :func:`platonic_fast.align` on row-sharded layers (collective).

    ``feats_x``, ``feats_y``: this rank's rows, n_r x L x D tensors or lists of n_r x D_l
    matrices. Every rank returns the same :class:`platonic_fast.AlignResult` (scores, best
    pair, exact chance levels, and with ``permutations=K`` the calibration, whose permutations
    are drawn on rank 0 with ``generator`` and broadcast).
    """
    comm = Comm(group, timeout)
    xs, lx = prepare_layers(comm, feats_x, "feats_x", q=q, exact=exact, normalize=normalize, concat=concat)
    ys, ly = prepare_layers(comm, feats_y, "feats_y", q=q, exact=exact, normalize=normalize, concat=concat)
    if lx.offsets != ly.offsets:
        raise ValueError(f"feats_x and feats_y must hold the same rows on every rank: offsets {lx.offsets} and "
                         f"{ly.offsets}")
    n = lx.n
    opts = resolve_options(metric, n, [t.shape[1] for t in xs + ys], topk=topk, backend=backend, **metric_options)
    calibrated = permutations is not None or perm is not None
    if calibrated:
        check_alpha(alpha)
        permutation_source(n, permutations, perm, generator, xs[0].device)
    states_x = prepare_states(comm, lx, xs, metric, opts)
    states_y = prepare_states(comm, lx, ys, metric, opts)
    result = score_states(states_x, states_y, metric, opts, concat=concat)
    result.chance = exact_chance(states_x, states_y)
    if calibrated:
        result.calibration = calibrate_states(comm, states_x, states_y, result.scores, metric, opts, n,
                                              permutations=permutations, alpha=alpha, generator=generator, perm=perm,
                                              device=xs[0].device)
    return result


def calibrate_states(comm: Comm, states_x, states_y, scores: torch.Tensor, metric: str, opts: dict, n: int, *,
                     permutations=None, alpha: float = 0.05, generator=None, perm=None, s_max="auto",
                     device=None) -> LayerCalibration:
    """:func:`platonic_fast.calibration.calibrate_states` on sharded states (the same code: the
    states carry the communicator; each permutation is drawn on rank 0 and broadcast)."""
    return _calibrate_states(states_x, states_y, scores, metric, opts, permutations=permutations, alpha=alpha,
                             generator=generator, perm=perm, s_max=s_max)


def calibrate(metric, feats_A, feats_B, permutations: int | None = None, alpha: float = 0.05, generator=None,
              perm=None, *, s_max="auto", group=None, timeout=None, **options):
    """:func:`platonic_fast.calibrate` on row-sharded A and B (collective): the observed score
    and its permutation null, the permutations drawn on rank 0 and broadcast."""
    names, specs = metric_names(metric)
    comm = Comm(group, timeout)
    with comm.step():
        a = local_features(feats_A, "feats_A")
        b = local_features(feats_B, "feats_B")
    layout = layout_of(comm, [a, b], ["feats_A", "feats_B"], metric=names[0])
    opts_list = options_per_metric(specs, layout.n, (a.shape[1], b.shape[1]), options)
    alpha = check_alpha(alpha)
    if not (isinstance(s_max, str) and s_max == "auto"):
        s_max = check_s_max(s_max)
    k, draw = permutation_source(layout.n, permutations, perm, generator, a.device)
    pas = [prepare_local(name, comm, layout, a, o) for name, o in zip(names, opts_list)]
    pbs = [prepare_local(name, comm, layout, b, o) for name, o in zip(names, opts_list)]
    out = calibrate_prepared(pas, pbs, k, draw, alpha=alpha, s_max=s_max)
    return out[names[0]] if isinstance(metric, str) else out
