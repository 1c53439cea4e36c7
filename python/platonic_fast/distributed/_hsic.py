"""CKA of row-sharded features: :mod:`platonic_fast.ops.hsic` over a
:class:`platonic_fast.rows.ShardRows` (every global sum all-reduced there), under the names
the sharded metric spec calls."""

from __future__ import annotations

import dataclasses

from ..ops import hsic as H
from ..rows import ShardRows


def kernel_stats(comm, layout, x, kernel: str = "ip", sigma: float = 1.0) -> H.KernelStats:
    return H.kernel_stats(ShardRows(comm, layout, x), kernel, sigma)


def cka(comm, layout, sa: H.KernelStats, sb: H.KernelStats, *, unbiased: bool) -> float:
    return H.cka_from_stats(sa, sb, unbiased=unbiased)


def cka_null_mean(comm, sa: H.KernelStats, sb: H.KernelStats, *, unbiased: bool) -> float:
    return H.cka_null_mean(sa, sb, unbiased=unbiased)  # no communication: each set's own sums are kept


def row_fields(st: H.KernelStats) -> list[str]:
    return [f for f in ("features", "sq_norms", "row_sums", "diag") if getattr(st, f) is not None]


def permuted(st: H.KernelStats, rows: dict) -> H.KernelStats:
    """The stats with their per-row tensors replaced (rows fetched for a permutation)."""
    shard = st.shard and ShardRows(st.shard.comm, st.shard.layout, rows["features"])
    return dataclasses.replace(st, shard=shard, **rows)
