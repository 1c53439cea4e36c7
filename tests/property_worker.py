"""Property-suite worker: random cases over the public API, each checked against an oracle.

Run by tests/test_properties.py in subprocesses (a crash kills a worker, not the test run)::

    python tests/property_worker.py --index 0 --workers 2 --examples 5000 --seed 1000
    python tests/property_worker.py --repro '<a case as printed in a failure>'

Every case is a small JSON *recipe* (function, parameters, and for each input: N, D, kind,
magnitude, dtype, library, memory layout, defect, seed) drawn by hypothesis; :func:`build`
turns it into arrays deterministically, so a failure is reproduced from its recipe alone.

The oracle decides each case's outcome before calling platonic_fast:
  (a) invalid input            -> must raise ValueError/TypeError (the types the defects allow);
  (b) legal but degenerate     -> must raise ValueError or warn, never return a number silently
      (all rows identical; an RBF kernel that is exactly I or all ones; svcca with a
      zero-variance column or an undetermined/trivial subspace; float32 scores beyond float32
      for kNN values);
  (c) otherwise                -> a number within tolerance of the float64 dense reference
      (tests/dense_reference.py), kNN metrics given the same neighbour lists.
Some (b) cases also accept the correct number (``accept_value``): float32 inputs whose scores
overflow float32 where the answer is still exactly defined (neighbour lists, CKA).

The worker prints one JSON object on its last stdout line: counts per function / outcome /
tag, and the first failures (with their recipes). Known-failing categories (KNOWN_FAILING,
on unless ``--strict``) are counted apart so the suite passes while their fixes land.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import traceback
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dense_reference as R  # noqa: E402

# Categories (case tags) that fail today because their fixes have not landed. A failing case
# carrying one of these tags is counted as "known" instead of failing the run (unless --strict).
# Remove a tag once its fix is in: the full run then fails if the tag still matched cases and
# none of them failed (stale entry), like a strict xfail.
KNOWN_FAILING: dict[str, str] = {}

F32_MAX = float(torch.finfo(torch.float32).max)
U32 = 2.0 ** -24
F32_TINY = 1.5e-45  # below the smallest float32 subnormal: a value underflowing to 0 is exact

KNN_METRICS = ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn")
METRICS = KNN_METRICS + ("cka", "unbiased_cka", "cknna", "svcca")
FUNCTIONS = ("knn_self", "knn_cross") + METRICS + ("remove_outliers", "align", "prepare_score", "measure")

TORCH_DTYPES = {"f64": torch.float64, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                "i32": torch.int32, "i64": torch.int64, "u8": torch.uint8, "bool": torch.bool,
                "c64": torch.complex64}
NUMPY_DTYPES = {"f64": "f8", "f32": "f4", "f16": "f2", "i32": "i4", "i64": "i8", "u8": "u1", "bool": "?",
                "c64": "c8"}
FLOAT_CODES = ("f64", "f32", "f16", "bf16")


# ----------------------------------------------------------------------------------------------
# recipes -> inputs
# ----------------------------------------------------------------------------------------------

def base_matrix(n: int, d: int, kind: str, seed: int) -> torch.Tensor:
    """float64 N x D values of a kind (before magnitude, dtype and layout)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "grid":  # dyadic: exact scores, exact ties between distinct rows
        return torch.randint(-3, 4, (n, d), generator=g).to(torch.float64) / 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "dups" and n >= 2:
        m = max(1, n // 3)
        dst = torch.randperm(n, generator=g)[:m]
        src = torch.randint(0, n, (m,), generator=g)
        x[dst] = x[src]
    elif kind == "constcol":
        cols = torch.randperm(d, generator=g)[: max(1, d // 3)]
        x[:, cols] = torch.randn(1, len(cols), generator=g, dtype=torch.float64)
    elif kind == "constant":
        x[:] = x[0].clone()
    elif kind == "zero":
        x.zero_()
    return x


def _np_layout(v: np.ndarray, layout: str) -> np.ndarray:
    if layout == "transpose":
        return np.ascontiguousarray(v.T).T
    if layout == "rowstep":
        big = np.zeros((2 * v.shape[0],) + v.shape[1:], dtype=v.dtype)
        big[::2] = v
        return big[::2]
    if layout == "colstep" and v.ndim == 2:
        big = np.zeros((v.shape[0], 3 * v.shape[1]), dtype=v.dtype)
        big[:, ::3] = v
        return big[:, ::3]
    if layout == "negstride":
        return np.ascontiguousarray(v[::-1])[::-1]
    if layout == "bigendian":
        return v.astype(v.dtype.newbyteorder(">"))
    if layout == "broadcast" and v.shape[0] > 0 and bool((v == v[:1]).all()):
        return np.broadcast_to(v[:1], v.shape)
    return v


def _torch_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "transpose":
        return t.T.contiguous().T if t.dim() == 2 else t.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "rowstep":
        big = torch.zeros((2 * t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype)
        big[::2] = t
        return big[::2]
    if layout == "colstep" and t.dim() == 2:
        big = torch.zeros(t.shape[0], 3 * t.shape[1], dtype=t.dtype)
        big[:, ::3] = t
        return big[:, ::3]
    if layout == "broadcast" and t.shape[0] > 0 and bool((t == t[:1]).all()):
        return t[:1].expand(t.shape)
    return t


def cast(x64: torch.Tensor, dtype: str, lib: str):
    """x64 in the recipe's dtype and library (no layout yet)."""
    if lib == "numpy" and dtype != "bf16":
        if dtype in ("i32", "i64", "u8"):
            return np.round(np.clip(np.nan_to_num(x64.numpy()), -100, 100) * 4).astype(NUMPY_DTYPES[dtype])
        if dtype == "bool":
            return x64.numpy() > 0
        with np.errstate(over="ignore"):
            return x64.numpy().astype(NUMPY_DTYPES[dtype])
    if dtype in ("i32", "i64", "u8"):
        return (x64.nan_to_num() * 4).round().clamp(-100, 100).to(TORCH_DTYPES[dtype])
    if dtype == "bool":
        return x64 > 0
    return x64.to(TORCH_DTYPES[dtype])


def effective(x) -> torch.Tensor | None:
    """The float64 values platonic_fast sees (None for non-float / non-array input)."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            return None
        return torch.from_numpy(np.array(x, dtype=np.float64))
    if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
        return x.detach().to(torch.float64).clone()
    return None


def build_input(spec: dict, n: int):
    """One input array from its recipe; returns (array, its float64 values or None).

    ``spec["layers"]`` (align tensors, N x L x D remove_outliers) stacks that many independently
    drawn layers of one width into an N x L x D array.
    """
    n_rows = n + (1 if spec.get("defect") == "n_plus_1" else 0)
    if spec.get("layers"):
        x64 = torch.stack([base_matrix(n_rows, spec["d"], spec["kind"], spec["seed"] + 7919 * i)
                           for i in range(spec["layers"])], dim=1)
    else:
        x64 = base_matrix(n_rows, spec["d"], spec["kind"], spec["seed"])
    x64 = x64 * (10.0 ** spec["mag"])
    defect = spec.get("defect")
    if defect in ("nan", "inf") and x64.numel():
        x64.view(-1)[spec["seed"] % x64.numel()] = math.nan if defect == "nan" else -math.inf
    x = cast(x64, spec["dtype"], spec["lib"])
    layout = spec["layout"]
    if isinstance(x, np.ndarray):
        if layout == "bigendian" and x.dtype.kind not in "fc":
            layout = "contig"
        x = _np_layout(x, layout)
    else:
        x = _torch_layout(x, layout)
    if defect == "1d":
        x = x[:, 0] if x.shape[1] else x.reshape(-1)
    elif defect == "3d":
        x = x[:, None]
    elif defect == "0d":
        x = x.reshape(-1)[0] if _numel(x) else x.sum()
    elif defect == "empty_rows":
        x = x[:0]
    elif defect == "empty_cols":
        x = x[:, :0]
    elif defect == "list":
        x = x.tolist()
    return x, effective(x)


def _numel(x) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else int(x.size)


def build(case: dict) -> dict:
    """Arrays (and their float64 values) for every input of a case."""
    out = {}
    for name in ("a", "b"):
        if name in case:
            out[name], out[name + "64"] = build_input(case[name], case["n"])
    if "layers_x" in case:
        for name in ("layers_x", "layers_y"):
            out[name] = [build_input(s, case["n"]) for s in case[name]]
    return out


# ----------------------------------------------------------------------------------------------
# oracle helpers
# ----------------------------------------------------------------------------------------------

class Expect:
    """What a case must do. kind: "raise" | "degenerate" | "value" | "knn" | "array" | "align"."""

    def __init__(self, kind, *, errors=(ValueError, TypeError), tags=(), accept_value=False, **kw):
        self.kind = kind
        self.errors = tuple(errors)
        self.tags = set(tags)
        self.accept_value = accept_value
        self.__dict__.update(kw)


def fixed_order_scores(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float64 x @ y.T summed feature by feature: one order for every entry, whatever the memory
    layout (a vectorised reduction may round rows differently by their alignment), so identical
    rows tie exactly."""
    s = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64)
    for d in range(x.shape[1]):
        s += x[:, d, None] * y[None, :, d]
    return s


def sq_dists(x: torch.Tensor) -> torch.Tensor:
    """‖x_i − x_j‖² from explicit differences (exactly 0 for duplicated rows)."""
    d2 = torch.zeros(x.shape[0], x.shape[0], dtype=x.dtype)
    for d in range(x.shape[1]):
        d2 += (x[:, d, None] - x[None, :, d]) ** 2
    return d2


def rbf_kernel(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """exp(-‖x_i − x_j‖² / (2σ²)) from explicit differences: the dense reference's ‖x‖² + ‖y‖² − 2x·y
    expansion cancels catastrophically far from unit scale (duplicated rows then get K < 1)."""
    return torch.exp(-sq_dists(x) / (2 * sigma**2))


def kernel(x: torch.Tensor, kind: str, sigma: float) -> torch.Tensor:
    return x @ x.T if kind == "ip" else rbf_kernel(x, sigma)


def ref_knn(x: torch.Tensor, keys: torch.Tensor | None, k: int, exclude_self: bool):
    s = fixed_order_scores(x, x if keys is None else keys)
    if keys is None and exclude_self:
        s.fill_diagonal_(-math.inf)
    vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
    return vals[:, :k], idx[:, :k], s


def all_rows_equal(x64: torch.Tensor) -> bool:
    return x64.shape[0] >= 1 and bool((x64 == x64[:1]).all())


def feature_errors(x, x64, *, min_dim=2, max_dim=2) -> set:
    """Exception types a feature argument must raise (empty set: valid)."""
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        return {TypeError}
    if x64 is None:
        return {TypeError}
    errs = set()
    if not (min_dim <= x64.dim() <= max_dim):
        errs.add(ValueError)
    elif x64.numel() == 0:
        errs.add(ValueError)
    if x64.numel() and not bool(torch.isfinite(x64).all()):
        errs.add(ValueError)
    return errs


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def k_errors(k, low: int, high: int) -> set:
    if not is_int(k):
        return {TypeError, ValueError}
    return set() if low <= int(k) <= high else {ValueError}


def low_precision(spec: dict) -> bool:
    return spec["dtype"] in ("f32", "f16", "bf16")


def max_abs_score(x64: torch.Tensor, y64: torch.Tensor | None = None) -> float:
    nx = torch.linalg.vector_norm(x64, dim=1).max()
    ny = nx if y64 is None else torch.linalg.vector_norm(y64, dim=1).max()
    return float(nx * ny)


def unit(x64: torch.Tensor) -> tuple[torch.Tensor, float]:
    """x scaled by a power of two to max |entry| near 1, and the factor used."""
    top = float(x64.abs().max())
    if top == 0:
        return x64, 1.0
    c = 2.0 ** math.frexp(top)[1]
    return x64 / c, c


# --- per-metric reference and classification --------------------------------------------------

def lists_for(metric: str, x64: torch.Tensor, k: int, opts: dict) -> torch.Tensor:
    exclude = opts.get("unbiased", True) if metric == "cknna" else True
    return ref_knn(x64, None, k, exclude)[1]


def reference_value(metric: str, a64, b64, opts: dict, *, dtype=torch.float64, la=None, lb=None,
                    sigmas=None) -> float:
    if metric in KNN_METRICS:
        return getattr(R, metric)(a64, b64, opts["topk"], knn_a=la, knn_b=lb, dtype=dtype)
    if metric == "cknna":
        return R.cknna(a64, b64, opts["topk"], opts["distance_agnostic"], opts["unbiased"], dtype=dtype,
                       knn_a=la, knn_b=lb)
    if metric in ("cka", "unbiased_cka"):
        unbiased = metric == "unbiased_cka" or opts.get("unbiased", False)
        kind, sigma = opts.get("kernel_metric", "ip"), opts.get("rbf_sigma", 1.0)
        sa, sb = sigmas if sigmas is not None else (sigma, sigma)
        K = kernel(a64.to(dtype), kind, sa)
        L = kernel(b64.to(dtype), kind, sb)
        hsic = R.hsic_unbiased if unbiased else R.hsic_biased
        return float(hsic(K, L) / (torch.sqrt(hsic(K, K) * hsic(L, L)) + 1e-6))
    if metric == "svcca":
        return R.svcca(a64, b64, opts["cca_dim"], dtype=dtype)
    raise AssertionError(metric)


def self_hsic_product(metric, a64, b64, opts, la, lb) -> float:
    """s(K,K)·s(L,L): its square root is what the 1e-6 guard (docs/metrics.md#cka) is added to (float64 reference)."""
    if metric == "cknna":
        unbiased = opts["unbiased"]
        hsic = R.hsic_unbiased if unbiased else R.hsic_biased
        out = 1.0
        for x, lst in ((a64, la), (b64, lb)):
            K = R.similarity(x)
            M = torch.zeros_like(K).scatter_(1, lst, 1.0)
            out *= float(hsic(M * K, M * K))
        return out
    unbiased = metric == "unbiased_cka" or opts.get("unbiased", False)
    hsic = R.hsic_unbiased if unbiased else R.hsic_biased
    kind, sigma = opts.get("kernel_metric", "ip"), opts.get("rbf_sigma", 1.0)
    K, L = kernel(a64, kind, sigma), kernel(b64, kind, sigma)
    return float(hsic(K, K)) * float(hsic(L, L))


def _standardised(x64: torch.Tensor) -> torch.Tensor:
    return R._standardise(x64)


def classify_metric(metric: str, a64, b64, opts: dict, *, low_a=False, low_b=False) -> Expect:
    """Outcome of a valid call of ``metric`` on float64 values a64, b64 (N x Da, N x Db)."""
    n = a64.shape[0]
    tags = set()
    if all_rows_equal(a64) or all_rows_equal(b64):
        tags.add("constant")
    if metric in ("cka", "unbiased_cka") and opts.get("kernel_metric", "ip") == "rbf":
        for x in (a64, b64):
            K = rbf_kernel(x, opts.get("rbf_sigma", 1.0))
            off = K[~torch.eye(n, dtype=torch.bool)]
            if off.numel() and float(off.max()) == 0.0:
                tags.add("rbf_identity")
            elif off.numel() and float(off.min()) == 1.0 and "constant" not in tags:
                tags.add("rbf_constant")
    if metric == "svcca":
        k = opts["cca_dim"]
        # a constant column standardises to an exact zero column (docs/metrics.md#svcca: divide by std + 1e-8):
        # not degenerate in itself; the rank and gap checks below decide
        if k >= n - 1:
            tags.add("svcca_trivial")
    if tags:
        return Expect("degenerate", errors=(ValueError,), tags=tags)

    overflow = ((low_a and max_abs_score(a64) > F32_MAX) or (low_b and max_abs_score(b64) > F32_MAX))
    if metric == "svcca":
        k = opts["cca_dim"]
        gaps, undetermined = [], False
        for x in (a64, b64):
            s = torch.linalg.svdvals(_standardised(x))
            s_next = float(s[k]) if k < s.numel() else 0.0
            gap = (float(s[k - 1]) - s_next) / max(float(s[0]), 1e-300)
            gaps.append(gap)
            undetermined |= gap < 1e-10
        if undetermined:
            return Expect("degenerate", errors=(ValueError,), tags={"svcca_undetermined"})
        want = reference_value(metric, a64, b64, opts)
        tol = 1e-5 + sum(1e-12 / g for g in gaps)
        either = min(gaps) < 1e-6  # nearly undetermined: a warning or an error is fine too
        return Expect("value", want=want, tol=tol, lo=-1e-6, hi=1 + 1e-6, either=either,
                      tags={"svcca_ill_conditioned"} if either else set())

    la = lb = None
    if metric in KNN_METRICS or metric == "cknna":
        la, lb = lists_for(metric, a64, opts["topk"], opts), lists_for(metric, b64, opts["topk"], opts)
    warn_ok = set()
    if metric in ("cka", "unbiased_cka") or (metric == "cknna" and not opts["distance_agnostic"]):
        prod = self_hsic_product(metric, a64, b64, opts, la, lb)
        if prod < 0:
            # unbiased HSIC(K,K) estimated below 0: the reference's sqrt is NaN, no score exists
            return Expect("degenerate", errors=(ValueError,), tags={"negative_self_hsic"})
        # the 1e-6 guard (docs/metrics.md#cka) is not negligible against sqrt(HSIC(K,K)·HSIC(L,L)): the score is
        # pulled towards 0 by scale alone (tiny features, a near-constant kernel). The reference
        # says the same number; a warning about it is welcome, not required.
        if not 1e-6 <= 1e-5 * math.sqrt(prod):
            warn_ok.add("guard_not_negligible")
    want = reference_value(metric, a64, b64, opts, la=la, lb=lb)
    if metric in ("cka", "unbiased_cka") and opts.get("kernel_metric", "ip") == "rbf":
        gamma = 1.0 / (2.0 * opts.get("rbf_sigma", 1.0) ** 2)
        for x in (a64, b64):
            d2 = sq_dists(x)[~torch.eye(n, dtype=torch.bool)]
            if d2.numel() and gamma * min(float(d2.mean()), float(d2.median())) > 20:
                warn_ok.add("rbf_near_identity")
    lo, hi = -math.inf, math.inf
    tol = 1e-9
    if metric in KNN_METRICS:
        lo, hi = 0.0, float(opts["topk"]) if metric == "lcs_knn" else 1.0
    else:
        # the reference's own float32 error at unit scale (2x rule, STYLE), the 1e-5 floor of docs/metrics.md#exactness
        (ua, ca), (ub, cb) = unit(a64), unit(b64)
        sig = opts.get("rbf_sigma", 1.0)
        want_unit = reference_value(metric, ua, ub, opts, la=la, lb=lb, sigmas=(sig / ca, sig / cb))
        want32 = reference_value(metric, ua, ub, opts, dtype=torch.float32, la=la, lb=lb,
                                 sigmas=(sig / ca, sig / cb))
        err = abs(want_unit - want32) if math.isfinite(want32) else math.inf
        tol = 1e-5 + 2 * err
        if metric == "cknna" and opts.get("distance_agnostic"):
            lo, hi = 0.0, 1.0 + 1e-9
        if tol > 0.05:  # the float32 reference itself is lost: only the type is checked
            return Expect("value", want=want, tol=math.inf, lo=lo, hi=hi, either=False,
                          tags={"ill_conditioned"} | warn_ok, warn_ok=bool(warn_ok))
    e = Expect("value", want=want, tol=tol, lo=lo, hi=hi, either=False, warn_ok=bool(warn_ok), tags=warn_ok)
    if overflow:
        e.kind, e.errors, e.accept_value = "degenerate", (ValueError,), True
        e.tags = {"f32_overflow"}
    return e


# ----------------------------------------------------------------------------------------------
# the oracle: expectations per function
# ----------------------------------------------------------------------------------------------

def metric_options(metric: str, case: dict) -> dict:
    p = case["params"]
    if metric in KNN_METRICS:
        return {"topk": p["k"]}
    if metric == "cknna":
        return {"topk": p["k"], "unbiased": p["unbiased"], "distance_agnostic": p["agnostic"]}
    if metric == "cka":
        return {"kernel_metric": p["kernel"], "rbf_sigma": p["sigma"], "unbiased": p["unbiased"]}
    if metric == "unbiased_cka":
        return {"kernel_metric": p["kernel"], "rbf_sigma": p["sigma"]}
    if metric == "svcca":
        return {"cca_dim": p["cca_dim"]}
    raise AssertionError(metric)


def option_errors(metric: str, opts: dict, n: int, widths: tuple[int, int]) -> set:
    if metric in KNN_METRICS:
        return k_errors(opts["topk"], 1, n - 1)
    if metric == "cknna":
        errs = k_errors(opts["topk"], 2, n - 1 if opts["unbiased"] else n)
        if opts["unbiased"] and not opts["distance_agnostic"] and n < 4:
            errs.add(ValueError)
        return errs
    if metric in ("cka", "unbiased_cka"):
        unbiased = metric == "unbiased_cka" or opts["unbiased"]
        return {ValueError} if unbiased and n < 4 else set()
    if metric == "svcca":
        errs = k_errors(opts["cca_dim"], 1, min(n, *widths))
        if n < 2:
            errs.add(ValueError)
        return errs
    raise AssertionError(metric)


def expect_metric(metric: str, case: dict, x: dict) -> Expect:
    opts = metric_options(metric, case)
    a64, b64 = x["a64"], x["b64"]
    fa, fb = feature_errors(x["a"], a64), feature_errors(x["b"], b64)
    errs = fa | fb
    # every problem present is a right reason to refuse (prepare/score checks options per set)
    if not fa:
        n, da = a64.shape
        db = b64.shape[1] if not fb else da
        errs |= option_errors(metric, opts, n, (da, db))
        if not fb:
            if b64.shape[0] != n:
                errs |= {ValueError} | option_errors(metric, opts, b64.shape[0], (da, db))
    elif not fb:
        errs |= option_errors(metric, opts, b64.shape[0], (b64.shape[1], b64.shape[1]))
    if errs and case["fn"] == "prepare_score" and not fa and all_rows_equal(a64):
        errs.add(ValueError)  # prepare(a) may refuse a constant `a` before b is looked at
    if errs:
        return Expect("raise", errors=errs)
    e = classify_metric(metric, a64, b64, opts, low_a=low_precision(case["a"]), low_b=low_precision(case["b"]))
    e.metric, e.opts = metric, opts
    return e


def expect_knn(case: dict, x: dict) -> Expect:
    p = case["params"]
    cross = case["fn"] == "knn_cross"
    errs = feature_errors(x["a"], x["a64"])
    if cross:
        errs |= feature_errors(x["b"], x["b64"])
    if errs:
        return Expect("raise", errors=errs)
    a64 = x["a64"]
    if cross:
        b64 = x["b64"]
        if a64.shape[1] != b64.shape[1]:
            return Expect("raise", errors={ValueError})
        errs = k_errors(p["k"], 1, b64.shape[0])
    else:
        b64 = None
        errs = k_errors(p["k"], 1, a64.shape[0] - (1 if p["exclude_self"] else 0))
    if errs:
        return Expect("raise", errors=errs)
    k = int(p["k"])
    vals, idx, s = ref_knn(a64, b64, k, p["exclude_self"] and not cross)
    out64 = case["a"]["dtype"] == "f64" or (cross and case["b"]["dtype"] == "f64")
    if not out64 and float(vals.abs().max()) > F32_MAX:
        return Expect("degenerate", errors=(ValueError,), tags={"f32_overflow"})
    return Expect("knn", vals=vals, idx=idx, scores=s, keys=a64 if b64 is None else b64, queries=a64,
                  out64=out64, k=k)


def expect_outliers(case: dict, x: dict) -> Expect:
    p = case["params"]
    q, exact = p["q"], p["exact"]
    a, a64 = x["a"], x["a64"]
    errs = set()
    if not (0 < q <= 1):
        errs.add(ValueError)
    if not isinstance(a, (np.ndarray, torch.Tensor)) or a64 is None:
        errs.add(TypeError)
    else:
        if a64.numel() == 0:
            errs.add(ValueError)
        if not exact and a64.dim() < 2:
            errs.add(ValueError)
        if q != 1 and not bool(torch.isfinite(a64).all()):
            errs.add(ValueError)
    if errs:
        return Expect("raise", errors=errs)
    if q == 1:
        return Expect("array", want=a64, same_object=True, tol=0.0)
    want = R.remove_outliers(a64, q, exact)
    t = float(want.abs().max())
    dt = case["a"]["dtype"]
    u = {"f64": 2.0 ** -52, "f32": 2.0 ** -23, "f16": 2.0 ** -10, "bf16": 2.0 ** -7}[dt]
    # exact: the threshold is an order statistic (exact); else a mean of quantiles in the dtype
    tol = 0.0 if exact else 4 * u * t + 1e-300
    return Expect("array", want=want, same_object=False, tol=tol)


def _align_layers(case: dict, x: dict, side: str):
    """(arrays as passed, float64 layers after the reference pipeline) or an Expect to raise."""
    items = x[side]
    if case["params"]["as_list"]:
        arrays = [arr for arr, _ in items]
        errs = set()
        for arr, v in items:
            errs |= feature_errors(arr, v)
        if errs:
            return arrays, None, errs
        vals = [v for _, v in items]
        if len({v.shape[0] for v in vals}) > 1:
            return arrays, None, {ValueError}
        return arrays, vals, set()
    # one N x L x D tensor: every layer has the first layer's width, stacked on dim 1
    arr, v = items[0]
    return arr, v, set()


def expect_align(case: dict, x: dict) -> Expect:
    p = case["params"]
    metric = p["metric"]
    xs_arg, xs64, ex = _align_layers(case, x, "layers_x")
    ys_arg, ys64, ey = _align_layers(case, x, "layers_y")
    errs = ex | ey
    if not p["as_list"]:
        for arr, v in (x["layers_x"][0], x["layers_y"][0]):
            errs |= feature_errors(arr, v, min_dim=3, max_dim=3)
    if not (0 < p["q"] <= 1):
        errs.add(ValueError)
    if errs:
        return Expect("raise", errors=errs, args=(xs_arg, ys_arg))
    if not p["as_list"]:
        xs64, ys64 = xs64, ys64
    n = (xs64[0] if p["as_list"] else xs64).shape[0]
    if (ys64[0] if p["as_list"] else ys64).shape[0] != n:
        return Expect("raise", errors={ValueError}, args=(xs_arg, ys_arg))
    lx = R._split_layers(xs64, p["q"], p["exact"], torch.float64)
    ly = R._split_layers(ys64, p["q"], p["exact"], torch.float64)
    if p["concat"]:
        lx, ly = lx + [torch.cat(lx, dim=1)], ly + [torch.cat(ly, dim=1)]
    # L2 normalisation as docs/metrics.md#layer-search states it (scale-free): F.normalize's 1e-12 floor would leave
    # rows of a layer near 1e-20 unnormalised, an artefact the library avoids by scaling first.
    lx = [t / _nonzero(t.norm(dim=-1, keepdim=True)) for t in lx]
    ly = [t / _nonzero(t.norm(dim=-1, keepdim=True)) for t in ly]
    opts = align_metric_options(metric, p)
    widths = [t.shape[1] for t in lx + ly]
    errs = option_errors(metric, {**opts, **({"topk": p["k"]} if "topk" in opts else {})}, n,
                         (min(widths), min(widths)))
    if errs:
        return Expect("raise", errors=errs, args=(xs_arg, ys_arg))
    pairs = {}
    tags = set()
    degenerate = False
    either = False
    for i, xi in enumerate(lx):
        for j, yj in enumerate(ly):
            e = classify_metric(metric, xi, yj, opts)
            if e.kind == "degenerate":
                degenerate = True
                tags |= e.tags
            else:
                either |= e.either
                if metric in KNN_METRICS or metric == "cknna":
                    if _near_ties(xi, opts, metric) or _near_ties(yj, opts, metric):
                        e.tol, e.tags = math.inf, e.tags | {"align_near_tie"}
            pairs[(i, j)] = e
    if degenerate:
        return Expect("degenerate", errors=(ValueError,), tags=tags, args=(xs_arg, ys_arg))
    return Expect("align", pairs=pairs, shape=(len(lx), len(ly)), concat=p["concat"], either=either,
                  args=(xs_arg, ys_arg), tags=set().union(*(e.tags for e in pairs.values())),
                  warn_ok=any(getattr(e, "warn_ok", False) for e in pairs.values()))


def _nonzero(norms: torch.Tensor) -> torch.Tensor:
    return torch.where(norms > 0, norms, torch.ones_like(norms))  # zero rows stay zero


def _near_ties(x64: torch.Tensor, opts: dict, metric: str) -> bool:
    """Does a layer's neighbour list hinge on scores closer than float32 preprocessing can tell?

    Scores of different vectors within 1e-5 (rows are unit vectors) at a position that matters
    (the set boundary for set metrics, every position for the ordered ones). Identical vectors
    tie exactly in any precision and follow the index rule: they are not near-ties.
    """
    k = opts["topk"]
    exclude = opts.get("unbiased", True) if metric == "cknna" else True
    s = fixed_order_scores(x64, x64)
    if exclude:
        s.fill_diagonal_(-math.inf)
    vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
    m = min(k + 1, vals.shape[1])
    positions = range(m - 1) if metric in ("lcs_knn", "edit_distance_knn") else ([k - 1] if m > k else [])
    for c in positions:
        close = ((vals[:, c] - vals[:, c + 1]).abs() < 1e-5).nonzero().flatten().tolist()
        for r in close:
            if not torch.equal(x64[idx[r, c]], x64[idx[r, c + 1]]):
                return True
    return False


def align_metric_options(metric: str, p: dict) -> dict:
    if metric in KNN_METRICS:
        return {"topk": p["k"]}
    if metric == "cknna":
        return {"topk": p["k"], "unbiased": True, "distance_agnostic": False}
    if metric == "cka":
        return {"kernel_metric": p["kernel"], "rbf_sigma": p["sigma"], "unbiased": p["unbiased"]}
    if metric == "unbiased_cka":
        return {"kernel_metric": p["kernel"], "rbf_sigma": p["sigma"]}
    return {"cca_dim": p["cca_dim"]}


def expect(case: dict, x: dict) -> Expect:
    fn = case["fn"]
    if fn in ("knn_self", "knn_cross"):
        return expect_knn(case, x)
    if fn == "remove_outliers":
        return expect_outliers(case, x)
    if fn == "align":
        return expect_align(case, x)
    metric = case["params"]["metric"] if fn in ("prepare_score", "measure") else fn
    return expect_metric(metric, case, x)


# ----------------------------------------------------------------------------------------------
# calling platonic_fast
# ----------------------------------------------------------------------------------------------

def call(pf, case: dict, x: dict, e: Expect):
    fn, p = case["fn"], case["params"]
    if fn == "knn_self":
        return pf.knn(x["a"], p["k"], exclude_self=p["exclude_self"])
    if fn == "knn_cross":
        return pf.knn(x["a"], x["b"], p["k"])
    if fn == "remove_outliers":
        return pf.remove_outliers(x["a"], q=p["q"], exact=p["exact"])
    if fn == "align":
        metric = p["metric"]
        opts = align_metric_options(metric, p)
        opts.pop("topk", None)
        xs, ys = e.args
        return pf.align(xs, ys, metric=metric, topk=p["k"], q=p["q"], exact=p["exact"], concat=p["concat"],
                        **opts)
    if fn in ("prepare_score", "measure"):
        metric = p["metric"]
        opts = metric_options(metric, case)
        if fn == "measure":
            return pf.measure(metric, x["a"], x["b"], **opts)
        return pf.score(pf.prepare(metric, x["a"], **opts), pf.prepare(metric, x["b"], **opts))
    return getattr(pf, fn)(x["a"], x["b"], **metric_options(fn, case))


def check_value(got, e: Expect) -> str | None:
    if not isinstance(got, float):
        return f"returned {type(got).__name__}, not a float"
    if e.tol == math.inf:
        if math.isnan(got) or not (e.lo - 1e-9 <= got <= e.hi + 1e-9):
            return f"returned {got!r}, outside [{e.lo}, {e.hi}]"
        return None
    if not (abs(got - e.want) <= e.tol):
        return f"returned {got!r}, reference {e.want!r} (|diff| {abs(got - e.want):.3g} > tol {e.tol:.3g})"
    return None


def reconcile(pf, got: float, e: Expect, x: dict, msg: str) -> str | None:
    """"Given the same neighbour lists" (docs/metrics.md#exactness): when platonic_fast's own kNN lists differ from the
    reference's only at float64 near-ties, the reference evaluated on those lists decides."""
    k = e.opts["topk"]
    exclude = e.opts.get("unbiased", True) if e.metric == "cknna" else True
    lists = []
    for name in ("a", "b"):
        x64 = x[name + "64"]
        ke = ref_knn(x64, None, k, exclude)
        ek = Expect("knn", vals=ke[0], idx=ke[1], scores=ke[2], keys=x64, queries=x64, out64=True, k=k)
        vals, idx = pf.knn(x[name].to(torch.float64) if isinstance(x[name], torch.Tensor)
                           else x[name].astype(np.float64), k, exclude_self=exclude)
        if check_knn_result((vals, idx), ek) is not None:
            return msg
        lists.append(torch.as_tensor(idx))
    if all(torch.equal(li, lr) for li, lr in zip(lists, (lists_for(e.metric, x["a64"], k, e.opts),
                                                          lists_for(e.metric, x["b64"], k, e.opts)))):
        return msg
    want = reference_value(e.metric, x["a64"], x["b64"], e.opts, la=lists[0], lb=lists[1])
    return None if abs(got - want) <= e.tol else msg + f" (also {want!r} on platonic_fast's own lists)"


def check_knn_result(res, e: Expect) -> str | None:
    vals, idx = res
    if isinstance(vals, np.ndarray) and isinstance(idx, np.ndarray):  # NumPy in, NumPy out
        vals, idx = torch.from_numpy(vals), torch.from_numpy(idx)
    if not (isinstance(vals, torch.Tensor) and isinstance(idx, torch.Tensor)):
        return f"returned {type(vals).__name__}, {type(idx).__name__}"
    n, k = e.idx.shape
    if tuple(idx.shape) != (n, k) or tuple(vals.shape) != (n, k):
        return f"shapes {tuple(vals.shape)}, {tuple(idx.shape)}, want {(n, k)}"
    if idx.dtype != torch.int64:
        return f"indices dtype {idx.dtype}"
    want_vdtype = torch.float64 if e.out64 else torch.float32
    if vals.dtype != want_vdtype:
        return f"values dtype {vals.dtype}, want {want_vdtype}"
    m = e.scores.shape[1]
    if int(idx.min()) < 0 or int(idx.max()) >= m:
        return "index out of range"
    s = e.scores
    got = s.gather(1, idx)
    xn = torch.linalg.vector_norm(e.queries, dim=1, keepdim=True)
    yn = torch.linalg.vector_norm(e.keys, dim=1).max()
    scale = xn * yn
    if not bool(torch.isfinite(got).all()):
        return "a returned index is excluded (self) or repeats"
    srt = idx.sort(dim=1).values
    if bool((srt[:, 1:] == srt[:, :-1]).any()):
        return "an index repeats within a row"
    # ranking: exact up to float64 rounding (platonic_fast's kNN is exact at any scale)
    bad = (got - e.vals).abs() > 1e-12 * scale + 1e-300
    if bool(bad.any()):
        r, c = bad.nonzero()[0].tolist()
        return (f"row {r} pos {c}: index {int(idx[r, c])} (score {float(got[r, c])!r}) but the reference has "
                f"{int(e.idx[r, c])} (score {float(e.vals[r, c])!r})")
    # ties: identical keys score identically, so among them the smaller index comes first, and a
    # list never holds a key while leaving out an identical one with a smaller index (positions
    # may shift against the reference only at float64 near-ties of different keys, checked above)
    same = (e.keys[:, None, :] == e.keys[None, :, :]).all(dim=2)
    self_excluded = e.keys is e.queries and bool(torch.isinf(e.scores.diagonal()).all())
    for r in range(n):
        lst = idx[r].tolist()
        inlist = set(lst)
        for p_, i in enumerate(lst):
            dups = same[i].nonzero().flatten().tolist()
            for j in dups:
                if j < i and (j in inlist and lst.index(j) > p_):
                    return f"row {r}: duplicate keys {i} and {j} out of index order (ties go to the smaller index)"
                if j < i and j not in inlist and not (self_excluded and j == r):
                    return f"row {r}: holds key {i} but not its identical key {j} (ties go to the smaller index)"
    v = vals.to(torch.float64)
    if e.out64:
        tol = 1e-12 * scale + 1e-300
    else:
        d = e.queries.shape[1]
        tol = 2 * d * U32 * scale + U32 * got.abs() + F32_TINY
    err = (v - got).abs()
    if not bool((err <= tol).all()):
        r, c = (err > tol).nonzero()[0].tolist()
        return f"value at row {r} pos {c} is {float(v[r, c])!r}, exact score {float(got[r, c])!r}"
    return None


def check_array(got, e: Expect, case: dict, x: dict) -> str | None:
    a = x["a"]
    if e.same_object:
        return None if got is a else "q=1 did not return the input itself"
    if type(got) is not type(a):
        return f"returned {type(got).__name__} for a {type(a).__name__}"
    if tuple(got.shape) != tuple(a.shape):
        return f"shape {tuple(got.shape)} != {tuple(a.shape)}"
    if got.dtype != a.dtype and not (isinstance(a, np.ndarray) and got.dtype == a.dtype.newbyteorder("=")):
        return f"dtype {got.dtype} != {a.dtype}"
    g = effective(got)
    if not torch.equal(effective(a), x["a64"]):
        return "the input was modified in place"
    want = e.want.to(TORCH_DTYPES.get(case["a"]["dtype"], torch.float64)).to(torch.float64)
    err = (g - want).abs().max()
    if float(err) > e.tol:
        return f"clamped values differ from the reference by {float(err):.3g} (tol {e.tol:.3g})"
    return None


def check_align(res, e: Expect) -> str | None:
    scores = getattr(res, "scores", None)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != e.shape:
        return f"scores {None if scores is None else tuple(scores.shape)}, want {e.shape}"
    for (i, j), pe in e.pairs.items():
        msg = check_value(float(scores[i, j]), pe)
        if msg:
            return f"pair ({i}, {j}): {msg}"
    wants = {ij: pe.want for ij, pe in e.pairs.items() if pe.tol != math.inf}
    if len(wants) == len(e.pairs):
        best = max(0.0, max(wants.values()))
        if abs(res.best - best) > max(pe.tol for pe in e.pairs.values()):
            return f"best {res.best!r}, reference {best!r}"
    return None


def run_case(pf, case: dict) -> dict:
    """Build, decide, call, check. Returns {"outcome": ..., "error": message or None, "tags": [...]}."""
    x = build(case)
    e = expect(case, x)
    tags = sorted(set(case_tags(case)) | e.tags)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = call(pf, case, x, e)
            exc = None
        except Exception as err:  # noqa: BLE001 - every exception is judged against the oracle
            res, exc = None, err
    warned = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    wtxt = "; ".join(f"{w.category.__name__}: {w.message}" for w in warned[:2])
    out = {"outcome": e.kind, "tags": tags, "error": None}
    etxt = f"{type(exc).__name__}: {str(exc)[:300]}" if exc is not None else None

    if e.kind == "raise":
        if exc is None:
            out["error"] = f"no exception; expected {sorted(t.__name__ for t in e.errors)}"
        elif not isinstance(exc, e.errors):
            out["error"] = f"raised {etxt}; expected {sorted(t.__name__ for t in e.errors)}"
        return out
    if e.kind == "degenerate":
        if exc is not None:
            if not isinstance(exc, ValueError):
                out["error"] = f"degenerate input raised {etxt}; expected ValueError or a warning"
            return out
        if warned:
            return out
        if e.accept_value:
            msg = check_value(res, e)
            if msg and getattr(e, "metric", None) in KNN_METRICS + ("cknna",):
                msg = reconcile(pf, res, e, x, msg)
            if msg is None:
                return out
            out["error"] = f"degenerate input ({', '.join(sorted(e.tags))}), no warning, and {msg}"
            return out
        shown = res if isinstance(res, float) else type(res).__name__
        out["error"] = f"degenerate input ({', '.join(sorted(e.tags))}) returned {shown!r} silently"
        return out
    either = getattr(e, "either", False)
    if exc is not None:
        if either and isinstance(exc, ValueError):
            return out
        out["error"] = f"valid input raised {etxt}"
        out["traceback"] = "".join(traceback.format_exception(exc))[-1500:]
        return out
    if warned and not either and not getattr(e, "warn_ok", False):
        out["error"] = f"valid, well-conditioned input warned: {wtxt}"
        return out
    if e.kind == "value":
        out["error"] = check_value(res, e)
        if out["error"] and getattr(e, "metric", None) in KNN_METRICS + ("cknna",):
            out["error"] = reconcile(pf, res, e, x, out["error"])
    elif e.kind == "knn":
        out["error"] = check_knn_result(res, e)
    elif e.kind == "array":
        out["error"] = check_array(res, e, case, x)
    elif e.kind == "align":
        out["error"] = check_align(res, e)
    return out


def case_tags(case: dict) -> list[str]:
    """Descriptive tags of a recipe (used to name failure categories)."""
    tags = [f"fn:{case['fn']}"]
    if case["fn"] == "align" and any(abs(s["mag"]) >= 20 for s in case["layers_x"] + case["layers_y"]):
        tags.append("align:extreme_magnitude")
    for name in ("a", "b"):
        if name in case:
            s = case[name]
            tags += [f"{s['lib']}:{s['layout']}", f"dtype:{s['dtype']}", f"kind:{s['kind']}"]
            if s["mag"]:
                tags.append("extreme_magnitude" if abs(s["mag"]) >= 20 else "magnitude")
    for side in ("layers_x", "layers_y"):
        for s in case.get(side, []):
            tags += [f"{s['lib']}:{s['layout']}", f"dtype:{s['dtype']}", f"kind:{s['kind']}"]
            if s["mag"]:
                tags.append("extreme_magnitude" if abs(s["mag"]) >= 20 else "magnitude")
    return sorted(set(tags))


# ----------------------------------------------------------------------------------------------
# hypothesis strategies: recipes
# ----------------------------------------------------------------------------------------------

# Examples per function, relative (the worker splits its quota in these proportions).
WEIGHTS = {"knn_self": 3, "knn_cross": 2, "mutual_knn": 2, "cycle_knn": 2, "lcs_knn": 2, "edit_distance_knn": 2,
           "cka": 3, "unbiased_cka": 2, "cknna": 3, "svcca": 3, "remove_outliers": 2, "align": 2,
           "prepare_score": 2, "measure": 2}


def strategies(fn: str):
    """Hypothesis strategy of recipes for one function."""
    from hypothesis import strategies as st

    def one_in(n_bad, bad, good):
        # a draw that is `bad` about once in n_bad
        return st.integers(0, n_bad - 1).flatmap(lambda i: bad if i == n_bad // 2 else good)

    mags = st.sampled_from([0] * 12 + [-30, -20, -12, -6, -3, 3, 6, 12, 20, 30])
    kinds = st.sampled_from(["gauss"] * 5 + ["grid"] * 2 + ["dups"] * 2 + ["constcol", "constant", "zero"])
    dtypes = one_in(40, st.sampled_from(["i32", "i64", "u8", "bool", "c64"]),
                    st.sampled_from(["f32"] * 4 + ["f64"] * 3 + ["f16", "bf16"] * 2))
    defects = one_in(20, st.sampled_from(["nan", "inf", "1d", "3d", "0d", "empty_rows", "empty_cols", "list",
                                          "n_plus_1"]), st.none())

    @st.composite
    def input_spec(draw, d=None, defect=True, max_d=16):
        dtype = draw(dtypes)
        lib = "torch" if dtype == "bf16" else draw(st.sampled_from(["torch", "torch", "numpy"]))
        layouts = ["contig"] * 4 + ["transpose", "rowstep", "colstep"]
        if lib == "numpy":
            layouts += ["negstride", "bigendian", "bigendian"]
        kind = draw(kinds)
        if kind in ("constant", "zero"):
            layouts.append("broadcast")
        return {
            "d": draw(st.integers(1, max_d)) if d is None else d,
            "kind": kind,
            "mag": draw(mags),
            "dtype": dtype,
            "lib": lib,
            "layout": draw(st.sampled_from(layouts)),
            "defect": draw(defects) if defect else None,
            "seed": draw(st.integers(0, 2**20)),
        }

    def k_for(draw, n):
        which = draw(one_in(8, st.sampled_from(["n", "0", "-1", "n+1", "float", "bool"]),
                            st.sampled_from(["1", "2", "n-1", "mid", "mid", "mid"])))
        return {"1": 1, "2": 2, "n-1": n - 1, "n": n, "0": 0, "-1": -1, "n+1": n + 1, "float": 2.0,
                "bool": True, "mid": draw(st.integers(1, max(1, n - 1)))}[which]

    @st.composite
    def case(draw):
        n = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 8]) if draw(one_in(5, st.just(True), st.just(False)))
                 else st.integers(9, 60 if fn != "align" else 24))
        c = {"fn": fn, "n": n}
        params = {}
        if fn == "align":
            as_list = draw(st.booleans())
            c["layers_x"], c["layers_y"] = [], []
            for side in ("layers_x", "layers_y"):
                n_layers = draw(st.integers(1, 3))
                if as_list:
                    c[side] = [draw(input_spec(defect=False, max_d=8)) for _ in range(n_layers)]
                else:
                    spec = draw(input_spec(defect=False, max_d=8))
                    spec["layers"] = n_layers
                    c[side] = [spec]
            params = {"as_list": as_list, "metric": draw(st.sampled_from(METRICS)), "k": k_for(draw, n),
                      "q": draw(one_in(10, st.just(0.0), st.sampled_from([0.95, 0.95, 0.5, 1.0]))),
                      "exact": draw(st.booleans()), "concat": draw(st.booleans()),
                      "kernel": draw(st.sampled_from(["ip", "rbf"])), "sigma": 1.0,
                      "unbiased": draw(st.booleans()), "cca_dim": draw(st.integers(1, 4))}
        else:
            c["a"] = draw(input_spec())
            if fn not in ("remove_outliers", "knn_self"):
                same_d = fn == "knn_cross" and draw(one_in(10, st.just(False), st.just(True)))
                c["b"] = draw(input_spec(d=c["a"]["d"] if same_d else None))
            if fn in ("prepare_score", "measure"):
                params["metric"] = draw(st.sampled_from(METRICS))
            params.update({"k": k_for(draw, n), "exclude_self": draw(st.booleans()),
                           "unbiased": draw(st.booleans()), "agnostic": draw(st.sampled_from([False, False, True])),
                           "kernel": draw(st.sampled_from(["ip", "rbf"])),
                           "sigma": draw(st.sampled_from([0.5, 1.0, 3.0])),
                           "cca_dim": draw(one_in(8, st.sampled_from([0, -1, 16, 61]),
                                                  st.sampled_from([1, 2, 3, 5, 10])))})
            if fn == "remove_outliers":
                params["q"] = draw(one_in(8, st.sampled_from([0.0, -0.5, 1.5]),
                                          st.sampled_from([0.95, 0.95, 0.5, 0.1, 0.999, 1.0])))
                params["exact"] = draw(st.booleans())
                if draw(st.booleans()):
                    c["a"]["layers"] = draw(st.integers(1, 3))  # N x L x D
        c["params"] = params
        return c

    return case()


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------

def worker(index: int, examples: int, seed: int, strict: bool, max_failures: int, progress: str | None) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    import platonic_fast as pf

    torch.set_num_threads(1)
    stats = {"index": index, "seed": seed, "examples": 0, "by_fn": {}, "by_outcome": {}, "tag_counts": {},
             "known": {}, "known_matched": {}, "failures": [], "n_failures": 0}
    t0 = time.time()

    seen = set()

    def record(case, res):
        stats["examples"] += 1
        seen.add(json.dumps(case, sort_keys=True))
        stats["distinct"] = len(seen)
        stats["by_fn"][case["fn"]] = stats["by_fn"].get(case["fn"], 0) + 1
        stats["by_outcome"][res["outcome"]] = stats["by_outcome"].get(res["outcome"], 0) + 1
        for t in res["tags"]:
            if not t.startswith(("fn:", "dtype:", "kind:", "torch:", "numpy:")):
                stats["tag_counts"][t] = stats["tag_counts"].get(t, 0) + 1
        known = [t for t in res["tags"] if t in KNOWN_FAILING] if not strict else []
        for t in known:
            stats["known_matched"][t] = stats["known_matched"].get(t, 0) + 1
        if res["error"] is None:
            return
        if known:
            for t in known:
                stats["known"][t] = stats["known"].get(t, 0) + 1
            return
        stats["n_failures"] += 1
        if len(stats["failures"]) < max_failures:
            stats["failures"].append({"case": case, **res})

    data_seeds = random.Random(seed)
    total_w = sum(WEIGHTS.values())
    quotas = {fn: examples * w // total_w for fn, w in WEIGHTS.items()}
    quotas["knn_self"] += examples - sum(quotas.values())
    for i, (fn, quota) in enumerate(quotas.items()):
        target = stats["examples"] + quota
        rounds = 0
        while stats["examples"] < target and rounds < 20:
            @settings(max_examples=target - stats["examples"], deadline=None, database=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @hseed(seed * 1000003 + i * 7919 + rounds)
            @given(strategies(fn))
            def run(case):
                # hypothesis favours small integers: the data seeds come from the worker's own
                # stream instead (still deterministic), so repeated structures get fresh data
                for spec in [case.get("a"), case.get("b")] + case.get("layers_x", []) + case.get("layers_y", []):
                    if spec is not None:
                        spec["seed"] = data_seeds.randrange(2**31)
                if json.dumps(case, sort_keys=True) in seen:
                    return
                if progress:
                    with open(progress, "w") as f:
                        f.write(json.dumps(case))
                try:
                    res = run_case(pf, case)
                except Exception as err:  # noqa: BLE001 - a bug in the oracle or the builder: report it
                    res = {"outcome": "oracle_error", "tags": ["oracle_error"],
                           "error": f"oracle/builder raised {type(err).__name__}: {err}",
                           "traceback": traceback.format_exc()[-1500:]}
                record(case, res)

            run()
            rounds += 1
    stats["elapsed_s"] = round(time.time() - t0, 2)
    from platonic_fast import _core

    stats["core_file"] = _core.__file__
    stats["core_flags"] = _core.build_info().get("cxx_flags", "")
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="count known-failing categories as failures")
    ap.add_argument("--max-failures", type=int, default=20)
    ap.add_argument("--progress", help="file that holds the recipe of the case in flight")
    ap.add_argument("--repro", help="run one case given as JSON and print the verdict")
    args = ap.parse_args(argv)
    if args.repro:
        import platonic_fast as pf

        torch.set_num_threads(1)
        case = json.loads(args.repro)
        res = run_case(pf, case)
        print(json.dumps(res, indent=1))
        return 0 if res["error"] is None else 1
    stats = worker(args.index, args.examples, args.seed + args.index, args.strict, args.max_failures,
                   args.progress)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
