"""Layer search: score every layer of one model against every layer of another.

As the reference pipeline does: clamp outliers (q = 0.95; over the whole N x L x D tensor, or
per layer for a list of layers),
L2-normalise every row of every layer, score all Lx x Ly pairs, keep the best (starting from 0,
so a pair scoring <= 0 is never chosen). Unlike the reference, each layer is prepared once
(its neighbour lists, kernel statistics or singular vectors: Lx + Ly passes, not 2·Lx·Ly),
and each pair then costs O(N·k) for the kNN metrics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ._checks import ConstantFeaturesError, DegenerateInputWarning, as_tensor, check_features, max_abs
from .calibration import LayerCalibration, calibrate_states, check_alpha, exact_chance, permutation_source
from .distributed._comm import LOCAL, Layout, check_not_constant, layout_of, local_features
from .metrics import Prepared, metric_spec, prepare_checked, score
from .ops.outliers import check_clamp_args, outlier_threshold
from .preparation import LayerScale, clamped_top, join, joined_scale, pre_exponent


@dataclass
class AlignResult:
    """Scores of every layer pair.

    Attributes
    ----------
    scores : torch.Tensor, float64, shape (Lx, Ly)
        ``scores[i, j]`` aligns layer i of x with layer j of y. With ``concat=True`` the shape
        is (Lx + 1, Ly + 1) and the last row / column is the concatenation of all layers.
    best : float
        The best score, or 0.0 when no pair scores above 0 (as the reference).
    best_layers : tuple[int, int] or None
        The best pair; -1 stands for the concatenation. None when no pair scores above 0.
    metric : str
    options : dict
    chance : torch.Tensor or None, float64, shape like ``scores``
        Each pair's exact chance level (its mean over all row permutations of y) where the
        metric has a closed form: mutual_knn k/(N − 1), cka (grows with width), unbiased_cka 0;
        None for the others (run ``permutations=K`` for their null).
    calibration : LayerCalibration or None
        With ``permutations=K``: the permutation null of the whole search (its max and mean
        aggregates with p-values, thresholds and calibrated values, each pair's p-value and
        chance level).
    """

    scores: torch.Tensor
    best: float
    best_layers: tuple[int, int] | None
    metric: str
    options: dict = field(default_factory=dict)
    chance: torch.Tensor | None = None
    calibration: LayerCalibration | None = None


def prepare_layers(feats, name: str, *, q: float = 0.95, exact: bool = False, normalize: bool = True,
                   concat: bool = False, comm=None) -> list[torch.Tensor]:
    """Clamp outliers, then L2-normalise each layer's rows (:mod:`platonic_fast.preparation`).

    As the reference pipeline: an N x L x D tensor is clamped as a whole (one threshold from all
    layers), a list of layers is clamped layer by layer. ``concat`` appends the concatenation of
    the clamped layers. With a process group's ``comm`` (:mod:`platonic_fast.distributed`),
    ``feats`` is this rank's rows (possibly none) and the maxima and thresholds are every
    rank's (collective).
    """
    with (comm or LOCAL).step():
        check_clamp_args(q, exact)  # before any work, the same on every rank
    layers, whole, layout = _checked_layers(comm, feats, name)
    comm = LOCAL if comm is None else comm
    if whole is None:  # a list: each layer its own scale and threshold
        tops = _largest(comm, [max_abs(l) if l.numel() else 0.0 for l in layers])
        scales, clamped = [], []
        for l, top in zip(layers, tops):
            e = pre_exponent(top, normalize)
            x = LayerScale(e, None, 0).clamp(l)  # divided by 2**e, float32
            thr = None if q == 1 else outlier_threshold(x, q, exact, comm, layout)
            scales.append(LayerScale.of(clamped_top(top, e, thr), e, thr, normalize))
            clamped.append(x if thr is None else x.clamp(-thr, thr))
    else:  # N x L x D: one scale and one threshold for the whole tensor
        t = whole
        tops = _largest(comm, torch.maximum(-t.amin(dim=(0, 2)), t.amax(dim=(0, 2))) if t.shape[0] else
                        torch.zeros(t.shape[1]))
        e = pre_exponent(max(tops), normalize)
        x = LayerScale(e, None, 0).clamp(t)
        thr = None if q == 1 else outlier_threshold(x, q, exact, comm, layout)
        scales = [LayerScale.of(clamped_top(top, e, thr), e, thr, normalize) for top in tops]
        # One copy to L x N x D so that every layer is contiguous for the kNN GEMMs.
        clamped = list((x if thr is None else x.clamp(-thr, thr)).transpose(0, 1).contiguous().unbind(0))
    out = [s.finish(c) for s, c in zip(scales, clamped)]
    if concat:
        shifts, joined = joined_scale(scales, [clamped_top(top, s.pre, s.threshold) for top, s in zip(tops, scales)])
        out.append(join(clamped, shifts, joined))
    return out


def _largest(comm, local) -> list[float]:
    """Each layer's largest magnitude (over every rank's rows)."""
    return comm.all_reduce(torch.as_tensor(local, dtype=torch.float64).cpu(), "max").tolist()


def _checked_layers(comm, feats, name: str):
    """(list of layers, None) or (None, the N x L x D tensor), validated, and their row layout."""
    if isinstance(feats, (list, tuple)):
        names = [f"{name}[{i}]" for i in range(len(feats))]
        with (comm or LOCAL).step():
            if not feats:
                raise ValueError(f"{name} is an empty list; it needs at least one layer")
            layers = [(check_features if comm is None else local_features)(f, nm) for f, nm in zip(feats, names)]
        if comm is not None:
            return layers, None, layout_of(comm, layers, names)
        n = layers[0].shape[0]
        for i, l in enumerate(layers):
            if l.shape[0] != n:
                raise ValueError(f"every layer of {name} needs the same N; layer 0 has {n}, layer {i} has {l.shape[0]}")
        return layers, None, Layout((0, n), 0)
    with (comm or LOCAL).step():
        t = as_tensor(feats, name)
        rows = "" if comm is None else "this rank's "
        if t.dim() != 3:
            raise ValueError(f"{name} must be N x L x D ({rows}samples x layers x features) or a list of "
                             f"{'N' if comm is None else 'n_r'} x D_l matrices, got shape {tuple(t.shape)}")
        if (t.numel() if comm is None else t.shape[1] * t.shape[2]) == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); it needs samples, layers and features")
        # Validated as a whole (one pass), not layer by layer.
        flat = (check_features if comm is None else local_features)(t.reshape(t.shape[0], t.shape[1] * t.shape[2]),
                                                                    name)
    return None, t, Layout((0, t.shape[0]), 0) if comm is None else layout_of(comm, [flat], [name])


def layout_of_rows(comm, xs: list[torch.Tensor], ys: list[torch.Tensor], names: tuple[str, str]):
    """The row layout shared by two models' prepared layers (None in one process), or a
    ValueError naming both."""
    if comm is None:
        if ys[0].shape[0] != xs[0].shape[0]:
            raise ValueError(f"{names[0]} and {names[1]} must describe the same samples: got N={xs[0].shape[0]} and "
                             f"N={ys[0].shape[0]}")
        return None
    lx, ly = comm.layout(xs[0].shape[0]), comm.layout(ys[0].shape[0])
    if lx.offsets != ly.offsets:
        raise ValueError(f"{names[0]} and {names[1]} must hold the same rows on every rank: offsets {lx.offsets} and "
                         f"{ly.offsets}")
    return lx


def align(feats_x, feats_y, metric: str = "mutual_knn", topk: int = 10, *, q: float = 0.95,
          exact: bool = False, normalize: bool = True, concat: bool = False, backend: str = "auto",
          progress: bool = False, permutations: int | None = None, alpha: float = 0.05, generator=None,
          perm=None, comm=None, **metric_options) -> AlignResult:
    """Score every layer pair of two models and find the best one.

    Parameters
    ----------
    feats_x, feats_y : torch.Tensor (N, L, D) or list of (N, D_l) matrices
        Layer-wise features of the same N samples.
    metric : str
        Any of :data:`platonic_fast.SUPPORTED_METRICS`.
    topk : int
        Neighbours for the metrics that take them (the kNN metrics and cknna); ignored otherwise.
    q, exact : outlier clamping (see :func:`platonic_fast.remove_outliers`); q=1 disables it.
    normalize : bool
        L2-normalise every row of every layer first (the reference does).
    concat : bool
        Also score the concatenation of all layers as one more layer (index -1).
    progress : bool
        Show a progress bar over layers, pairs and permutations.
    permutations : int, optional
        K: calibrate the search as a whole against K row permutations of y, the same one for
        every layer of y (see :mod:`platonic_fast.calibration`); the result's ``calibration``.
    alpha, generator, perm
        The null's level, seed (torch.Generator or int) and explicit permutations (K x N tensor
        or callable), as :func:`platonic_fast.calibrate`.
    comm : optional
        A process group's communicator (:func:`platonic_fast.distributed.align` passes it): the
        features are this rank's rows, and every rank gets the same result. None: one process.
    **metric_options
        Passed to the metric (``kernel_metric``, ``unbiased``, ``cca_dim``, ...).

    Returns
    -------
    AlignResult

    Examples
    --------
    >>> x, y = torch.randn(300, 4, 32), torch.randn(300, 6, 48)
    >>> res = align(x, y, "mutual_knn", topk=5)
    >>> res.scores.shape
    torch.Size([4, 6])
    """
    xs = prepare_layers(feats_x, "feats_x", q=q, exact=exact, normalize=normalize, concat=concat, comm=comm)
    ys = prepare_layers(feats_y, "feats_y", q=q, exact=exact, normalize=normalize, concat=concat, comm=comm)
    layout = layout_of_rows(comm, xs, ys, ("feats_x", "feats_y"))
    n = xs[0].shape[0] if layout is None else layout.n
    opts = resolve_options(metric, n, [t.shape[1] for t in xs + ys], topk=topk, backend=backend, **metric_options)
    if permutations is not None or perm is not None:  # bad K, alpha or perm fail before the work
        check_alpha(alpha)
        permutation_source(n, permutations, perm, generator, xs[0].device)
    calibrated = permutations is not None or perm is not None
    k = (permutations if permutations is not None else len(perm) if isinstance(perm, torch.Tensor) else 200) \
        if calibrated else 0
    bar = tqdm(total=len(xs) + len(ys) + len(xs) * len(ys) + (k if isinstance(k, int) else 0),
               desc=f"align {metric}", disable=not progress)
    states_x = prepare_states(xs, metric, opts, bar=bar, comm=comm, layout=layout)
    states_y = prepare_states(ys, metric, opts, bar=bar, comm=comm, layout=layout)
    result = score_states(states_x, states_y, metric, opts, concat=concat, bar=bar)
    result.chance = exact_chance(states_x, states_y, metric, opts)
    if calibrated:
        result.calibration = calibrate_states(states_x, states_y, result.scores, metric, opts,
                                              permutations=permutations, alpha=alpha, generator=generator,
                                              perm=perm, bar=bar)
    bar.close()
    return result


def resolve_options(metric: str, n: int, widths: list[int], *, topk: int = 10, backend: str = "auto",
                    **metric_options) -> dict:
    """Validated metric options for layers of N samples and the given widths.

    As the reference's ``compute_score``: ``topk`` goes to the metrics that take it and is
    ignored by the others.
    """
    spec = metric_spec(metric)
    options = dict(metric_options, backend=backend)
    if spec.takes_topk:
        options["topk"] = topk
    return spec.check_options(n, (min(widths),) * 2, options)


def prepare_states(layers: list[torch.Tensor], metric: str, opts: dict, *, bar=None, comm=None,
                   layout=None) -> list[Prepared]:
    """Every layer of one model prepared for ``metric`` with validated options ``opts`` (this
    rank's rows of each, collectively, with a process group's ``comm`` and row ``layout``)."""
    spec, states = metric_spec(metric), []
    for i, layer in enumerate(layers):
        try:  # the same decision on every rank (every rank's column extremes)
            rows = layout or Layout((0, layer.shape[0]), 0)
            check_not_constant(comm or LOCAL, rows, layer, f"layer {i}", metric)
            checked = spec.check_options(rows.n, (layer.shape[1], layer.shape[1]), opts)
            states.append(prepare_checked(spec, layer, checked, comm, layout))
        except ConstantFeaturesError:
            # One dead layer (e.g. a padding position) must not stop a whole layer search.
            warnings.warn(f"layer {i} is constant (all samples equal): its scores are NaN",
                          DegenerateInputWarning, stacklevel=2)
            states.append(None)
        if bar is not None:
            bar.update()
    return states


def score_states(states_x: list[Prepared], states_y: list[Prepared], metric: str, opts: dict, *,
                 concat: bool = False, bar=None) -> AlignResult:
    """Score every pair of prepared layers and pick the best, as the reference does (on row
    shards too: collective, every rank gets the same result)."""
    scores = torch.full((len(states_x), len(states_y)), float("nan"), dtype=torch.float64)
    live_x = [i for i, s in enumerate(states_x) if s is not None]
    live_y = [j for j, s in enumerate(states_y) if s is not None]
    sharded = any(s.comm is not None for s in states_x + states_y if s is not None)
    grid = metric_spec(metric).grid([states_x[i].state for i in live_x], [states_y[j].state for j in live_y],
                                    **opts) if live_x and live_y and not sharded else None
    if grid is not None:  # every pair at once (streamed CKA: one pass over the files' rows)
        for a, i in enumerate(live_x):
            for b, j in enumerate(live_y):
                scores[i, j] = grid[a][b]
        if bar is not None:
            bar.update(len(states_x) * len(states_y))
        return layer_search_result(scores, metric, opts, concat=concat)
    for i, sx in enumerate(states_x):
        for j, sy in enumerate(states_y):
            if sx is not None and sy is not None:
                scores[i, j] = score(sx, sy)
            if bar is not None:
                bar.update()
    return layer_search_result(scores, metric, opts, concat=concat)


def layer_search_result(scores: torch.Tensor, metric: str, opts: dict, *, concat: bool = False) -> AlignResult:
    """The :class:`AlignResult` of a grid of layer-pair scores: the best pair picked as the
    reference picks it (also for the sharded layer search)."""
    best, best_layers = 0.0, None
    # The reference visits the concatenation (-1) first, then layers in order, and keeps the
    # first strict improvement over a running best that starts at 0.
    rows, cols = scores.shape
    order_x = ([-1] if concat else []) + list(range(rows - concat))
    order_y = ([-1] if concat else []) + list(range(cols - concat))
    for i in order_x:
        for j in order_y:
            s = float(scores[i, j])
            if s > best:
                best, best_layers = s, (i, j)
    public = {k: v for k, v in opts.items() if k != "backend"}
    return AlignResult(scores, best, best_layers, metric, public)
