"""Geometry of a representation against CIELAB: a 3-D layout, its Procrustes residual, Spearman ρ.

- ``procrustes``: the representation's pairwise distances are laid out in 3-D by metric MDS
  (SMACOF from a classical-MDS start, :func:`metric_mds`), aligned to centred CIELAB by a
  Kabsch–Umeyama similarity transform (rotation, uniform scale, translation; a reflection is
  allowed, since an MDS layout's handedness is arbitrary), and the residual reported is
  RMS_i ‖s R x_i + t - lab_i‖ / RMS_i ‖lab_i - mean(lab)‖: 0 is a perfect match, 1 is no better
  than putting every colour at the mean (:func:`procrustes_residual`).
- ``spearman``: Spearman rank correlation between all pairwise Euclidean distances of the
  representation and the pairwise ΔE76 (:func:`distance_spearman`, :class:`RankedDistances`).

Why not the library versions: ``sklearn.manifold.MDS``/``smacof`` stop on a different criterion
(and normalise the stress), so the layouts and the reported numbers would change;
``scipy.spatial.procrustes`` and ``scipy.linalg.orthogonal_procrustes`` always allow a
reflection (the rotation-only fit is needed too) and return standardised coordinates, while the
figure needs the layout in CIELAB units. Spearman ρ is scipy's ranks and distances.
"""

from __future__ import annotations

import numpy as np


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


class RankedDistances:
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


def layout(x: np.ndarray, lab: np.ndarray, *, max_iter: int = 300) -> dict:
    """3-D metric-MDS layout of x aligned to CIELAB, its Procrustes residual and stress.

    Parameters
    ----------
    x : np.ndarray, shape (N, D)
        A representation (its Euclidean distances are laid out).
    lab : np.ndarray, shape (N, 3)
        CIELAB coordinates of the same N colours.
    max_iter : int
        SMACOF iterations at most.

    Returns
    -------
    dict with ``procrustes`` (float), ``mds_stress`` (float) and ``aligned`` ((N, 3) layout in CIELAB units)
    """
    from scipy.spatial.distance import pdist, squareform

    emb, stress = metric_mds(squareform(pdist(x)), 3, max_iter=max_iter)
    resid, aligned = procrustes_residual(emb, lab)
    return {"procrustes": resid, "mds_stress": stress, "aligned": aligned}
