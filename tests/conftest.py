"""Shared fixtures and helpers for the platonic_fast test suite."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# The dense reference lives next to the tests; make it importable under any pytest import mode.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import dense_reference as R  # noqa: E402

# Without a GPU, Triton kernels run in its CPU interpreter (slowly: tests keep shapes small).
# It must be chosen before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    from hypothesis import HealthCheck, settings

    # CI: few examples, no deadline (the first call may compile/warm up a backend).
    settings.register_profile(
        "ci", max_examples=30, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile(
        "dev", max_examples=300, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis-based tests importorskip it themselves
    pass


HAS_CUDA = torch.cuda.is_available()
_NO_CUDA = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def requires_cuda(test):
    """A GPU-only test: marked ``gpu`` (``pytest -m gpu`` selects them) and skipped without a GPU."""
    return pytest.mark.gpu(_NO_CUDA(test))

# Devices the device-generic tests run on: CUDA only when present (skip, never fail, without it).
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, _NO_CUDA]),
]

METRIC_ATOL = 1e-5  # docs/metrics.md#exactness: within 1e-5 absolute of the reference on float32 inputs
EPS32 = float(torch.finfo(torch.float32).eps)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def randn(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32,
          normalize: bool = False) -> torch.Tensor:
    """Gaussian features (tie-free with probability 1 in float64 arithmetic)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if normalize:
        x = F.normalize(x, dim=-1)
    return x.to(dtype)


def cuda_randn(*shapes, seed: int, dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    """Gaussian tensors of these shapes drawn on the GPU, in order, from one seeded generator (the
    inputs past 2³¹ elements are too big to draw on the CPU and copy)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(*shape, device="cuda", dtype=dtype, generator=g) for shape in shapes]


def grid(n: int, d: int, seed: int = 0, levels: int = 4, scale: int = 8,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dyadic features x = m / scale with integer |m| <= levels·scale/... (few mantissa bits).

    Every inner product is then computed *exactly* in float32 (and from bf16/fp16 inputs with
    float32 accumulation) whatever the summation order, so exact ties are reproducible and the
    neighbour lists are fully determined by the tie rule (docs/metrics.md#knn) (smaller index first).
    """
    g = torch.Generator().manual_seed(seed)
    m = torch.randint(-levels, levels + 1, (n, d), generator=g)
    return (m.to(torch.float64) / scale).to(dtype)


def with_duplicates(x: torch.Tensor, seed: int = 0, frac: float = 0.25) -> torch.Tensor:
    """Copy of ``x`` in which a fraction of the rows duplicate earlier rows (exact ties)."""
    g = torch.Generator().manual_seed(seed)
    x = x.clone()
    n = x.shape[0]
    n_dup = max(1, int(frac * n))
    dst = torch.randperm(n, generator=g)[:n_dup]
    src = torch.randint(0, n, (n_dup,), generator=g)
    x[dst] = x[src]
    return x


def correlated_pair(n: int, da: int, db: int, seed: int = 0, noise: float = 1.0,
                    normalize: bool = True, dtype: torch.dtype = torch.float32):
    """(A, B) with B a noisy linear image of A, so that the metrics are far from 0."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, da, generator=g, dtype=torch.float64)
    w = torch.randn(da, db, generator=g, dtype=torch.float64) / math.sqrt(da)
    b = a @ w + noise * torch.randn(n, db, generator=g, dtype=torch.float64)
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return a.to(dtype), b.to(dtype)


# ----------------------------------------------------------------------------------------------
# platonic_fast helpers
# ----------------------------------------------------------------------------------------------

def backend_device_params(op: str):
    """pytest params ``(backend, device)`` for every registered backend of ``op`` on each device it
    takes: CUDA params carry the ``gpu`` marker, so the CUDA and Triton backends run whenever a
    GPU exists. A param is skipped only when its backend is not built or its device is absent,
    never to hide a failure (the reason comes from the registry)."""
    from platonic_fast import _backends

    params = []
    for name, b in _backends.backends_of(op).items():
        for device in b.devices:
            marks = [pytest.mark.gpu] if device == "cuda" else []
            why = "no CUDA device" if device == "cuda" and not HAS_CUDA else b.why_not(torch.device(device))
            if why is not None:
                marks.append(pytest.mark.skip(reason=f"{name} {why}"))
            params.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return params


def metric_backend_params(metric: str):
    """pytest params ``(backend, device)`` for a metric: every backend any of its ops has, on each
    device one of those ops takes it for (an explicit backend applies to the steps that have it)."""
    import platonic_fast as pf
    from platonic_fast import _backends

    seen: dict = {}
    for op in pf.metric_spec(metric).ops:
        for name, b in _backends.backends_of(op).items():
            for device in b.devices:
                why = "no CUDA device" if device == "cuda" and not HAS_CUDA else b.why_not(torch.device(device))
                if seen.get((name, device), "unset") is not None:  # keep the first op that runs it
                    seen[(name, device)] = why
    params = []
    for (name, device), why in sorted(seen.items()):
        marks = [pytest.mark.gpu] if device == "cuda" else []
        if why is not None:
            marks.append(pytest.mark.skip(reason=f"{name} {why}"))
        params.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return params


def to_float(v) -> float:
    """Python float from a float / 0-d tensor / NumPy scalar."""
    if isinstance(v, torch.Tensor):
        assert v.numel() == 1, f"expected a scalar, got shape {tuple(v.shape)}"
        return float(v.item())
    return float(v)


# ----------------------------------------------------------------------------------------------
# kNN checks
# ----------------------------------------------------------------------------------------------

def knn_rel_tol(dtype: torch.dtype, d: int) -> float:
    """Relative score tolerance (in units of |x_i|·max_j|y_j|) for a float32-accumulated dot.

    ~1e-6 as a floor; grows like sqrt(D) (the forward error of a float32 sum of D products).
    float64 inputs are computed in float64.
    """
    if dtype == torch.float64:
        return 1e-12
    return max(1e-6, 4 * EPS32 * math.sqrt(max(d, 1)))


def check_knn(vals, idx, x, k: int, *, keys=None, exclude_self: bool = True,
              exact: bool = False, rel_tol=None):
    """Validate a kNN answer against the float64 dense reference.

    - shapes N×k, idx int64, distinct in-range indices per row, self excluded when asked;
    - values equal the float64 scores of the returned indices (allclose);
    - position by position, the returned score equals the reference's sorted score, so any
      index difference is a near-tie (|Δscore| <= rel_tol · |x_i|·max|y_j|);
    - where the returned values tie exactly, the smaller index comes first;
    - with ``exact=True`` the indices equal the stable-sort reference exactly.
    Returns the reference (values, indices).
    """
    xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    kt = None if keys is None else (keys if isinstance(keys, torch.Tensor) else torch.as_tensor(keys))
    n, d = xt.shape
    if rel_tol is None:
        rel_tol = knn_rel_tol(xt.dtype, d)

    vals = torch.as_tensor(vals).detach().cpu()
    idx = torch.as_tensor(idx).detach().cpu()
    assert idx.dtype == torch.int64, f"indices must be int64, got {idx.dtype}"
    assert tuple(vals.shape) == (n, k), f"values shape {tuple(vals.shape)} != {(n, k)}"
    assert tuple(idx.shape) == (n, k), f"indices shape {tuple(idx.shape)} != {(n, k)}"
    assert vals.is_floating_point()

    x64 = xt.detach().cpu().to(torch.float64)
    y64 = x64 if kt is None else kt.detach().cpu().to(torch.float64)
    m = y64.shape[0]
    s = x64 @ y64.T
    if kt is None and exclude_self:
        s_ref = s.clone().fill_diagonal_(float("-inf"))
    else:
        s_ref = s
    ref_vals, ref_idx = torch.sort(s_ref, dim=1, descending=True, stable=True)
    ref_vals, ref_idx = ref_vals[:, :k], ref_idx[:, :k]

    assert int(idx.min()) >= 0 and int(idx.max()) < m, "index out of range"
    srt = idx.sort(dim=1).values
    assert bool((srt[:, 1:] != srt[:, :-1]).all()), "an index repeats within a row"
    if kt is None and exclude_self:
        assert not bool((idx == torch.arange(n).view(n, 1)).any()), "self appears in its own list"

    scale = (x64.norm(dim=1, keepdim=True) * y64.norm(dim=1).max()).clamp_min(1e-30)
    tol = rel_tol * scale
    got_scores = torch.gather(s, 1, idx)
    val_err = (vals.to(torch.float64) - got_scores).abs()
    assert bool((val_err <= tol).all()), (
        f"values differ from the true scores of the returned indices by up to "
        f"{float((val_err / scale).max()):.3g} (relative), tol {rel_tol:.3g}")
    pos_err = (got_scores - ref_vals).abs()
    bad = pos_err > tol
    if bool(bad.any()):
        r, c = [int(t) for t in bad.nonzero()[0]]
        raise AssertionError(
            f"row {r} position {c}: returned index {int(idx[r, c])} (score "
            f"{float(got_scores[r, c])!r}) but the reference has {int(ref_idx[r, c])} (score "
            f"{float(ref_vals[r, c])!r}); not a near-tie ({int(bad.sum())} such positions)")
    # Tie rule on the exact scores (float64 here): scores equal to float64 rounding -> increasing
    # index. (Returned float32 values may tie where the exact scores differ: then the larger
    # exact score comes first, whatever the indices.)
    same = (got_scores[:, 1:] - got_scores[:, :-1]).abs() <= 1e-12 * scale
    assert bool((idx[:, 1:][same] > idx[:, :-1][same]).all()), "tied scores not in index order"
    assert bool((vals[:, 1:] <= vals[:, :-1]).all()), "values not sorted most-similar first"
    if exact:
        if not torch.equal(idx, ref_idx):
            r, c = [int(t) for t in (idx != ref_idx).nonzero()[0]]
            raise AssertionError(
                f"indices differ from the stable-sort reference at row {r} col {c}: "
                f"{idx[r].tolist()[:12]} vs {ref_idx[r].tolist()[:12]}")
    return ref_vals, ref_idx


def reconcile_lists(pf_mod, x, k: int, *, exclude_self: bool = True):
    """Neighbour lists to feed the dense reference "given the same neighbour lists" (docs/metrics.md#exactness).

    The reference's float64 lists when platonic_fast agrees with them; otherwise platonic_fast's
    own lists after checking that every difference is a near-tie of float32 arithmetic.
    """
    ref_idx = R.knn(x, k, exclude_self=exclude_self)[1]
    vals, idx = pf_mod.knn(x, k, exclude_self=exclude_self)
    idx = torch.as_tensor(idx).cpu()
    if torch.equal(idx, ref_idx):
        return ref_idx
    check_knn(vals, idx, x, k, exclude_self=exclude_self)
    return idx


_REF_CACHE: dict = {}


def ref_cache(key, thunk):
    """Memoise ``thunk()`` under ``key`` for the whole session (dense references at N=2000)."""
    if key not in _REF_CACHE:
        _REF_CACHE[key] = thunk()
    return _REF_CACHE[key]


@pytest.fixture(scope="session")
def pf():
    import platonic_fast
    return platonic_fast


@pytest.fixture(scope="session")
def ref():
    return R


@pytest.fixture(params=[0, 1], ids=lambda s: f"seed={s}")
def seed(request):
    return request.param


@pytest.fixture
def small_pair():
    return correlated_pair(37, 11, 7, seed=3)


@pytest.fixture
def count_calls(monkeypatch):
    """count_calls(owner, name): owner.name still runs, and the returned list gains one entry (the
    positional arguments) per call, for the rest of the test."""
    def wrap(owner, name):
        calls = []
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            calls.append(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
        return calls
    return wrap


def np_array(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def pytest_collection_modifyitems(config, items):
    # The spawned gloo ranks behind test_distributed's `battery` fixture take ~20 s to start:
    # every test that uses them belongs to the slow lane, whatever its own cost.
    for item in items:
        if "battery" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
