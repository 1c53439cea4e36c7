"""Fused exact k-nearest neighbours by inner product (Triton): GEMM tiles -> running top-k.

One program owns BLOCK_M query rows and walks over the keys BLOCK_N at a time:

    S = Q_blk @ K_blkᵀ                       (tl.dot, float32 accumulation, in registers)
    if any score beats its row's k-th best:  (the hot path: one compare per score)
        merge S into the running top-k      (a sort of 2·BLOCK_N packed keys per row)

The similarity tile never reaches global memory. The running top-k lives in registers as
BLOCK_M x TOP packed 64-bit keys (TOP = k rounded up to a power of two, at least 16; the GEMM
tile width BLOCK_N >= TOP is chosen independently): the high 32 bits order the float score (larger first),
the low 32 bits hold (2³² - 1 - index), so a descending sort of the keys orders by score and
breaks ties toward the smaller index — the contract of SPEC §1. k <= 128; larger k uses the
torch backend.

float32 inputs are multiplied in float32 ("ieee") unless tf32 is asked for; bfloat16/float16
inputs use the tensor cores with float32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreted

MAX_K = 128
_INDEX_MASK = (1 << 32) - 1


@triton.jit
def _pack(values, cols):
    """(float32 score, int index) -> int64 key; descending keys = larger score, then smaller index."""
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
def _top_half(keys, ROWS: tl.constexpr, WIDTH: tl.constexpr):
    """The first WIDTH // 2 entries of each row of sorted ``keys`` (ROWS x WIDTH)."""
    halves = tl.permute(tl.reshape(keys, (ROWS, 2, WIDTH // 2)), (0, 2, 1))
    first, _ = tl.split(halves)
    return first


@triton.jit
def _knn_kernel(q_ptr, k_ptr, out_val_ptr, out_idx_ptr, n_q, n_k, d, stride_q, stride_k, k,
                EXCLUDE_SELF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                TOP: tl.constexpr, LOG2_TILE_OVER_TOP: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    lanes = tl.arange(0, BLOCK_N)
    top_lanes = tl.arange(0, TOP)
    neg_inf = float("-inf")
    # The running best TOP (>= k) candidates per row, sorted descending; empty slots hold -inf
    # with the largest index so that they sort last.
    best = _pack(tl.full((BLOCK_M, TOP), neg_inf, tl.float32),
                 tl.full((BLOCK_M, TOP), 2147483647, tl.int32))
    kth = tl.full((BLOCK_M,), neg_inf, tl.float32)
    for col0 in range(0, n_k, BLOCK_N):
        cols = col0 + lanes
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            q = tl.load(q_ptr + rows[:, None] * stride_q + ds[None, :],
                        mask=(rows[:, None] < n_q) & (ds[None, :] < d), other=0.0)
            kb = tl.load(k_ptr + cols[:, None] * stride_k + ds[None, :],
                         mask=(cols[:, None] < n_k) & (ds[None, :] < d), other=0.0)
            if UPCAST:  # the CPU interpreter cannot multiply half types
                q = q.to(tl.float32)
                kb = kb.to(tl.float32)
            acc += tl.dot(q, tl.trans(kb), input_precision=PRECISION, out_dtype=tl.float32)
        invalid = cols[None, :] >= n_k
        if EXCLUDE_SELF:
            invalid = invalid | (rows[:, None] == cols[None, :])
        acc = tl.where(invalid, neg_inf, acc)
        # Hot path: a column enters only with a score above the row's k-th best (an equal score
        # has a larger index than every kept one, so it loses the tie).
        enters = tl.max(tl.max((acc > kth[:, None]).to(tl.int32), axis=1), axis=0)
        if enters > 0:
            # The tile's own best TOP per row (sort, then halve down to TOP wide)...
            tile = tl.sort(_pack(acc, cols), dim=1, descending=True)
            width: tl.constexpr = BLOCK_N
            for _ in tl.static_range(LOG2_TILE_OVER_TOP):
                tile = _top_half(tile, BLOCK_M, width)
                width = width // 2
            # ... merged with the running best: 2·TOP keys per row, sorted, first half kept.
            both = tl.reshape(tl.join(best, tile), (BLOCK_M, 2 * TOP))
            best = _top_half(tl.sort(both, dim=1, descending=True), BLOCK_M, 2 * TOP)
            values, _ = _unpack(best)
            kth = tl.max(tl.where(top_lanes[None, :] == k - 1, values, neg_inf), axis=1)
    values, cols = _unpack(best)
    out_mask = (rows[:, None] < n_q) & (top_lanes[None, :] < k)
    offs = rows[:, None] * k + top_lanes[None, :]
    tl.store(out_val_ptr + offs, values, mask=out_mask)
    tl.store(out_idx_ptr + offs, cols, mask=out_mask)


# Autotuned on a GPU (the interpreter takes one fixed configuration): rows per program, warps
# and pipeline stages; the GEMM tile width follows k (BLOCK_N >= TOP), set by the launcher.
_CONFIGS = [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=st)
            for bm in (32, 64, 128) for w in (4, 8) for st in (2, 3)]
_knn_kernel_tuned = triton.autotune(configs=_CONFIGS, key=["d", "k", "EXCLUDE_SELF"])(_knn_kernel)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


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
        Query rows per program; default: autotuned on a GPU, 16 in the interpreter.

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
    keys = keys.contiguous()
    n_q, d = queries.shape
    n_k = keys.shape[0]
    top = max(16, _next_pow2(k))  # running top-k width (>= k, a power of two for tl.sort)
    block_n = max(top, 32 if interpreted() else 64)  # GEMM tile width, independent of k
    block_d = 32 if d > 16 else 16
    values = torch.empty(n_q, k, dtype=torch.float32, device=queries.device)
    indices = torch.empty(n_q, k, dtype=torch.int32, device=queries.device)
    precision = "tf32" if (allow_tf32 and queries.dtype == torch.float32) else "ieee"
    args = (queries, keys, values, indices, n_q, n_k, d, queries.stride(0), keys.stride(0), k)
    consts = dict(EXCLUDE_SELF=bool(exclude_self and symmetric), BLOCK_N=block_n, TOP=top,
                  LOG2_TILE_OVER_TOP=(block_n // top).bit_length() - 1, BLOCK_D=block_d,
                  PRECISION=precision, UPCAST=interpreted() and queries.dtype != torch.float32)
    if interpreted() or block_m is not None:
        block_m = block_m or 16
        _knn_kernel[(triton.cdiv(n_q, block_m),)](*args, BLOCK_M=block_m, **consts)
    else:
        _knn_kernel_tuned[lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]),)](*args, **consts)
    return values, indices.to(torch.int64)
