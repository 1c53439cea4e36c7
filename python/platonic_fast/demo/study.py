"""The colour study's jobs: features, scores against CIELAB, layouts; :func:`run` is the CLI's entry.

Every representation is scored against CIELAB with ``topk`` = 10. Learned representations
(language layers, the vision representation) are prepared as :func:`platonic_fast.align` does
(:func:`~platonic_fast.demo.representations.prepare_representation`), so their kernel is the
cosine similarity and their neighbours are by inner product. CIELAB is *not* L2-normalised: its
geometry is Euclidean. Its side (:class:`EuclideanTarget`) is:

- kNN (``mutual_knn``, ``cknna``): the k nearest colours by ΔE76, computed exactly with the
  library's inner-product kNN in its cross form: queries [x, 1] against keys [x, -‖x‖²/2] rank
  every j by x_i·x_j - ‖x_j‖²/2 = -ΔE²/2 + const(i).
- kernel for ``cknna``: K_ij = 1 - ΔE_ij² / (2 s²), s² the mean squared distance of a colour to
  the mean colour. Its top-k are exactly those ΔE neighbours, as CKNNA's definition requires; it
  has the form of a cosine kernel of unit vectors (1 - ‖a - b‖² / 2), and after centring it
  equals the linear kernel of centred Lab (scaled to unit RMS norm), the geometry CKA sees.
  (CKNNA masks the kernels, so it is not shift-invariant: the constant matters, and this one
  puts both sides on the same footing.)
- kernel for ``unbiased_cka``: the linear kernel of centred Lab (``pf.unbiased_cka``).

The colour spaces used as references (sRGB, the RGB grid cell) are treated like CIELAB.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

import platonic_fast as pf

from . import data, geometry, report
from .representations import colour_word_features, prepare_representation, shuffled, vision_pmi_features

METRICS = ("mutual_knn", "cknna", "unbiased_cka")
TOPK = 10


class EuclideanTarget:
    """A colour space (CIELAB, sRGB) prepared once for every metric (see the module doc).

    Parameters
    ----------
    coords : np.ndarray, shape (N, 3)
        Colour coordinates; distances are Euclidean.
    topk : int
        Neighbours per colour.

    Attributes
    ----------
    centred : torch.Tensor, shape (N, 3), float64
        ``coords`` minus their mean (the unbiased-CKA side).
    neighbours : platonic_fast.Prepared
        The ``cknna`` state: the ``topk`` nearest colours (self excluded) and their kernel values.
    mutual : platonic_fast.Prepared
        The ``mutual_knn`` state on the same lists.
    topk : int
    """

    def __init__(self, coords: np.ndarray, topk: int):
        self.centred = torch.from_numpy(coords - coords.mean(0))
        c = self.centred
        n = c.shape[0]
        sq = (c**2).sum(1, keepdim=True)
        queries = torch.cat([c, torch.ones(n, 1, dtype=c.dtype)], dim=1)
        keys = torch.cat([c, -0.5 * sq], dim=1)
        _, idx = pf.knn(queries, keys, topk + 1)  # self (or an identical colour) included
        idx = _drop_self(idx, topk)
        # 1 - ΔE²/(2 s²), s² the mean squared norm of centred coordinates: the form a cosine
        # kernel of unit vectors has (1 - ‖a - b‖²/2), equal on average to the linear kernel of
        # the centred coordinates scaled to unit RMS norm.
        scale = float(sq.mean())
        vals = 1.0 - 0.5 * ((c[:, None, :] - c[idx]) ** 2).sum(-1) / scale
        self.neighbours = pf.Prepared.from_neighbours("cknna", idx, vals, topk=topk)
        self.mutual = pf.Prepared.from_neighbours("mutual_knn", idx, topk=topk)
        self.topk = topk


def _drop_self(idx: torch.Tensor, topk: int) -> torch.Tensor:
    """Rows of k+1 neighbours -> k, removing the row's own index (else the last entry)."""
    n = idx.shape[0]
    is_self = idx == torch.arange(n)[:, None]
    drop = torch.where(is_self.any(1), is_self.float().argmax(1), torch.full((n,), topk))
    keep = torch.ones_like(idx, dtype=torch.bool)
    keep[torch.arange(n), drop] = False
    return idx[keep].reshape(n, topk)


def scores_against(layer: torch.Tensor, target: EuclideanTarget) -> dict:
    """mutual_knn, cknna and unbiased_cka of one prepared layer (rows L2-normalised) vs a colour space."""
    k = target.topk
    own = pf.prepare("cknna", layer, topk=k)
    # mutual_knn on the cknna lists (the same self-excluded kNN): one kNN pass, not two.
    own_mutual = pf.Prepared.from_neighbours("mutual_knn", own.indices, topk=k)
    return {
        "mutual_knn": pf.score(own_mutual, target.mutual),
        "cknna": pf.score(own, target.neighbours),
        "unbiased_cka": float(pf.unbiased_cka(layer, target.centred)),
    }


def colour_space_scores(coords: np.ndarray, target: EuclideanTarget) -> dict:
    """The same three scores for another colour space, treated like CIELAB (Euclidean)."""
    other = EuclideanTarget(coords, target.topk)
    return {
        "mutual_knn": pf.score(other.mutual, target.mutual),
        "cknna": pf.score(other.neighbours, target.neighbours),
        "unbiased_cka": float(pf.unbiased_cka(other.centred, target.centred)),
    }


# Uncertainty of the mutual kNN scores: permutations of the colour rows (p-value, calibrated
# score) and subsamples of half the colours (an interval), for the representations compared.
# Intervals only where the figure compares two scores (trained vs random weights): each half
# costs two kNN passes, a permutation almost nothing.
PERMUTATIONS = 200
SUBSAMPLES = 20
UNCERTAIN = {"minilm": SUBSAMPLES, "minilm_random_weights": SUBSAMPLES, "minilm_shuffled": 0, "vision_pmi": 0}


def mutual_knn_uncertainty(layer: torch.Tensor, coords: np.ndarray, topk: int, *, seed: int,
                           permutations: int = PERMUTATIONS, subsamples: int = SUBSAMPLES,
                           level: float = 0.95) -> dict:
    """The mutual kNN of a prepared layer against a colour space, with its permutation p-value and
    calibrated score (the rows of the layer permuted, its lists relabelled, no kNN recomputed)
    and, with ``subsamples`` >= 2, a ``level`` range of the score on that many random halves of
    the colours (each half's neighbours recomputed on both sides, so it covers the
    neighbourhoods too; a score at N/2, comparable between representations, not an interval of
    the full-N score)."""
    target = EuclideanTarget(coords, topk)
    own = pf.prepare("mutual_knn", layer, topk=topk)
    score = pf.score(own, target.mutual)
    gen = torch.Generator().manual_seed(seed)
    null = torch.tensor([pf.score(own.permute(torch.randperm(layer.shape[0], generator=gen)), target.mutual)
                         for _ in range(permutations)], dtype=torch.float64)
    p, _, calibrated = pf.null_calibration(score, null, alpha=0.05, s_max=1.0)
    out = {"p_value": float(p), "calibrated": float(calibrated), "chance": float(null.mean()),
           "permutations": permutations}
    if subsamples < 2:
        return out
    rng = np.random.default_rng(seed)
    n = layer.shape[0]
    halves = []
    for _ in range(subsamples):
        rows = np.sort(rng.choice(n, n // 2, replace=False))
        sub = EuclideanTarget(coords[rows], topk)
        halves.append(pf.score(pf.prepare("mutual_knn", layer[torch.from_numpy(rows)], topk=topk), sub.mutual))
    lo, hi = np.quantile(halves, [(1 - level) / 2, (1 + level) / 2])
    return {**out, "half_interval": [float(lo), float(hi)], "half_subsamples": subsamples, "half_n": n // 2,
            "level": level}


LAYOUTS = ("cielab", "minilm", "minilm_random_weights", "minilm_shuffled", "vision_pmi", "srgb")
ORDER = ("cielab", "minilm", "minilm_random_weights", "minilm_shuffled", "vision_pmi", "srgb", "rgb_grid_cell")


def run(out_dir: str | Path = "platonic_fast_demo", quick: bool = False, seed: int = 0,
        verbose: bool = True) -> dict:
    """Run the colour study, print its table, write ``colour_study.json`` and ``colour_study.png``.

    Parameters
    ----------
    out_dir : path
        Output folder (created).
    quick : bool
        A faster version for tests: 20 000 pixel pairs instead of 400 000 and at most 15 SMACOF
        iterations instead of 300. All 949 colours are kept: on a third of them the gap between
        the trained and the random-weight MiniLM shrinks to the noise of the random init.
    seed : int
        Seeds the pixel pairs, the random-weight model and (plus one) the shuffled pairing.
    verbose : bool
        Print progress and the table.

    Returns
    -------
    dict
        The numbers written to the JSON file (see its ``"representations"`` entries).

    Examples
    --------
    >>> from platonic_fast.demo import run
    >>> numbers = run("/tmp/colour_study", quick=True)  # doctest: +SKIP
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        return time.perf_counter()

    t = time.perf_counter()
    names, rgb, lab = data.xkcd_colours()
    n = len(names)
    target = EuclideanTarget(lab, TOPK)
    spearman = geometry.RankedDistances(lab)
    say(f"colour study: {n} XKCD colours, alignment to CIELAB (ΔE76), k={TOPK}, seed={seed}"
        + (" [quick]" if quick else ""))
    t = tick("colours", t)

    trained = colour_word_features(names, seed=seed)
    t = tick("minilm_trained", t)
    random_init = colour_word_features(names, random_weights=True, seed=seed)
    t = tick("minilm_random", t)
    vision, vision_info = vision_pmi_features(rgb, n_pairs=20_000 if quick else 400_000, seed=seed)
    t = tick("vision_pmi", t)

    # Entries starting with "_" are working arrays for the layouts and the figure, not written.
    reps: dict[str, dict] = {}
    layered = {
        "minilm": prepare_representation(trained),
        "minilm_random_weights": prepare_representation(random_init),
    }
    layered["minilm_shuffled"] = shuffled(layered["minilm"], seed + 1)[0]
    for name, layers in layered.items():
        per_layer = [scores_against(l, target) for l in layers]
        per_layer_rho = [spearman(l.double().numpy()) for l in layers]
        best = max(range(len(layers)), key=lambda i: (per_layer[i]["mutual_knn"], -i))
        reps[name] = {"layers": per_layer, "spearman_layers": per_layer_rho, "best_layer": best,
                      **per_layer[best], "spearman": per_layer_rho[best], "_x": layers[best].double().numpy()}
    vision_layer = prepare_representation(vision)[0]
    reps["vision_pmi"] = {**scores_against(vision_layer, target),
                          "spearman": spearman(vision_layer.double().numpy()),
                          "_x": vision_layer.double().numpy()}
    cells = data.grid_cells(rgb, vision_info["grid_levels_per_channel"])
    for name, coords in (("cielab", lab), ("srgb", rgb), ("rgb_grid_cell", cells)):
        reps[name] = {**colour_space_scores(coords, target), "spearman": spearman(coords), "_x": coords}
    for name, halves in UNCERTAIN.items():
        reps[name]["uncertainty"] = mutual_knn_uncertainty(torch.from_numpy(reps[name]["_x"]).float(), lab, TOPK,
                                                           seed=seed, subsamples=halves)
    t = tick("alignment", t)

    iters = 15 if quick else 300
    for name in LAYOUTS:
        lay = geometry.layout(reps[name]["_x"], lab, max_iter=iters)
        reps[name]["procrustes"] = lay["procrustes"]
        reps[name]["mds_stress"] = lay["mds_stress"]
        reps[name]["_layout"] = lay["aligned"]
    t = tick("mds_procrustes", t)

    reps = {k: reps[k] for k in ORDER}
    say(report.table(reps))

    record = report.record(reps, names, quick=quick, seed=seed, topk=TOPK, vision_info=vision_info,
                           language_shape=tuple(trained.shape[1:]))
    png = report.figure(reps, rgb, out / "colour_study.png", topk=TOPK, vision_info=vision_info)
    t = tick("figure", t)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    record["seconds"] = timings
    js = report.write_json(out / "colour_study.json", record)
    say(f"wrote {js} and {png} in {timings['total']:.1f} s")
    return record
