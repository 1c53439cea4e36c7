"""Fused exact k-nearest neighbours by inner product (Triton): GEMM tiles -> running top-k.

One program owns BLOCK_M query rows and walks over the keys BLOCK_N at a time:

    S = Q_blk @ K_blkᵀ                  (tl.dot, float32 accumulation, in registers)
    above = S > kth                     (the hot path: one compare per score with the row's
                                         current k-th best; most tiles stop here)
    some above              -> insert them one by one: each step moves every row's best
                               entrant into the slot of its k-th best (at most k steps)
    many above, k >= 64     -> sort the tile, merge its best TOP with the running top-k

The similarity tile never reaches global memory. The running top-k lives in registers as
BLOCK_M x TOP packed 64-bit keys (TOP = k rounded up to a power of two, at least 16; lanes k..TOP
are parked at the largest key so that they are never evicted): the high 32 bits order the float
score, the low 32 bits hold (2³² - 1 - index), so larger keys mean larger scores and, for equal
scores, smaller indices — the tie rule of docs/metrics.md#knn. Keys are unique per row, so "evict the row
minimum" is well defined. k <= 128; larger k goes to the (tiled) torch backend.

Columns arrive in increasing index order, so a score equal to the current k-th best always
loses its tie: the strict compare of the hot path is exact.

float32 inputs are multiplied in float32 ("ieee") unless tf32 is asked for; bfloat16/float16
inputs use the tensor cores with float32 accumulation.

Tile sizes, warps and pipeline stages are autotuned on a GPU. Tuning runs on a slice of the
problem (at most PROXY_ROWS rows and keys) so that a 10⁶-row call does not time every
configuration at full size; the choice is cached per (d, k, form, precision, dtype, size class).
"""

from __future__ import annotations

import contextlib

import torch

import triton
import triton.language as tl

from . import interpreted

MAX_K = 128
SORT_MERGE_FROM = 64  # running top-k width from which tiles with many entrants are sorted
INSERT_MAX = 16  # ... "many": more entrants than this in some row of the tile
PROXY_ROWS = 32_768


@triton.jit
def _pack(values, cols):
    """(float32 score, int index) -> int64 key; larger key = larger score, then smaller index."""
    bits = values.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone map of float order onto int32 order
    return (ordered.to(tl.int64) << 32) | (4294967295 - cols.to(tl.int64))


@triton.jit
def _unpack(keys):
    ordered = (keys >> 32).to(tl.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    values = bits.to(tl.float32, bitcast=True)
    cols = 4294967295 - (keys & 4294967295)
    return values, cols


@triton.jit
def _top_half(keys):
    """The first half of each row of ``keys`` (ROWS x WIDTH, WIDTH a power of two)."""
    rows: tl.constexpr = keys.shape[0]
    width: tl.constexpr = keys.shape[1]
    halves = tl.permute(tl.reshape(keys, (rows, 2, width // 2)), (0, 2, 1))
    first, _ = tl.split(halves)
    return first


@triton.jit
def _knn_kernel(q_ptr, k_ptr, out_val_ptr, out_idx_ptr, n_q, n_k, d, stride_q, stride_k, k,
                size_class,
                EXCLUDE_SELF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, TOP: tl.constexpr, SORT_MERGE: tl.constexpr, INSERT_MAX: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    # Row offsets in int64 where they can pass 2³¹ elements (N·D), int32 within a tile.
    q_block = q_ptr + (pid * BLOCK_M).to(tl.int64) * stride_q
    local_rows = tl.arange(0, BLOCK_M)
    lanes = tl.arange(0, BLOCK_N)
    top_lanes = tl.arange(0, TOP)
    live = top_lanes[None, :] < k
    neg_inf = float("-inf")
    # Empty slots hold -inf with distinct out-of-range indices (so they are the first evicted,
    # one at a time); lanes >= k hold the largest key and are never evicted.
    empty = _pack(tl.full((BLOCK_M, TOP), neg_inf, tl.float32),
                  2147483647 - tl.broadcast_to(top_lanes[None, :], (BLOCK_M, TOP)))
    best = tl.where(live, empty, tl.full((BLOCK_M, TOP), 9223372036854775807, tl.int64))
    worst = tl.min(best, axis=1)  # the key of each row's k-th best
    kth = _unpack(worst)[0]
    for col0 in range(0, n_k, BLOCK_N):
        cols = col0 + lanes
        k_block = k_ptr + tl.cast(col0, tl.int64) * stride_k
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            q = tl.load(q_block + local_rows[:, None] * stride_q + ds[None, :],
                        mask=(rows[:, None] < n_q) & (ds[None, :] < d), other=0.0)
            kb = tl.load(k_block + lanes[:, None] * stride_k + ds[None, :],
                         mask=(cols[:, None] < n_k) & (ds[None, :] < d), other=0.0)
            if UPCAST:  # the CPU interpreter cannot multiply half types
                q = q.to(tl.float32)
                kb = kb.to(tl.float32)
            acc += tl.dot(q, tl.trans(kb), input_precision=PRECISION, out_dtype=tl.float32)
        invalid = cols[None, :] >= n_k
        if EXCLUDE_SELF:
            invalid = invalid | (rows[:, None] == cols[None, :])
        above = (acc > kth[:, None]) & ~invalid
        most = tl.max(tl.sum(above.to(tl.int32), axis=1), axis=0)
        if SORT_MERGE and most > INSERT_MAX:
            # Many entrants (early tiles, large k): the tile's best TOP per row by one sort, then
            # a sorted merge with the running top-k, keeping the first TOP.
            keys = tl.where(above, _pack(acc, cols), -9223372036854775808)
            tile = tl.sort(keys, dim=1, descending=True)
            for halving in tl.static_range(8):  # noqa: B007 (halves BLOCK_N down to TOP)
                if tile.shape[1] > TOP:
                    tile = _top_half(tile)
            current = tl.where(live, best, -9223372036854775808)
            both = tl.reshape(tl.join(current, tile), (BLOCK_M, 2 * TOP))
            merged = _top_half(tl.sort(both, dim=1, descending=True))
            best = tl.where(live, merged, 9223372036854775807)
            worst = tl.min(best, axis=1)
            kth = _unpack(worst)[0]
        elif most > 0:
            # Few entrants: each step moves every row's best remaining entrant into the slot of
            # its k-th best when it beats it. Entrants come out in descending order, so no row
            # needs more than k steps. The tile stays 32-bit: only the candidates are packed.
            masked = tl.where(above, acc, neg_inf)
            for step in range(tl.minimum(most, k)):  # noqa: B007
                cand_v = tl.max(masked, axis=1)
                cand_c = tl.min(tl.where(masked == cand_v[:, None], cols[None, :], 2147483647), axis=1)
                cand = _pack(cand_v, cand_c)
                take = (cand > worst) & (cand_v > neg_inf)
                best = tl.where(take[:, None] & (best == worst[:, None]), cand[:, None], best)
                worst = tl.min(best, axis=1)
                masked = tl.where(cols[None, :] == cand_c[:, None], neg_inf, masked)
            kth = _unpack(worst)[0]
    ordered = tl.sort(tl.where(live, best, -9223372036854775808), dim=1, descending=True)
    values, cols = _unpack(ordered)
    out_mask = (rows[:, None] < n_q) & live
    offs = rows.to(tl.int64)[:, None] * k + top_lanes[None, :]
    tl.store(out_val_ptr + offs, values, mask=out_mask)
    tl.store(out_idx_ptr + offs, cols, mask=out_mask)


def _prune(configs, named_args, **kwargs):
    """Keep the configurations that suit this k.

    The GEMM tile must be at least as wide as the running top-k; for k > 32 the sort-and-merge
    path needs 64-row blocks over 8 warps to stay (nearly) within registers (ahead-of-time
    compiles for sm_90 show spills otherwise: tests/triton_aot.py).
    """
    top = named_args.get("TOP", kwargs.get("TOP"))
    kept = [c for c in configs if c.kwargs["BLOCK_N"] >= top
            and (top <= 32 or (c.kwargs["BLOCK_M"] == 64 and c.num_warps == 8))]
    return kept or [triton.Config({"BLOCK_M": 64, "BLOCK_N": top, "BLOCK_D": 32}, num_warps=8, num_stages=3)]


# Rows per program, GEMM tile width and depth, warps and pipeline stages (128-row blocks need
# 8 warps' registers: with 4 they spill, tests/triton_aot.py --all-configs).
_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd}, num_warps=w, num_stages=st)
            for bm in (64, 128) for bn in (64, 128) for bd in (32, 64) for w in (4, 8) for st in (3, 4)
            if not (bm == 128 and w == 4)]
# ``size_class`` (unused by the kernel) keys the tuning by problem size: calls too small to fill
# the GPU tune apart from the large ones, which all share the proxy-slice tuning.
_knn_kernel_tuned = triton.autotune(configs=_CONFIGS,
                                    key=["d", "k", "EXCLUDE_SELF", "PRECISION", "size_class"],
                                    prune_configs_by={"early_config_prune": _prune})(_knn_kernel)
_tuned_keys: set = set()


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _launch(queries, keys, k, exclude_self, precision, block_m=None):
    """Allocate the outputs and launch one kernel (fixed tiles in the interpreter or when given)."""
    n_q, d = queries.shape
    n_k = keys.shape[0]
    top = max(16, _next_pow2(k))
    values = torch.empty(n_q, k, dtype=torch.float32, device=queries.device)
    indices = torch.empty(n_q, k, dtype=torch.int32, device=queries.device)
    size_class = min(_next_pow2(n_q), PROXY_ROWS)
    args = (queries, keys, values, indices, n_q, n_k, d, queries.stride(0), keys.stride(0), k, size_class)
    consts = dict(EXCLUDE_SELF=exclude_self, TOP=top, SORT_MERGE=top >= SORT_MERGE_FROM,
                  INSERT_MAX=INSERT_MAX, PRECISION=precision,
                  UPCAST=interpreted() and queries.dtype != torch.float32)
    if interpreted() or block_m is not None:
        _knn_kernel[(triton.cdiv(n_q, block_m or 16),)](
            *args, BLOCK_M=block_m or 16, BLOCK_N=max(top, 32), BLOCK_D=32 if d > 16 else 16, **consts)
    else:
        _knn_kernel_tuned[lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]),)](*args, **consts)
    return values, indices


def knn_triton(queries: torch.Tensor, keys: torch.Tensor | None, k: int, *, exclude_self: bool,
               allow_tf32: bool = False, block_m: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner products of ``queries`` against ``keys`` (``keys=None``: self form).

    Parameters
    ----------
    queries : torch.Tensor, shape (Nq, D)
        float32, bfloat16 or float16, on a CUDA device (CPU under TRITON_INTERPRET=1).
    keys : torch.Tensor or None, shape (Nk, D)
    k : int
        1 <= k <= 128 (and at most the number of candidates).
    exclude_self : bool
        Self form only: row i never lists i.
    allow_tf32 : bool
        float32 inputs: use tf32 tensor cores (faster, not exact). Default: exact float32.
    block_m : int, optional
        Fixed tiles with this many query rows per program (no autotuning); the interpreter
        always uses fixed tiles (16 rows).

    Returns
    -------
    values : float32 (Nq, k), indices : int64 (Nq, k)
        Most similar first, ties to the smaller index.
    """
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K} for the Triton kernel, got {k}")
    symmetric = keys is None
    keys = queries if symmetric else keys
    if queries.dtype != keys.dtype:
        queries, keys = queries.float(), keys.float()
    queries = queries.contiguous()
    keys = queries if symmetric else keys.contiguous()
    exclude_self = bool(exclude_self and symmetric)
    precision = "tf32" if (allow_tf32 and queries.dtype == torch.float32) else "ieee"
    with _on_device(queries):
        return _knn(queries, keys, k, symmetric, exclude_self, precision, block_m)


def _knn(queries, keys, k, symmetric, exclude_self, precision, block_m):
    if not interpreted() and block_m is None:
        # Tune once per (device, d, k, form, dtype, precision) on a slice that still fills the GPU.
        tune_key = (queries.device, queries.shape[1], k, exclude_self, queries.dtype, precision)
        if tune_key not in _tuned_keys and max(queries.shape[0], keys.shape[0]) > PROXY_ROWS:
            q_proxy = queries[:PROXY_ROWS]
            _launch(q_proxy, q_proxy if symmetric else keys[:PROXY_ROWS], k, exclude_self, precision)
        _tuned_keys.add(tune_key)
    values, indices = _launch(queries, keys, k, exclude_self, precision, block_m)
    # A row keeps an empty slot only when fewer than k of its scores are above -inf: products
    # that overflowed float32. Say so rather than return out-of-range indices.
    if indices.numel() and int(indices.max()) >= keys.shape[0]:
        raise ValueError("inner products overflow float32 (features too large); rescale the features")
    return values, indices.to(torch.int64)


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
