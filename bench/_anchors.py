"""Outside anchors the benchmarks compare against, and the synthetic inputs.

(a) the dense reference approach: N x N similarity, full argsort, O(N^3) HSIC products, as the
    platonic-rep ``metrics.py`` computes them (``ReferenceApproach`` below, float32).
(b) torch chunked matmul + topk: rows of the similarity computed a block at a time, the
    diagonal masked, ``torch.topk``; O(chunk x N) memory.
(c) faiss-cpu ``IndexFlatIP``: the index holds the vectors, searched with the same vectors for
    k + 1 neighbours, self dropped.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _normalize_(x: torch.Tensor) -> torch.Tensor:
    """Row-L2-normalise in place (no N x D temporary)."""
    x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12))
    return x


def correlated_pair(n: int, d: int, *, rho: float = 0.6, seed: int = 0, d_b: int | None = None):
    """Two float32 feature sets, rows L2-normalised, B correlated with A.

    B = rho * A[:, :d_b] (padded with zeros if d_b > d) + sqrt(1 - rho^2) * noise, then
    normalised.  Built in place so that peak memory is ~ the two outputs.
    """
    g = torch.Generator().manual_seed(seed)
    a = torch.empty(n, d).normal_(generator=g)
    _normalize_(a)
    d_b = d if d_b is None else d_b
    b = torch.empty(n, d_b).normal_(generator=g)
    b.mul_(float(np.sqrt(1.0 - rho * rho) / np.sqrt(d_b)))
    m = min(d, d_b)
    b[:, :m].add_(a[:, :m], alpha=rho)
    _normalize_(b)
    return a, b


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
# (b) torch chunked matmul + topk
# --------------------------------------------------------------------------------------------
def torch_chunked_knn(x: torch.Tensor, k: int, chunk: int = 1024):
    """Self-kNN by blocks of rows: S = x[i0:i1] @ x.T, diagonal -> -inf, topk.  O(chunk x N)."""
    n = x.shape[0]
    vals = torch.empty(n, k, dtype=x.dtype)
    idx = torch.empty(n, k, dtype=torch.int64)
    xt = x.T
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        s = x[i0:i1] @ xt
        r = torch.arange(i1 - i0)
        s[r, r + i0] = float("-inf")
        v, i = torch.topk(s, k, dim=1, largest=True, sorted=True)
        vals[i0:i1] = v
        idx[i0:i1] = i
        del s
    return vals, idx


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
# (a) dense reference approach
# --------------------------------------------------------------------------------------------
class ReferenceApproach:
    """The platonic-rep approach, operation for operation: N x N Gram matrices, a full
    descending argsort per row (torch's default, unstable), N x N float masks, per-row Python
    loops for LCS and edit distance, O(N^3) HSIC matrix products."""

    @staticmethod
    def _gram(x, dtype):
        x = x.to(dtype)
        return x @ x.T

    @staticmethod
    def knn(x, k, dtype=torch.float32):
        s = ReferenceApproach._gram(x, dtype).fill_diagonal_(-1e8)
        idx = torch.argsort(s, dim=1, descending=True)[:, :k]
        return torch.gather(s, 1, idx), idx

    @staticmethod
    def _nn(x, k, dtype):
        return ReferenceApproach.knn(x, k, dtype)[1]

    @staticmethod
    def mutual_knn(a, b, topk=10, dtype=torch.float32):
        ka, kb = ReferenceApproach._nn(a, topk, dtype), ReferenceApproach._nn(b, topk, dtype)
        n = ka.shape[0]
        r = torch.arange(n).unsqueeze(1)
        ma = torch.zeros(n, n, dtype=dtype)
        mb = torch.zeros(n, n, dtype=dtype)
        ma[r, ka] = 1.0
        mb[r, kb] = 1.0
        return ((ma * mb).sum(dim=1) / topk).mean().item()

    @staticmethod
    def cycle_knn(a, b, topk=10, dtype=torch.float32):
        ka, kb = ReferenceApproach._nn(a, topk, dtype), ReferenceApproach._nn(b, topk, dtype)
        n = ka.shape[0]
        hit = ka[kb] == torch.arange(n).view(-1, 1, 1)
        return hit.view(n, -1).any(dim=1).to(dtype).mean().item()

    @staticmethod
    def _lcs(x, y):
        m, n = len(x), len(y)
        dp = [[0] * (n + 1) for _ in range(m + 1)]
        for i in range(1, m + 1):
            for j in range(1, n + 1):
                dp[i][j] = dp[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(dp[i - 1][j], dp[i][j - 1])
        return dp[m][n]

    @staticmethod
    def _lev(x, y):
        prev = list(range(len(y) + 1))
        for i in range(1, len(x) + 1):
            cur = [i] + [0] * len(y)
            for j in range(1, len(y) + 1):
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x[i - 1] != y[j - 1]))
            prev = cur
        return prev[-1]

    @staticmethod
    def lcs_knn(a, b, topk=10, dtype=torch.float32):
        ka, kb = ReferenceApproach._nn(a, topk, dtype).tolist(), ReferenceApproach._nn(b, topk, dtype).tolist()
        return float(np.mean([ReferenceApproach._lcs(x, y) for x, y in zip(ka, kb)]))

    @staticmethod
    def edit_distance_knn(a, b, topk=10, dtype=torch.float32):
        ka, kb = ReferenceApproach._nn(a, topk, dtype).tolist(), ReferenceApproach._nn(b, topk, dtype).tolist()
        return 1.0 - float(np.mean([ReferenceApproach._lev(x, y) for x, y in zip(ka, kb)])) / topk

    @staticmethod
    def _hsic_biased(K, L):
        H = torch.eye(K.shape[0], dtype=K.dtype) - 1.0 / K.shape[0]
        return torch.trace(K @ H @ L @ H)

    @staticmethod
    def _hsic_unbiased(K, L):
        m = K.shape[0]
        Kt = K.clone().fill_diagonal_(0)
        Lt = L.clone().fill_diagonal_(0)
        v = (torch.sum(Kt * Lt.T) + torch.sum(Kt) * torch.sum(Lt) / ((m - 1) * (m - 2))
             - 2 * torch.sum(Kt @ Lt) / (m - 2))
        return v / (m * (m - 3))

    @staticmethod
    def cka(a, b, kernel_metric="ip", rbf_sigma=1.0, unbiased=False, dtype=torch.float32):
        a, b = a.to(dtype), b.to(dtype)
        if kernel_metric == "ip":
            K, L = a @ a.T, b @ b.T
        else:
            K = torch.exp(-torch.cdist(a, a) ** 2 / (2 * rbf_sigma ** 2))
            L = torch.exp(-torch.cdist(b, b) ** 2 / (2 * rbf_sigma ** 2))
        h = ReferenceApproach._hsic_unbiased if unbiased else ReferenceApproach._hsic_biased
        return (h(K, L) / (torch.sqrt(h(K, K) * h(L, L)) + 1e-6)).item()

    @staticmethod
    def unbiased_cka(a, b, kernel_metric="ip", rbf_sigma=1.0, dtype=torch.float32):
        return ReferenceApproach.cka(a, b, kernel_metric, rbf_sigma, True, dtype)

    @staticmethod
    def cknna(a, b, topk=10, distance_agnostic=False, unbiased=True, dtype=torch.float32):
        a, b = a.to(dtype), b.to(dtype)
        n = a.shape[0]
        K, L = a @ a.T, b @ b.T

        def sim(K, L):
            Kh = K.clone().fill_diagonal_(float("-inf")) if unbiased else K
            Lh = L.clone().fill_diagonal_(float("-inf")) if unbiased else L
            ik = torch.topk(Kh, topk, dim=1).indices
            il = torch.topk(Lh, topk, dim=1).indices
            mask = (torch.zeros(n, n, dtype=dtype).scatter_(1, ik, 1)
                    * torch.zeros(n, n, dtype=dtype).scatter_(1, il, 1))
            if distance_agnostic:
                return mask.sum()
            h = ReferenceApproach._hsic_unbiased if unbiased else ReferenceApproach._hsic_biased
            return h(mask * K, mask * L)

        s_kl, s_kk, s_ll = sim(K, L), sim(K, K), sim(L, L)
        return s_kl.item() / (torch.sqrt(s_kk * s_ll) + 1e-6).item()


class DenseReference:
    """Anchor (a): the reference's own approach (``ReferenceApproach``), in float32."""

    METRICS = ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cka",
               "unbiased_cka", "cknna")

    def get(self, name: str) -> tuple[Callable, str]:
        fn = getattr(ReferenceApproach, name)
        return fn, "bench/_anchors.py ReferenceApproach (platonic-rep's operations, float32)"


def scalar(x) -> float:
    """Python float from whatever a metric returned (float, 0-d tensor, numpy scalar)."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if hasattr(x, "item"):
        return float(x.item())
    return float(x)
