"""Model-set sweeps: every model of one set against every model of another.

(Over 600 lines because :func:`measure_sets`' docstring and this one are the reference for every
option and every file a sweep writes; the work itself lives in the modules named below.)

This is the paper's measurement loop (``measure_alignment.py`` in the reference): for each pair
of models, the best layer pair and its score. Each model's layers are clamped, normalised and
prepared once (neighbour lists, kernel statistics, ...) and reused against every other model.
Every finished pair is written atomically to ``<out>/pairs/``; a sweep that is interrupted and
started again with the same settings resumes where it stopped, and gives the same numbers as an
uninterrupted one.

A pair's record is reused only when it is provably the same computation. Its key holds both
models' names and content fingerprints (:func:`file_fingerprint`: the checksum a features file
stores, else a hash of the file's bytes; never its size or modification time), the metric and
every option, and the library version; the record's file name is the sha256 of that key, and on
reading, the key stored inside must equal the one expected and the record must pass its checksum
and its schema (:mod:`platonic_fast.sweep_records`), or the pair is computed again. With
``n_grid``, a pair scored on a subset of the samples has ``settings["subset"] = {"n", "seed"}``
in its key (the whole set has no ``subset``: it shares the records of a sweep without a grid).
How the layers were read (``out_of_core``), the backend and the device are not in the key.

One sweep at a time writes to an output folder: it holds an exclusive ``fcntl.flock`` on
``<out>/.lock`` (POSIX advisory locking; on network file systems it is only as good as their
lock support). A second run stops at once naming the folder and the holder's PID, or waits
``wait`` seconds for it. The kernel drops the lock when its holder exits, however it exits, so
a lock left by a killed run is simply taken over; the ``.lock`` file itself stays.

The pieces live beside this module: the inputs (discovery, fingerprints) in
:mod:`platonic_fast.features.inputs`, the lock in :mod:`platonic_fast.files`, the records in
:mod:`platonic_fast.sweep_records`, the summary files in :mod:`platonic_fast.sweep_summary` and
where layers come from (in memory, out of core, sharded) in :mod:`platonic_fast.sweep_sources`.

Results (``<out>/``), all written atomically:

- ``pairs/<sha256>.json``: one model pair at one topk: ``key``, ``score`` (best), ``best_layers``,
  ``layer_scores`` (Lx x Ly), ``n``, ``chance`` (Lx x Ly: each layer pair's null expectation,
  exact where the metric has one, else the null mean with permutations; None otherwise) and
  ``calibration`` (with permutations: ``max`` and ``mean``, each with ``observed``, ``null``
  (K values), ``p_value``, ``tau``, ``calibrated``, ``chance``, ``alpha``, ``s_max``; and
  ``pair_p``, Lx x Ly) and ``ci`` (with ``ci_repeats``: the best pair's ``estimate``, ``low``,
  ``high``, ``std_error``, ``level``, ``method``, ``repeats``, ``m``) and ``checksum`` (sha256 of
  the rest, canonical JSON). NaN (a constant layer) is written as null: the files are strict JSON.
- ``scores.json``: ``format``/``format_version`` (2), ``version``, ``metric``, ``settings``,
  ``topk`` (list), ``n``, ``run`` (backend, device, out_of_core), ``models_x``/``models_y`` (names),
  ``fingerprints_x``/``fingerprints_y``, ``samples`` (the sample-fingerprint check),
  ``models`` (``x``/``y``: each model's metadata, :func:`model_info`), and ``results``: one
  entry per topk with ``topk``, the (Mx, My) matrices ``scores``, ``best_layers``, ``chance``,
  ``calibration`` (``max``/``mean`` x ``observed``, ``p_value``, ``tau``, ``calibrated``,
  ``chance``), ``ci`` (settings and ``estimate``/``low``/``high``/``std_error`` matrices) and
  ``pairs`` (every pair's record without its key). With a single topk its
  matrices are repeated at the top level; ``checksum`` (sha256 of the rest). With ``n_grid``
  everything above is of the largest subset size, and ``n_grid`` holds ``n`` (the sizes),
  ``seed``, ``order`` (how subsets are drawn) and ``results``, per topk: ``topk``, ``n``,
  (G, Mx, My) ``scores``, ``chance``, (G, Mx, My, 2) ``best_layers``, with permutations
  ``calibrated``/``p_value``, with intervals ``ci_low``/``ci_high``, and ``curves`` (the model
  pairs plotted: ``x``, ``y``, ``i``, ``j``).
- ``scores.npz``: ``models_x``, ``models_y``, ``topk``, ``metric``, ``settings`` (JSON),
  ``summary_checksum`` (scores.json's ``checksum``: the two are one unit, :func:`read_summary`)
  and per topk (prefix ``k<topk>_``; none for metrics without topk) ``scores``, ``best_layers``,
  ``chance``, ``layer_scores_<i>_<j>``
  and with permutations ``p_value``, ``calibrated``, ``tau``, ``observed``, ``mean_*``,
  ``null_max``/``null_mean`` (Mx, My, K), ``pair_p_<i>_<j>``, with intervals ``ci_low``,
  ``ci_high``, ``ci_estimate``, ``ci_std_error``, with ``n_grid`` ``ngrid_n`` (G,),
  ``ngrid_scores``, ``ngrid_chance`` (and ``ngrid_calibrated``, ``ngrid_p_value``,
  ``ngrid_ci_low``, ``ngrid_ci_high``) (G, Mx, My) and ``ngrid_best_layers``; with one topk
  the (Mx, My) matrices unprefixed too.
- ``heatmap.png`` (``heatmap_k<topk>.png`` per topk when several), with matplotlib; with
  ``n_grid`` also ``n_grid.png`` (``n_grid_k<topk>.png``): score against N.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .align import resolve_options, score_states
from .calibration import calibrate_states, check_alpha, check_permutation_count
from .features.inputs import (  # noqa: F401 - re-exported
    FEATURE_SUFFIXES,
    STREAMED_SUFFIXES,
    check_samples,
    feature_files,
    file_fingerprint,
    model_info,
    read_inputs,
)
from .files import LOCK_NAME, OutputFolderLocked, check_out_dir, clean_stale_temporaries, lock_folder  # noqa: F401
from .metrics import metric_spec
from .sweep_records import jsonable, matrix, mirrored, read_record, record_key, record_name, record_path, write_record  # noqa: F401
from .sweep_sources import choose_out_of_core, choose_source
from .sweep_summary import SUBSET_ORDER, read_summary, write_summary  # noqa: F401 - re-exported
from .sweep_views import (  # noqa: F401 - re-exported
    format_n_grid_table,
    format_table,
    heatmap_figure,
    n_grid_figure,
    wrap_name,
)


@dataclass
class SweepResult:
    """Scores of a model set against a model set.

    Attributes
    ----------
    names_x, names_y : list[str]
        Model names (feature file stems), rows and columns.
    scores : np.ndarray, float64, shape (Mx, My)
        Best layer-pair score of each model pair.
    best_layers : np.ndarray, int64, shape (Mx, My, 2)
        The best layer pair (-1 for the concatenation; (-2, -2) when no pair scored above 0).
    fingerprints_x, fingerprints_y : list[str]
        Each model file's content fingerprint (:func:`file_fingerprint`), as the records key them.
    files : dict[str, Path]
        The written ``scores.json``, ``scores.npz`` and (with matplotlib) ``heatmap.png``.
    records : dict[(i, j), dict]
        Every model pair's record (mirrored pairs of a symmetric sweep included): ``score``,
        ``best_layers``, ``layer_scores`` (Lx x Ly), ``chance`` and, with permutations,
        ``calibration`` (see :func:`measure_sets`).
    n : int
        Samples.
    models_x, models_y : list[dict]
        Each model's metadata (:func:`model_info`: model id, sample fingerprint, parameter
        count, layers, width, mean bits-per-byte, ...).
    samples : dict
        The sample-fingerprint check of the files (:func:`check_samples`).
    run : dict
        How the scores were computed (``backend``, ``device``); not part of the records' keys.
    set_names : (str, str)
        What the sets are called (axis titles).
    by_topk : dict[int | None, SweepResult]
        The result of every topk of the sweep (this one included): ``settings["topk"]`` is
        this result's value; a sweep given several returns the smallest's.
    by_n : dict[int, SweepResult]
        With ``n_grid``: the result at every subset size (this topk; this one included, at its
        ``n``); empty otherwise.
    n_grid : dict or None
        With ``n_grid``: ``n`` (the sizes) and ``seed`` (of :func:`subset_order`).
    """

    names_x: list[str]
    names_y: list[str]
    scores: np.ndarray
    best_layers: np.ndarray
    metric: str
    settings: dict
    fingerprints_x: list = field(default_factory=list)
    fingerprints_y: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)
    n: int | None = None
    by_topk: dict = field(default_factory=dict, repr=False)
    models_x: list = field(default_factory=list, repr=False)
    models_y: list = field(default_factory=list, repr=False)
    samples: dict = field(default_factory=dict, repr=False)
    run: dict = field(default_factory=dict, repr=False)
    set_names: tuple = ("X models", "Y models")
    by_n: dict = field(default_factory=dict, repr=False)
    n_grid: dict | None = field(default=None, repr=False)

    @property
    def topk(self) -> int | None:
        """This result's topk (None for the metrics without neighbour lists)."""
        return self.settings.get("topk")

    @property
    def topks(self) -> list:
        """Every topk of the sweep, smallest first."""
        return list(self.by_topk) or [self.topk]

    def calibration_matrix(self, field: str, statistic: str = "max") -> np.ndarray:
        """An (Mx, My) matrix of one calibration value of every model pair: ``field`` one of
        ``observed``, ``p_value``, ``tau``, ``calibrated``, ``chance``; ``statistic`` "max" (the
        best layer pair) or "mean" (all layer pairs). NaN everywhere without permutations."""
        out = np.full(self.scores.shape, np.nan)
        for (i, j), r in self.records.items():
            cal = r.get("calibration")
            if cal is not None and cal[statistic][field] is not None:
                out[i, j] = cal[statistic][field]
        return out

    def ci_matrix(self, field: str = "low") -> np.ndarray:
        """(Mx, My): one value of each model pair's confidence interval (``low``, ``high``,
        ``estimate``, ``std_error``); NaN without ``ci_repeats`` or without a best pair."""
        out = np.full(self.scores.shape, np.nan)
        for (i, j), r in self.records.items():
            ci = r.get("ci")
            if ci is not None and ci.get(field) is not None:
                out[i, j] = ci[field]
        return out

    @property
    def chance(self) -> np.ndarray:
        """(Mx, My): each model pair's chance level. With permutations, the null mean of its best
        score (the max over layer pairs); without, the exact null expectation at its best layer
        pair where the metric has one (mutual_knn k/(N-1), cka, unbiased_cka); else NaN."""
        out = np.full(self.scores.shape, np.nan)
        for (i, j), r in self.records.items():
            out[i, j] = _best_chance(r)
        return out

    @property
    def n_sizes(self) -> list[int]:
        """The subset sizes of an ``n_grid`` sweep, smallest first ([N] without one)."""
        return list(self.by_n) if self.by_n else [self.n]

    def n_grid_matrix(self, what: str = "scores") -> np.ndarray:
        """(G, Mx, My): one value of every model pair at each size of :attr:`n_sizes`.

        ``what``: ``scores`` (best layer pair), ``chance`` (its chance level: :attr:`chance`, or
        where no pair scored above 0 the mean of the layer pairs' exact chance levels),
        ``calibrated``, ``p_value`` (with permutations), ``ci_low``, ``ci_high`` (with
        intervals); NaN where there is none.
        """
        results = [self.by_n[n] for n in self.n_sizes] if self.by_n else [self]
        if what == "scores":
            return np.stack([r.scores for r in results])
        if what == "chance":
            return np.stack([_curve_chance(r) for r in results])
        if what in ("calibrated", "p_value"):
            return np.stack([r.calibration_matrix(what) for r in results])
        if what in ("ci_low", "ci_high"):
            return np.stack([r.ci_matrix(what[3:]) for r in results])
        raise ValueError(f"what must be scores, chance, calibrated, p_value, ci_low or ci_high, got {what!r}")

    def curve_pairs(self) -> list[tuple[int, int]]:
        """The model pairs an N curve is drawn for: every (i, j) of two sets; of one set against
        itself each pair of different models once (both orders for an asymmetric metric)."""
        mx, my = self.scores.shape
        same = self.names_x == self.names_y and self.fingerprints_x == self.fingerprints_y
        if not same:
            return [(i, j) for i in range(mx) for j in range(my)]
        symmetric = metric_spec(self.metric).symmetric
        return [(i, j) for i in range(mx) for j in range(my) if (i < j if symmetric else i != j)]


def _curve_chance(res: "SweepResult") -> np.ndarray:
    out = res.chance
    for (i, j), r in res.records.items():
        if np.isnan(out[i, j]) and r.get("calibration") is None and r.get("chance"):
            values = [v for row in r["chance"] for v in row if v is not None]
            if values:
                out[i, j] = float(np.mean(values))
    return out


def _best_chance(record: dict) -> float:
    cal = record.get("calibration")
    if cal is not None:
        return np.nan if cal["max"]["chance"] is None else cal["max"]["chance"]
    chance, best = record.get("chance"), record.get("best_layers")
    if chance is None or best is None:
        return np.nan
    v = chance[best[0]][best[1]]
    return np.nan if v is None else float(v)


def measure_sets(x, y=None, *, metric: str = "mutual_knn", topk: int | Sequence[int] = 10, out_dir="alignment",
                 q: float = 0.95, exact: bool = False, concat: bool = False, backend: str = "auto",
                 device=None, progress: bool = True, wait: float = 0, allow_mismatched_samples: bool = False,
                 permutations: int | None = None, alpha: float = 0.05, seed: int = 0,
                 ci_repeats: int | None = None, ci_level: float = 0.95, ci_method: str = "subsample",
                 set_names: tuple[str, str] | None = None, auto_scale: bool = False,
                 n_grid: Sequence[int] | None = None, n_grid_seed: int = 0, out_of_core: bool | None = None,
                 shard=None, **metric_options) -> SweepResult:
    """Align every model of ``x`` with every model of ``y`` (``y=None``: ``x`` with itself).

    Parameters
    ----------
    x, y : path or list of paths
        Feature files (.safetensors written by :mod:`platonic_fast.features`, NumPy .npy arrays
        N x L x D or N x D, or the reference pipeline's .pt files) or folders of them. All must
        describe the same N samples.
    metric, q, exact, concat, backend, **metric_options
        As :func:`platonic_fast.align`.
    topk : int or sequence of int
        Neighbours, for the metrics that use them. Several values (``[5, 10, 20]``) give one
        result per value from one kNN pass per layer at the largest (the lists of a smaller k
        are the first k of the largest's, :meth:`platonic_fast.Prepared.truncated`); each
        value's pair records are keyed by it, so adding a value later reuses the others.
        Ignored by the other metrics (which accept one value only).
    device : str or torch.device, optional
        Where layers are prepared and scored ("cpu", "cuda", "cuda:1"); default: where the
        feature files load (the CPU).
    out_dir : path
        Receives ``pairs/<sha256 of the pair's key>.json`` (one per finished pair),
        ``scores.json``, ``scores.npz`` and ``heatmap.png``, and the lock file ``.lock``.
    progress : bool
        Show a progress bar over model pairs (and topk values).
    wait : float, default 0
        When another sweep holds ``out_dir``, wait up to this many seconds for it
        (``math.inf``: no limit); 0 stops at once.
    allow_mismatched_samples : bool, default False
        Pair files whose sample fingerprints differ (:func:`check_samples`); recorded in
        ``settings["allow_mismatched_samples"]``.
    permutations : int, optional
        K: calibrate each model pair's layer search as a whole against K row permutations of
        the y model (the same permutation for all its layers; see
        :func:`platonic_fast.calibration.calibrate_states`): the max (best pair) and mean over
        layer pairs get their null values, p-value, threshold τ, calibrated score and chance
        level, and every layer pair its own p-value. Every model pair gets the same K
        permutations, drawn from ``torch.Generator().manual_seed(seed)`` afresh for each pair,
        so the results depend neither on the order of pairs nor on resuming.
    alpha : float, default 0.05
        The level of τ and of "significant" (p ≤ alpha).
    seed : int, default 0
        Seeds the permutations and the confidence intervals' subsamples; part of each pair
        record's key.
    ci_repeats : int, optional
        R: a confidence interval for each model pair's best layer pair, from R subsamples of
        half the samples without replacement (:func:`platonic_fast.confidence_interval` on the
        two layers as the search scored them, clamped and normalised; the same subsets for
        every pair). It is the interval of that pair's score at N, not of the search: the pair
        was chosen as the best on the same data. Default: none.
    ci_level : float, default 0.95
    ci_method : "subsample" or "jackknife"
        As :func:`platonic_fast.confidence_interval`.
    set_names : (str, str), optional
        What the two sets are called on the heat map's axes and in the summary (default: the
        folder's name when a set is one folder, else "X models" / "Y models").
    auto_scale : bool, default False
        Heat map colours span the scores' own range instead of the metric's ([0, 1]; [0, topk]
        for lcs_knn), which makes small differences look large.
    n_grid : sequence of int, optional
        Alignment as a function of N: the same sweep on nested random subsets of the samples,
        one per value (each at most the files' N; the subset of n is the first n samples of one
        seeded order, :func:`subset_rows`, so a smaller subset lies inside every larger one).
        Every pair record is keyed by its subset's n and seed (a value equal to N is the whole
        set, keyed as a sweep without a grid, so the two share records); ``scores.json`` gets
        an ``n_grid`` section, ``scores.npz`` ``ngrid_*`` arrays, and ``n_grid.png`` plots each
        model pair's best score against N (log axis) with the chance level. The returned
        result, the top-level matrices and the heat map are those of the largest n;
        ``by_n[n]`` holds each.
    n_grid_seed : int, default 0
        Seeds the order the subsets are taken from; recorded and part of the keys.
    out_of_core : bool or None, default None
        Read the .safetensors and .npy feature files a block of rows at a time
        (:mod:`platonic_fast.outofcore`): a model's layers are never in memory together, and on
        the CPU the neighbour metrics and cka / unbiased_cka never hold even one whole layer
        (lists, or O(N) statistics and D x D products). The neighbour metrics' scores are
        bitwise the in-memory sweep's; CKA's equal them up to summation order (float64 sums of
        per-block products: about 1e-7 relative where the products are float32, 1e-12 where they
        are float64). None: when the largest such file is over a quarter of the memory available.
        Not part of the records' keys (``run["out_of_core"]`` says which).
    shard : platonic_fast.distributed._sweep.SweepShard, optional
        Internal: the process group of ``torchrun -m platonic_fast measure`` (each rank its rows,
        rank 0 writes). Library calls are never sharded unless given one.

    Returns
    -------
    SweepResult
        Of the smallest topk; ``by_topk[k]`` holds the result of each value.

    Raises
    ------
    ValueError, TypeError
        Bad options (metric, topk, metric options, backend, device, permutations, alpha, seed:
        all checked before any file is read); missing or unreadable feature files (a features
        file whose data does not match its stored checksum included), mismatched N, options
        that do not fit the data (topk >= N, cca_dim above a width), ``out_dir`` is a file.
        :class:`~platonic_fast.features.SampleMismatchError` (a ValueError): files extracted from
        different samples or orders (their sample fingerprints differ), unless
        ``allow_mismatched_samples``.
    OutputFolderLocked
        Another sweep is writing to ``out_dir`` (and did not finish within ``wait`` seconds).

    Examples
    --------
    >>> res = measure_sets("feats/lang", "feats/vis", metric="mutual_knn", topk=10,
    ...                    out_dir="scores")                               # doctest: +SKIP
    >>> res.scores.shape, res.names_x                                      # doctest: +SKIP
    """
    topks, device = check_request(metric, topk, backend=backend, device=device, permutations=permutations,
                                  alpha=alpha, seed=seed, ci_repeats=ci_repeats, ci_level=ci_level,
                                  ci_method=ci_method, **metric_options)
    grid = _check_n_grid(n_grid, n_grid_seed)
    if out_of_core is not None and not isinstance(out_of_core, bool):
        raise TypeError(f"out_of_core must be True, False or None (automatic), got {out_of_core!r}")
    set_names = _check_set_names(set_names, x, y)
    files_x = feature_files(x)
    files_y = files_x if y is None else feature_files(y)
    same_set = y is None or [f.resolve() for f in files_x] == [f.resolve() for f in files_y]
    # A symmetric metric scores each unordered pair of a set against itself once.
    symmetric = same_set and metric_spec(metric).symmetric
    out = check_out_dir(out_dir)
    settings = {"metric": metric, "topk": None, "q": q, "exact": exact, "concat": concat,
                "options": {k: metric_options[k] for k in sorted(metric_options)},
                "allow_mismatched_samples": bool(allow_mismatched_samples),
                "permutations": None, "alpha": None, "seed": None, "ci": None}
    if permutations is not None:  # alpha and seed matter (and key the records) only with a null
        settings.update(permutations=permutations, alpha=float(alpha), seed=seed)
    if ci_repeats is not None:
        settings["ci"] = {"repeats": ci_repeats, "level": float(ci_level), "method": ci_method,
                          "fraction": CI_FRACTION, "seed": seed}
    # Under torchrun every rank reads its own copy of the files: a failure on one is every rank's,
    # and the ranks must agree on what they read before anything is scored.
    with contextlib.nullcontext() if shard is None else shard.comm.step():
        samples = check_samples([*files_x, *files_y], allow_mismatched_samples)
        inputs = read_inputs([*dict.fromkeys([*files_x, *files_y])])
    if shard is not None:
        shard.check(settings, inputs, out_of_core)
    inputs["samples"] = samples
    inputs["view"] = {"set_names": set_names, "auto_scale": bool(auto_scale)}
    inputs["out_of_core"] = False if shard is not None else choose_out_of_core(out_of_core, [*files_x, *files_y])
    sizes = [inputs["n"]] if grid is None else _fit_n_grid(grid, inputs["n"])
    inputs["n_grid"] = None if grid is None else {**grid, "n": sizes}
    # Options checked against the data (topk < N, cca_dim <= every width) before any scoring.
    opts_by_n = {}
    for n in sizes:
        try:
            opts_by_n[n] = {k: resolve_options(metric, n, inputs["widths"], topk=k, backend=backend,
                                               **metric_options) for k in topks}
        except (ValueError, TypeError) as e:
            if grid is None:
                raise
            raise type(e)(f"n_grid value {n}: {e}") from None
        if ci_repeats is not None:
            _check_ci_fits(metric, {**inputs, "n": n}, opts_by_n[n])
    inputs["shard"] = shard
    if shard is None:
        with lock_folder(out, wait):
            return _sweep(files_x, files_y, symmetric, out, settings, opts_by_n, inputs, device, progress)
    with shard.lock(out, wait, lock_folder):
        return _sweep(files_x, files_y, symmetric, out, settings, opts_by_n, inputs, device, progress and shard.writer)


def check_request(metric: str, topk=10, *, backend: str = "auto", device=None, permutations=None,
                  alpha: float = 0.05, seed: int = 0, ci_repeats=None, ci_level: float = 0.95,
                  ci_method: str = "subsample", **metric_options) -> tuple[tuple, torch.device | None]:
    """Check a sweep's options before any file is read: ``(topk values, device)``.

    ``topk`` values come back sorted and without repeats; ``(None,)`` for a metric that uses no
    neighbour lists. Options that depend on the data (topk < N, cca_dim at most every width)
    are checked again once the files' headers are read.

    Raises
    ------
    ValueError, TypeError
        Naming the option and what it accepts.
    """
    spec = metric_spec(metric)
    topks = _check_topks(topk, spec)
    probe = dict(metric_options, backend=backend)
    if spec.takes_topk:
        probe["topk"] = topks[-1]
    big = 1 << 40  # any N and width: only the data-independent checks can fail here
    try:
        spec.check_options(big, (big, big), probe)
    except (ValueError, TypeError) as e:
        if str(big) not in str(e):
            raise
        # a range that depends on the data (topk < N, cca_dim <= N and the widths): checked,
        # with the files' real sizes, once their headers are read
    if "rbf_sigma" in metric_options and metric_options.get("kernel_metric", "ip") != "rbf":
        raise ValueError("rbf_sigma (--sigma) is the width of the RBF kernel; it does nothing with the linear "
                         "kernel: add kernel_metric='rbf' (--kernel rbf) or leave it out")
    if permutations is not None:
        check_permutation_count(permutations)
        if permutations > MAX_PERMUTATIONS:
            raise ValueError(f"permutations (--permutations) must be at most {MAX_PERMUTATIONS:,} (p-values to "
                             f"1e-6; each permutation rescores every layer pair), got {permutations!r}")
        check_alpha(alpha)
    if permutations is not None or ci_repeats is not None:
        _check_seed(seed)
    if ci_repeats is not None:
        if isinstance(ci_repeats, bool) or not isinstance(ci_repeats, int) or ci_repeats < 2:
            raise ValueError(f"ci_repeats must be an integer >= 2 (subsamples per interval, e.g. 200), "
                             f"got {ci_repeats!r}")
        if isinstance(ci_level, bool) or not isinstance(ci_level, (int, float)) or not 0 < ci_level < 1:
            raise ValueError(f"ci_level must be a number in (0, 1) (the coverage, e.g. 0.95), got {ci_level!r}")
        if ci_method not in ("subsample", "jackknife"):
            raise ValueError(f"ci_method must be 'subsample' or 'jackknife', got {ci_method!r}")
    return topks, _check_device(device)


MAX_PERMUTATIONS = 1_000_000
CI_FRACTION = 0.5  # subsamples of half the samples: the rescaling factor sqrt(m / (N - m)) is 1


def _check_ci_fits(metric: str, inputs: dict, opts_by_k: dict) -> None:
    """The options must hold on subsamples too (topk < m, cca_dim <= m, m >= 4 for unbiased HSIC)."""
    from .uncertainty import check_unsaturated, subsample_size

    n = inputs["n"]
    m = subsample_size(n, CI_FRACTION)
    for opts in opts_by_k.values():
        try:
            check_unsaturated(metric_spec(metric), m, metric_spec(metric).check_options(m, (min(inputs["widths"]),) * 2,
                                                                                         opts))
        except (ValueError, TypeError) as e:
            raise ValueError(f"confidence intervals score subsamples of m={m} of the N={n} samples, too few for "
                             f"these options: {e}") from None


def _check_set_names(set_names, x, y) -> tuple[str, str]:
    def label(paths, fallback: str) -> str:
        if isinstance(paths, (str, os.PathLike)) or (isinstance(paths, (list, tuple)) and len(paths) == 1):
            path = Path(paths if isinstance(paths, (str, os.PathLike)) else paths[0])
            return path.resolve().name if path.is_dir() else fallback
        return fallback

    default = (label(x, "X models"), label(x, "X models") if y is None else label(y, "Y models"))
    if set_names is None:
        return default
    if not (isinstance(set_names, (list, tuple)) and len(set_names) == 2):
        raise ValueError(f"set_names must be two labels (x, y), got {set_names!r}")
    names = tuple(default[i] if v is None else v for i, v in enumerate(set_names))
    if not all(isinstance(v, str) and v.strip() for v in names):
        raise ValueError(f"set_names must be non-empty strings, got {set_names!r}")
    return names


def _check_topks(topk, spec) -> tuple:
    if topk is None or isinstance(topk, (int, np.integer)):
        values = [topk]
    elif isinstance(topk, (list, tuple, range, np.ndarray)):
        values = list(topk)
        if not values:
            raise ValueError("topk must hold at least one value")
    else:
        raise TypeError(f"topk must be an integer or a list of integers, got {type(topk).__name__}")
    for v in values:
        if v is None and len(values) == 1:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"topk must be integers >= 1 (neighbours per sample), got {v!r}")
    if not spec.takes_topk:
        if len(set(values)) > 1:
            raise ValueError(f"{spec.name} uses no neighbour lists, so every topk gives the same scores; "
                             f"give one value (or none), not {sorted(values)}")
        return (None,)
    return tuple(sorted({None if v is None else int(v) for v in values}, key=lambda v: -1 if v is None else v))


def _check_device(device) -> torch.device | None:
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be a device name such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r}: no CUDA device is usable here; use 'cpu' (or leave it out)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {str(device)!r}")
    return dev


def _sweep(files_x, files_y, symmetric, out, settings, opts_by_n, inputs, device, progress) -> SweepResult:
    """The body of :func:`measure_sets`, run while holding the output folder's lock: the sweep at
    every sample count (one without ``n_grid``), then the summary."""
    grid = inputs["n_grid"]
    if inputs.get("shard") is None or inputs["shard"].writer:  # what killed writers left (their PIDs are gone)
        for folder in (out, out / "pairs"):
            clean_stale_temporaries(folder)
    sizes = list(opts_by_n)
    topks = list(opts_by_n[sizes[-1]])
    pairs = [(i, j) for i in range(len(files_x)) for j in range(len(files_y)) if not (symmetric and j < i)]
    order = None if grid is None else subset_order(inputs["n"], grid["seed"])
    bar = tqdm(total=len(pairs) * len(topks) * len(sizes), desc=f"measure {settings['metric']}", disable=not progress)
    by_n = {}
    for n in sizes:
        rows = None if n == inputs["n"] else np.sort(order[:n])
        # the whole set is keyed as a sweep without a grid: the two share their records
        at = settings if rows is None else {**settings, "subset": {"n": n, "seed": grid["seed"]}}
        by_n[n] = _sweep_at(files_x, files_y, pairs, symmetric, out, at, opts_by_n[n], inputs, device, rows, n, bar)
    bar.close()
    by_topk = by_n[sizes[-1]]
    if grid is not None:
        for k in topks:
            curve = {n: by_n[n][k] for n in sizes}
            for r in curve.values():
                r.by_n, r.n_grid = curve, dict(grid)
    if inputs.get("shard") is None:
        files = write_summary(list(by_topk.values()), out, auto_scale=inputs["view"]["auto_scale"])
    else:  # rank 0 writes; every rank gets the file names
        files = inputs["shard"].on_writer(lambda: write_summary(list(by_topk.values()), out,
                                                                auto_scale=inputs["view"]["auto_scale"]))
    for results in by_n.values():
        for r in results.values():
            r.files, r.by_topk = files, results
    return by_topk[topks[0]]


def _sweep_at(files_x, files_y, pairs, symmetric, out, settings, opts_by_k, inputs, device, rows, n,
              bar) -> dict:
    """Every model pair at every topk on the samples ``rows`` (None: all): {topk: SweepResult}."""
    from . import __version__

    metric = settings["metric"]
    fingerprints = inputs["fingerprints"]
    shard = inputs.get("shard")  # a torchrun sweep: this rank's rows, rank 0 writes
    topks = list(opts_by_k)
    largest = topks[-1]
    source = choose_source(inputs, shard, rows=rows, n=n, device=device, q=settings["q"], exact=settings["exact"],
                           concat=settings["concat"], metric=metric, opts=opts_by_k[largest],
                           keep_layers=settings["ci"] is not None, verified=inputs.setdefault("verified", set()))
    prepared: dict[Path, list] = {}  # layer states per file, for this metric at the largest topk
    truncated: dict[tuple[Path, int], list] = {}  # ... and for each smaller one, from its lists
    layer_counts = {f: inputs["info"][f]["num_layers"] for f in fingerprints}

    def states_of(path: Path, k) -> list:
        if path not in prepared:
            n_layers = layer_counts[path] + (1 if settings["concat"] else 0)
            with _stage_bar(bar, n_layers, f"layers of {path.stem}") as sub:
                prepared[path] = source.states(path, bar=sub)
        if k == largest:
            return prepared[path]
        if (path, k) not in truncated:
            truncated[(path, k)] = [None if s is None else s.truncated(k) for s in prepared[path]]
        return truncated[(path, k)]

    records: dict = {k: {} for k in topks}
    try:
        for i, j in pairs:
            fx, fy = files_x[i], files_y[j]
            for k in topks:
                key = record_key((fx.stem, fy.stem), (fingerprints[fx], fingerprints[fy]),
                                 {**settings, "topk": k}, __version__)
                path = record_path(out, key)
                shape = (layer_counts[fx], layer_counts[fy])
                if shard is None:
                    record = read_record(path, key, shape, n)
                else:
                    record = shard.read_record(path, key, lambda p, kk, s=shape: read_record(p, kk, s, n))
                if record is None:
                    sx, sy = states_of(fx, k), states_of(fy, k)
                    record = _compute_record(key, sx, sy, metric, opts_by_k[k], n, key["settings"],
                                             (source.layers(fx), source.layers(fy)), shard=shard, bar=bar)
                    if shard is None or shard.writer:
                        write_record(path, record)
                records[k][(i, j)] = record
                if symmetric and i != j:
                    records[k][(j, i)] = mirrored(record)
                bar.update()
    finally:
        source.close()

    by_topk = {}
    for k in topks:
        scores = np.zeros((len(files_x), len(files_y)))
        best = np.full((len(files_x), len(files_y), 2), -2, dtype=np.int64)
        for (i, j), r in records[k].items():
            scores[i, j] = r["score"]
            if r["best_layers"] is not None:
                best[i, j] = r["best_layers"]
        by_topk[k] = SweepResult([f.stem for f in files_x], [f.stem for f in files_y], scores, best, metric,
                                 {**settings, "topk": k}, fingerprints_x=[fingerprints[f] for f in files_x],
                                 fingerprints_y=[fingerprints[f] for f in files_y], records=records[k], n=n,
                                 models_x=[inputs["info"][f] for f in files_x],
                                 models_y=[inputs["info"][f] for f in files_y], samples=inputs["samples"],
                                 run={"backend": opts_by_k[k]["backend"],
                                      "device": None if device is None else str(device),
                                      "out_of_core": inputs["out_of_core"],
                                      **({} if shard is None else {"ranks": shard.comm.size})},
                                 set_names=inputs["view"]["set_names"])
    return by_topk


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic): a fixed bijection, the same on
    every platform and NumPy version."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def subset_order(n_total: int, seed: int) -> np.ndarray:
    """The seeded order of ``n_total`` samples that ``n_grid`` subsets are taken from: sample
    indices sorted by ``splitmix64(i ^ splitmix64(seed))`` (distinct keys: a permutation).
    Defined by integer arithmetic alone, so it never changes with the NumPy or torch version."""
    with np.errstate(over="ignore"):
        mix = _splitmix64(np.array([seed], dtype=np.uint64))[0]
        keys = _splitmix64(np.arange(n_total, dtype=np.uint64) ^ mix)
    return np.argsort(keys, kind="stable")


def subset_rows(n_total: int, n: int, seed: int) -> np.ndarray:
    """The samples of the ``n_grid`` subset of ``n`` of ``n_total`` (increasing indices): the
    first n of :func:`subset_order`, so the subset of a smaller n lies inside a larger one's."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= n_total:
        raise ValueError(f"n must be an integer in [1, {n_total}], got {n!r}")
    return np.sort(subset_order(n_total, seed)[:n])


def _check_n_grid(n_grid, seed) -> dict | None:
    """``{"n": sorted distinct sizes, "seed": seed}`` or None; data-independent checks only."""
    if n_grid is None:
        return None
    if isinstance(n_grid, (int, np.integer)) and not isinstance(n_grid, bool):
        values = [n_grid]
    elif isinstance(n_grid, (list, tuple, range, np.ndarray)):
        values = list(n_grid)
    else:
        raise TypeError(f"n_grid must be a list of sample counts (e.g. [1000, 10000]), got {type(n_grid).__name__}")
    if not values:
        raise ValueError("n_grid must hold at least one sample count")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
            raise ValueError(f"n_grid values must be integers >= 2 (sample counts), got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"n_grid_seed must be an integer in [0, 2**63) (it seeds the subsets), got {seed!r}")
    return {"n": sorted({int(v) for v in values}), "seed": seed}


def _fit_n_grid(grid: dict, n_total: int) -> list[int]:
    over = [v for v in grid["n"] if v > n_total]
    if over:
        raise ValueError(f"n_grid value {over[0]} exceeds the N={n_total} samples of the feature files "
                         f"(the largest subset is all of them: {n_total})")
    return list(grid["n"])


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63) (it seeds the permutations), got {seed!r}")
    return seed


def _compute_record(key: dict, sx: list, sy: list, metric: str, opts: dict, n: int, settings: dict,
                    layers=None, shard=None, bar=None) -> dict:
    """Score one model pair's layer grid (and, with permutations, calibrate it; with a CI
    setting, an interval for its best pair from ``layers``, the two models' layers): its record.
    ``shard``: the states are sharded (:mod:`platonic_fast.distributed._sweep`), scored collectively.
    ``bar``: the sweep's bar; the permutations get a bar of their own beneath it."""
    sharded = None if shard is None else shard.compute_record(sx, sy, metric, opts, n, settings)
    res = score_states(sx, sy, metric, opts, concat=settings["concat"]) if shard is None else sharded["res"]
    record = {"key": key, "score": res.best, "best_layers": list(res.best_layers) if res.best_layers else None,
              "layer_scores": matrix(res.scores), "n": n, "chance": None, "calibration": None, "ci": None}
    if settings.get("ci") is not None and res.best_layers is not None:
        from .uncertainty import confidence_interval

        ci = settings["ci"]
        lx, ly = layers
        i, j = res.best_layers
        interval = confidence_interval(metric, lx[i], ly[j], level=ci["level"], method=ci["method"],
                                       repeats=ci["repeats"], fraction=ci["fraction"], generator=ci["seed"],
                                       **opts)
        record["ci"] = jsonable({"estimate": interval.estimate, "low": interval.low, "high": interval.high,
                                  "std_error": interval.std_error, "level": interval.level,
                                  "method": interval.method, "repeats": interval.repeats, "m": interval.m})
    if settings["permutations"] is not None:
        # The same permutations for every pair: a fresh generator per pair, not one shared stream.
        generator = torch.Generator().manual_seed(settings["seed"])
        if shard is not None:
            cal = sharded["calibration"]
        else:
            with _stage_bar(bar, settings["permutations"], "permutations") as sub:
                cal = calibrate_states(sx, sy, res.scores, metric, opts, permutations=settings["permutations"],
                                       alpha=settings["alpha"], generator=generator, bar=sub)
        record["chance"] = matrix(cal.chance)
        record["calibration"] = jsonable(cal.as_dict())
        del record["calibration"]["chance"]  # the record's "chance": stored once
    else:
        record["chance"] = _exact_chance(sx, sy, metric, opts, n) if shard is None else sharded["chance"]
    return record


def _stage_bar(outer, total: int, desc: str):
    """A bar beneath the sweep's (which counts model pairs) for one stage of one pair (its layers,
    its permutations), so a long single pair still shows it is moving; gone when the stage ends."""
    return tqdm(total=total, desc=f"  {desc}", leave=False, disable=outer is None or outer.disable)


def _exact_chance(sx: list, sy: list, metric: str, opts: dict, n: int) -> list | None:
    """Each layer pair's exact null expectation, or None when the metric has no closed form."""
    spec = metric_spec(metric)
    out = [[None] * len(sy) for _ in sx]
    for i, a in enumerate(sx):
        for j, b in enumerate(sy):
            if a is None or b is None:
                continue
            v = spec.null_mean(a.state, b.state, n, **opts)
            if v is None:
                return None
            out[i][j] = float(v) if math.isfinite(v) else None
    return out


