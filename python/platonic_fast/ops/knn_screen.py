"""Certified bfloat16 screen for the exact CPU kNN (issue 20; derivation in docs/bf16-screen.md).

The exact CPU path multiplies float32 tiles. On a CPU with bfloat16 instructions (AVX-512-BF16,
AMX) the same tiles run several times faster in bfloat16, at a known cost in accuracy. The
screen turns that into the exact answer:

1. the tiles are multiplied in bfloat16 and fed to the same top-k merger, for ``kk = screen_kk(k)``
   candidates: by the project's AVX-512-BF16 kernel, fused with the merger (float32 output), or by
   oneDNN through torch (float32 accumulation, the output rounded to bfloat16; see
   :func:`screen_product`);
2. :func:`score_bounds`: per query row i a rigorous bound, |screened − exact| ≤ b0_i + c·|screened|
   for every key (input rounding through the actual rounding residues and Cauchy–Schwarz, the
   float32 accumulation's worst case, flushed subnormals, the output rounding);
3. :func:`certify`: the k-th exact score is at least L = lo(k-th screened); a candidate whose upper
   bound falls below L cannot be a neighbour; a row is certified when even its last candidate's
   upper bound does (every key outside the list is below it);
4. the window (candidates with upper bound ≥ L) of a certified row is rescored in float64 and
   sorted; a row that is not certified falls back to the exact path's own candidates (the torch
   reference's float32 scores over every key). Both then go through the exact path's ordering
   pass (``knn._settle``), whose values are the float64 scores rounded once: lists and values are
   bitwise those of the exact path.

The choice is visible: ``knn_screen_choice`` says whether the screen runs and why;
``PLATONIC_FAST_KNN_SCREEN=off`` (or ``screen="off"``) forces the plain float32 path;
``PLATONIC_FAST_KNN_SCREEN_PRODUCT`` picks the bf16 product.
"""

from __future__ import annotations

import functools
import math
import os

import torch

SCREEN_ENV = "PLATONIC_FAST_KNN_SCREEN"
PRODUCT_ENV = "PLATONIC_FAST_KNN_SCREEN_PRODUCT"
PRODUCTS = ("auto", "amx", "avx512_bf16", "onednn")
# What "auto" picks: the first that runs here. bench/bench_knn_screen.py times every product side
# by side; on the loaded development machine (Intel Xeon with AMX, N = 16,384, D = 768, k = 10)
# oneDNN's product was the fastest screen (6.9 s against 7.7 s for the fused AMX kernel and 9.2 s
# for the AVX-512-BF16 one; docs/bf16-screen.md), so it stays the default until a quiet machine
# says otherwise.
DEFAULT_PRODUCTS = ("onednn",)
# "bf16"/"tf32" name the screen's precision: "bf16" is "on" for the CPU; the Triton backend
# (GPU) screens only when asked by name, until the GPU proof has timed it.
SCREEN_MODES = ("auto", "on", "off", "bf16", "tf32")
GPU_SCREENS = ("bf16", "tf32")
# tf32 conversion inside the tensor cores may truncate: |x − tf32(x)| ≤ 2^-10·|x| per entry.
TF32_INPUT_U = 2.0 ** -10
# Below these sizes the float32 path is as fast (the screen's tile copies, conversions and
# rescoring cost about as much as the GEMM it saves: measured slower at N = 4096-8192 on a
# loaded 2-core EPYC). Provisional until bench/bench_knn_screen.py runs on a quiet machine.
SCREEN_MIN_KEYS = 16384
SCREEN_MAX_K = 128
BF16_U = 2.0 ** -8  # unit roundoff of bfloat16: 8 significant bits, round to nearest even
FP32_U = 2.0 ** -24
# Subnormal inputs/products may be flushed to zero by the bf16 instructions (DAZ/FTZ).
_TINY = 2.0 ** -126
# Relative margin on bounds evaluated in float64 (their own rounding is ~D·2^-53).
_MARGIN = 2.0 ** -30

# Rows certified / fallen back, summed over calls since the last reset (see stats()).
_STATS = {"calls": 0, "rows": 0, "fallback_rows": 0, "candidates": 0}


def stats(reset: bool = False) -> dict:
    """Counters of the screened passes in this process: calls, query rows, rows that fell back to
    the exact path, and window members rescored in float64."""
    out = dict(_STATS)
    if reset:
        for key in _STATS:
            _STATS[key] = 0
    return out


@functools.lru_cache(maxsize=None)
def cpu_features() -> dict:
    """The CPU features the compiled core detected (cpuid/xgetbv; AMX after the Linux permission
    request); ``{}`` when the core does not import or predates the screen."""
    try:
        from .. import _core

        return dict(_core.knn_screen_cpu_features())
    except (ImportError, AttributeError):
        return {}


def _forced_off_features() -> bool:
    # For tests: behave as on a CPU without bf16 instructions.
    return os.environ.get("PLATONIC_FAST_KNN_SCREEN_NO_BF16", "") not in ("", "0")


def bf16_hardware() -> str | None:
    """The bf16 instructions the screen would run on here ("amx_bf16", "avx512_bf16"), or None."""
    if _forced_off_features():
        return None
    f = cpu_features()
    if f.get("amx_bf16") and f.get("amx_permitted"):
        return "amx_bf16"
    if f.get("avx512_bf16"):
        return "avx512_bf16"
    return None


def screen_mode(option: str | None = None) -> str:
    """The screen option, else PLATONIC_FAST_KNN_SCREEN, else "auto"; checked."""
    value = option if option is not None else (os.environ.get(SCREEN_ENV, "auto") or "auto")
    if value not in SCREEN_MODES:
        where = "screen" if option is not None else f"{SCREEN_ENV} (fix or unset the environment variable)"
        raise ValueError(f"{where} must be one of {SCREEN_MODES}, got {value!r}")
    return value


def knn_screen_choice(n_keys: int, k: int, device: torch.device | str = "cpu", *,
                      option: str | None = None) -> tuple[bool, str]:
    """(whether the CPU kNN screens in bf16, why) for ``n_keys`` keys and ``k`` neighbours.

    "auto" screens when the CPU has bf16 instructions and the call is large enough to gain;
    "on" screens whenever the hardware allows (tests); "off" never.
    """
    mode = screen_mode(option)
    if mode == "off":
        return False, "forced off" + ("" if option is not None else f" ({SCREEN_ENV}=off)")
    if torch.device(device).type != "cpu":
        if mode in GPU_SCREENS:
            return True, f"{mode} screen of the Triton kernel (asked for by name)"
        return False, "on a GPU only when asked for by name (screen='bf16' or 'tf32')"
    if mode == "tf32":
        return False, "tf32 is a GPU screen"
    hw = bf16_hardware()
    if hw is None:
        return False, "no bf16 instructions on this CPU (avx512_bf16 or amx_bf16): the float32 path is faster"
    if mode in ("on", "bf16"):
        return True, f"forced on ({hw})"
    if n_keys < SCREEN_MIN_KEYS:
        return False, f"N={n_keys} < {SCREEN_MIN_KEYS}: the float32 path is as fast"
    if k > SCREEN_MAX_K:
        return False, f"k={k} > {SCREEN_MAX_K}: too many candidates to rescore"
    return True, f"{hw}: bf16 tiles, certified and rescored"


def screen_kk(k: int, n_cand: int) -> int:
    """Candidates the screen keeps per row (its budget): beyond them a row falls back."""
    return min(n_cand, 2 * k + 32)


def kernel_isas() -> list[str]:
    """The instruction sets the project's own bf16 kernel can run on here, best first: "amx"
    (AMX-BF16 tiles, after the Linux permission request) and "avx512_bf16" (vdpbf16ps); [] when
    the CPU has neither or the compiled core predates the kernel."""
    if _forced_off_features() or not cpu_features().get("avx512_bf16"):
        return []
    from .. import _core

    if not hasattr(_core.KnnMerger, "add_bf16_product"):
        return []
    f = cpu_features()
    return (["amx"] if f.get("amx_bf16") and f.get("amx_permitted") else []) + ["avx512_bf16"]


def kernel_available() -> bool:
    """Whether the project's own bf16 kernel can run here (see :func:`kernel_isas`)."""
    return bool(kernel_isas())


def screen_product() -> str:
    """The CPU screen's bf16 product, from PLATONIC_FAST_KNN_SCREEN_PRODUCT: "amx" or "avx512_bf16"
    (the project's kernel on that instruction set, fused with the merger: float32 scores, no
    tile in memory) or "onednn" (torch's bf16 matmul: scores rounded to bf16, widened into
    float32 tiles); "auto" (the default): the first of DEFAULT_PRODUCTS that runs here."""
    value = os.environ.get(PRODUCT_ENV, "auto") or "auto"
    if value not in PRODUCTS:
        raise ValueError(f"{PRODUCT_ENV} must be one of {PRODUCTS}, got {value!r} "
                         "(fix or unset the environment variable)")
    isas = kernel_isas()
    if value == "auto":
        return next(p for p in DEFAULT_PRODUCTS if p == "onednn" or p in isas)
    if value != "onednn" and value not in isas:
        raise ValueError(f"{PRODUCT_ENV}={value}, but this CPU (or this build of the core) cannot run the "
                         f"project's kernel on it (usable: {isas or 'none'}); unset it or use 'onednn'")
    return value


class Bf16Product:
    """The screen's tile producer: out = bf16(qb) · bf16(kb)ᵀ by oneDNN (float32 accumulation,
    output rounded to bfloat16), widened into the float32 tile the merger reads.

    A block's bf16 copy is kept (up to ``cache_bytes``) while the tile loop reuses the block:
    the cache holds the block itself too, so its memory cannot be reused for another block
    while a copy keyed by its address lives."""

    def __init__(self, cache_bytes: int = 256 << 20):
        self.cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cache_bytes = cache_bytes
        self.held = 0

    def _bf16_of(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.bfloat16:
            return t
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache[key] = self.cache.pop(key)  # most recently used last
            return hit[1]
        b = t.to(torch.bfloat16)
        size = b.numel() * 2
        while self.cache and self.held + size > self.cache_bytes:
            old = self.cache.pop(next(iter(self.cache)))
            self.held -= old[1].numel() * 2
        if size <= self.cache_bytes:
            self.cache[key] = (t, b)
            self.held += size
        return b

    # The output is rounded to bfloat16 (torch's CPU matmul has no float32 output for bfloat16
    # operands): its unit roundoff goes into the bound.
    output_u = BF16_U

    def __call__(self, qb: torch.Tensor, kb: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(torch.mm(self._bf16_of(qb), self._bf16_of(kb).T))

    def forget(self, t: torch.Tensor) -> None:
        """Drop the copies of blocks inside ``t``'s memory (a rank's block done with: the cache
        would otherwise keep it alive)."""
        base = t.untyped_storage().data_ptr()
        for key in [key for key, (orig, _) in self.cache.items() if orig.untyped_storage().data_ptr() == base]:
            self.held -= self.cache.pop(key)[1].numel() * 2


PRODUCT_OUTPUT_U = Bf16Product.output_u


def _bits(t: torch.Tensor):
    """A bf16 tensor's bit patterns as an int16 array (no copy for contiguous rows)."""
    return t.view(torch.int16).numpy()


class Bf16Kernel(Bf16Product):
    """The screen's own product: the compiled core's bf16 kernel on ``isa`` ("amx" or
    "avx512_bf16"; exact products, float32 sums, float32 output: no output rounding) merged as it
    is computed (``KnnMerger.add_bf16_product``): no score tile is stored, copied or read back.
    Blocks are rounded to bf16 by torch, as for the bound's residues, and cached as in
    Bf16Product."""

    output_u = 0.0

    def __init__(self, isa: str = "avx512_bf16", cache_bytes: int = 256 << 20):
        super().__init__(cache_bytes)
        self.isa = isa

    def __call__(self, qb: torch.Tensor, kb: torch.Tensor, out: torch.Tensor) -> None:
        from .. import _core

        out.copy_(torch.from_numpy(_core.bf16_gemm_nt(_bits(self._bf16_of(qb)), _bits(self._bf16_of(kb)), self.isa)))

    def merge_product(self, merger, qb: torch.Tensor, kb: torch.Tensor, q0: int, k0: int, exclude_self: bool,
                      mirror: bool) -> None:
        merger.add_bf16_product(_bits(self._bf16_of(qb)), _bits(self._bf16_of(kb)), q0, k0, exclude_self, mirror,
                                self.isa)


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.bfloat16 else t.to(torch.bfloat16)


def _gamma(n: int, u: float) -> float:
    """γ_n = n·u / (1 − n·u): the worst-case relative error of a sum of n + 1 terms."""
    return n * u / (1.0 - n * u)


def _residues(src, step: int):
    """(‖t_i‖, ‖bf16(t_i)‖, ‖t_i − bf16(t_i)‖) in float64 of a row source's owned rows, a block at a time."""
    f64 = torch.float64
    n, nh, r = [], [], []
    for r0, r1 in src.blocks(step):
        x = src.block(r0, r1)
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        xh = _bf16(x).to(wide)
        x = x.to(wide)
        n.append(torch.linalg.vector_norm(x, dim=1, dtype=f64))
        nh.append(torch.linalg.vector_norm(xh, dim=1, dtype=f64))
        # x − x̂ is exact in float32 (float64): a float minus its rounding to fewer bits is
        # representable in the wider format, so the residue norms are those of the true residues
        r.append(torch.linalg.vector_norm(x - xh, dim=1, dtype=f64))
    if not n:
        empty = torch.zeros(0, dtype=f64)
        return empty, empty, empty
    return torch.cat(n), torch.cat(nh), torch.cat(r)


def score_bounds(q: torch.Tensor, keys: torch.Tensor, *, output_u: float = PRODUCT_OUTPUT_U,
                 input_u: float | None = None, block_elements: int = 1 << 21) -> tuple[torch.Tensor, float]:
    """(b0, c) for tensors or row sources ``q``, ``keys``: for every query row i and key j,
    |screened(i, j) − ⟨q_i, k_j⟩| ≤ b0_i + c·|screened(i, j)|.

    - inputs rounded to bf16: ⟨x, y⟩ − ⟨x̂, ŷ⟩ = ⟨x − x̂, y⟩ + ⟨x̂, y − ŷ⟩, so by Cauchy–Schwarz
      |·| ≤ ‖x − x̂‖·‖y‖ + ‖x̂‖·‖y − ŷ‖ ≤ r_i·max‖y‖ + ‖x̂_i‖·max r_j (r the actual residues;
      with ``input_u``, a conversion we cannot replay (tf32 in the tensor cores): r ≤ input_u·‖x‖,
      ‖x̂‖ ≤ (1 + input_u)‖x‖; the products of such inputs are exact in float32 as well);
    - products of bf16 numbers are exact in float32; their float32 sum in any order is off by at
      most γ_{D−1}·Σ|x̂_t ŷ_t| ≤ γ_D·‖x̂‖‖ŷ‖;
    - flushed subnormal inputs and partial sums: at most 2^-126·(√D·(‖x̂‖ + ‖ŷ‖) + 2D + 2);
    - the output rounded with unit roundoff u: |s − fl(s)| ≤ u|s| ≤ u/(1 − u)·|fl(s)| (c).
    """
    from ..rows import as_rows

    q_src = as_rows(q)
    d = q_src.width
    step = max(1, block_elements // max(1, d))
    def norms(src):
        if input_u is None:
            return _residues(src, step)
        n = torch.cat([torch.linalg.vector_norm(src.block(r0, r1), dim=1, dtype=torch.float64)
                       for r0, r1 in src.blocks(step)]) if src.n_local else torch.zeros(0, dtype=torch.float64)
        return n, n * (1.0 + input_u), n * input_u

    qn, qh, qr = norms(q_src)
    if keys is q:
        kn, kh, kr = qn, qh, qr
    else:
        kn, kh, kr = norms(as_rows(keys))
    # maxima over every key: a rank's shard holds only some (the others' arrive by exchange)
    comm = q_src.comm
    kn_max, kh_max, kr_max = (comm.max(float(t.max()) if t.numel() else 0.0) for t in (kn, kh, kr))
    b_in = qr * kn_max + qh * kr_max
    b_acc = _gamma(d, FP32_U) * qh * kh_max
    b_tiny = _TINY * (math.sqrt(d) * (qh + kh_max) + 2 * d + 2)
    b_out_abs = _TINY  # a subnormal output: absolute, not relative, rounding
    b0 = (b_in + b_acc + b_tiny + b_out_abs) * (1.0 + _MARGIN)
    c = output_u / (1.0 - output_u) * (1.0 + _MARGIN)
    return b0, c


def certify(vals: torch.Tensor, k: int, b0: torch.Tensor, c: float, *, all_candidates: bool):
    """(certified, window) for screened top-kk lists ``vals`` (sorted, best first).

    Every true score within [lo, hi] = screened ∓ (b0 + c·|screened|), and hi, lo increase with
    the screened score, so the k-th exact score is at least L = lo(k-th screened), no key whose
    screened score is below the list's can beat hi(last), and a candidate with hi < L is out.
    ``window[r, p]``: candidate p may be a neighbour; ``certified[r]``: no key outside the list can
    (hi(last) < L strictly, so none can even tie), or the list holds every candidate.
    """
    v = vals.to(torch.float64)
    slack = b0[:, None] + c * v.abs()
    lo, hi = v - slack, v + slack
    bar = lo[:, k - 1: k]
    window = hi >= bar
    if all_candidates:
        certified = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    else:
        certified = hi[:, -1] < bar[:, 0]
    return certified, window


def serves(q, keys, k: int, backend: str, *, option: str | None = None) -> bool:
    """Whether the screen runs for row sources ``q`` (queries) and ``keys`` on ``backend``
    ("cpu", or "triton" when a GPU screen is named): :func:`knn_screen_choice`. Collective on
    shards: the CPU screen serves a rank's shard (its pair tiles screened) when every rank can
    screen; the Triton screen serves sources that own every row."""
    if backend not in ("cpu", "triton"):
        return False
    with q.comm.step():  # a bad option raises on every rank
        if backend == "triton" and (q.comm.size != 1 or screen_mode(option) not in GPU_SCREENS):
            return False
        ok = knn_screen_choice(keys.n, k, q.device, option=option)[0]
    # the ranks take one path (its exchanges are collective): a rank without bf16 instructions
    # or with the screen forced off sends every rank down the float32 path
    return ok if q.comm.size == 1 else not q.comm.any(not ok)


def candidates(q, keys, k: int, kk_exact: int, *, exclude_self: bool, n_cand: int, more, backend: str = "cpu",
               option: str | None = None):
    """Candidate lists for the exact ordering pass (``knn.settle``), from the bf16 screen.

    ``q``, ``keys``: row sources (``keys=None``: the self form; a rank's shard screens its pair
    tiles, certifies and rescores its own rows: collective); ``more(q, keys, rows, kk,
    exclude_self)``: the exact path's candidates for rows that fall back (collective on shards). ``backend``: "cpu"
    (bf16 tiles into the compiled merger) or "triton" (its fused kernel on bf16 inputs, or with
    tf32 tensor cores: ``option`` "bf16" / "tf32"; float32 scores, no output rounding).

    Returns ``(vals, idx, certified)`` of width W ≥ kk_exact: a certified row holds its window
    sorted by float64 score (the ordering pass's kernel), then by index, then −inf (index −1; the
    window ends there, no key outside it can be a neighbour): its first k are final
    (``certified``, the ordering pass's ``settled``); a row that falls back, the exact path's
    top-W by float32 score.
    """
    from .knn import _reorder_clusters
    from .knn import candidates as tile_candidates

    keys_ = q if keys is None else keys
    kk = screen_kk(k, n_cand)
    if backend == "triton":
        from ..triton.knn import MAX_K, knn_triton

        kind = screen_mode(option)
        kk = min(kk, MAX_K)
        qt = q.block(0, q.n_local)
        kt = None if keys is None else keys.block(0, keys.n_local)
        if kind == "bf16":
            qt, kt = qt.to(torch.bfloat16), None if kt is None else kt.to(torch.bfloat16)
        vals, idx = knn_triton(qt, kt, kk, exclude_self=exclude_self, allow_tf32=kind == "tf32")
        dtype = torch.float64 if torch.float64 in (q.dtype, keys_.dtype) else torch.float32
        vals = vals.to(dtype)
        b0, c = score_bounds(q, keys_, output_u=0.0, input_u=TF32_INPUT_U if kind == "tf32" else None)
    else:
        which = screen_product()
        product = Bf16Product() if which == "onednn" else Bf16Kernel(which)
        vals, idx = tile_candidates(q, keys, kk, exclude_self, "cpu", None, product=product)
        b0, c = score_bounds(q, keys_, output_u=product.output_u)
    b0 = b0.to(vals.device)
    certified, window = certify(vals, k, b0, c, all_candidates=kk == n_cand)
    rows = torch.arange(q.n_local, device=vals.device)
    good, fallback = rows[certified], rows[~certified]
    widest = int(window[certified].sum(dim=1).max()) + 1 if good.numel() else kk_exact
    width = min(n_cand, max(kk_exact, widest))
    out_v = torch.full((q.n_local, width), -torch.inf, dtype=vals.dtype, device=vals.device)
    out_i = torch.full((q.n_local, width), -1, dtype=torch.int64, device=vals.device)
    step = q.settle_rows or max(1, good.numel())
    local, comm = q.local(), q.comm
    # a fetch is collective on shards: every rank runs as many chunks (empty ones fetch nothing)
    for c0 in range(0, step * int(comm.max(-(-good.numel() // step))), step):
        with comm.step():
            r = good[c0: c0 + step]
            w = window[r]
            seen = torch.zeros(keys_.n, dtype=torch.bool, device=vals.device)
            seen[idx[r][w]] = True  # the members' keys, unique and ascending, without a sort
        fetched = keys_.fetch(seen.nonzero().squeeze(1))
        with comm.step():
            if r.numel():
                masked = torch.where(w, vals[r], torch.full_like(vals[r], -torch.inf))
                sv, si = _reorder_clusters(local, fetched, r, masked, idx[r], w)
                m = min(width, sv.shape[1])
                sv, si = sv[:, :m], si[:, :m]
                out_v[r, :m], out_i[r, :m] = sv, torch.where(torch.isinf(sv), torch.full_like(si, -1), si)
    if comm.any(fallback.numel() > 0):  # collective: the exact candidates stream every key block
        fv, fi = more(q, keys_, fallback, width, exclude_self)
        with comm.step():
            out_v[fallback], out_i[fallback] = fv.to(out_v.dtype), fi
    _STATS["calls"] += 1
    _STATS["rows"] += q.n_local
    _STATS["fallback_rows"] += int(fallback.numel())
    _STATS["candidates"] += int(window[certified].sum())
    return out_v, out_i, certified


__all__ = ["knn_screen_choice", "serves", "candidates", "score_bounds", "certify", "stats", "cpu_features",
           "bf16_hardware", "screen_mode", "screen_product", "kernel_available", "kernel_isas", "SCREEN_ENV",
           "PRODUCT_ENV"]
