"""The reference's own SVCCA estimator, for ``compat.AlignmentMetrics.svcca``.

What the reference does (minyoungg/platonic-rep, ``metrics.py``, ``AlignmentMetrics.svcca``,
read at commit 07ef02ab7629ad6fe0fce1a02d70144a55b2c537):

1. standardise each feature set in its own dtype and on its own device: subtract the column
   mean, divide by the column's unbiased std + 1e-8 (no special case for constant columns);
2. ``torch.svd_lowrank(x, q=cca_dim)`` on each set, A first: torch's randomised SVD (Halko et
   al. 2009) with its defaults, ``niter=2`` subspace iterations and no oversampling beyond ``q``;
   its Gaussian test matrix comes from the global torch RNG of the input's device;
3. ``sklearn.cross_decomposition.CCA(n_components=cca_dim)`` with scikit-learn's defaults
   (``scale=True``, ``max_iter=500``, ``tol=1e-6``), fitted on the two N x cca_dim bases U_A, U_B
   (float32 for float32 features), then ``transform(U_A, U_B)`` gives the canonical scores;
4. ``1e-10 * np.random.randn`` added to the A scores, then to the B scores (NumPy's global RNG),
   "to avoid NaN";
5. the score is the mean over the cca_dim components of the Pearson correlation of the paired
   score columns (``np.corrcoef``), returned as ``np.float64``.

Step 2 is what moves the number: with no oversampling and two power iterations, a flat spectrum
(Gaussian-like, unnormalised features) leaves the q-dimensional subspace far from the exact top
singular directions, so the score falls well below the exact SVCCA of ``platonic_fast.svcca``
and varies from run to run; with a clear gap after the top ``cca_dim`` values both agree.

This module does the same steps in the same order with the same random draws, so after
``torch.manual_seed(s); np.random.seed(s)`` it returns what the reference returns in the same
environment (same torch and scikit-learn versions: ``torch.svd_lowrank`` changed its internal
order of operations across torch releases).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .. import metrics as _m
from .._checks import check_int, check_pair

_INSTALL_HINT = ("compat.AlignmentMetrics.svcca reproduces the reference's estimator, which uses "
                 "scikit-learn's CCA; install it with pip install 'platonic_fast[compat]' "
                 "(or pip install scikit-learn). platonic_fast.svcca needs no scikit-learn.")


def _cca_class():
    try:
        from sklearn.cross_decomposition import CCA
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return CCA


@contextlib.contextmanager
def _torch_rng(device: torch.device, seed: int | None):
    """With a seed, the draws of ``device``'s torch generator come from ``seed`` inside the block
    and the global state is restored afterwards; without one, the global generator is used."""
    if seed is None:
        yield
        return
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            torch.cuda.manual_seed(seed)
            yield
    else:
        raise ValueError(f"seed= is supported for CPU and CUDA features, got features on {device}; "
                         "seed the global generator (torch.manual_seed) instead")


def _standardise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=0)
    return x / (x.std(dim=0) + 1e-8)


def _paired_correlations(sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Pearson correlation of column i of ``sa`` with column i of ``sb``, for every i."""
    ca = sa - sa.mean(axis=0)
    cb = sb - sb.mean(axis=0)
    r = (ca * cb).sum(axis=0) / np.sqrt((ca * ca).sum(axis=0) * (cb * cb).sum(axis=0))
    return np.clip(r, -1.0, 1.0)


def reference_svcca(feats_A, feats_B, cca_dim: int = 10, *, seed: int | None = None) -> np.float64:
    """SVCCA computed the way platonic-rep computes it (randomised SVD, iterative CCA, noise).

    Parameters
    ----------
    feats_A, feats_B : torch.Tensor or np.ndarray, shapes (N, Da) and (N, Db)
        float32 and float64 are used as they are (as the reference does); float16 and bfloat16,
        which the reference's randomised SVD cannot take on the CPU, are upcast to float32.
    cca_dim : int, default 10
        1 <= cca_dim <= min(N, Da, Db).
    seed : int or None, default None
        None draws from the global generators, as the reference does: torch's for the input's
        device (the randomised SVD) and NumPy's legacy ``np.random`` (the 1e-10 noise), and
        advances them; the value then varies from call to call. An integer in [0, 2**32) seeds
        private copies of both, leaving the global states untouched: the same seed gives the
        same value, namely the reference's after ``torch.manual_seed(seed); np.random.seed(seed)``.

    Returns
    -------
    np.float64

    Raises
    ------
    ImportError
        scikit-learn is not installed (the ``compat`` extra).
    ValueError, TypeError
        Bad features or ``cca_dim``, with the messages of :func:`platonic_fast.svcca`.

    Warns
    -----
    sklearn.exceptions.ConvergenceWarning
        Passed on from scikit-learn when its CCA stops at ``max_iter`` (common with near-equal
        canonical correlations), as the reference shows it.
    """
    a, b = check_pair(feats_A, feats_B, metric="svcca")
    cca_dim = _m.metric_spec("svcca").check_options(a.shape[0], (a.shape[1], b.shape[1]),
                                                    {"cca_dim": cca_dim})["cca_dim"]
    if seed is not None:
        seed = check_int(seed, "seed", low=0, high=2**32 - 1)
    CCA = _cca_class()

    bases = []
    with torch.no_grad(), _torch_rng(a.device, seed):
        for x in (a, b):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            u, _, _ = torch.svd_lowrank(_standardise(x), q=cca_dim)
            bases.append(u.cpu().numpy())

    cca = CCA(n_components=cca_dim)
    cca.fit(*bases)
    scores_a, scores_b = cca.transform(*bases)
    rng = np.random if seed is None else np.random.RandomState(seed)
    scores_a = scores_a + 1e-10 * rng.randn(*scores_a.shape)
    scores_b = scores_b + 1e-10 * rng.randn(*scores_b.shape)
    return np.float64(np.mean(_paired_correlations(scores_a, scores_b)))
