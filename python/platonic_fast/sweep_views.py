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


_EXTRACT_SUFFIX = re.compile(r"_pool-[A-Za-z0-9]+")


def display_names(names: list[str]) -> list[str]:
    """The names a researcher gave (``extract NAME=MODEL``): file stems without the ``_pool-...``
    part that ``extract`` appends, ``_random-init`` shown as " (random init)". A name that would
    then be shared by two files (two poolings of one model) keeps its full stem."""
    short = [_EXTRACT_SUFFIX.sub("", n, count=1).replace("_random-init", " (random init)") for n in names]
    return [s if short.count(s) == 1 else n for s, n in zip(short, names)]


def layer_name(info: dict | None, index: int) -> str:
    """A layer's short name: ``emb`` for a language model's first hidden state (the embedding
    output, which ``features.language`` keeps as the reference does), ``all`` for the concatenated
    layers of ``concat=True``, else ``L<index>`` (0-based, as in the files)."""
    info = info or {}
    if info.get("num_layers") is not None and index >= info["num_layers"]:
        return "all"
    if index == 0 and info.get("modality") == "language":
        return "emb"
    return f"L{index}"


LAYER_NAMES_NOTE = "L<i>: layer i of the file (0-based); emb: a language model's embedding output"


def _wrapped(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points (each line
    of the input wrapped on its own): titles are never cut at the figure's edge."""
    import textwrap

    chars = max(30, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in text.split("\n"))


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
    pair, :meth:`SweepResult.curve_pairs`), its confidence band where the sweep computed
    intervals, and the chance level (mean over the pairs at each N) as a dashed black line. With
    permutations a second panel shows the calibrated scores. The legend sits outside the axes.

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
    low, high = res.n_grid_matrix("ci_low"), res.n_grid_matrix("ci_high")
    calibrated = res.n_grid_matrix("calibrated") if res.settings.get("permutations") is not None else None
    pairs = res.curve_pairs() or [(0, 0)]
    nx, ny = display_names(res.names_x), display_names(res.names_y)
    panels = 1 if calibrated is None else 2
    fig = figure(figsize=(4.6 * panels + 3.0, 4.6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    level = np.array([np.nanmean(c[tuple(zip(*pairs))]) if np.isfinite(c[tuple(zip(*pairs))]).any() else np.nan
                      for c in chance])
    ci = res.settings.get("ci")
    for p, ax in enumerate(axes):
        values = scores if p == 0 else calibrated
        for n, (i, j) in enumerate(pairs):
            colour = f"C{n % 10}"
            label = wrap_name(f"{nx[i]} / {ny[j]}", 34) if p == 0 else None
            ax.plot(sizes, values[:, i, j], marker="o", markersize=3, linewidth=1.2, color=colour, label=label)
            if p == 0 and np.isfinite(low[:, i, j]).any():
                ax.fill_between(sizes, low[:, i, j], high[:, i, j], color=colour, alpha=0.18, linewidth=0)
        if p == 0 and np.isfinite(level).any():
            ax.plot(sizes, level, color="black", linestyle="--", linewidth=1.5, label="chance level")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{int(v):,}" for v in sizes], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("N (samples; nested random subsets)")
        if p == 0:
            ax.set_ylabel("raw score of the best layer pair")
            if _top(res) <= 1.0 and np.nanmax(np.abs(scores), initial=0.0) <= 1.0:
                ax.set_ylim(bottom=min(0.0, float(np.nanmin(scores, initial=0.0))))
            band = (f"; bands: {ci['level']:.0%} intervals ({ci['method']}, {ci['repeats']} subsamples)"
                    if ci is not None and np.isfinite(low).any() else "")
            ax.set_title("raw" + band, fontsize=8)
        else:
            ax.set_ylabel("calibrated score (0: not above the null)")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"calibrated (permutation null, K={res.settings['permutations']})", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    if len(pairs) <= 12:
        fig.legend(fontsize=7, loc="outside right upper")
    title = f"{res.metric}" + (f", topk={res.topk}" if res.topk is not None else "") + \
        f": alignment against N (subset seed {res.n_grid['seed']})"
    if not np.isfinite(level).any():
        title += "\nno closed-form chance level for this metric (run with permutations for one)"
    fig.suptitle(_wrapped(title, 4.6 * panels + 3.0, 9), fontsize=9)
    return fig


def format_n_grid_table(res: SweepResult, *, digits: int = 4) -> str:
    """An ``n_grid`` sweep as text: each model pair's best score at every N, then the chance level."""
    if not res.by_n:
        raise ValueError("this result has no n_grid: run measure_sets(..., n_grid=[...])")
    sizes = res.n_sizes
    scores, chance = res.n_grid_matrix("scores"), res.n_grid_matrix("chance")
    pairs = res.curve_pairs() or [(0, 0)]
    nx, ny = display_names(res.names_x), display_names(res.names_y)
    labels = [f"{nx[i]} / {ny[j]}" for i, j in pairs] + ["chance level"]
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
    if mx * my == 1:
        return _pair_layers_figure(res, auto_scale=auto_scale)
    k = res.settings.get("permutations")
    alpha = res.settings.get("alpha")
    panels = [("raw score of the best layer pair", res.scores)]
    if k is not None:
        panels.append(("calibrated score (0: not above the null)", res.calibration_matrix("calibrated")))
    top = _top(res)
    x_labels = [wrap_name(n) for n in display_names(res.names_x)]
    y_labels = [wrap_name(n) for n in display_names(res.names_y)]
    x_lines = max(t.count("\n") + 1 for t in x_labels)
    y_lines = max(t.count("\n") + 1 for t in y_labels)
    annotate = mx * my <= 400
    low, high = res.ci_matrix("low"), res.ci_matrix("high")
    has_ci = annotate and bool(np.isfinite(low).any())
    # Inches: a column wide enough for its wrapped name (unless rotated) and the cell's text (score,
    # best layer pair, interval), a row for its lines.
    cell = 0.5 if mx * my <= 400 else 0.25
    rotate = y_lines == 1 and max(map(len, y_labels)) > 6
    width_y = max(len(line) for t in y_labels for line in t.split("\n"))
    width_x = max(len(line) for t in x_labels for line in t.split("\n"))
    col = max(cell if rotate else max(cell, 0.065 * width_y), (0.8 if has_ci else 0.6) if annotate else 0)
    row = max(cell, 0.14 * x_lines, (0.42 if has_ci else 0.32) if annotate else 0)
    label_h = 0.065 * width_y if rotate else 0.14 * y_lines
    width = len(panels) * (my * col + 0.065 * width_x + 1.4) + 0.3
    fig = figure(figsize=(width, mx * row + label_h + 1.8), layout="constrained")
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
        if annotate:
            for i in range(mx):
                for j in range(my):
                    if np.isfinite(mat[i, j]):
                        text = f"{mat[i, j]:.2f}"
                        if raw:
                            text += "\n" + _best_pair_text(res, i, j)
                            if np.isfinite(low[i, j]):
                                text += f"\n[{low[i, j]:.2f}, {high[i, j]:.2f}]"
                        bright = (mat[i, j] - lo) / (hi - lo) > 0.55
                        ax.text(j, i, text, ha="center", va="center", fontsize=6.5 if raw else 7,
                                color="black" if bright else "white", linespacing=1.15)
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
    cell_note = "cell: score, best layers (" + res.set_names[0] + " × " + res.set_names[1] + ")"
    if has_ci:
        cell_note += f", {res.settings['ci']['level']:.0%} interval"
    lines.append(cell_note + "; " + LAYER_NAMES_NOTE)
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
    fig.suptitle(_wrapped("\n".join(lines), width, 9), fontsize=9)
    return fig


def _best_pair_text(res: SweepResult, i: int, j: int) -> str:
    """Model pair (i, j)'s best layer pair as "x layer × y layer" ("-" without one)."""
    bi, bj = (int(v) for v in res.best_layers[i, j])
    if bi < 0:
        return "-"
    infos_x, infos_y = res.models_x or [None] * len(res.names_x), res.models_y or [None] * len(res.names_y)
    return f"{layer_name(infos_x[i], bi)} × {layer_name(infos_y[j], bj)}"


def _pair_layers_figure(res: SweepResult, *, auto_scale: bool = False):
    """One model pair: its full layer × layer score matrix, the best cell outlined, and the
    pair's score, interval and calibration in the title."""
    from matplotlib.patches import Rectangle

    figure = _figure_class()
    record = res.records[(0, 0)]
    mat = np.array([[np.nan if v is None else v for v in row] for row in record["layer_scores"]], dtype=np.float64)
    lx, ly = mat.shape
    info_x = (res.models_x or [None])[0]
    info_y = (res.models_y or [None])[0]
    rows = [layer_name(info_x, i) for i in range(lx)]
    cols = [layer_name(info_y, j) for j in range(ly)]
    top = _top(res)
    finite = mat[np.isfinite(mat)]
    lo, hi = (float(finite.min()), float(finite.max())) if auto_scale and finite.size else (0.0, top)
    hi = lo + 1.0 if hi <= lo else hi
    annotate = lx * ly <= 256
    cell = 0.42 if annotate else max(0.12, min(0.3, 8.0 / max(lx, ly)))
    width = max(6.0, ly * cell + 2.6)
    fig = figure(figsize=(width, lx * cell + 2.4), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mat, cmap="viridis", vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(ly), cols, fontsize=7, rotation=90 if ly > 16 else 0)
    ax.set_yticks(range(lx), rows, fontsize=7)
    name_x, name_y = display_names(res.names_x)[0], display_names(res.names_y)[0]
    ax.set_ylabel(f"{name_x} layer")
    ax.set_xlabel(f"{name_y} layer")
    if annotate:
        for i in range(lx):
            for j in range(ly):
                if np.isfinite(mat[i, j]):
                    bright = (mat[i, j] - lo) / (hi - lo) > 0.55
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if bright else "white")
    best = record.get("best_layers")
    if best is not None:
        ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    bar = fig.colorbar(im, ax=ax, shrink=0.85)
    pair_chance = np.array([v for row in (record.get("chance") or []) for v in row if v is not None])
    if pair_chance.size and lo <= pair_chance.mean() <= hi:
        bar.ax.axhline(float(pair_chance.mean()), color="red", linewidth=2)
        bar.set_label("red line: chance level of a layer pair", fontsize=8)
    lines = [f"{name_x} vs {name_y}: {res.metric}" + (f", topk={res.topk}" if res.topk is not None else "")
             + f", N={res.n}, every layer pair"]
    if best is not None:
        summary = (f"best (red box) {layer_name(info_x, best[0])} × {layer_name(info_y, best[1])}: "
                   f"{record['score']:.4f}")
        ci = record.get("ci")
        if ci is not None and ci.get("low") is not None:
            summary += f", {ci['level']:.0%} interval [{ci['low']:.4f}, {ci['high']:.4f}] ({ci['method']})"
        cal = record.get("calibration")
        if cal is not None and cal["max"].get("p_value") is not None:
            m = cal["max"]
            summary += (f"; p = {m['p_value']:.3g}, calibrated {m['calibrated'] or 0:.3f} "
                        f"(K={res.settings['permutations']} permutations)")
        lines.append(summary)
    else:
        lines.append("no layer pair scored above 0")
    lines.append(LAYER_NAMES_NOTE)
    fig.suptitle(_wrapped("\n".join(lines), width, 9), fontsize=9)
    return fig


def format_table(res: SweepResult, *, digits: int = 4) -> str:
    """The sweep's scores as text tables with full model names: raw best scores, and with
    permutations the calibrated scores and p-values, then the chance level.

    Column headers are the y models' names when they are short, else numbers with a legend
    below the table (names are never cut).
    """
    names_x, names_y = display_names(res.names_x), display_names(res.names_y)
    width_x = max(len(n) for n in names_x)
    cell = digits + 4
    short = max(len(n) for n in names_y) <= cell
    heads = names_y if short else [f"[{j + 1}]" for j in range(len(names_y))]
    cell = max(cell, *(len(h) for h in heads))

    def table(title: str, mat: np.ndarray, fmt: str) -> list[str]:
        lines = [title, " " * width_x + "  " + "  ".join(f"{h:>{cell}}" for h in heads)]
        for name, row in zip(names_x, mat):
            lines.append(f"{name:<{width_x}}  " + "  ".join(
                f"{'-':>{cell}}" if not np.isfinite(v) else f"{v:>{cell}{fmt}}" for v in row))
        return lines

    lines = table(f"{res.metric}: raw score of the best layer pair", res.scores, f".{digits}f")
    pairs = [[_best_pair_text(res, i, j) for j in range(len(names_y))] for i in range(len(names_x))]
    cell_bp = max(cell, *(len(t) for row in pairs for t in row))
    lines += ["", f"best layer pair ({res.set_names[0]} layer × {res.set_names[1]} layer; {LAYER_NAMES_NOTE})",
              " " * width_x + "  " + "  ".join(f"{h:>{cell_bp}}" for h in heads)]
    lines += [f"{name:<{width_x}}  " + "  ".join(f"{t:>{cell_bp}}" for t in row) for name, row in zip(names_x, pairs)]
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
        for name, lo_row, hi_row in zip(names_x, low, high):
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
        lines += ["", "columns:"] + [f"  [{j + 1}] {n}" for j, n in enumerate(names_y)]
    return "\n".join(lines)
