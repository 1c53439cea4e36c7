"""Backend registry: which implementation serves an op, and what each one can serve.

Every backend declares its constraints when it registers: the devices its inputs may live on,
the dtypes it accepts, the largest k, the minimum CUDA compute capability, and what it needs at
run time (the compiled core, its CUDA kernels, Triton). :func:`resolve` applies them to the
call at hand, so the backend it names is the one that runs; no backend hands work to another
inside its body. ``"auto"`` takes the first backend that can serve the call, in device order
(kernels native to the device, then the compiled CPU core, then the plain-torch reference,
which serves every device and dtype, so auto never fails). An explicit name is strict: when it
cannot serve the call it raises a ValueError that says why and lists what can.
The environment variable PLATONIC_FAST_BACKEND replaces ``"auto"`` for every op that has that
backend.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ._checks import DTYPE_NAMES, FLOAT_DTYPES

BACKENDS = ("cpu", "cuda", "triton", "torch")
# The order "auto" tries them in, by the input's device.
_AUTO_ORDER = {"cuda": ("cuda", "triton", "cpu", "torch"), "cpu": ("cpu", "torch")}
# What a backend may need at run time, and the check for each.
NEEDS = ("core", "cuda_kernels", "triton")

# The CUDA build (PLATONIC_FAST_CUDA_ARCHS "80;90", PTX for newer GPUs) and the Triton kernels
# (bfloat16 tensor-core dots) both need compute capability 8.0 or newer.
MIN_CUDA_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Backend:
    """One implementation of an op and the calls it can serve."""

    op: str
    name: str
    fn: Callable
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES  # input dtypes it accepts
    max_k: int | Callable[[], int] | None = None  # a callable when only the build knows it
    min_capability: tuple[int, int] | None = None  # for CUDA tensors
    needs: tuple[str, ...] = ()

    def limit_k(self) -> int | None:
        return self.max_k() if callable(self.max_k) else self.max_k

    def why_not(self, device: torch.device | None, dtypes: Iterable[torch.dtype] = (),
                k: int | None = None) -> str | None:
        """Why this backend cannot serve a call on ``device`` with ``dtypes`` and ``k``; None if it can."""
        for need in self.needs:
            if not _NEED_CHECKS[need]():
                return _NEED_REASONS[need]
        if device is not None:
            if device.type not in self.devices:
                return f"takes {'/'.join(self.devices)} tensors, not {device.type}"
            if device.type == "cuda" and self.min_capability and _capability(device) < self.min_capability:
                return "needs a GPU of compute capability >= {}.{}".format(*self.min_capability)
        bad = [d for d in dtypes if d not in self.dtypes]
        if bad:
            return f"does not take {dtype_name(bad[0])} (takes {', '.join(map(dtype_name, self.dtypes))})"
        limit = self.limit_k()
        if k is not None and limit is not None and k > limit:
            return f"takes k <= {limit}, got k={k}"
        return None


_REGISTRY: dict[str, dict[str, Backend]] = {}


def register(op: str, backend: str, *, devices: tuple[str, ...], dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
             max_k: int | Callable[[], int] | None = None, min_capability: tuple[int, int] | None = None,
             needs: tuple[str, ...] = ()):
    """Decorator: ``fn`` implements ``op`` with ``backend`` under the given constraints."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {BACKENDS}")
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; one of {NEEDS}")

    def wrap(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = Backend(op, backend, fn, tuple(devices), tuple(dtypes), max_k,
                                                        min_capability, tuple(needs))
        return fn

    return wrap


def _load_ops() -> None:
    """Import every op module so that the registry is complete."""
    from .ops import cknna_sums, hsic, knn, neighbour_lists, outliers, permute_lists, svcca, topk_merge  # noqa: F401


def ops() -> list[str]:
    _load_ops()
    return sorted(_REGISTRY)


def backends_of(op: str) -> dict[str, Backend]:
    """Every registered backend of ``op`` (whether or not it can run here)."""
    _load_ops()
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; one of {sorted(_REGISTRY)}")
    return dict(_REGISTRY[op])


def _order(device: torch.device | None) -> tuple[str, ...]:
    return _AUTO_ORDER.get(device.type, BACKENDS) if device is not None else BACKENDS


def available(op: str, device: torch.device | str | None = None, *, dtypes: Iterable[torch.dtype] = (),
              k: int | None = None) -> list[str]:
    """Backends that can serve ``op`` here for a call on ``device`` with ``dtypes`` and ``k``, in
    auto order (``device=None``: on any device)."""
    device = None if device is None else torch.device(device)
    dtypes = tuple(dtypes)
    impls = backends_of(op)
    if device is None:
        return [b for b in BACKENDS if b in impls and any(
            impls[b].why_not(torch.device(dev), dtypes, k) is None for dev in impls[b].devices)]
    return [b for b in _order(device) if b in impls and impls[b].why_not(device, dtypes, k) is None]


def implements(op: str, backend: str) -> bool:
    """True when ``backend`` has an implementation of ``op`` at all (on any device)."""
    return backend in backends_of(op)


def env_backend() -> str:
    """PLATONIC_FAST_BACKEND, checked: a misspelt name is an error, not silently ignored."""
    value = os.environ.get("PLATONIC_FAST_BACKEND", "auto") or "auto"
    if value != "auto" and value not in BACKENDS:
        raise ValueError(f"PLATONIC_FAST_BACKEND must be 'auto' or one of {BACKENDS}, got {value!r}; "
                         "fix or unset the environment variable")
    return value


def for_op(op: str, backend: str, ops: tuple[str, ...]) -> str:
    """The backend one step ``op`` of a composite computation (a metric made of ``ops``) uses.

    An explicit backend applies to the steps that have it (``"cuda"``: the neighbour-list
    kernels; ``"triton"``: kNN and the kernel sums); the other steps use auto. A backend that
    none of the steps has is an error.
    """
    check_backend_name(backend)
    if backend == "auto" or implements(op, backend):
        return backend
    if not any(implements(o, backend) for o in ops):
        known = sorted({b for o in ops for b in backends_of(o)})
        raise ValueError(f"backend {backend!r} implements none of {ops}; available: 'auto' or {known}")
    return "auto"


def check_backend_name(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return backend


def resolve(op: str, backend: str, device: torch.device | str, *, dtypes: Iterable[torch.dtype] = (),
            k: int | None = None) -> tuple[str, Callable]:
    """Return ``(name, implementation)`` of ``op`` for a call on ``device`` with ``dtypes`` and ``k``."""
    check_backend_name(backend)
    device = torch.device(device)
    dtypes = tuple(dtypes)
    impls = backends_of(op)
    if backend == "auto":
        preferred = env_backend()
        # A global preference: ops without that backend use auto; ops with it are strict.
        backend = preferred if preferred in impls else "auto"
    if backend == "auto":
        for name in _order(device):
            if name in impls and impls[name].why_not(device, dtypes, k) is None:
                return name, impls[name].fn
        raise RuntimeError(f"no backend of {op} serves {device.type} tensors; the torch reference should")
    if backend not in impls:
        raise ValueError(f"{op} has no {backend!r} backend; available: 'auto' or one of {sorted(impls)}")
    reason = impls[backend].why_not(device, dtypes, k)
    if reason is not None:
        usable = available(op, device, dtypes=dtypes, k=k)
        raise ValueError(
            f"backend {backend!r} cannot run {op} here: it {reason}; available for this call: {usable} "
            f"or 'auto' (see `python -m platonic_fast.env`)"
        )
    return backend, impls[backend].fn


# --- what a backend may need -------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def core_available() -> bool:
    """True when the compiled module imports."""
    try:
        from . import _core  # noqa: F401
    except ImportError:
        return False
    return True


def _capability(device: torch.device) -> tuple[int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)


@functools.lru_cache(maxsize=None)
def cuda_kernels_built() -> bool:
    """True when the compiled core has CUDA kernels and the CUDA runtime sees a device."""
    if not core_available() or not torch.cuda.is_available():
        return False
    from . import _core

    return bool(_core.build_info()["cuda"]) and _core.cuda_status()[1] > 0


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    """True when Triton imports and a GPU is present (its kernels need one)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_NEED_CHECKS = {"core": core_available, "cuda_kernels": cuda_kernels_built, "triton": triton_importable}
_NEED_REASONS = {
    "core": "needs the compiled core (platonic_fast._core), which does not import",
    "cuda_kernels": "needs the compiled CUDA kernels and a GPU the CUDA runtime sees",
    "triton": "needs Triton and a GPU",
}


def dtype_name(dtype: torch.dtype) -> str:
    return next((name for name, d in DTYPE_NAMES.items() if d == dtype), str(dtype).removeprefix("torch."))


def cuda_max_list_k() -> int:
    """The largest k the compiled CUDA list kernels hold in per-thread scratch."""
    from . import _core

    return int(_core.CUDA_MAX_LIST_K)


def launch(kernel: Callable, device: torch.device, *args) -> None:
    """Call a compiled CUDA launcher on ``device`` with the device's current stream as the last
    argument (the kernels run in order with the caller's torch work)."""
    with torch.cuda.device(device):
        kernel(*args, torch.cuda.current_stream(device).cuda_stream)
