"""Fused centred-kernel sums for two feature sets in one pass over N x N tiles (Triton).

For kernels K (from A) and L (from B) of the same N samples — linear (⟨x, y⟩) or the RBF in
the held form of ops/hsic.py, K̂ = (expm1(γ(m - ‖x - y‖²)) + b) / h (γ, m, b, 1/h per side;
γ = 1/(2σ²), m = 0, b = 1, h = 1 is exp(-‖x - y‖²/(2σ²)) itself) — one pass over the
BLOCK x BLOCK tiles of one triangle accumulates everything biased and unbiased HSIC need (docs/metrics.md#hsic):

    Σ K∘L, Σ K∘K, Σ L∘L   and the row sums K1, L1

Each tile of K and L is built in registers by tl.dot over the feature dimension and never
written to global memory; off-diagonal tiles count twice (the transpose) and add to the row sums
of both of their row blocks. Tile sums are reduced in float32 inside the tile, then accumulated
in float64 (per row block, and per row for the row sums). Memory: O(N) beyond the inputs.

The diagonal is known without the pass (linear: ‖x_i‖², RBF: (expm1(γm) + b) / h), so it is
not returned.
"""

from __future__ import annotations

import contextlib

import torch

import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import interpreted


@triton.jit
def _gram_tile(x_ptr, n, d, stride, row0, col0, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
               UPCAST: tl.constexpr):
    """X[row0:row0+BLOCK] @ X[col0:col0+BLOCK]ᵀ in float32, rows past n read as zeros."""
    lanes = tl.arange(0, BLOCK)
    rows = row0 + lanes
    cols = col0 + lanes
    # Block offsets in int64 (N·D may pass 2³¹ elements), int32 within the tile.
    a_block = x_ptr + row0.to(tl.int64) * stride
    b_block = x_ptr + col0.to(tl.int64) * stride
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, d, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        a = tl.load(a_block + lanes[:, None] * stride + ks[None, :],
                    mask=(rows[:, None] < n) & (ks[None, :] < d), other=0.0)
        b = tl.load(b_block + lanes[:, None] * stride + ks[None, :],
                    mask=(cols[:, None] < n) & (ks[None, :] < d), other=0.0)
        if UPCAST:  # the CPU interpreter cannot multiply half types
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        # float32 inputs stay float32 (ieee, no tf32); half types use the tensor cores.
        acc += tl.dot(a, tl.trans(b), input_precision="ieee", out_dtype=tl.float32)
    return acc


@triton.jit
def _expm1(x, INTERPRETED: tl.constexpr):
    """exp(x) - 1 without the cancellation near 0: libdevice's on a GPU; the CPU interpreter has
    no libdevice, so there Kahan's identity (exp(x) - 1) · x / log(exp(x))."""
    if INTERPRETED:
        u = tl.exp(x)
        safe = tl.where((u == 1.0) | (u == 0.0), 0.5, u)  # keeps log() finite on the masked lanes
        return tl.where(u == 1.0, x, tl.where(u == 0.0, -1.0, (safe - 1.0) * x / tl.log(safe)))
    else:
        return libdevice.expm1(x)


@triton.jit
def _kernel_tile(x_ptr, sq_ptr, n, d, stride, row0, col0, gamma, shift, offset, inv_h,
                 RBF: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    g = _gram_tile(x_ptr, n, d, stride, row0, col0, BLOCK, BLOCK_D, UPCAST)
    if RBF:
        rows = row0 + tl.arange(0, BLOCK)
        cols = col0 + tl.arange(0, BLOCK)
        sq_r = tl.load(sq_ptr + rows, mask=rows < n, other=0.0)
        sq_c = tl.load(sq_ptr + cols, mask=cols < n, other=0.0)
        dist = tl.maximum(sq_r[:, None] + sq_c[None, :] - 2.0 * g, 0.0)
        dist = tl.where(rows[:, None] == cols[None, :], 0.0, dist)  # exact zero distance to self
        g = (_expm1((shift - dist) * gamma, UPCAST) + offset) * inv_h  # UPCAST: the interpreter
    return g


@triton.jit
def _hsic_sums_kernel(a_ptr, b_ptr, sq_a_ptr, sq_b_ptr, n, da, db, stride_a, stride_b,
                      gamma_a, shift_a, offset_a, inv_h_a, gamma_b, shift_b, offset_b, inv_h_b,
                      partial_ptr, rows_k_ptr, rows_l_ptr, size_class,
                      RBF: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                      UPCAST: tl.constexpr):
    # Program (bi, t) handles tile (bi, (bi + t) mod nb) for t = 0 .. nb // 2: every unordered
    # pair of row blocks exactly once (for even nb the pairs at distance nb / 2 would come twice,
    # so only bi < nb / 2 keeps them). Consecutive programs share their row block (L2 reuse).
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(n, BLOCK)
    offsets = n_blocks // 2 + 1
    bi = pid // offsets
    t = pid % offsets
    if (n_blocks % 2 == 0) & (t == n_blocks // 2) & (bi >= n_blocks // 2):
        return
    bj = (bi + t) % n_blocks
    row0 = bi * BLOCK
    col0 = bj * BLOCK
    k = _kernel_tile(a_ptr, sq_a_ptr, n, da, stride_a, row0, col0, gamma_a, shift_a, offset_a, inv_h_a,
                     RBF, BLOCK, BLOCK_D, UPCAST)
    l = _kernel_tile(b_ptr, sq_b_ptr, n, db, stride_b, row0, col0, gamma_b, shift_b, offset_b, inv_h_b,
                     RBF, BLOCK, BLOCK_D, UPCAST)
    rows = row0 + tl.arange(0, BLOCK)
    cols = col0 + tl.arange(0, BLOCK)
    valid = (rows[:, None] < n) & (cols[None, :] < n)
    k = tl.where(valid, k, 0.0)
    l = tl.where(valid, l, 0.0)
    w = tl.where(t == 0, 1.0, 2.0)  # an off-diagonal tile stands for itself and its transpose
    # One float64 partial per row block (O(N / BLOCK) memory even at N = 10^6).
    tl.atomic_add(partial_ptr + bi * 3 + 0, (w * tl.sum(tl.sum(k * l, axis=1), axis=0)).to(tl.float64))
    tl.atomic_add(partial_ptr + bi * 3 + 1, (w * tl.sum(tl.sum(k * k, axis=1), axis=0)).to(tl.float64))
    tl.atomic_add(partial_ptr + bi * 3 + 2, (w * tl.sum(tl.sum(l * l, axis=1), axis=0)).to(tl.float64))
    tl.atomic_add(rows_k_ptr + rows, tl.sum(k, axis=1).to(tl.float64), mask=rows < n)
    tl.atomic_add(rows_l_ptr + rows, tl.sum(l, axis=1).to(tl.float64), mask=rows < n)
    if t != 0:  # the transposed tile feeds the rows of block bj
        tl.atomic_add(rows_k_ptr + cols, tl.sum(k, axis=0).to(tl.float64), mask=cols < n)
        tl.atomic_add(rows_l_ptr + cols, tl.sum(l, axis=0).to(tl.float64), mask=cols < n)


def _grid(n: int, block: int) -> tuple[int]:
    nb = triton.cdiv(n, block)
    return (nb * (nb // 2 + 1),)


# Autotuned on a GPU (tile size, warps, stages); the float64 accumulators are zeroed before each
# trial so that tuning runs leave no trace. Tuning runs once per (da, db, kernel, dtypes) on the
# first PROXY_ROWS samples, so that a 10⁶-sample call does not time every configuration at full
# size. The interpreter takes one fixed configuration.
# 128-row tiles need 8 warps: with 4 they spill (ahead-of-time compiles for sm_90,
# tests/triton_aot.py).
_CONFIGS = [triton.Config({"BLOCK": b, "BLOCK_D": bd}, num_warps=w, num_stages=st)
            for b in (64, 128) for bd in (32, 64) for w in (4, 8) for st in (2, 3) if not (b == 128 and w == 4)]
# ``size_class`` (unused by the kernel) keys the tuning by problem size (small calls apart).
_hsic_sums_tuned = triton.autotune(configs=_CONFIGS, key=["da", "db", "RBF", "size_class"],
                                   reset_to_zero=["partial_ptr", "rows_k_ptr", "rows_l_ptr"])(_hsic_sums_kernel)
_MIN_BLOCK = 16
PROXY_ROWS = 32_768
_tuned_keys: set = set()


def hsic_sums(a: torch.Tensor, b: torch.Tensor, kernel: str = "ip", rbf=None, *,
              block: int | None = None, block_d: int = 32) -> dict:
    """Σ K∘L, Σ K∘K, Σ L∘L (floats) and row sums K1, L1 (float64 tensors) in one fused pass.

    Parameters
    ----------
    a, b : torch.Tensor, shapes (N, Da) and (N, Db)
        Features on a CUDA device (or CPU under TRITON_INTERPRET=1), float32/float16/bfloat16.
        For the linear kernel pass column-centred features: HSIC is invariant to the shift and
        centring avoids cancellation in the sums.
    kernel : "ip" or "rbf"
    rbf : pair of (γ, m, b, 1/h) tuples (for a, for b)
        RBF only: the tiles are (expm1(γ(m - d²)) + b) / h (``ops.hsic.rbf_form``); (γ, 0, 1, 1) is
        exp(-γ d²). γ is clamped to the float32 range (an overflow to inf gives the exact limit).
    block, block_d : int
        Tile rows and the feature-dimension step (powers of two, >= 16 for tl.dot). Default:
        autotuned on a GPU, 64 x 32 in the interpreter.
    """
    if kernel not in ("ip", "rbf"):
        raise ValueError(f"kernel must be 'ip' or 'rbf', got {kernel!r}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same N, got {a.shape[0]} and {b.shape[0]}")
    a = a.contiguous()
    b = b.to(a.device).contiguous()
    with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
        if kernel == "rbf" and rbf is None:
            raise ValueError("the RBF kernel needs rbf=((γ, m, b, 1/h) for a, (γ, m, b, 1/h) for b)")
        params = tuple(float(v) for side in (rbf or ((0.0, 0.0, 0.0, 1.0),) * 2) for v in side)
        params = tuple(min(v, _F32_MAX) for v in params)  # γ past float32: the exact limit
        return _hsic_sums(a, b, kernel, params, block, block_d)


_F32_MAX = float(torch.finfo(torch.float32).max)


def _hsic_sums(a, b, kernel, rbf, block, block_d) -> dict:
    if not interpreted() and block is None:
        tune_key = (a.device, a.shape[1], b.shape[1], kernel, a.dtype, b.dtype)
        if tune_key not in _tuned_keys and a.shape[0] > PROXY_ROWS:
            _hsic_sums_launch(a[:PROXY_ROWS], b[:PROXY_ROWS], kernel, rbf, None, block_d)
        _tuned_keys.add(tune_key)
    return _hsic_sums_launch(a, b, kernel, rbf, block, block_d)


def _hsic_sums_launch(a, b, kernel, rbf, block, block_d) -> dict:
    n = a.shape[0]
    sq_a = a.float().square().sum(dim=1) if kernel == "rbf" else a.new_zeros(1, dtype=torch.float32)
    sq_b = b.float().square().sum(dim=1) if kernel == "rbf" else b.new_zeros(1, dtype=torch.float32)
    # Sized for the smallest tile any configuration may pick.
    partial = torch.zeros(triton.cdiv(n, _MIN_BLOCK), 3, dtype=torch.float64, device=a.device)
    rows_k = torch.zeros(n, dtype=torch.float64, device=a.device)
    rows_l = torch.zeros(n, dtype=torch.float64, device=a.device)
    args = (a, b, sq_a, sq_b, n, a.shape[1], b.shape[1], a.stride(0), b.stride(0), *rbf,
            partial, rows_k, rows_l, min(triton.next_power_of_2(n), PROXY_ROWS))
    is_rbf = kernel == "rbf"
    if interpreted() or block is not None:
        block = block or 64
        _hsic_sums_kernel[_grid(n, block)](*args, RBF=is_rbf, BLOCK=block, BLOCK_D=block_d, UPCAST=interpreted())
    else:
        _hsic_sums_tuned[lambda meta: _grid(n, meta["BLOCK"])](*args, RBF=is_rbf, UPCAST=False)
    totals = partial.sum(dim=0)
    return {"cross": float(totals[0]), "self_k": float(totals[1]), "self_l": float(totals[2]),
            "rows_k": rows_k, "rows_l": rows_l}
