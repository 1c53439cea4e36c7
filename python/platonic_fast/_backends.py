"""Backend registry: which implementation serves an op for a given device.

``register(op, backend, devices)`` records an implementation. ``resolve(op, backend, device)``
picks one: ``"auto"`` takes the first available registered for the device (the compiled or GPU
kernels before the plain-torch reference, which accepts every device, so auto never fails);
an explicit name is strict and raises a ValueError listing what is available.
The environment variable PLATONIC_FAST_BACKEND overrides ``"auto"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

BACKENDS = ("cpu", "cuda", "triton", "torch")
# The order "auto" tries them in, by the input's device: kernels native to the device first,
# the compiled CPU core (with a host copy) next, the plain-torch reference last.
_AUTO_ORDER = {"cuda": ("cuda", "triton", "cpu", "torch"), "cpu": ("cpu", "torch")}


@dataclass(frozen=True)
class _Impl:
    fn: Callable
    devices: tuple[str, ...]
    is_available: Callable[..., bool]  # (device: torch.device | None) -> bool


_REGISTRY: dict[str, dict[str, _Impl]] = {}


def register(op: str, backend: str, devices: tuple[str, ...],
             is_available: Callable[..., bool] = lambda device=None: True):
    """Decorator: ``fn`` implements ``op`` with ``backend`` for tensors on ``devices``;
    ``is_available(device)`` says whether it can run here (device None: the current one)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")

    def wrap(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = _Impl(fn, devices, is_available)
        return fn

    return wrap


def available(op: str, device: torch.device | str | None = None) -> list[str]:
    """Backends that can run ``op`` on ``device`` here (all devices when None), in auto order."""
    device = None if device is None else torch.device(device)
    dev = None if device is None else device.type
    impls = _REGISTRY.get(op, {})
    return [
        name
        for name in _AUTO_ORDER.get(dev, BACKENDS)
        if name in impls and (dev is None or dev in impls[name].devices) and impls[name].is_available(device)
    ]


def implements(op: str, backend: str) -> bool:
    """True when ``backend`` has an implementation of ``op`` at all (on any device)."""
    return backend in _REGISTRY.get(op, {})


def for_op(op: str, backend: str, ops: tuple[str, ...]) -> str:
    """The backend one step ``op`` of a composite computation (a metric made of ``ops``) uses.

    An explicit backend applies to the steps that have it (``"cuda"``: the neighbour-list
    kernels; ``"triton"``: kNN and the kernel sums); the other steps use auto. A backend that
    none of the steps has is an error.
    """
    if backend == "auto" or implements(op, backend):
        return backend
    if backend in BACKENDS and not any(implements(o, backend) for o in ops):
        known = sorted({b for o in ops for b in _REGISTRY.get(o, {})})
        raise ValueError(f"backend {backend!r} implements none of {ops}; available: 'auto' or {known}")
    return "auto" if backend in BACKENDS else backend  # an unknown name fails in resolve


def resolve(op: str, backend: str, device: torch.device) -> tuple[str, Callable]:
    """Return ``(name, implementation)`` of ``op`` for tensors on ``device``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get("PLATONIC_FAST_BACKEND", "auto")
        if not implements(op, backend):  # a global preference: ops without that backend use auto
            backend = "auto"
    usable = available(op, device)
    if backend == "auto":
        return usable[0], _REGISTRY[op][usable[0]].fn
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in usable:
        raise ValueError(
            f"backend {backend!r} cannot run {op} on {torch.device(device).type} tensors here; "
            f"available: {usable} (see `python -m platonic_fast.env`)"
        )
    return backend, _REGISTRY[op][backend].fn


def core_available(device=None) -> bool:
    """True when the compiled module imports."""
    try:
        from . import _core  # noqa: F401
    except ImportError:
        return False
    return True


# Both the CUDA build (PLATONIC_FAST_CUDA_ARCHS "80;90", with PTX for newer GPUs) and the Triton
# kernels (bfloat16 tensor-core dots) need compute capability 8.0 or newer.
MIN_CUDA_CAPABILITY = (8, 0)


def _capable(device) -> bool:
    device = None if device is None else torch.device(device)
    if device is not None and device.type != "cuda":
        return False
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= MIN_CUDA_CAPABILITY


def cuda_kernels_available(device=None) -> bool:
    """True when the build has CUDA kernels and ``device`` (default: the current GPU) can run
    them: a GPU of compute capability >= 8.0 that the CUDA runtime sees."""
    if not core_available() or not torch.cuda.is_available():
        return False
    from . import _core

    return bool(_core.build_info()["cuda"]) and _core.cuda_status()[1] > 0 and _capable(device)


def triton_available(device=None) -> bool:
    """True when Triton imports and ``device`` (default: the current GPU) has compute
    capability >= 8.0 (the kernels need a GPU)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return _capable(device)
