"""Data for the colour case study: the XKCD colour names in CIELAB and photographs' pixel pairs.

Everything here comes from packages the demo already depends on, so it runs offline:

- the 949 colour names of the XKCD colour survey with their sRGB values, as matplotlib ships
  them (:func:`platonic_fast.features.datasets.xkcd_srgb`, the set ``extract --colours`` reads
  too), and their CIELAB coordinates (D65, 2° observer, ``skimage.color.rgb2lab``);
- the colour photographs that scikit-image ships inside its wheel (:data:`PHOTOGRAPHS`), from
  which pairs of nearby pixels are drawn to estimate how often two quantised colours co-occur.
"""

from __future__ import annotations

import numpy as np

from ..features.datasets import xkcd_srgb

# Real colour photographs bundled with scikit-image (no download). Synthetic test images
# (colorwheel, logo, chessboard, ...) are left out on purpose: their colours are drawn, not seen.
PHOTOGRAPHS: tuple[str, ...] = (
    "astronaut",             # NASA portrait of Eileen Collins
    "coffee",                # a cup of coffee on a table
    "chelsea",               # a tabby cat
    "rocket",                # a rocket on its launch pad at dusk
    "stereo_motorcycle",     # a motorcycle in a workshop (left image of the stereo pair)
    "hubble_deep_field",     # Hubble eXtreme Deep Field, galaxies on a black sky
    "immunohistochemistry",  # stained human colon tissue under a microscope
    "retina",                # fundus photograph of a human retina
)

# Each colour word goes into these three sentences, as in the paper.
SENTENCES: tuple[str, ...] = ("The color {}.", "This color is {}.", "The color of this thing is {}.")


def xkcd_colours() -> tuple[list[str], np.ndarray, np.ndarray]:
    """The 949 XKCD survey colours.

    Returns
    -------
    names : list[str]
        Colour names without the ``"xkcd:"`` prefix, in matplotlib's order.
    rgb : np.ndarray, float64, shape (949, 3)
        sRGB in [0, 1].
    lab : np.ndarray, float64, shape (949, 3)
        CIELAB (L* in [0, 100]) of ``rgb`` under D65.

    Examples
    --------
    >>> names, rgb, lab = xkcd_colours()                    # doctest: +SKIP
    >>> lab[names.index("white")].round(2)                  # doctest: +SKIP
    array([100.,   0.,   0.])
    """
    from skimage.color import rgb2lab

    names, rgb = xkcd_srgb()
    lab = rgb2lab(rgb[None]).reshape(-1, 3)
    return names, rgb, lab


def load_photographs(names: tuple[str, ...] = PHOTOGRAPHS) -> list[tuple[str, np.ndarray]]:
    """(name, H x W x 3 uint8 image) for each scikit-image photograph in ``names``."""
    import skimage.data

    out = []
    for name in names:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
            img = img[0]
        out.append((name, np.ascontiguousarray(img[..., :3], dtype=np.uint8)))
    return out


def disc_offsets(radius: float) -> np.ndarray:
    """All integer offsets (dy, dx) with 0 < dy² + dx² <= radius², shape (M, 2)."""
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = (dy**2 + dx**2 <= radius**2) & ((dy != 0) | (dx != 0))
    return np.stack([dy[keep], dx[keep]], axis=1)


def sample_pixel_pairs(image: np.ndarray, n_pairs: int, radius: float, rng: np.random.Generator):
    """Colours of ``n_pairs`` random pixel pairs at most ``radius`` pixels apart (Euclidean).

    The offset is uniform over the integer points of the disc (origin excluded); the first pixel
    is then uniform over the positions where both pixels fall inside the image.

    Returns
    -------
    first, second : np.ndarray, uint8, shape (n_pairs, 3)
    """
    h, w = image.shape[:2]
    offsets = disc_offsets(radius)
    off = offsets[rng.integers(0, len(offsets), size=n_pairs)]
    dy, dx = off[:, 0], off[:, 1]
    y = rng.integers(np.maximum(0, -dy), h - np.maximum(0, dy))
    x = rng.integers(np.maximum(0, -dx), w - np.maximum(0, dx))
    return image[y, x], image[y + dy, x + dx]


def quantise(rgb_u8: np.ndarray, levels: int) -> np.ndarray:
    """Index of the RGB grid cell (``levels`` per channel) of each uint8 colour, shape (...,)."""
    q = (rgb_u8.astype(np.int64) * levels) // 256
    return (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]


def cell_centres(levels: int) -> np.ndarray:
    """sRGB in [0, 1] of the centre of every grid cell, shape (levels³, 3), in index order."""
    c = (np.arange(levels) + 0.5) / levels
    r, g, b = np.meshgrid(c, c, c, indexing="ij")
    return np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1)


def grid_cells(rgb: np.ndarray, levels: int) -> np.ndarray:
    """Centre (sRGB in [0, 1]) of the grid cell each colour of ``rgb`` (N x 3 in [0, 1]) falls in."""
    return cell_centres(levels)[quantise(np.round(rgb * 255).astype(np.uint8), levels)]


def cooccurrence(first: np.ndarray, second: np.ndarray, n_cells: int) -> np.ndarray:
    """Symmetric co-occurrence counts of cell indices: each pair counts as (a, b) and (b, a).

    Returns
    -------
    np.ndarray, float64, shape (n_cells, n_cells)
    """
    flat = np.bincount(first * n_cells + second, minlength=n_cells * n_cells).reshape(n_cells, n_cells)
    return (flat + flat.T).astype(np.float64)


def pmi(counts: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """Pointwise mutual information log p(a, b) / (p(a) p(b)) from symmetric joint counts.

    ``smoothing`` = α mixes the empirical joint with the independent one,
    p̂(a, b) = (p(a, b) + α p(a) p(b)) / (1 + α), so PMI = log((r + α) / (1 + α)) with
    r = p(a, b) / (p(a) p(b)): pairs never seen together get the floor log(α / (1 + α)) instead
    of -inf, and pairs seen often keep nearly their raw PMI. Rows and columns of cells that were
    never seen are NaN.

    Parameters
    ----------
    counts : np.ndarray, shape (C, C)
        Symmetric joint counts (see :func:`cooccurrence`).
    smoothing : float, default 0.0
        α >= 0; with 0, pairs never seen together give -inf.

    Examples
    --------
    >>> float(pmi(np.array([[4.0, 0.0], [0.0, 4.0]]), smoothing=0.1)[0, 1])   # log(0.1 / 1.1)
    -2.3978952727983707
    """
    total = counts.sum()
    marg = counts.sum(axis=1) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (counts / total) / np.outer(marg, marg)
        return np.log((ratio + smoothing) / (1.0 + smoothing))
