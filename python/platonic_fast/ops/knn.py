"""Exact k-nearest neighbours by inner product, most similar first, ties to the smaller index.

(Over 600 lines because it is the one kNN pass for every row source: the public faiss-shaped
wrapper, the tile loop, the certified-screen hook and the float64 ordering pass share their
rounding bounds and must change together.)

Backends:
- ``triton`` (CUDA tensors): the fused kernel of kernels/triton/knn.py.
- ``cpu``: GEMM tiles through torch (MKL/oneDNN sgemm, the CPU's fastest path) fed to the
  compiled OpenMP top-k merger. The self form computes each off-diagonal tile once and merges
  it both ways (the score matrix is symmetric), halving the GEMM work. Only one tile of the
  N x N score matrix exists at a time.
- ``torch``: chunked matmul + ``torch.topk`` with an exact tie fix-up. Runs on any device; it is
  the reference the other backends are tested against.

Whatever the backend, two steps make the answer exact (:func:`search`):
- magnitudes: features whose largest entry is far from 1 are scaled by a power of two first
  (exact, and it changes no ranking), so products neither overflow nor underflow float32;
- ties: a backend's scores are rounded differently in different GEMM tiles, so two candidates
  with the same exact score (duplicated rows) could come out in either order. Candidates whose
  order is not certain within the GEMM's rounding bound (|fl(x·y) − x·y| ≤ γ̃‖x‖‖y‖, a
  probabilistic bound that fails with probability ~1e-33, see ``_rounding_bound``) are rescored
  in float64, identical keys getting the identical number, and sorted by (score, index). A few
  extra candidates per row (``RESCORE_EXTRA``) cover the k-th place; a row whose near-ties reach
  past them gets more candidates from the torch reference until they do not.

One pass whatever the storage (:func:`search_rows`): the rows come from a row source
(:mod:`platonic_fast.rows`: a tensor, a memory-mapped feature file, a rank's shard), and the
source decides how it is read -- panels of query rows for a file, pairs of rank blocks
exchanged through the communicator for a shard. The tile loop (:func:`tile_loop`), the merger,
the ordering pass (:func:`settle`) and the extra candidates (:func:`more_candidates`) exist
once; the backend registry picks the backend for every source. The module is long because it
is the whole engine of the op, the public wrapper and its three backends included.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._backends import MIN_CUDA_CAPABILITY, backends_of, register, resolve
from .._checks import check_features, check_int, check_topk, check_values, unit_exponent, warn_memory
from ..rows import RowSource, ShardRows, TensorRows, _Fetched, as_rows

_UNSET = object()

# Rows per GEMM tile on the CPU: 1024 x 1024 float32 tiles (4 MiB) run the GEMM at peak, stay
# in cache for the merge, and let the symmetric self form skip more of the lower triangle than
# larger tiles (N=4096: 10 of 16 tiles computed, against 3 of 4 with 2048). Up to N=2048,
# 512-row tiles skip more and still run near peak (measured: N=1024, D=768 in 11 ms vs 14 ms).
CPU_TILE_ROWS = 1024
SMALL_N_TILE_ROWS = 512


def cpu_tile_rows(n: int) -> int:
    return SMALL_N_TILE_ROWS if n <= 2 * CPU_TILE_ROWS else CPU_TILE_ROWS
# GEMM work (flops) above which the CPU backend shows a progress bar (on a terminal only):
# about ten seconds on a small machine.
PROGRESS_MIN_FLOPS = 2e12
# Elements of one score chunk in the torch backend (64 MiB of float32).
TORCH_CHUNK_ELEMENTS = 1 << 24


# Extra candidates each backend returns beyond k, for the exact-ordering pass.
RESCORE_EXTRA = 4
# Largest entries in [2**-SAFE_EXPONENT, 2**SAFE_EXPONENT] are used as they are (no copy); float32
# products and sums of such features neither overflow nor lose the ranking to underflow.
SAFE_EXPONENT = 32
# Elements per block of the ordering pass's temporaries (16 MiB of float64).
RESCORE_BLOCK_ELEMENTS = 1 << 21


def compute_dtype(*tensors) -> torch.dtype:
    """float64 if any input (tensor or row source) is float64, else float32 (half types
    accumulate in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _is_array(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


KNN_METRICS = ("ip", "l2", "cosine")
# Queries (and queries x keys) up to which a CPU cross search scores them in one GEMM and takes
# torch.topk (:func:`_small_batch`): there the tiled backend's fixed costs dominate. Measured on
# one thread, 5,000 keys of D = 768: 1 query 1.6 ms against 13.5 ms, 64 queries 17 ms against
# 36 ms, 256 queries no faster (92 ms both); the score block stays under 32 MiB of float32.
SMALL_BATCH_QUERIES = 64
SMALL_BATCH_SCORES = 1 << 23


def knn(x, k, exclude_self=_UNSET, *, metric: str = "ip", backend: str = "auto",
        screen: str | None = None):
    """Exact k nearest neighbours by inner product, cosine similarity or Euclidean distance.

    Two forms::

        vals, idx = knn(x, k, exclude_self=True)   # self: neighbours of every row of x
        vals, idx = knn(queries, keys, k)          # cross: neighbours of queries among keys

    A stand-in for a flat faiss index (``IndexFlatIP`` / ``IndexFlatL2``): ``D, I =
    index.search(queries, k)`` is ``D, I = knn(queries, keys, k, metric=...)``, exact, with NumPy
    arrays in and out.

    Parameters
    ----------
    x : torch.Tensor or np.ndarray, shape (N, D)
        Features (float32, float16, bfloat16 or float64; any strides; CPU or CUDA).
    k : int
        Number of neighbours: ``1 <= k <= N - 1`` when self is excluded, ``<= N`` otherwise
        (cross form: ``<= len(keys)``).
    exclude_self : bool, default True
        Self form only: drop j == i from row i's candidates.
    metric : {"ip", "l2", "cosine"}, default "ip"
        "ip": inner products, largest first. "cosine": inner products of the L2-normalised rows
        (a zero row is an error). "l2": squared Euclidean distances, smallest first (the values
        are ‖q − y‖², as faiss's ``IndexFlatL2`` returns them).
    backend : {"auto", "cpu", "triton", "torch"}
        "auto" picks the fastest backend that serves the call (device, dtype, k); an explicit
        one that cannot serve it raises (``python -m platonic_fast.env`` lists the limits).
        With "auto", a cross search of a few queries on the CPU (queries x keys up to
        ``SMALL_BATCH_SCORES``) scores them in one GEMM, with the same exact result.
    screen : {None, "auto", "on", "off", "bf16", "tf32"}
        The certified screen (docs/bf16-screen.md): None reads PLATONIC_FAST_KNN_SCREEN
        (default "auto": the CPU backend screens in bf16 where the CPU has bf16 instructions and
        the call is large enough); "off" forces the plain float32 tiles; "bf16"/"tf32" ask the
        Triton backend for its bf16 or tf32 screen. The answer is the same.

    Returns
    -------
    values : shape (N, k)
        Scores, float32 (float64 for float64 inputs), best first: NumPy arrays when the inputs
        are NumPy arrays, else torch tensors on the inputs' device.
    indices : shape (N, k), int64
        Neighbour indices; equal scores (or distances) are ordered by the smaller index.

    Raises
    ------
    TypeError, ValueError
        On non-float or non-2-D input, NaN/Inf, empty input, mismatched widths, bad k, an unknown
        metric, a zero row with ``metric="cosine"``.

    Examples
    --------
    >>> x = torch.nn.functional.normalize(torch.randn(1000, 64), dim=1)
    >>> vals, idx = knn(x, 10)
    >>> idx.shape
    torch.Size([1000, 10])
    >>> d, i = knn(np.random.rand(3, 8).astype(np.float32), np.random.rand(50, 8).astype(np.float32), 4,
    ...            metric="l2")
    >>> type(d).__name__, d.shape
    ('ndarray', (3, 4))
    """
    if metric not in KNN_METRICS:
        raise ValueError(f"metric must be one of {KNN_METRICS}, got {metric!r}")
    cross = _is_array(k)
    numpy_out = isinstance(x, np.ndarray) and (not cross or isinstance(k, np.ndarray))
    if cross:
        queries = check_features(x, "queries")
        keys = check_features(k, "keys", check_finite=False)  # checked by the search that runs
        if exclude_self is _UNSET:
            raise TypeError("knn(queries, keys, k): the number of neighbours k is missing")
        if queries.shape[1] != keys.shape[1]:
            raise ValueError(
                f"queries and keys must have the same width D, got {queries.shape[1]} and {keys.shape[1]}"
            )
        if queries.device != keys.device:
            raise ValueError(f"queries are on {queries.device} but keys on {keys.device}")
        k = check_int(exclude_self, "k", low=1, high=keys.shape[0], hint=f" (there are {keys.shape[0]} keys)")
        exclude = False
        if metric != "ip" or not _small(queries, keys, backend):
            check_values(keys, "keys")
    else:
        queries = keys = check_features(x, "x")
        exclude = True if exclude_self is _UNSET else exclude_self
        if not isinstance(exclude, bool):
            raise TypeError(f"exclude_self must be True or False, got {exclude!r}")
        k = check_topk(k, x.shape[0], name="k", self_excluded=exclude)
    if metric == "cosine":
        queries = _unit_rows(queries, "queries" if cross else "x")
        keys = _unit_rows(keys, "keys") if cross else queries
    if metric == "l2":
        vals, idx = _l2_search(queries, keys, k, exclude_self=exclude, symmetric=not cross, backend=backend,
                              screen=screen)
    elif cross:
        vals, idx = _cross_search(queries, keys, k, backend, screen=screen)
    else:
        vals, idx = search(queries, None, k, exclude_self=exclude, backend=backend, screen=screen)
    if numpy_out:
        return vals.cpu().numpy(), idx.cpu().numpy()
    return vals, idx


def _small(queries: torch.Tensor, keys: torch.Tensor, backend: str) -> bool:
    """Whether a cross search takes :func:`_small_batch`."""
    return (backend == "auto" and queries.device.type == "cpu" and queries.dtype == keys.dtype
            and queries.dtype in (torch.float32, torch.float64)
            and queries.shape[0] <= SMALL_BATCH_QUERIES and queries.shape[0] * keys.shape[0] <= SMALL_BATCH_SCORES)


def _cross_search(queries: torch.Tensor, keys: torch.Tensor, k: int, backend: str, key_norm: float | None = None,
                  screen: str | None = None):
    """Validated queries; keys validated too unless :func:`_small` (then the fast path checks them).
    ``key_norm``: the keys' largest row norm, where the caller knows it."""
    if _small(queries, keys, backend):
        return _small_batch(queries, keys, k, key_norm)
    return search(queries, keys, k, exclude_self=False, backend=backend, screen=screen)


def _small_batch(queries: torch.Tensor, keys: torch.Tensor, k: int, key_norm: float | None = None):
    """The cross search's fast path for a few queries: one GEMM and ``torch.topk``, then the same
    exact ordering as :func:`search` (clusters of scores within the rounding bound rescored in
    float64, ties to the smaller index). The keys are read twice (one min/max pass for NaN/Inf and
    their magnitude, then the GEMM) where :func:`search` makes several passes. Keys that need
    scaling, or a cluster reaching past the candidates, go to :func:`search`.
    """
    with torch.no_grad():
        lo, hi = torch.aminmax(keys)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            check_values(keys, "keys")  # raises, naming the problem
        top = max(-float(lo), float(hi))
        if (not 2.0 ** -SAFE_EXPONENT <= top <= 2.0 ** SAFE_EXPONENT
                or unit_exponent(as_rows(queries).max_abs(), SAFE_EXPONENT)):
            return search(queries, keys, k, exclude_self=False)
        kk = min(k + RESCORE_EXTRA, keys.shape[0])
        vals, idx = torch.topk(queries @ keys.T, kk, dim=1)
        gamma = _rounding_bound(queries.shape[1], _unit_roundoff(queries.dtype))
        # max ‖key‖ <= √D · max |entry|: a bound from the same pass (a row-norm pass costs more)
        bound = math.sqrt(queries.shape[1]) * top if key_norm is None else key_norm * (1.0 + 1e-6)
        delta = 2.0 * gamma * source_norms(as_rows(queries)) * bound
        member, beyond = cluster_marks(vals, delta, k, all_candidates=kk == keys.shape[0])
        if bool(beyond.any()):
            return search(queries, keys, k, exclude_self=False)
        out_v, out_i = vals[:, :k].clone(), idx[:, :k].clone()
        busy = member.any(dim=1)
        if bool(busy.any()):
            rows = busy.nonzero().squeeze(1)
            sv, si = _reorder_clusters(queries, keys, rows, vals[busy], idx[busy], member[busy])
            out_v[rows], out_i[rows] = sv[:, :k], si[:, :k]
    return out_v, out_i


def _unit_rows(t: torch.Tensor, name: str) -> torch.Tensor:
    """Rows scaled to unit L2 norm (norms in float64), for ``metric="cosine"``."""
    norms = source_norms(as_rows(t))
    if bool((norms == 0).any()):
        row = int((norms == 0).nonzero()[0])
        raise ValueError(f"{name} row {row} is all zeros: its cosine similarity is undefined; drop it or use "
                         "metric='ip'")
    return t / norms.to(t.dtype)[:, None]


def _l2_search(queries: torch.Tensor, keys: torch.Tensor, k: int, *, exclude_self: bool, symmetric: bool,
               backend: str, screen: str | None = None):
    """Smallest squared distances, as the largest inner products of augmented rows:
    ‖q − y‖² = ‖q‖² − (2q·y − ‖y‖²), so q' = (2q, −1, −1) and y' = (y, h, l) with h + l = ‖y‖²
    (float64 norms split into two parts of the input's precision: the ranking keeps them whole).
    The self form searches k + 1 and drops each row's own index."""
    dtype = compute_dtype(queries, keys)
    sq = source_norms(as_rows(keys)) ** 2
    hi = sq.to(dtype)
    lo = (sq - hi.to(torch.float64)).to(dtype)
    keys_aug = torch.cat([keys.to(dtype), hi[:, None], lo[:, None]], dim=1)
    minus = -torch.ones(queries.shape[0], 2, dtype=dtype, device=queries.device)
    q_aug = torch.cat([2 * queries.to(dtype), minus], dim=1)
    want = k + 1 if symmetric and exclude_self else k
    key_norm = math.sqrt(float((sq + hi.to(torch.float64) ** 2 + lo.to(torch.float64) ** 2).max()))
    _, idx = _cross_search(q_aug, keys_aug, want, backend, key_norm, screen=screen)
    if symmetric and exclude_self:
        own = idx == torch.arange(idx.shape[0], device=idx.device)[:, None]
        # self is among the k + 1 nearest unless k earlier duplicates tie with it: then drop the last
        drop = torch.where(own.any(dim=1), own.to(torch.int8).argmax(dim=1), idx.shape[1] - 1)
        keep = torch.ones_like(own).scatter_(1, drop[:, None], False)
        idx = idx[keep].view(idx.shape[0], k)
    return _squared_distances(queries, keys, idx).to(dtype), idx


def _squared_distances(queries: torch.Tensor, keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """float64 ‖queries[i] − keys[idx[i, j]]‖², a block of pairs at a time."""
    out = torch.empty(idx.shape, dtype=torch.float64, device=idx.device)
    step = max(1, RESCORE_BLOCK_ELEMENTS // max(1, queries.shape[1] * idx.shape[1]))
    for i in range(0, idx.shape[0], step):
        diff = queries[i: i + step, None, :].to(torch.float64) - keys[idx[i: i + step]].to(torch.float64)
        out[i: i + step] = (diff * diff).sum(dim=-1)
    return out


def gemm(qb: torch.Tensor, kb: torch.Tensor, out: torch.Tensor) -> None:
    """The default tile producer: out = qb · kbᵀ (MKL/oneDNN sgemm on the CPU)."""
    torch.mm(qb, kb.T, out=out)


def search(queries, keys, k: int, *, exclude_self: bool, backend: str = "auto", unscale: bool = True,
           screen: str | None = None):
    """Exact kNN of validated features (``keys=None``: the self form); tensors or row sources
    (:mod:`platonic_fast.rows`). Lists are for the rows the process owns, indices global.

    Returns ``(values, indices)``; with ``unscale=False``, ``(values, indices, e)`` where the true
    scores are ``values · 2**e`` (metrics that only scale-invariantly use the values take these).

    Raises
    ------
    ValueError
        ``unscale`` and a score does not fit the output dtype (float32 for float32/half inputs).
    """
    q = as_rows(queries)
    vals, idx, e = search_rows(q, None if keys is None else as_rows(keys), k, exclude_self=exclude_self,
                               backend=backend, screen=screen)
    if not unscale:
        return vals, idx, e
    with q.comm.step():
        vals = unscaled(vals, e)
    return vals, idx


def unscaled(vals: torch.Tensor, e: int) -> torch.Tensor:
    """The true scores ``vals · 2**e`` in vals' dtype; ValueError when they do not fit it."""
    if not e:
        return vals
    out = vals.to(torch.float64) * 2.0 ** e
    if vals.dtype != torch.float64 and bool((out.abs() > torch.finfo(vals.dtype).max).any()):
        raise ValueError(
            f"kNN scores reach {float(out.abs().max()):.3g}, beyond {vals.dtype}; pass float64 features "
            "(the neighbour lists are exact either way: metrics are unaffected)")
    return out.to(vals.dtype)


def search_rows(queries: RowSource, keys: RowSource | None, k: int, *, exclude_self: bool, backend: str = "auto",
                more=None, product=gemm, unit_roundoff: float | None = None, screen: str | None = None):
    """The one kNN pass over row sources: scale, candidates (GEMM tiles and the top-k merger, or
    the backend the registry picks), ordering pass. Collective on sharded sources.

    The CPU tiles come from ``product`` (see :func:`tile_loop`) and the ordering pass rescores
    within the rounding bound of ``unit_roundoff`` (see :func:`settle`): a cheaper tile producer
    (a screen) plugs in with its bound, and the pass stays exact. ``more``: as :func:`settle`.
    ``screen``: the certified bf16 screen's option (:mod:`.knn_screen`; None: the environment).

    Returns ``(values, indices, e)`` for the owned rows: true scores ``values · 2**e``.
    """
    symmetric = keys is None
    eq = unit_exponent(queries.max_abs(), SAFE_EXPONENT)
    q = queries.scaled(eq)
    ek = eq if symmetric else unit_exponent(keys.max_abs(), SAFE_EXPONENT)
    keys_ = q if symmetric else keys.scaled(ek)
    n_cand = keys_.n - (1 if symmetric and exclude_self else 0)
    with q.comm.step():
        name, impl = resolve("knn", backend, q.device, dtypes=(q.dtype, keys_.dtype), k=k)
    limit = backends_of("knn")[name].limit_k()
    kk = min(k + RESCORE_EXTRA, n_cand, limit if limit is not None else n_cand)
    # values and indices, held about six times over by the merger, its outputs, the ordering pass
    # and a metric's own copies (measured: +1.3 GB for cknna with k = N - 1 at N = 5000)
    where = f"N={q.n}" if q.n_local == q.n else f"{q.n_local} rows of N={q.n}"
    warn_memory(f"kNN with k={k} over {where}", 6.0 * q.n_local * kk * (vals_bytes(q) + 8),
                "neighbour metrics rarely need k near N (the paper uses k = 10)")
    with torch.no_grad():
        # --- bf16 screen hook (issue 20, ops/knn_screen.py): other candidates, the same ordering pass ---
        from . import knn_screen

        settled = None
        if product is gemm and knn_screen.serves(q, keys_, k, name, option=screen):
            vals, idx, settled = knn_screen.candidates(q, None if symmetric else keys_, k, kk,
                                                       exclude_self=exclude_self, n_cand=n_cand,
                                                       more=more or more_candidates, backend=name, option=screen)
        # --- end bf16 screen hook ---
        else:
            vals, idx = candidates(q, None if symmetric else keys_, kk, exclude_self, name, impl, product=product)
        vals, idx = settle(q, keys_, vals, idx, k, exclude_self=symmetric and exclude_self, n_cand=n_cand,
                           more=more, unit_roundoff=unit_roundoff, settled=settled)
    return vals, idx, eq + ek


def candidates(q: RowSource, keys: RowSource | None, kk: int, exclude_self: bool, name: str, impl, *,
               product=None):
    """The top-kk of each owned row by computed score (values, global indices): the compiled CPU
    tiles on the CPU (the source's panels; a shard's pairs of blocks multiplied once), else the
    backend on the owned rows and every other block. Collective on sharded sources."""
    dtype = compute_dtype(q, q if keys is None else keys)
    cpu = name == "cpu" and q.device.type == "cpu"
    if keys is not None:  # the cross form (sources that own every row)
        if cpu:
            return cpu_lists(q, keys, kk, exclude_self=False, product=product or gemm)
        return impl(q.block(0, q.n_local), keys.block(0, keys.n_local), kk, exclude_self=False)
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    with q.comm.step():
        own = min(kk, q.n_local - (1 if exclude_self else 0))
        if own > 0:
            v, i = cpu_lists(q, None, own, exclude_self, product=product or gemm) if cpu else \
                impl(q.block(0, q.n_local), None, own, exclude_self=exclude_self)
            parts.append((v.to(dtype), i.to(torch.int64) + q.start))
    parts += q.exchange_candidates(kk, dtype, None if cpu else impl, product=product)
    with q.comm.step():
        if not parts:
            return empty_lists(q.n_local, kk, dtype, q.device)
        return merge_lists(parts, kk)


def empty_lists(n: int, kk: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.full((n, kk), -torch.inf, dtype=dtype, device=device),
            torch.full((n, kk), -1, dtype=torch.int64, device=device))


def merge_lists(parts: list[tuple[torch.Tensor, torch.Tensor]], kk: int):
    """The best kk of candidate lists laid side by side (:func:`topk_merge`)."""
    if len(parts) == 1 and parts[0][0].shape[1] == kk:
        return parts[0]
    from .topk_merge import topk_merge

    v = torch.cat([p[0] for p in parts], dim=1)
    i = torch.cat([p[1] for p in parts], dim=1)
    return topk_merge(v, i, min(kk, v.shape[1]))


def vals_bytes(x) -> int:
    return 8 if x.dtype == torch.float64 else 4


def _unit_roundoff(dtype: torch.dtype) -> float:
    if dtype == torch.float64:
        return 2.0 ** -53
    # A float32 GEMM may round its inputs when the caller allowed it the torch way: to tf32
    # ("high": 10 mantissa bits) or bfloat16 ("medium": 7), on a GPU or through oneDNN.
    return {"highest": 2.0 ** -24, "high": 2.0 ** -11}.get(torch.get_float32_matmul_precision(), 2.0 ** -8)


# λ of the probabilistic rounding-error bound below: it fails with probability below
# 2·D·exp(-λ²/2) ≈ 1e-33 per score at D = 4096.
BOUND_LAMBDA = 13.0


def _rounding_bound(d: int, u: float) -> float:
    """γ̃_D(λ) = exp(λ√D·u + D·u²/(1 − u)) − 1: |fl(x·y) − x·y| ≤ γ̃·‖x‖‖y‖ for a dot product of D
    terms summed in any order, with probability at least 1 − 2D·exp(−λ²(1 − u)²/2) (Higham and
    Mary 2019, rounding errors modelled as independent and mean-zero). The worst-case bound
    γ_D = D·u/(1 − D·u) holds always but is √D/λ times larger: at D = 4096 it would send most
    rows of any real data through the float64 pass."""
    return math.expm1(BOUND_LAMBDA * math.sqrt(d) * u + d * u * u / (1.0 - u))


def settle(q: RowSource, keys: RowSource, vals: torch.Tensor, idx: torch.Tensor, k: int, *,
           exclude_self: bool, n_cand: int, unit_roundoff: float | None = None, more=None,
           settled: torch.Tensor | None = None):
    """Top-k by exact score, ties to the smaller index, from the top-kk candidates (kk >= k) of
    the owned rows of ``q`` among ``keys`` (``keys is q``: the self form). Collective on shards.

    Only the clusters of candidates whose computed scores lie within the rounding bound of a
    neighbour (:func:`_rounding_bound`; ``unit_roundoff`` of the tile producer, by default the
    GEMM's) are rescored in float64 and reordered; the rest of each list is already certain.
    The top k are always rescored: every returned value is the float64 score rounded once, so
    values do not depend on what produced the candidates (tiles, the bf16 screen, shards, files).
    Member key rows are fetched from the source. Rows whose clusters reach past their
    candidates get more (``more``, default :func:`more_candidates`) until none does. The rows
    run in chunks of the source's ``settle_rows``: rows are independent, and the one thing a
    chunk changes is which of several bitwise-identical keys stands for the others, whose
    float64 scores are identical anyway.

    ``settled`` (a mask of owned rows): rows whose candidates already hold every possible
    neighbour, rescored by the same float64 kernel and sorted by (score, index) -- the screen's
    certified windows. Their first k are what this pass would return; they are not read again.
    """
    comm, more = q.comm, more or more_candidates
    with comm.step():
        u = unit_roundoff if unit_roundoff is not None else _unit_roundoff(compute_dtype(q, keys))
        gamma = _rounding_bound(q.width, u)
        q_norm = source_norms(q)
        top = float(q_norm.max()) if q_norm.numel() else 0.0
        if keys is not q:
            k_norm = source_norms(keys)
            top = float(k_norm.max()) if k_norm.numel() else 0.0
    # two computed scores can be out of order only when they are within 2γ̃‖x‖max‖y‖
    delta = 2.0 * gamma * q_norm * comm.max(top)
    out_v, out_i = vals[:, :k].clone(), idx[:, :k].clone()
    rows = torch.arange(q.n_local, device=vals.device)
    if settled is not None:
        rows = rows[~settled]
        vals, idx = vals[rows], idx[rows]
    local = q.local()
    first_round = True
    while True:
        kk = idx.shape[1]
        step = q.settle_rows or max(1, rows.numel())
        beyond_rows = []
        for c0 in range(0, step * max(1, int(comm.max(-(-rows.numel() // step)))), step):
            with comm.step():
                v, ix, r = vals[c0: c0 + step], idx[c0: c0 + step], rows[c0: c0 + step]
                member, beyond = cluster_marks(v, delta[r], k, all_candidates=kk == n_cand)
                busy = member.any(dim=1) & ~beyond
                want = torch.unique(ix[busy][member[busy]])
            fetched = keys.fetch(want)
            with comm.step():
                if bool(busy.any()):
                    sv, si = _reorder_clusters(local, fetched, r[busy], v[busy], ix[busy], member[busy])
                    out_v[r[busy]], out_i[r[busy]] = sv[:, :k], si[:, :k]
                if not first_round:  # the first round's out_v, out_i already hold the candidates' order
                    calm = ~member.any(dim=1)
                    out_v[r[calm]], out_i[r[calm]] = v[calm, :k], ix[calm, :k]
                beyond_rows.append(r[beyond])
        first_round = False
        rows = torch.cat(beyond_rows)
        if not comm.any(rows.numel() > 0):
            return out_v, out_i
        vals, idx = more(q, keys, rows, min(2 * kk, n_cand), exclude_self)


def cluster_marks(vals: torch.Tensor, delta: torch.Tensor, k: int, *, all_candidates: bool):
    """(member, beyond) for rows of computed top-kk scores ``vals`` and their rounding bounds
    ``delta`` (one per row: two scores closer than it may be out of order).

    ``member[r, p]``: position p is rescored: the top k, and past the k-th place the cluster of
    possibly misordered candidates reaching across it.
    ``beyond[r]``: that cluster reaches the last candidate, so contenders may lie past the list
    (never when the list holds ``all_candidates``).
    """
    kk = vals.shape[1]
    v, dr = vals.to(torch.float64), delta[:, None]
    close = (v[:, :-1] - v[:, 1:]) <= dr  # positions p and p + 1 may be out of order
    member = torch.zeros_like(v, dtype=torch.bool)
    member[:, :-1] |= close
    member[:, 1:] |= close
    # past the k-th place only the cluster that reaches across the boundary matters
    member[:, k:] &= close[:, k - 1:].cumprod(dim=1).bool()
    # contenders may lie past the returned candidates: fetch more for those rows
    if all_candidates:
        beyond = torch.zeros(vals.shape[0], dtype=torch.bool, device=vals.device)
    else:  # with no candidate past the k-th (a backend's k limit), the boundary is unknown
        beyond = member[:, -1] if kk > k else torch.ones(vals.shape[0], dtype=torch.bool, device=vals.device)
    # canonical values: the top k are always rescored, so every returned value is the float64
    # score rounded once, whichever tiles, screen, shard or file block produced the candidates
    member[:, :k] = True
    return member, beyond


def _first_duplicates(keys: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """For the key rows ``which`` (unique, ascending), the smallest of them that is
    bitwise-identical to each (itself when unique): only keys that share a row's cluster need
    to get the identical number.

    Rows are hashed by their bits with integer arithmetic (exact and independent of order);
    equal hashes are confirmed by comparing the rows.
    """
    sub = keys[which].contiguous()
    bits = sub.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[sub.element_size()])
    g = torch.Generator(device="cpu").manual_seed(0x5EED)
    weights = torch.randint(-2**31, 2**31, (sub.shape[1],), generator=g, dtype=torch.int64)
    weights = weights.to(device=keys.device, dtype=bits.dtype if bits.dtype != torch.int16 else torch.int32)
    step = max(1, RESCORE_BLOCK_ELEMENTS // max(1, sub.shape[1]))
    # products wrap in their integer type, sums in int64: exact, deterministic, no int64 copy
    h = torch.cat([(bits[i: i + step] * weights).sum(dim=1, dtype=torch.int64)
                   for i in range(0, sub.shape[0], step)])
    order = torch.argsort(h, stable=True)
    hs = h[order]
    rep = which.clone()
    for p in (hs[1:] == hs[:-1]).nonzero().squeeze(1).tolist():  # rare: confirm row by row
        a, b = int(order[p]), int(order[p + 1])
        if torch.equal(sub[a], sub[b]):
            rep[b] = rep[a]  # the sort is stable, so a < b and a's representative is final
    return rep


def _reorder_clusters(q, keys, rows, vals, idx, member):
    """Rescore the cluster members of each row in float64 and sort the row by (score, index).

    Duplicated keys must get the very same number and fall back on the index rule: the compiled
    kernel's fixed summation order gives it them directly; otherwise a member's score is computed
    once per (row, first identical key).
    """
    r_pos, c_pos = member.nonzero(as_tuple=True)
    cand = idx[r_pos, c_pos]
    qd, qi = _dense_rows(q, rows[r_pos])
    kd, ki = _dense_rows(keys, cand)
    if _compiled_dot64(qd, kd):
        # the same kernel wherever the rows live (memory, a rank's shard, a file), so a pair's
        # number does not depend on the split or the storage
        s64 = _dot64(qd, kd, qi, ki)
    else:
        n_keys = keys.shape[0]
        which, slot = torch.unique(cand, return_inverse=True)
        pair = rows[r_pos] * n_keys + _first_duplicates(keys, which)[slot]
        unique, back = torch.unique(pair, return_inverse=True)
        s64 = _dot64(q, keys, unique // n_keys, unique % n_keys)[back]
    key = vals.to(torch.float64)  # outside the clusters the computed order is certain
    key[r_pos, c_pos] = s64
    order = idx.argsort(dim=1, stable=True)
    key, idx = key.gather(1, order), idx.gather(1, order)
    order = key.argsort(dim=1, descending=True, stable=True)
    return key.gather(1, order).to(vals.dtype), idx.gather(1, order)


def _dense_rows(v, index: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """(rows, positions): a tensor holding the rows ``index`` of a row view and their positions
    in it. A tensor is itself; a shard's fetched rows are their tensor; a lazy view on the CPU (a
    file's layer) is read once for the distinct rows (not once per pair, each read re-preparing
    its rows)."""
    if isinstance(v, torch.Tensor):
        return v, index
    if isinstance(v, _Fetched):
        return v.rows, v.at(index)
    if getattr(v, "device", None) is None or torch.device(v.device).type != "cpu":
        return v, index
    which = torch.unique(index)
    return v[which], torch.searchsorted(which, index)


def _compiled_dot64(q, keys) -> bool:
    """True when the compiled pair kernel serves these rows (CPU float32/float64 tensors of one
    dtype): its fixed summation order gives a pair the same number wherever it is computed."""
    if not (isinstance(q, torch.Tensor) and isinstance(keys, torch.Tensor)):
        return False  # e.g. a file's lazy row view
    if q.device.type != "cpu" or q.dtype != keys.dtype or q.dtype not in (torch.float32, torch.float64):
        return False
    if any(t.dim() != 2 or t.stride(1) != 1 or (t.shape[0] > 1 and t.stride(0) < t.shape[1]) for t in (q, keys)):
        return False  # the kernel reads rows with contiguous columns (not expanded views)
    from .._backends import core_available

    if not core_available():
        return False
    from .. import _core

    return hasattr(_core, "knn_dot64")


def _dot64(q: torch.Tensor, keys: torch.Tensor, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
    """float64 ⟨q[qi], keys[ki]⟩ for paired index vectors, a block of pairs at a time."""
    if _compiled_dot64(q, keys):
        from .. import _core

        return torch.from_numpy(_core.knn_dot64(q.numpy(), keys.numpy(), qi.contiguous().numpy(),
                                                ki.contiguous().numpy()))
    out = torch.empty(qi.shape[0], dtype=torch.float64, device=q.device)
    step = max(1, RESCORE_BLOCK_ELEMENTS // max(1, q.shape[1]))
    for i in range(0, qi.shape[0], step):
        a = q[qi[i: i + step]].to(torch.float64)
        b = keys[ki[i: i + step]].to(torch.float64)
        out[i: i + step] = (a * b).sum(dim=1)
    return out


def more_candidates(q: RowSource, keys: RowSource, rows: torch.Tensor, kk: int, exclude_self: bool):
    """The top-kk candidates of owned ``rows`` (local positions) over every key block of
    ``keys``, by the torch reference's chunked products and exact top-k (no k limit, any
    device), without each row's own index when excluded. Collective on shards."""
    dtype = compute_dtype(q, keys)
    with q.comm.step():
        qs = q.local()[rows].to(dtype) if rows.numel() else None
        own = rows.to(qs.device if qs is not None else q.device) + q.start  # global indices
    running: list = []
    for first, block in keys.key_blocks():
        with q.comm.step():
            nb = block.shape[0]
            mine = exclude_self and bool(((own >= first) & (own < first + nb)).any())
            m = min(kk, nb - (1 if mine else 0))
            if qs is not None and m > 0:
                kb = block.to(dtype)
                chunk = max(1, TORCH_CHUNK_ELEMENTS // max(1, nb))
                vs, is_ = [], []
                for c0 in range(0, rows.numel(), chunk):
                    s = qs[c0: c0 + chunk] @ kb.T
                    if mine:  # each row's own score out of the running
                        g = own[c0: c0 + chunk] - first
                        at = ((g >= 0) & (g < nb)).nonzero().squeeze(1)
                        s[at, g[at]] = -torch.inf
                    v, i = _exact_topk(s, m)
                    vs.append(v)
                    is_.append(i)
                running = [merge_lists(running + [(torch.cat(vs), torch.cat(is_) + first)], kk)]
        del block
    if not running:
        return empty_lists(rows.numel(), kk, dtype, q.device)
    return running[0]


def source_norms(s: RowSource) -> torch.Tensor:
    """‖x_i‖ in float64 of the owned rows of a source, read a block at a time."""
    step = max(1, RESCORE_BLOCK_ELEMENTS // max(1, s.width))
    if not s.n_local:
        return torch.zeros(0, dtype=torch.float64, device=s.device)
    return torch.cat([torch.linalg.vector_norm(s.block(r0, r1).to(torch.float64), dim=1)
                      for r0, r1 in s.blocks(step)])


_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def new_merger(n_rows: int, k: int, dtype: torch.dtype):
    """The compiled running top-k of ``n_rows`` rows (float32 or float64 tiles)."""
    from .. import _core

    return _core.KnnMerger(n_rows, k, _DTYPE_NAMES[dtype])


def tile_loop(get_q, get_k, q_blocks, k_blocks, merge, *, dtype: torch.dtype, symmetric: bool = False,
              panel: int = 1, product=gemm, bar=None, fused=None) -> None:
    """The one CPU tile loop: every tile of query blocks x key blocks (``symmetric``: the upper
    triangle only, the score matrix being symmetric), produced by ``product(qb, kb, out)`` and
    handed to ``merge(scores, q0, k0, mirror)`` (``mirror``: an off-diagonal tile of the
    symmetric form, to be merged into its columns as well). ``get_q(r0, r1)`` / ``get_k`` read
    rows. Only one tile of scores exists at a time.

    ``panel`` query blocks are held while every (later) key block is read once: 1 in memory
    (where a block is a free view), more for sources whose reads cost (a file's panels). A
    different tile producer (a screen in a cheaper precision) plugs in as ``product``; its
    rounding bound goes to :func:`settle`. ``fused(qb, kb, q0, k0, mirror)``, when given, replaces
    both: it multiplies and merges in one pass, and no tile of scores is made.
    """
    rows = max(r1 - r0 for r0, r1 in q_blocks)
    buf = None if fused else torch.empty(rows, max(r1 - r0 for r0, r1 in k_blocks), dtype=dtype)
    for p0 in range(0, len(q_blocks), panel):
        p1 = min(len(q_blocks), p0 + panel)
        # .to().contiguous() is free for contiguous float32 input; converts half types per block.
        held = {bi: get_q(*q_blocks[bi]).to(dtype).contiguous() for bi in range(p0, p1)}
        for bj in range(p0 if symmetric else 0, len(k_blocks)):
            k0, k1 = k_blocks[bj]
            kb = held[bj] if symmetric and bj in held else get_k(k0, k1).to(dtype).contiguous()
            for bi in range(p0, min(p1, bj + 1) if symmetric else p1):
                q0, q1 = q_blocks[bi]
                if fused:
                    fused(held[bi], kb, q0, k0, symmetric and bj > bi)
                else:
                    tile = buf[: q1 - q0, : k1 - k0]
                    product(held[bi], kb, tile)
                    merge(tile.numpy(), q0, k0, symmetric and bj > bi)
                if bar is not None:
                    bar.update()
            del kb
        del held


def cpu_lists(q: RowSource, keys: RowSource | None, k: int, exclude_self: bool, *, product=gemm):
    """Top-k lists of the owned rows of ``q`` among its own rows (``keys=None``: symmetric tiles,
    each computed once and merged both ways) or among ``keys``, by the compiled merger; indices
    local to the block of keys. The tiles are ``cpu_tile_rows`` rows; the source's
    ``panel_blocks`` say how many query blocks are held at once. A ``product`` with a
    ``merge_product(merger, qb, kb, q0, k0, exclude_self, mirror)`` method (the bf16 screen's own
    kernel) multiplies and merges in one pass."""
    symmetric = keys is None
    keys_ = q if symmetric else keys
    dtype = compute_dtype(q, keys_)
    merger = new_merger(q.n_local, k, dtype)
    rows = cpu_tile_rows(max(q.n_local, keys_.n_local))
    q_blocks = q.blocks(rows)
    k_blocks = q_blocks if symmetric else keys_.blocks(rows)
    n_tiles = len(q_blocks) * (len(q_blocks) + 1) // 2 if symmetric else len(q_blocks) * len(k_blocks)
    flops = 2.0 * q.n_local * keys_.n_local * q.width * (0.5 if symmetric else 1.0)
    # disable=None: tqdm shows the bar only when stderr is a terminal (no log spam in batch jobs).
    bar = tqdm(total=n_tiles, desc=f"knn N={q.n_local}", unit="tile", leave=False,
               disable=None if flops >= PROGRESS_MIN_FLOPS else True)

    def merge(scores, q0, k0, mirror):
        merger.add_rows(scores, q0, k0, exclude_self)
        if mirror:
            merger.add_cols(scores, q0, k0, exclude_self)

    fuse = getattr(product, "merge_product", None)

    def fused(qb, kb, q0, k0, mirror):
        fuse(merger, qb, kb, q0, k0, exclude_self, mirror)

    tile_loop(q.block, keys_.block, q_blocks, k_blocks, merge, dtype=dtype, symmetric=symmetric,
              panel=q.panel_blocks, product=product, bar=bar, fused=fused if fuse else None)
    bar.close()
    values, indices = merger.finalize()
    return torch.from_numpy(values), torch.from_numpy(indices)


def pair_lists(q: torch.Tensor, block: torch.Tensor, a: tuple[int, int], b: tuple[int, int], q_start: int,
               b_start: int, rows_merger, kk: int, dtype: torch.dtype, *, product=gemm):
    """CPU tiles of ``q[a0:a1] x block[b0:b1]ᵀ`` (two different row sets, each pair of blocks
    multiplied once): rows merged into ``rows_merger`` (candidates ``b_start + ..``, global),
    columns into a new merger whose top-kk for block rows [b0, b1) it returns (candidates
    ``q_start + ..``, global)."""
    (a0, a1), (b0, b1) = a, b
    cols_merger = new_merger(b1 - b0, kk, dtype) if b1 > b0 else None
    if a1 > a0 and b1 > b0:
        rows = cpu_tile_rows(max(a1 - a0, b1 - b0))

        def merge(scores, q0, k0, mirror):
            rows_merger.add_rows(scores, q0, b_start + k0, False)
            cols_merger.add_cols(scores, q_start + q0, k0 - b0, False)

        tile_loop(lambda r0, r1: q[r0:r1], lambda r0, r1: block[r0:r1], _blocks_from(a0, a1, rows),
                  _blocks_from(b0, b1, rows), merge, dtype=dtype, product=product)
    if cols_merger is None:
        return empty_lists(0, kk, dtype, q.device)
    v, i = cols_merger.finalize()
    return torch.from_numpy(v), torch.from_numpy(i)


def _blocks_from(r0: int, r1: int, size: int):
    return [(s, min(r1, s + size)) for s in range(r0, r1, size)]


@register("knn", "cpu", devices=("cpu",), needs=("core",))
def knn_cpu(queries: torch.Tensor, keys: torch.Tensor | None, k: int, *, exclude_self: bool):
    """CPU backend. ``keys=None`` means the self form (symmetric tiles, each computed once)."""
    with torch.no_grad():
        return cpu_lists(TensorRows(queries), None if keys is None else TensorRows(keys), k, exclude_self)


def _triton_max_k() -> int:
    from ..triton.knn import MAX_K

    return MAX_K


# float64 is not served: the kernel multiplies on tensor cores and keeps float32 scores.
@register("knn", "triton", devices=("cuda",), dtypes=(torch.float32, torch.float16, torch.bfloat16),
          max_k=_triton_max_k, min_capability=MIN_CUDA_CAPABILITY, needs=("triton",))
def knn_triton_backend(queries: torch.Tensor, keys: torch.Tensor | None, k: int, *, exclude_self: bool):
    """GPU backend: the fused Triton kernel (GEMM tiles -> running top-k in registers).

    float32 inputs are multiplied exactly unless the caller opted into tf32 the torch way
    (``torch.set_float32_matmul_precision("high")`` or ``"medium"``).
    """
    from ..triton.knn import knn_triton

    allow_tf32 = torch.get_float32_matmul_precision() != "highest"
    return knn_triton(queries, keys, k, exclude_self=exclude_self, allow_tf32=allow_tf32)


@register("knn", "torch", devices=("cpu", "cuda"))
def knn_torch(queries: torch.Tensor, keys: torch.Tensor | None, k: int, *, exclude_self: bool):
    """Reference backend: chunked matmul + topk, with ties put in index order exactly."""
    symmetric = keys is None
    keys_ = queries if symmetric else keys
    dtype = compute_dtype(queries, keys_)
    kt = keys_.to(dtype)
    n_keys = kt.shape[0]
    chunk = max(1, TORCH_CHUNK_ELEMENTS // n_keys)
    out_v, out_i = [], []
    with torch.no_grad():
        for q0 in range(0, queries.shape[0], chunk):
            q1 = min(queries.shape[0], q0 + chunk)
            s = queries[q0:q1].to(dtype) @ kt.T
            if symmetric and exclude_self:
                rows = torch.arange(q1 - q0, device=s.device)
                s[rows, rows + q0] = -torch.inf
            vals, idx = _exact_topk(s, k)
            out_v.append(vals)
            out_i.append(idx)
    return torch.cat(out_v), torch.cat(out_i)


def _exact_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of ``s``, larger first, equal scores by smaller index.

    ``torch.topk`` leaves the order of equal scores unspecified; rows where the k-th score is
    tied with a score outside the top-k are redone with a stable full sort, and equal scores
    inside the top-k are put in index order.
    """
    vals, idx = torch.topk(s, k, dim=1)
    boundary_tie = (s >= vals[:, -1:]).sum(dim=1) > k
    if bool(boundary_tie.any()):
        rows = boundary_tie.nonzero().squeeze(1)
        sv, si = torch.sort(s[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = sv[:, :k], si[:, :k]
    # Lexicographic (value desc, index asc): stable sort by index, then stable by value.
    order = idx.argsort(dim=1, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = vals.argsort(dim=1, descending=True, stable=True)
    return vals.gather(1, order), idx.gather(1, order)


def neighbours(x: torch.Tensor, k: int, *, exclude_self: bool = True, backend: str = "auto",
               screen: str | None = None, comm=None, layout=None):
    """knn of already-validated features (internal: metrics validate once, then call this).

    Returns ``(values, indices, e)``: the true scores are ``values · 2**e`` (see :func:`search`).
    With a process group's ``comm`` and row ``layout``: this rank's rows' lists, indices global
    (the same pass over a :class:`platonic_fast.rows.ShardRows`; collective).
    """
    if comm is not None:
        return search_rows(ShardRows(comm, layout, x), None, k, exclude_self=exclude_self, backend=backend,
                           screen=screen)
    return search(x, None, k, exclude_self=exclude_self, backend=backend, unscale=False, screen=screen)


__all__ = ["knn", "neighbours", "compute_dtype"]
