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
    is_available: Callable[[], bool]


_REGISTRY: dict[str, dict[str, _Impl]] = {}


def register(op: str, backend: str, devices: tuple[str, ...], is_available: Callable[[], bool] = lambda: True):
    """Decorator: ``fn`` implements ``op`` with ``backend`` for tensors on ``devices``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")

    def wrap(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = _Impl(fn, devices, is_available)
        return fn

    return wrap


def available(op: str, device: torch.device | str | None = None) -> list[str]:
    """Backends that can run ``op`` on ``device`` here (all devices when None), in auto order."""
    dev = None if device is None else torch.device(device).type
    impls = _REGISTRY.get(op, {})
    return [
        name
        for name in _AUTO_ORDER.get(dev, BACKENDS)
        if name in impls and (dev is None or dev in impls[name].devices) and impls[name].is_available()
    ]


def resolve(op: str, backend: str, device: torch.device) -> tuple[str, Callable]:
    """Return ``(name, implementation)`` of ``op`` for tensors on ``device``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get("PLATONIC_FAST_BACKEND", "auto")
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


def core_available() -> bool:
    """True when the compiled module imports."""
    try:
        from . import _core  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_kernels_available() -> bool:
    """True when the build has CUDA kernels and a CUDA device can run them."""
    if not core_available() or not torch.cuda.is_available():
        return False
    from . import _core

    return bool(_core.build_info()["cuda"]) and _core.cuda_status()[1] > 0


def triton_available() -> bool:
    """True when Triton imports and a CUDA device is present (the kernels need a GPU)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
