"""Alignment versus capability: the paper's central figure, from a sweep's results.

The Platonic Representation Hypothesis rests on one plot: the more capable a language model
(1 − bits-per-byte on held-out text, or its size), the more aligned it is with vision models.
:func:`report` draws it from a ``platonic-fast measure`` folder: each model of one set (the
*subject* set, e.g. language models) gets its alignment to the other (the *reference* set, e.g.
vision models), the mean of its best-layer-pair scores over the reference models, and that is
set against each capability measure:

- ``1 - bpb``: one minus the model's mean bits-per-byte (language models; recorded per sample
  by extraction, averaged by the sweep over the samples that have one);
- ``log10 params``: the parameter count the feature file records;
- every numeric column of a user's table (``capability=table.csv``: a model-name column, then
  numbers such as transfer accuracy for vision models).

Each pairing gets Spearman's rank correlation and its two-sided p-value
(``scipy.stats.spearmanr``), for the raw scores and, when the sweep ran permutations, for the
calibrated ones (:mod:`platonic_fast.calibration`) beside them: raw alignment grows with width
and depth alone, so a trend that survives calibration is the stronger evidence.

Writes ``report.json`` and ``report.png`` (``report_k<topk>.png`` per topk when the sweep has
several) atomically, into the sweep folder unless told otherwise.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from .files import write_atomic

EXACT_P_UP_TO = 8  # models: below this, Spearman's p by enumerating every ordering (8! = 40320)
BPB = "1 - bpb"
PARAMS = "log10 params"
_NAME_COLUMNS = ("model", "name", "model_name", "model_id", "id")


def report(sweep_dir: str | os.PathLike, capability: str | os.PathLike | None = None, *,
           reference_set: str | None = None, topk: int | None = None, out_dir: str | os.PathLike | None = None,
           plot: bool = True) -> dict:
    """Alignment to a reference set against capability, with rank correlations.

    Parameters
    ----------
    sweep_dir : path
        A folder written by ``platonic-fast measure`` / :func:`platonic_fast.sweep.measure_sets`
        (its ``scores.json``).
    capability : path, optional
        A CSV table: a header row, a model-name column (``model``, ``name``, ``model_name``,
        ``model_id`` or ``id``; else the first column) and numeric columns. Its rows match the
        sweep's models by file name, or by the model id or path the feature file records (or
        its last path component), exactly, else ignoring case. Empty cells are missing values.
    reference_set : str, optional
        The set aligned *to*: ``"x"``, ``"y"``, or a set's label (``set_names`` in the sweep).
        Default ``"y"`` (the ``--against`` set); for a set measured against itself, that set
        (each model's alignment then leaves out its own score).
    topk : int, optional
        Report this topk only (a sweep with several); default every one.
    out_dir : path, optional
        Where ``report.json`` and the figures go (default ``sweep_dir``).
    plot : bool, default True
        Draw the figure (needs matplotlib, the ``plot`` extra).

    Returns
    -------
    dict
        What ``report.json`` holds: ``metric``, ``n``, ``reference_set`` and ``subject_set``
        (``which``, ``name``, ``models``), ``capabilities`` (the measures used),
        ``capability_file``, ``unmatched`` (table rows that match no model),
        and ``results``: per topk, ``models`` (``name``, ``alignment``,
        ``alignment_calibrated``, ``capabilities``) and ``correlations`` (``capability``,
        ``scores`` "raw" or "calibrated", ``n``, ``rho``, ``p_value``, ``p_method``: "exact"
        over every ordering up to 8 models, else scipy's t-approximation, ``note``); plus
        ``files``.

    Raises
    ------
    ValueError
        Not a sweep folder, an unknown reference set or topk, a malformed table, or no
        capability measure for any model.
    ImportError
        scipy (rank correlations) or, with ``plot``, matplotlib is missing.

    Examples
    --------
    >>> out = report("scores/", capability="transfer.csv")                 # doctest: +SKIP
    >>> first = out["results"][0]["correlations"][0]                      # doctest: +SKIP
    >>> first["capability"], first["scores"], first["rho"], first["p_value"]  # doctest: +SKIP
    """
    spearman = _spearman()  # what is missing fails before any work
    if plot:
        from .sweep_views import _figure_class

        _figure_class()
    sweep_dir = Path(sweep_dir)
    summary = load_summary(sweep_dir)
    parts = _select_topk(summary, topk)
    ref, subj = _sides(summary, reference_set)
    names = {"x": summary["models_x"], "y": summary["models_y"]}
    infos = _model_infos(summary)
    same_set = _same_set(summary)
    table_columns, table = ([], {}) if capability is None else read_capability(capability)
    matched, unmatched = _match_table(infos[subj], table)

    # Each subject model's capability measures, in a fixed order.
    measures: dict[str, list[float]] = {BPB: [], PARAMS: []}
    for c in table_columns:
        measures.setdefault(c, [])
    for i, info in enumerate(infos[subj]):
        bpb, params = info.get("bpb"), info.get("num_params")
        measures[BPB].append(1.0 - bpb if isinstance(bpb, (int, float)) and math.isfinite(bpb) else math.nan)
        measures[PARAMS].append(math.log10(params) if isinstance(params, (int, float)) and params > 0 else math.nan)
        row = table.get(matched[i], {}) if matched[i] is not None else {}
        for c in table_columns:
            measures[c].append(row.get(c, math.nan))
    measures = {c: v for c, v in measures.items() if any(math.isfinite(x) for x in v)}
    if not measures:
        raise ValueError(
            f"no capability measure for the {subj} models: their feature files record neither bits-per-byte nor "
            "parameter counts" + ("" if capability is None else ", and no row of the table matches them")
            + "; pass --capability TABLE.csv (a model-name column and numeric columns)")

    out = {"format": "platonic_fast.report", "format_version": 1, "sweep": str(sweep_dir),
           "metric": summary.get("metric"), "n": summary.get("n"),
           "reference_set": {"which": ref, "name": _set_name(summary, ref), "models": names[ref]},
           "subject_set": {"which": subj, "name": _set_name(summary, subj), "models": names[subj]},
           "capabilities": list(measures), "capability_file": None if capability is None else str(capability),
           "unmatched": unmatched, "results": []}
    for part in parts:
        raw = _as_matrix(part["scores"])
        cal = part.get("calibration")
        calibrated = None if cal is None else _as_matrix(cal["max"]["calibrated"])
        per_model = {"raw": _alignment(raw, ref, names, same_set)}
        if calibrated is not None:
            per_model["calibrated"] = _alignment(calibrated, ref, names, same_set)
        models = []
        for i, name in enumerate(names[subj]):
            models.append({"name": name, "alignment": _num(per_model["raw"][i]),
                           "alignment_calibrated": _num(per_model["calibrated"][i]) if calibrated is not None else None,
                           "matched_row": matched[i],
                           "capabilities": {c: _num(v[i]) for c, v in measures.items()}})
        correlations = [dict(capability=c, scores=kind, **_correlate(spearman, v, per_model[kind]))
                        for c, v in measures.items() for kind in per_model]
        out["results"].append({"topk": part.get("topk"), "models": models, "correlations": correlations})

    target = Path(out_dir) if out_dir is not None else sweep_dir
    files = {}
    if plot:
        for entry in out["results"]:
            path = target / ("report.png" if len(out["results"]) == 1 else f"report_k{entry['topk']}.png")
            fig = report_figure(out, entry)
            write_atomic(path, lambda tmp, f=fig: f.savefig(tmp, dpi=120, format="png"))
            files["png" if len(out["results"]) == 1 else f"png_k{entry['topk']}"] = path
    files = {"json": target / "report.json", **files}
    write_atomic(files["json"], lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1, allow_nan=False)))
    out["files"] = {k: str(v) for k, v in files.items()}
    return out


# --- reading ----------------------------------------------------------------------------------------


def load_summary(sweep_dir: str | os.PathLike) -> dict:
    """A sweep folder's ``scores.json``, checked to be one this library wrote (format 2) and
    intact (its checksum; see :func:`platonic_fast.sweep_summary.read_summary`)."""
    from .sweep_summary import read_summary

    return read_summary(sweep_dir)


def _same_set(summary: dict) -> bool:
    """Whether the sweep was one set against itself: the same files by content, not by name
    (two checkpoint folders with the same file names are two sets)."""
    return (summary["models_x"] == summary["models_y"]
            and summary.get("fingerprints_x") == summary.get("fingerprints_y")
            and summary.get("fingerprints_x") is not None)


def read_capability(path: str | os.PathLike) -> tuple[list[str], dict[str, dict[str, float]]]:
    """A capability table: ``(numeric column names, {model name: {column: value}})``.

    Columns with any non-numeric entry are left out; empty cells, ``nan`` and ``NA`` are
    missing values (NaN).

    Raises
    ------
    ValueError
        Missing or unreadable file, no header, no numeric column, a repeated or empty model name.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"capability table {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"capability table {path} cannot be read: {e}") from None
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text.strip() else ",", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(text.splitlines(), dialect))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise ValueError(f"capability table {path} needs a header row and at least one model row")
    header = [h.strip() for h in rows[0]]
    lowered = [h.lower() for h in header]
    name_col = next((lowered.index(c) for c in _NAME_COLUMNS if c in lowered), 0)
    table: dict[str, dict[str, float]] = {}
    numeric = {c: True for i, c in enumerate(header) if i != name_col}
    for line, row in enumerate(rows[1:], start=2):
        row = [cell.strip() for cell in row] + [""] * (len(header) - len(row))
        name = row[name_col]
        if not name:
            raise ValueError(f"capability table {path}, line {line}: the model name ({header[name_col]!r}) is empty")
        if name in table:
            raise ValueError(f"capability table {path}: model {name!r} appears twice")
        values = {}
        for i, c in enumerate(header):
            if i == name_col:
                continue
            cell = row[i]
            if cell.lower() in ("", "nan", "na", "n/a", "none", "-"):
                values[c] = math.nan
                continue
            try:
                values[c] = float(cell)
            except ValueError:
                numeric[c] = False
        table[name] = values
    columns = [c for c, ok in numeric.items() if ok]
    if not columns:
        raise ValueError(f"capability table {path} has no numeric column besides the model names "
                         f"({header[name_col]!r})")
    return columns, {name: {c: v.get(c, math.nan) for c in columns} for name, v in table.items()}


def _select_topk(summary: dict, topk) -> list[dict]:
    parts = summary["results"]
    if topk is None:
        return parts
    chosen = [p for p in parts if p.get("topk") == topk]
    if not chosen:
        raise ValueError(f"the sweep has no results for topk={topk}; it has {[p.get('topk') for p in parts]}")
    return chosen


def _set_name(summary: dict, which: str) -> str:
    names = summary.get("set_names") or {}
    return names.get(which) or f"{which.upper()} models"


def _sides(summary: dict, reference_set) -> tuple[str, str]:
    """(reference, subject) among "x" and "y"."""
    same = _same_set(summary)
    if reference_set is None:
        ref = "y"
    elif reference_set in ("x", "y"):
        ref = reference_set
    else:
        labels = {w: _set_name(summary, w) for w in ("x", "y")}
        hits = [w for w, label in labels.items() if label == reference_set]
        if not hits:
            raise ValueError(f"reference set must be x, y or a set's name ({labels['x']!r}, {labels['y']!r}), "
                             f"got {reference_set!r}")
        ref = hits[-1]
    return (ref, ref) if same else (ref, "x" if ref == "y" else "y")


def _model_infos(summary: dict) -> dict[str, list[dict]]:
    models = summary.get("models") or {}
    out = {}
    for side in ("x", "y"):
        infos = models.get(side) if isinstance(models.get(side), list) else []
        by_name = {i.get("name"): i for i in infos if isinstance(i, dict)}
        out[side] = [by_name.get(n, {"name": n}) for n in summary[f"models_{side}"]]
    return out


def _keys_of(info: dict) -> list[str]:
    keys = [info.get("name")]
    for field in ("model", "model_id"):
        v = info.get(field)
        if isinstance(v, str) and v:
            keys += [v, v.rstrip("/").replace("/", "_"), Path(v.rstrip("/")).name]
    # extract names files <model>_pool-<pooling>: the model part too
    keys += [re.sub(r"_pool-[A-Za-z0-9]+$", "", k) for k in keys if k]
    return [k for k in dict.fromkeys(keys) if k]


def _norm(name: str) -> str:
    return name.strip().rstrip("/").lower().replace("/", "_")


def _match_table(infos: list[dict], table: dict) -> tuple[list[str | None], list[str]]:
    """For each model, the table row that names it (or None); and the rows that named none.

    Exact names first; then ignoring case with "/" read as "_" (hub ids against file names),
    a row's last path component included."""
    loose = {}
    for name in table:
        for key in (_norm(name), _norm(Path(name.rstrip("/")).name)):
            loose.setdefault(key, name)
    matched = []
    for info in infos:
        keys = _keys_of(info)
        hit = next((k for k in keys if k in table), None)
        if hit is None:
            hit = next((loose[_norm(k)] for k in keys if _norm(k) in loose), None)
        matched.append(hit)
    used = set(m for m in matched if m is not None)
    return matched, [name for name in table if name not in used]


# --- numbers ----------------------------------------------------------------------------------------


def _as_matrix(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float64)  # None (a NaN written as null) becomes NaN


def _alignment(matrix: np.ndarray, ref: str, names: dict, same_set: bool) -> np.ndarray:
    """Each subject model's mean score over the reference models (its own score left out when
    both sets are one)."""
    m = matrix if ref == "y" else matrix.T  # rows: subject models, columns: reference models
    m = m.copy()
    if same_set:
        np.fill_diagonal(m, np.nan)
    finite = np.isfinite(m)
    count = finite.sum(axis=1)
    total = np.where(finite, m, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _spearman():
    try:
        from scipy.stats import spearmanr
    except ImportError as e:
        raise ImportError("platonic-fast report needs scipy for Spearman's rank correlation: pip install scipy "
                          "(it comes with the 'plot' extra: pip install 'platonic_fast[plot]')") from e
    return spearmanr


def _correlate(spearman, capability, alignment) -> dict:
    x = np.asarray(capability, dtype=np.float64)
    y = np.asarray(alignment, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 3:
        return {"n": n, "rho": None, "p_value": None, "note": f"{n} model(s) with both values; needs 3"}
    x, y = x[keep], y[keep]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": n, "rho": None, "p_value": None, "note": "constant values: no rank correlation"}
    res = spearman(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    method = "t-approximation"
    if n <= EXACT_P_UP_TO:
        p, method = _exact_p(x, y, rho), "exact"
    return {"n": n, "rho": rho if math.isfinite(rho) else None, "p_value": p if math.isfinite(p) else None,
            "p_method": method, "note": None}


def _exact_p(x: np.ndarray, y: np.ndarray, rho: float) -> float:
    """Two-sided p of Spearman's rho over all n! orderings of y (scipy's t-approximation says
    p = 0 for a perfect correlation of 4 models, where the exact value is 2/24)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
    orders = np.array(list(itertools.permutations(range(len(y)))))
    null = (ry[orders] @ rx) / math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(np.mean(np.abs(null) >= abs(rho) - 1e-12))


# --- the figure -------------------------------------------------------------------------------------


def report_figure(out: dict, entry: dict):
    """The report's figure for one topk entry of :func:`report`'s result: a column per
    capability measure, raw alignment on top and calibrated alignment below (when the sweep
    ran permutations), each panel titled with its Spearman ρ and p-value.

    Raises
    ------
    ImportError
        matplotlib is missing (the ``plot`` extra).
    """
    from .sweep_views import _figure_class, _wrapped, display_names, wrap_name

    figure = _figure_class()
    kinds = ["raw"] + (["calibrated"] if any(m["alignment_calibrated"] is not None for m in entry["models"]) else [])
    caps = out["capabilities"]
    width = 3.6 * len(caps) + 0.4
    fig = figure(figsize=(width, 3.2 * len(kinds) + 1.0), layout="constrained")
    labels = dict(zip((m["name"] for m in entry["models"]), display_names([m["name"] for m in entry["models"]])))
    axes = fig.subplots(len(kinds), len(caps), squeeze=False)
    corr = {(c["capability"], c["scores"]): c for c in entry["correlations"]}
    ref_name = out["reference_set"]["name"]
    for r, kind in enumerate(kinds):
        field = "alignment" if kind == "raw" else "alignment_calibrated"
        for c, cap in enumerate(caps):
            ax = axes[r][c]
            xs = [m["capabilities"][cap] for m in entry["models"]]
            ys = [m[field] for m in entry["models"]]
            pts = [(x, y, m["name"]) for x, y, m in zip(xs, ys, entry["models"]) if x is not None and y is not None]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28,
                           marker="o" if kind == "raw" else "s",
                           facecolors="C0" if kind == "raw" else "none", edgecolors="C0" if kind == "raw" else "C3")
                for x, y, name in pts:
                    ax.annotate(wrap_name(labels[name], 24), (x, y), fontsize=5.5, xytext=(3, 3),
                                textcoords="offset points",
                                alpha=0.8)
            stats = corr[(cap, kind)]
            if stats["rho"] is not None:
                ax.set_title(f"Spearman ρ = {stats['rho']:.2f} (p = {stats['p_value']:.2g}, n = {stats['n']})",
                             fontsize=8)
            else:
                ax.set_title(stats["note"], fontsize=8)
            ax.set_xlabel(cap)
            metric = out["metric"]
            ax.set_ylabel(f"{'calibrated ' if kind == 'calibrated' else ''}{metric}\nto {ref_name} (mean)",
                          fontsize=8)
            ax.grid(alpha=0.3)
            ax.margins(x=0.2, y=0.1)  # room for the names beside the points
    topk = f", topk={entry['topk']}" if entry.get("topk") is not None else ""
    fig.suptitle(_wrapped(f"{out['subject_set']['name']}: alignment to {ref_name} vs capability ({out['metric']}"
                          f"{topk}, N={out['n']})", width, 9), fontsize=9)
    return fig


__all__ = ["load_summary", "read_capability", "report", "report_figure"]
