"""Calling platonic_fast from the benchmarks: backend resolution done once on a tiny probe,
so that a backend that is not built shows up as a note, not as a failed timing."""
from __future__ import annotations

from typing import Any, Callable

import torch


def resolve(pf, name: str, probe: Callable[[Callable], Any], want: str = "cpu") -> tuple[Callable | None, str, str | None]:
    """Return (fn with backend bound, backend used, note).

    ``probe(fn)`` calls the bound function on tiny inputs.  ``want`` is tried first; if it
    raises a ValueError/TypeError about the backend, ``"auto"`` is used and the reason noted.
    A function missing from the package gives (None, want, reason).
    """
    if pf is None:
        return None, want, "platonic_fast not importable"
    base = getattr(pf, name, None)
    if base is None:
        return None, want, f"platonic_fast has no {name}"

    def bind(backend):
        def fn(*a, **kw):
            return base(*a, backend=backend, **kw)
        return fn

    fn = bind(want)
    try:
        probe(fn)
        return fn, want, None
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
        msg = f"{type(exc).__name__}: {exc}"
        if "backend" not in str(exc).lower():
            # a real failure at the probe: keep the requested backend, the timing row shows it
            return fn, want, f"probe failed: {msg}"[:300]
        fn = bind("auto")
        try:
            probe(fn)
            return fn, "auto", f"backend={want!r} unavailable ({msg[:200]}); used 'auto'"
        except Exception as exc2:
            return fn, "auto", f"probe failed: {type(exc2).__name__}: {exc2}"[:300]


def tiny_pair(n: int = 32, d: int = 8):
    g = torch.Generator().manual_seed(123)
    a = torch.randn(n, d, generator=g)
    b = torch.randn(n, d, generator=g)
    return a, b
