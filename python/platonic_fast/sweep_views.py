"""The views of a sweep: heat maps, the alignment-against-N figure and the terminal tables
(:func:`platonic_fast.sweep.measure_sets` writes the figures next to its scores; the functions
are re-exported by :mod:`platonic_fast.sweep`)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .files import write_atomic

if TYPE_CHECKING:
    from .sweep import SweepResult


def _n_grid_plot(res: SweepResult, path: Path) -> bool:
    """Write the N curve of ``res`` to ``path`` (atomically); False when matplotlib is missing."""
    try:
        fig = n_grid_figure(res)
    except ImportError:
        return False
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return True


def n_grid_figure(res: SweepResult):
    """Alignment against N, as a matplotlib Figure (not shown, not saved): each model pair's best
    layer-pair score at every subset size of an ``n_grid`` sweep (log N axis, one line per
    pair, :meth:`SweepResult.curve_pairs`), and the chance level (mean over the pairs at each N)
    as a dashed black line.

    Raises
    ------
    ImportError
        matplotlib is not installed (the ``plot`` extra).
    ValueError
        ``res`` is not from an ``n_grid`` sweep.
    """
    if not res.by_n:
        raise ValueError("this result has no n_grid: run measure_sets(..., n_grid=[...])")
    figure = _figure_class()
    sizes = np.array(res.n_sizes, dtype=np.float64)
    scores, chance = res.n_grid_matrix("scores"), res.n_grid_matrix("chance")
    pairs = res.curve_pairs() or [(0, 0)]
    fig = figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, j in pairs:
        label = wrap_name(f"{res.names_x[i]} / {res.names_y[j]}", 40)
        ax.plot(sizes, scores[:, i, j], marker="o", markersize=3, linewidth=1.2, label=label)
    level = np.array([np.nanmean(c[tuple(zip(*pairs))]) if np.isfinite(c[tuple(zip(*pairs))]).any() else np.nan
                      for c in chance])
    if np.isfinite(level).any():
        ax.plot(sizes, level, color="black", linestyle="--", linewidth=1.5, label="chance level")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{int(v):,}" for v in sizes], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("N (samples; nested random subsets)")
    ax.set_ylabel("score of the best layer pair")
    if _top(res) <= 1.0 and np.nanmax(np.abs(scores), initial=0.0) <= 1.0:
        ax.set_ylim(bottom=min(0.0, float(np.nanmin(scores, initial=0.0))))
    ax.grid(True, which="both", alpha=0.3)
    if len(pairs) <= 12:
        ax.legend(fontsize=7, loc="best")
    title = f"{res.metric}" + (f", topk={res.topk}" if res.topk is not None else "") + \
        f": alignment against N (subset seed {res.n_grid['seed']})"
    if not np.isfinite(level).any():
        title += "\nno closed-form chance level for this metric (run with permutations for one)"
    ax.set_title(title, fontsize=9)
    return fig


def format_n_grid_table(res: SweepResult, *, digits: int = 4) -> str:
    """An ``n_grid`` sweep as text: each model pair's best score at every N, then the chance level."""
    if not res.by_n:
        raise ValueError("this result has no n_grid: run measure_sets(..., n_grid=[...])")
    sizes = res.n_sizes
    scores, chance = res.n_grid_matrix("scores"), res.n_grid_matrix("chance")
    pairs = res.curve_pairs() or [(0, 0)]
    labels = [f"{res.names_x[i]} / {res.names_y[j]}" for i, j in pairs] + ["chance level"]
    width = max(len(t) for t in labels)
    cell = max(digits + 4, *(len(f"N={n}") for n in sizes))
    lines = [f"{res.metric}: score of the best layer pair against N (nested random subsets, seed "
             f"{res.n_grid['seed']})", " " * width + "  " + "  ".join(f"{'N=' + str(n):>{cell}}" for n in sizes)]

    def row(label, values):
        return f"{label:<{width}}  " + "  ".join(f"{'-':>{cell}}" if not np.isfinite(v) else f"{v:>{cell}.{digits}f}"
                                                 for v in values)

    for (i, j), label in zip(pairs, labels):
        lines.append(row(label, scores[:, i, j]))
    idx = tuple(zip(*pairs))
    level = [float(np.nanmean(c[idx])) if np.isfinite(c[idx]).any() else np.nan for c in chance]
    lines.append(row("chance level", level))
    return "\n".join(lines)


def _top(res: SweepResult) -> float:
    """The metric's largest value (its spec's; k for lcs_knn), 1 when topk is unknown."""
    from .metrics import metric_spec

    return float(metric_spec(res.metric).max_score({"topk": res.topk})) if res.topk is not None else 1.0


def _heatmap(res: SweepResult, path: Path, auto_scale: bool = False) -> bool:
    """Write the heat map of ``res`` to ``path`` (atomically); False when matplotlib is missing."""
    try:
        fig = heatmap_figure(res, auto_scale=auto_scale)
    except ImportError:
        return False
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return True


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'platonic_fast[plot]' (or matplotlib)") from e
    return Figure


def wrap_name(name: str, width: int = 22) -> str:
    """A model name on lines of at most ``width`` characters, broken after ``_ - / . :`` where it
    can be (model names rarely have spaces); never shortened."""
    pieces = re.findall(r"[^_\-/.: ]*[_\-/.: ]?", name)
    lines, line = [], ""
    for piece in filter(None, pieces):
        while len(piece) > width:  # one unbroken run longer than a line
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\n".join(lines)


def heatmap_figure(res: SweepResult, *, auto_scale: bool = False):
    """The heat map of one sweep result, as a matplotlib Figure (not shown, not saved).

    Raw best scores on a fixed colour scale (the metric's range: [0, 1], [0, topk] for lcs_knn)
    unless ``auto_scale``; with permutations a second panel of calibrated scores ([0, 1]), and
    pairs whose best score is not significant (p > alpha) hatched in both. Axis titles name the
    two sets (``res.set_names``), ticks carry the full model names (wrapped), the title and the
    colour bar (a red line) show the chance level.

    Raises
    ------
    ImportError
        matplotlib is not installed (the ``plot`` extra).
    """
    figure = _figure_class()
    from matplotlib.patches import Rectangle

    mx, my = res.scores.shape
    k = res.settings.get("permutations")
    alpha = res.settings.get("alpha")
    panels = [("raw score of the best layer pair", res.scores)]
    if k is not None:
        panels.append(("calibrated score (0: not above the null)", res.calibration_matrix("calibrated")))
    top = _top(res)
    x_labels = [wrap_name(n) for n in res.names_x]
    y_labels = [wrap_name(n) for n in res.names_y]
    x_lines = max(t.count("\n") + 1 for t in x_labels)
    y_lines = max(t.count("\n") + 1 for t in y_labels)
    # Inches: a column wide enough for its wrapped name (unless rotated), a row for its lines.
    cell = 0.5 if mx * my <= 400 else 0.25
    rotate = y_lines == 1 and max(map(len, y_labels)) > 6
    width_y = max(len(line) for t in y_labels for line in t.split("\n"))
    width_x = max(len(line) for t in x_labels for line in t.split("\n"))
    col = cell if rotate else max(cell, 0.065 * width_y)
    row = max(cell, 0.14 * x_lines)
    label_h = 0.065 * width_y if rotate else 0.14 * y_lines
    fig = figure(figsize=(len(panels) * (my * col + 0.065 * width_x + 1.4) + 0.3, mx * row + label_h + 1.5),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    not_significant = res.calibration_matrix("p_value") > alpha if k is not None else np.zeros((mx, my), bool)
    chance = res.chance
    pair_chance = np.array([v for r in res.records.values() for row in (r.get("chance") or []) for v in row
                            if v is not None], dtype=np.float64)
    for ax, (title, mat) in zip(axes, panels):
        raw = mat is res.scores
        finite = mat[np.isfinite(mat)]
        if auto_scale and finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            lo, hi = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
        else:
            lo, hi = 0.0, (top if raw else 1.0)
        im = ax.imshow(mat, cmap="viridis", vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(my), y_labels, rotation=90 if rotate else 0, fontsize=7)
        ax.set_yticks(range(mx), x_labels, fontsize=7)
        ax.set_xlabel(res.set_names[1])
        ax.set_ylabel(res.set_names[0])
        ax.set_title(title, fontsize=9)
        if mx * my <= 400:
            for i in range(mx):
                for j in range(my):
                    if np.isfinite(mat[i, j]):
                        bright = (mat[i, j] - lo) / (hi - lo) > 0.55
                        ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="black" if bright else "white")
        for i, j in zip(*np.nonzero(not_significant)):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.75",
                                   linewidth=0))
        bar = fig.colorbar(im, ax=ax, shrink=0.85)
        level = np.nanmean(chance) if np.isfinite(chance).any() else (
            float(pair_chance.mean()) if pair_chance.size else None)
        if raw and level is not None and lo <= level <= hi:
            bar.ax.axhline(level, color="red", linewidth=2)
            bar.set_label("red line: chance level", fontsize=8)
    lines = [f"{res.metric}" + (f", topk={res.topk}" if res.topk is not None else "")
             + f", N={res.n}: best layer pair per model pair"]
    notes = []
    if pair_chance.size:
        lo_c, hi_c = pair_chance.min(), pair_chance.max()
        notes.append("chance of one layer pair " + (f"{lo_c:.3g}" if np.isclose(lo_c, hi_c) else
                                                    f"{lo_c:.3g}-{hi_c:.3g}"))
    if k is not None and np.isfinite(chance).any():
        notes.append(f"of the best pair (null mean) {np.nanmin(chance):.3g}-{np.nanmax(chance):.3g}")
    if k is not None:
        notes.append(f"hatched: not significant (p > {alpha:g}, K={k})")
    if notes:
        lines.append("; ".join(notes))
    fig.suptitle("\n".join(lines), fontsize=9)
    return fig


def format_table(res: SweepResult, *, digits: int = 4) -> str:
    """The sweep's scores as text tables with full model names: raw best scores, and with
    permutations the calibrated scores and p-values, then the chance level.

    Column headers are the y models' names when they are short, else numbers with a legend
    below the table (names are never cut).
    """
    width_x = max(len(n) for n in res.names_x)
    cell = digits + 4
    short = max(len(n) for n in res.names_y) <= cell
    heads = res.names_y if short else [f"[{j + 1}]" for j in range(len(res.names_y))]
    cell = max(cell, *(len(h) for h in heads))

    def table(title: str, mat: np.ndarray, fmt: str) -> list[str]:
        lines = [title, " " * width_x + "  " + "  ".join(f"{h:>{cell}}" for h in heads)]
        for name, row in zip(res.names_x, mat):
            lines.append(f"{name:<{width_x}}  " + "  ".join(
                f"{'-':>{cell}}" if not np.isfinite(v) else f"{v:>{cell}{fmt}}" for v in row))
        return lines

    lines = table(f"{res.metric}: raw score of the best layer pair", res.scores, f".{digits}f")
    k = res.settings.get("permutations")
    if k is not None:
        alpha = res.settings["alpha"]
        if 1 / (k + 1) > alpha:
            lines += ["", f"note: with K={k} permutations the smallest p-value is 1/(K+1) = {1 / (k + 1):.3g} > "
                          f"alpha={alpha:g}: no pair can be significant; use K >= {math.ceil(1 / alpha) - 1}"]
        lines += ["", *table(f"calibrated (permutation null, K={k}, alpha={alpha:g}; 0 = not above the null)",
                             res.calibration_matrix("calibrated"), f".{digits}f")]
        lines += ["", *table(f"p-value of the best layer pair (max over layer pairs, K={k})",
                             res.calibration_matrix("p_value"), f".{digits}f")]
    ci = res.settings.get("ci")
    if ci is not None:
        low, high = res.ci_matrix("low"), res.ci_matrix("high")
        cell_ci = 2 * digits + 7
        heads_ci = [f"{h:>{cell_ci}}" for h in heads]
        lines += ["", f"{ci['level']:.0%} confidence interval of the best layer pair's score ({ci['method']}, "
                      f"{ci['repeats']} subsamples of half the samples)",
                  " " * width_x + "  " + "  ".join(heads_ci)]
        for name, lo_row, hi_row in zip(res.names_x, low, high):
            cells = ["-" if not np.isfinite(lo) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"
                     for lo, hi in zip(lo_row, hi_row)]
            cells = [f"{c:>{cell_ci}}" for c in cells]
            lines.append(f"{name:<{width_x}}  " + "  ".join(cells))

    def span(values) -> str:
        lo, hi = np.nanmin(values), np.nanmax(values)
        return f"{lo:.{digits}f}" if abs(hi - lo) < 0.5 * 10**-digits else f"{lo:.{digits}f} to {hi:.{digits}f}"

    pair_chance = np.array([v for r in res.records.values() for row in (r.get("chance") or []) for v in row
                            if v is not None], dtype=np.float64)
    if k is not None and np.isfinite(res.chance).any():
        lines += ["", f"chance level of the best layer pair (null mean of the max over layer pairs): "
                      f"{span(res.chance)}"]
    if pair_chance.size:
        exact = k is None or all(r["calibration"].get("chance_exact") for r in res.records.values())
        what = "exact null expectation" if exact else "null mean"
        lines += ([""] if k is None else []) + [f"chance level of one layer pair ({what}): {span(pair_chance)}"]
    if not short:
        lines += ["", "columns:"] + [f"  [{j + 1}] {n}" for j, n in enumerate(res.names_y)]
    return "\n".join(lines)
