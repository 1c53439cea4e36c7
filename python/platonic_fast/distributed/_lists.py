"""Neighbour-list metrics and CKNNA's sums on row-sharded lists (global indices).

- overlap, LCS, Levenshtein are per row: each rank scores its own rows (the compiled op, on the
  rows relabelled to small indices: only equality inside a row matters) and the integer totals
  are all-reduced, so the score is exact.
- cycle kNN needs kNN_A(j) for the j in kNN_B(i): the A-lists travel between ranks one block at
  a time, and each rank looks its (i, j) pairs up in the visiting block.
- CKNNA: the mask and the row sums are per row; the column sums are all-reduced (N values);
  the transpose term Σ K'_ij L'_ji looks each masked (i, j) up among the visiting block's
  masked (j, i). Sums in float64.
"""

from __future__ import annotations

import torch

from ..ops.neighbour_lists import run as neighbour_lists
from ._comm import Comm, Layout

# Elements of one lookup block (keys searched at a time).
_LOOKUP_ELEMENTS = 1 << 22


def row_totals(comm: Comm, kind: str, a: torch.Tensor, b: torch.Tensor, backend: str = "auto") -> int:
    """The all-reduced sum over rows of ``kind`` (mutual_overlap, lcs_lengths, edit_distances)."""
    with comm.step():
        total = 0
        n, k = a.shape
        if n:
            ra, rb = _relabel_rows(a, b)
            total = int(neighbour_lists(kind, ra, rb, backend=backend)[:n].sum())
    return int(comm.all_reduce(torch.tensor([total], dtype=torch.int64))[0])


def _relabel_rows(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's entries replaced by their rank in the row's sorted union (equalities kept,
    values in [0, 2k)), padded with rows 0..k-1 to at least 2k rows (the op checks indices < rows)."""
    n, k = a.shape
    both = torch.cat([a, b], dim=1).to(torch.int64)
    pos = torch.searchsorted(both.sort(dim=1).values.contiguous(), both.contiguous())
    ra, rb = pos[:, :k], pos[:, k:]
    if n < 2 * k:
        pad = torch.arange(k, device=a.device).expand(2 * k - n, k)
        ra, rb = torch.cat([ra, pad]), torch.cat([rb, pad])
    return ra.contiguous(), rb.contiguous()


def _sorted_keys(rows: torch.Tensor, cols: torch.Tensor, n: int):
    """Sorted keys row·N + col and the order that sorts them."""
    keys, order = torch.sort(rows * n + cols)
    return keys, order


def _lookup(keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(found, position) of each query among sorted ``keys``."""
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool), torch.zeros_like(query)
    pos = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
    return keys[pos] == query, pos


def cycle_total(comm: Comm, layout: Layout, a: torch.Tensor, b: torch.Tensor) -> int:
    """Σ_i [i ∈ kNN_A(j) for some j ∈ kNN_B(i)], all-reduced (A-lists exchanged block by block)."""
    n, k = layout.n, a.shape[1]
    me = torch.arange(layout.start, layout.stop, device=a.device)
    hit = torch.zeros(layout.n_local, dtype=torch.bool, device=a.device)
    for t in range(comm.size):
        p = (comm.rank + t) % comm.size
        (block,) = comm.shift([a], t, [(layout.rows(p), k)])
        with comm.step():
            s_p, e_p = layout.offsets[p], layout.offsets[p + 1]
            sel = (b >= s_p) & (b < e_p)
            if bool(sel.any()):
                # the visiting A-lists as sorted keys (j - s_p)·N + neighbour
                rows_p = torch.arange(block.shape[0], device=a.device)[:, None].expand_as(block)
                keys, _ = _sorted_keys(rows_p.reshape(-1), block.reshape(-1).to(torch.int64), n)
                ii, pp = sel.nonzero(as_tuple=True)
                query = (b[ii, pp].to(torch.int64) - s_p) * n + me[ii]
                for c0 in range(0, query.numel(), _LOOKUP_ELEMENTS):
                    found, _ = _lookup(keys, query[c0: c0 + _LOOKUP_ELEMENTS])
                    hit[ii[c0: c0 + _LOOKUP_ELEMENTS][found]] = True
        del block
    return int(comm.all_reduce(torch.tensor([int(hit.sum())], dtype=torch.int64))[0])


def cknna_sums(comm: Comm, layout: Layout, idx_k: torch.Tensor, val_k: torch.Tensor, idx_l: torch.Tensor,
               val_l: torch.Tensor, zero_diagonal: bool) -> dict:
    """The six sums of :func:`platonic_fast.ops.cknna_sums.cknna_sums` over all ranks' rows."""
    n = layout.n
    dev = idx_k.device
    with comm.step():
        ik, il = idx_k.to(torch.int64), idx_l.to(dev, torch.int64)
        vk, vl = val_k.to(dev, torch.float64), val_l.to(dev, torch.float64)
        me = torch.arange(layout.start, layout.stop, device=dev)
        # j in both lists of i: look each K-entry up in the sorted L-row
        sl, order = il.sort(dim=1)
        pos = torch.searchsorted(sl.contiguous(), ik.contiguous()).clamp_max(max(il.shape[1] - 1, 0))
        mask = sl.gather(1, pos) == ik if il.numel() else torch.zeros_like(ik, dtype=torch.bool)
        if zero_diagonal:
            mask &= ik != me[:, None]
        lv_at = vl.gather(1, order.gather(1, pos)) if il.numel() else torch.zeros_like(vk)
        kv = torch.where(mask, vk, 0.0)
        lv = torch.where(mask, lv_at, 0.0)
        row_k, row_l = kv.sum(dim=1), lv.sum(dim=1)
        col_k = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, ik.reshape(-1), kv.reshape(-1))
        col_l = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, ik.reshape(-1), lv.reshape(-1))
        # the masked entries of my rows: (i, j) with K'_ij and L'_ij, as sorted keys i·N + j
        rows = me[:, None].expand_as(ik)[mask]
        cols = ik[mask]
        keys, korder = _sorted_keys(rows, cols, n)
        table_l = lv[mask][korder]  # L'_ij in key order (what other ranks look up as L'_ji)
        my_kv = kv[mask]
    cols_all = comm.all_reduce(torch.stack([col_k, col_l]).cpu()).to(dev)
    trace = 0.0
    counts = comm.all_gather(torch.tensor([keys.numel()], dtype=torch.int64))
    for t in range(comm.size):
        p = (comm.rank + t) % comm.size
        m_p = int(counts[p][0])
        keys_p, lv_p = comm.shift([keys, table_l], t, [(m_p,), (m_p,)])
        with comm.step():
            s_p, e_p = layout.offsets[p], layout.offsets[p + 1]
            sel = (cols >= s_p) & (cols < e_p)
            if bool(sel.any()) and m_p:
                query = cols[sel] * n + rows[sel]  # (j, i) for my masked (i, j) with j on rank p
                found, at = _lookup(keys_p, query)
                trace += float((my_kv[sel][found] * lv_p[at[found]]).sum())
        del keys_p, lv_p
    local = [trace, float(row_k.sum()), float(row_l.sum()),
             float(cols_all[0, layout.start: layout.stop] @ row_l),
             float(cols_all[1, layout.start: layout.stop] @ row_k), float(mask.sum())]
    sums = comm.sum(local)
    return dict(zip(("trace_kl", "sum_k", "sum_l", "k_then_l", "l_then_k", "mask_count"), sums))
