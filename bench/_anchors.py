"""Outside anchors the benchmarks compare against, and the synthetic inputs.

(a) the dense reference approach: tests/dense_reference.py, the tests' float64 oracle, run in
    float32 with ``approach="reference"``: N x N similarity, full argsort, O(N^3) HSIC products,
    as the platonic-rep ``metrics.py`` computes them (``dense_knn``, ``dense_metric``).
(b) torch chunked matmul + topk: rows of the similarity computed a block at a time, the
    diagonal masked, ``torch.topk``; O(chunk x N) memory. Any device.
(c) faiss-cpu ``IndexFlatIP``: the index holds the vectors, searched with the same vectors for
    k + 1 neighbours, self dropped.
(d) torch chunked Gram sums (GPU suite): Σ K∘L, Σ K∘K, Σ L∘L and row sums of linear kernels
    from blocks of Gram products.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

# The one place bench/ reaches into tests/: the dense reference is shared, not copied.
TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import dense_reference  # noqa: E402

DENSE = "dense reference"
DENSE_DTYPE = torch.float32
DENSE_IMPL = ("tests/dense_reference.py, float32, approach='reference' "
              "(platonic-rep's operations)")


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _normalize_(x: torch.Tensor) -> torch.Tensor:
    """Row-L2-normalise in place (no N x D temporary)."""
    x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12))
    return x


def features(n: int, d: int, *, seed: int, device: str = "cpu", dtype=None) -> torch.Tensor:
    """N x D Gaussian rows, L2-normalised, built on ``device`` (then cast to ``dtype``)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = _normalize_(torch.empty(n, d, device=device).normal_(generator=g))
    return x if dtype is None else x.to(dtype)


def correlated_pair(n: int, d: int, *, rho: float = 0.6, seed: int = 0, d_b: int | None = None):
    """Two float32 feature sets, rows L2-normalised, B correlated with A.

    B = rho * A[:, :d_b] (padded with zeros if d_b > d) + sqrt(1 - rho^2) * noise, then
    normalised.  Built in place so that peak memory is ~ the two outputs.
    """
    g = torch.Generator().manual_seed(seed)
    a = _normalize_(torch.empty(n, d).normal_(generator=g))
    d_b = d if d_b is None else d_b
    b = torch.empty(n, d_b).normal_(generator=g)
    b.mul_(float(np.sqrt(1.0 - rho * rho) / np.sqrt(d_b)))
    m = min(d, d_b)
    b[:, :m].add_(a[:, :m], alpha=rho)
    return a, _normalize_(b)


def correlated_layers(n: int, layers: int, d: int, *, shared: torch.Tensor, seed: int,
                      peak_at: float) -> torch.Tensor:
    """N x L x D features of one synthetic model.

    Consecutive layers are correlated (a random walk), and layer l shares the common signal
    ``shared`` (N x D) with a weight peaking at relative depth ``peak_at``, so the
    Lx x Ly alignment matrix has a clear structure and a best pair.
    """
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, layers, d)
    walk = torch.empty(n, d).normal_(generator=g)
    step = torch.empty(n, d)
    for l in range(layers):
        step.normal_(generator=g)
        walk.mul_(0.9).add_(step, alpha=0.436)  # keeps unit variance
        depth = l / max(1, layers - 1)
        w = float(np.exp(-((depth - peak_at) / 0.25) ** 2))
        out[:, l, :] = w * shared + (1.0 - w * 0.8) * walk
    # a few large entries, so that outlier clamping does something
    idx = torch.randint(0, out.numel(), (max(1, out.numel() // 2000),), generator=g)
    out.view(-1)[idx] *= 8.0
    return out


# --------------------------------------------------------------------------------------------
# (a) the dense reference approach
# --------------------------------------------------------------------------------------------
def dense_knn(x: torch.Tensor, k: int):
    """Self-kNN as platonic-rep: N x N float32 similarity, full descending argsort."""
    return dense_reference.knn(x, k, dtype=DENSE_DTYPE, approach="reference")


def dense_metric(name: str, a: torch.Tensor, b: torch.Tensor, **kwargs) -> float:
    """Metric ``name`` as platonic-rep computes it, in float32."""
    return dense_reference.measure(name, a, b, dtype=DENSE_DTYPE, approach="reference", **kwargs)


# --------------------------------------------------------------------------------------------
# (b) torch chunked matmul + topk
# --------------------------------------------------------------------------------------------
def torch_chunked_knn(x: torch.Tensor, k: int, chunk: int = 1024):
    """Self-kNN by blocks of rows at x's dtype and device: S = x[i0:i1] @ x.T, diagonal -> -inf,
    topk.  O(chunk x N) memory besides the N x k outputs."""
    n = x.shape[0]
    vals = torch.empty(n, k, dtype=x.dtype, device=x.device)
    idx = torch.empty(n, k, dtype=torch.int64, device=x.device)
    xt = x.T
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        s = x[i0:i1] @ xt
        r = torch.arange(i1 - i0, device=x.device)
        s[r, r + i0] = float("-inf")
        v, i = torch.topk(s, k, dim=1, largest=True, sorted=True)
        vals[i0:i1] = v
        idx[i0:i1] = i
        del s
    return vals, idx


def neighbour_agreement(found: torch.Tensor, reference: torch.Tensor, rows: int = 65_536) -> dict:
    """Agreement of two N x k index lists, a block of rows at a time: ``recall`` (share of the
    reference's neighbours present in the same row of ``found``) and ``rows_identical``."""
    hits = same = 0
    for s in range(0, found.shape[0], rows):
        f, r = found[s:s + rows], reference[s:s + rows]
        hits += int((f.unsqueeze(2) == r.unsqueeze(1)).any(dim=2).sum())
        same += int((f == r).all(dim=1).sum())
    return {"recall": hits / reference.numel(), "rows_identical": same / reference.shape[0]}


# --------------------------------------------------------------------------------------------
# (c) faiss IndexFlatIP
# --------------------------------------------------------------------------------------------
def faiss_knn(faiss, x_np: np.ndarray, k: int):
    """Build IndexFlatIP on x, search x for k + 1 neighbours, drop self.

    Self is dropped where faiss returns it; where it does not (a tie pushed it out, never on
    random data) the last of the k + 1 is dropped instead.
    """
    n, d = x_np.shape
    index = faiss.IndexFlatIP(d)
    index.add(x_np)
    dist, ind = index.search(x_np, k + 1)
    is_self = ind == np.arange(n)[:, None]
    # keep the first k entries that are not self
    keep = ~is_self
    no_self = ~is_self.any(axis=1)
    keep[no_self, k] = False
    dist = dist[keep].reshape(n, k)
    ind = ind[keep].reshape(n, k)
    return dist, ind


# --------------------------------------------------------------------------------------------
# (d) torch chunked Gram sums
# --------------------------------------------------------------------------------------------
def torch_chunked_gram_sums(a: torch.Tensor, b: torch.Tensor, chunk: int = 8192):
    """Σ K∘L, Σ K∘K, Σ L∘L and row sums from chunked Gram products (linear kernel), float32
    accumulation of products computed at the input dtype."""
    cross = self_k = self_l = 0.0
    rows_k, rows_l = [], []
    for s in range(0, a.shape[0], chunk):
        kc = (a[s:s + chunk] @ a.T).float()
        lc = (b[s:s + chunk] @ b.T).float()
        cross += float((kc * lc).sum())
        self_k += float((kc * kc).sum())
        self_l += float((lc * lc).sum())
        rows_k.append(kc.sum(1))
        rows_l.append(lc.sum(1))
        del kc, lc
    return cross, self_k, self_l, torch.cat(rows_k), torch.cat(rows_l)


def scalar(x) -> float:
    """Python float from whatever a metric returned (float, 0-d tensor, numpy scalar)."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if hasattr(x, "item"):
        return float(x.item())
    return float(x)
