"""A sweep's summary files, ``scores.json`` and ``scores.npz``, written and read as one unit.

``scores.json`` carries a ``checksum`` (sha256 of its canonical JSON without that field);
``scores.npz`` carries the same value as ``summary_checksum`` and the run's ``metric`` and
``settings`` (JSON). The npz is written first and the JSON last, each atomically, so after a
kill between the two the JSON is the previous run's and its checksum no longer names the npz:
:func:`read_summary` refuses the pair instead of mixing runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .files import checksum_ok, with_checksum, write_atomic
from .sweep_records import CALIBRATION_FIELDS, CI_FIELDS, dumps, jsonable, matrix
from .sweep_views import _heatmap, _n_grid_plot

SUBSET_ORDER = "argsort of splitmix64(i xor splitmix64(seed)), i = 0..N-1; the subset of n is its first n, sorted"


def summary_of(res) -> dict:
    """The scores.json content of one result: matrices over model pairs, then every pair whole."""
    out = {"scores": matrix(res.scores), "best_layers": res.best_layers.tolist(), "chance": matrix(res.chance),
           "calibration": None}
    if res.settings.get("permutations") is not None:
        out["calibration"] = {
            "permutations": res.settings["permutations"], "alpha": res.settings["alpha"],
            "seed": res.settings["seed"],
            **{how: {f: matrix(res.calibration_matrix(f, how)) for f in CALIBRATION_FIELDS}
               for how in ("max", "mean")}}
    ci = res.settings.get("ci")
    out["ci"] = None if ci is None else {**ci, **{f: matrix(res.ci_matrix(f)) for f in CI_FIELDS}}
    out["pairs"] = [
        {"x": res.names_x[i], "y": res.names_y[j], "i": i, "j": j,
         **{k: r.get(k) for k in ("score", "best_layers", "layer_scores", "chance", "calibration", "ci")}}
        for (i, j), r in sorted(res.records.items())]
    return out


def npz_arrays(res, prefix: str = "") -> dict:
    """scores.npz arrays of one result: the (Mx, My) matrices and ``layer_scores_<i>_<j>`` per pair;
    with permutations ``p_value``, ``calibrated``, ``tau`` (of the max), ``mean_*`` (of the mean),
    ``null_max`` / ``null_mean`` (Mx, My, K) and ``pair_p_<i>_<j>``; with intervals ``ci_low``,
    ``ci_high``, ``ci_estimate``, ``ci_std_error``."""
    arrays = {"scores": res.scores, "best_layers": res.best_layers, "chance": res.chance}
    for (i, j), r in sorted(res.records.items()):
        arrays[f"layer_scores_{i}_{j}"] = np.array(r["layer_scores"], dtype=np.float64)
    if res.settings.get("permutations") is not None:
        for how, tag in (("max", ""), ("mean", "mean_")):
            for f in CALIBRATION_FIELDS:
                arrays[tag + f] = res.calibration_matrix(f, how)
            null = np.full((*res.scores.shape, res.settings["permutations"]), np.nan)
            for (i, j), r in res.records.items():
                null[i, j] = np.array(r["calibration"][how]["null"], dtype=np.float64)
            arrays[f"null_{how}"] = null
        for (i, j), r in sorted(res.records.items()):
            arrays[f"pair_p_{i}_{j}"] = np.array(r["calibration"]["pair_p"], dtype=np.float64)
    if res.settings.get("ci") is not None:
        for f in CI_FIELDS:
            arrays[f"ci_{f}"] = res.ci_matrix(f)
    if res.by_n:
        arrays["ngrid_n"] = np.array(res.n_sizes, dtype=np.int64)
        arrays["ngrid_best_layers"] = np.stack([res.by_n[n].best_layers for n in res.n_sizes])
        for what in ("scores", "chance") + (("calibrated", "p_value") if res.settings.get("permutations") is not None
                                            else ()) + (("ci_low", "ci_high") if res.settings.get("ci") else ()):
            arrays[f"ngrid_{what}"] = res.n_grid_matrix(what)
    return {prefix + k: v for k, v in arrays.items()}


def _topk_tag(k) -> str:
    return "" if k is None else f"k{k}_"


def write_summary(results: list, out: Path, auto_scale: bool = False) -> dict:
    """scores.json, scores.npz and the heat maps of every topk, each written atomically; the
    npz first, keyed by the JSON's checksum, the JSON last.

    scores.json holds ``results``, one entry per topk (``topk``, the matrices over model
    pairs, ``pairs`` with every pair's layer matrix and calibration); with a single topk its
    matrices (``scores``, ``best_layers``, ``chance``, ``calibration``) are also at the top
    level. scores.npz holds each topk's arrays prefixed ``k<topk>_`` (no prefix for the
    metrics without topk), and with a single topk also the matrices unprefixed.
    """
    from . import __version__

    first = results[0]
    files = {"json": out / "scores.json", "npz": out / "scores.npz"}
    topks = [r.topk for r in results]
    summary = {"format": "platonic_fast.sweep", "format_version": 2, "version": __version__,
               "metric": first.metric, "settings": {**first.settings, "topk": topks}, "topk": topks, "n": first.n,
               "run": first.run, "set_names": {"x": first.set_names[0], "y": first.set_names[1]},
               "models_x": first.names_x, "models_y": first.names_y,
               "fingerprints_x": first.fingerprints_x, "fingerprints_y": first.fingerprints_y,
               "samples": first.samples, "models": {"x": first.models_x, "y": first.models_y}}
    parts = [{"topk": r.topk, **summary_of(r)} for r in results]
    if len(parts) == 1:  # one topk: its matrices at the top level too, as before several existed
        summary.update({k: v for k, v in parts[0].items() if k not in ("pairs", "topk")})
    summary["results"] = parts
    if first.n_grid is not None:
        summary["n_grid"] = {"n": first.n_sizes, "seed": first.n_grid["seed"], "order": SUBSET_ORDER,
                             "results": [_grid_summary(r) for r in results]}
    summary = with_checksum(jsonable(summary))

    arrays = {"models_x": np.array(first.names_x), "models_y": np.array(first.names_y),
              "topk": np.array([-1 if k is None else k for k in topks]),
              "metric": np.array(first.metric), "settings": np.array(json.dumps(summary["settings"], sort_keys=True)),
              "summary_checksum": np.array(summary["checksum"])}
    for r in results:
        arrays.update(npz_arrays(r, _topk_tag(r.topk)))
    if len(results) == 1 and first.topk is not None:
        arrays.update({k: v for k, v in npz_arrays(first).items() if not k.startswith(("layer_scores_", "pair_p_"))})

    def save_npz(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomic(files["npz"], save_npz)
    write_atomic(files["json"], lambda tmp: Path(tmp).write_text(dumps(summary, indent=1)))
    for r in results:
        png = out / ("heatmap.png" if len(results) == 1 else f"heatmap_k{r.topk}.png")
        if _heatmap(r, png, auto_scale):
            files["png" if len(results) == 1 else f"png_k{r.topk}"] = png
        if r.n_grid is not None:
            png = out / ("n_grid.png" if len(results) == 1 else f"n_grid_k{r.topk}.png")
            if _n_grid_plot(r, png):
                files["n_grid_png" if len(results) == 1 else f"n_grid_png_k{r.topk}"] = png
    return files


def _grid_summary(res) -> dict:
    """scores.json's ``n_grid`` entry of one topk: (G, Mx, My) matrices over the sizes, and each
    curve's pair."""
    out = {"topk": res.topk, "n": res.n_sizes, "scores": matrix(res.n_grid_matrix("scores")),
           "chance": matrix(res.n_grid_matrix("chance")),
           "best_layers": np.stack([res.by_n[n].best_layers for n in res.n_sizes]).tolist()}
    if res.settings.get("permutations") is not None:
        out.update(calibrated=matrix(res.n_grid_matrix("calibrated")), p_value=matrix(res.n_grid_matrix("p_value")))
    if res.settings.get("ci") is not None:
        out.update(ci_low=matrix(res.n_grid_matrix("ci_low")), ci_high=matrix(res.n_grid_matrix("ci_high")))
    out["curves"] = [{"x": res.names_x[i], "y": res.names_y[j], "i": i, "j": j} for i, j in res.curve_pairs()]
    return out


def read_summary(sweep_dir: str | os.PathLike, npz: bool = False):
    """A sweep folder's ``scores.json`` (and with ``npz``, ``(summary, arrays of scores.npz)``),
    checked: written by this library (format 2), its checksum intact, and the npz of the same run.

    Raises
    ------
    ValueError
        Naming the file and what to do (run ``measure`` again: finished pairs are reused).
    """
    path = Path(sweep_dir)
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder; give the output folder of platonic-fast measure")
    file = path / "scores.json"
    again = "run platonic-fast measure again into that folder (finished pairs are reused)"
    try:
        summary = json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} holds no scores.json; give the output folder of platonic-fast measure") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{file} cannot be read as JSON ({e}); {again}") from None
    if not isinstance(summary, dict) or summary.get("format") != "platonic_fast.sweep" \
            or not isinstance(summary.get("results"), list) or not summary["results"]:
        raise ValueError(f"{file} was not written by this version's platonic-fast measure (no format 2 "
                         f"results); {again}")
    if not checksum_ok(summary):
        raise ValueError(f"{file} fails its checksum (edited by hand, damaged, or written before checksums); {again}")
    if not npz:
        return summary
    npz_file = path / "scores.npz"
    try:
        with np.load(npz_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{npz_file} cannot be read ({e}); {again}") from None
    if str(arrays.get("summary_checksum", "")) != summary["checksum"]:
        raise ValueError(f"{npz_file} is not of the same run as {file} (an interrupted write); {again}")
    return summary, arrays
