"""CKNNA's sparse sums: the kernels of two feature sets masked to mutual neighbours.

Given row i's neighbour lists in K (indices ``idx_k``, kernel values ``val_k``) and in L, the
mask keeps j when it is in both lists of i (M is not symmetric). The sums HSIC needs of the
masked kernels K' = M∘K, L' = M∘L (docs/metrics.md#cknna) are

    trace_kl = Σ_ij K'_ij L'_ji,  sum_k = Σ K',  sum_l = Σ L',
    k_then_l = 1ᵀK'L'1,  l_then_k = 1ᵀL'K'1,  mask_count = Σ M,

all O(N·k log k) from the lists (the torch reference compares
lists pairwise: O(N·k²)). ``zero_diagonal`` drops j == i (the unbiased estimator's
zeroed diagonals). Backends: ``cpu`` (the compiled core; it also serves CUDA tensors through a
host copy), ``cuda`` (the compiled kernels, k up to their scratch), ``torch`` (the reference).
"""

from __future__ import annotations

import torch

from .._backends import MIN_CUDA_CAPABILITY, cuda_max_list_k, launch, register, resolve
from .neighbour_lists import checked_device_lists, lookup, sorted_keys

SUM_NAMES = ("trace_kl", "sum_k", "sum_l", "k_then_l", "l_then_k", "mask_count")
VALUE_DTYPES = (torch.float32, torch.float64)


def cknna_sums(idx_k: torch.Tensor, val_k: torch.Tensor, idx_l: torch.Tensor, val_l: torch.Tensor,
               zero_diagonal: bool, *, backend: str = "auto", comm=None, layout=None) -> dict:
    """The six sums (a dict of floats named as :data:`SUM_NAMES`) of two N x k neighbour lists
    with their kernel values (float32 or float64); over every rank's rows with a process
    group's ``comm`` (:func:`sharded_sums`)."""
    if comm is not None:
        return sharded_sums(comm, layout, idx_k, val_k, idx_l, val_l, zero_diagonal)
    if not (idx_k.shape == val_k.shape == idx_l.shape == val_l.shape) or idx_k.dim() != 2:
        raise ValueError("neighbour lists and values must all be N x k, got "
                         f"{[tuple(t.shape) for t in (idx_k, val_k, idx_l, val_l)]}")
    _, impl = resolve("cknna_sums", backend, idx_k.device, dtypes=(val_k.dtype, val_l.dtype), k=idx_k.shape[1])
    return impl(idx_k, val_k, idx_l, val_l, zero_diagonal)


def sharded_sums(comm, layout, idx_k: torch.Tensor, val_k: torch.Tensor, idx_l: torch.Tensor,
                 val_l: torch.Tensor, zero_diagonal: bool) -> dict:
    """The sums over row shards (this rank's rows of the lists, global indices; collective): the
    mask and the row sums are per row; the column sums are all-reduced (N values); the transpose
    term Σ K'_ij L'_ji looks each masked (i, j) up among the visiting block's masked (j, i).
    Sums in float64."""
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
        keys, korder = sorted_keys(rows, cols, n)
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
                found, at = lookup(keys_p, query)
                trace += float((my_kv[sel][found] * lv_p[at[found]]).sum())
        del keys_p, lv_p
    local = [trace, float(row_k.sum()), float(row_l.sum()),
             float(cols_all[0, layout.start: layout.stop] @ row_l),
             float(cols_all[1, layout.start: layout.stop] @ row_k), float(mask.sum())]
    return dict(zip(SUM_NAMES, comm.sum(local)))


def _sums_dtype(*values: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(v.dtype == torch.float64 for v in values) else torch.float32


@register("cknna_sums", "cpu", devices=("cpu", "cuda"), dtypes=VALUE_DTYPES, needs=("core",))
def cknna_sums_cpu(idx_k, val_k, idx_l, val_l, zero_diagonal: bool) -> dict:
    from .. import _core

    dtype = _sums_dtype(val_k, val_l)

    def host(t, dtype=None):
        return t.detach().to("cpu", dtype or t.dtype).contiguous().numpy()

    return _core.cknna_sums(host(idx_k, torch.int64), host(val_k, dtype), host(idx_l, torch.int64),
                            host(val_l, dtype), zero_diagonal)


@register("cknna_sums", "cuda", devices=("cuda",), dtypes=VALUE_DTYPES, max_k=cuda_max_list_k,
          min_capability=MIN_CUDA_CAPABILITY, needs=("cuda_kernels",))
def cknna_sums_cuda(idx_k, val_k, idx_l, val_l, zero_diagonal: bool) -> dict:
    from .. import _core

    dtype = _sums_dtype(val_k, val_l)
    ia, ib = checked_device_lists(idx_k, idx_l)  # the kernels trust every index
    dev = ia.device
    va, vb = val_k.to(dev, dtype).contiguous(), val_l.to(dev, dtype).contiguous()
    n, k = ia.shape
    work = torch.empty(_core.cknna_sums_workspace_cuda(n, k), dtype=torch.uint8, device=dev)
    out = torch.empty(len(SUM_NAMES), dtype=torch.float64, device=dev)
    launch(_core.cknna_sums_cuda, dev, ia.data_ptr(), va.data_ptr(), ib.data_ptr(), vb.data_ptr(), n, k,
           zero_diagonal, dtype == torch.float64, work.data_ptr(), out.data_ptr())
    return dict(zip(SUM_NAMES, out.tolist()))


_PAIR_ELEMENTS = 1 << 23


@register("cknna_sums", "torch", devices=("cpu", "cuda"), dtypes=VALUE_DTYPES)
def cknna_sums_torch(idx_k, val_k, idx_l, val_l, zero_diagonal: bool) -> dict:
    """Reference: the mask by comparing the two lists of each row, the transpose term by a
    sorted lookup of (j, i) among the masked (i, j)."""
    n, k = idx_k.shape
    dev = idx_k.device
    idx_k, idx_l = idx_k.to(torch.int64), idx_l.to(dev, torch.int64)
    val_k, val_l = val_k.to(dev, torch.float64), val_l.to(dev, torch.float64)
    mask, lv = [], []
    chunk = max(1, _PAIR_ELEMENTS // (k * k))  # rows x k x k comparisons per block
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        same = idx_k[s:e, :, None] == idx_l[s:e, None, :]  # rows x k x k
        m = same.any(dim=2)
        if zero_diagonal:
            m &= idx_k[s:e] != torch.arange(s, e, device=dev)[:, None]
        mask.append(m)
        lv.append((same * val_l[s:e, None, :]).sum(dim=2))  # L_ij aligned with row i's K-list
    mask = torch.cat(mask)
    kv = torch.where(mask, val_k, 0.0)
    lv = torch.where(mask, torch.cat(lv), 0.0)
    row_k, row_l = kv.sum(dim=1), lv.sum(dim=1)
    col_k = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, idx_k.flatten(), kv.flatten())
    col_l = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, idx_k.flatten(), lv.flatten())
    # Σ K'_ij L'_ji: for every masked (i, j), find the masked (j, i) among the sorted keys i·N + j.
    rows = torch.arange(n, device=dev)[:, None].expand(n, k)[mask]
    cols = idx_k[mask]
    keys, order = torch.sort(rows * n + cols)
    pos = torch.searchsorted(keys, cols * n + rows).clamp_max(max(keys.numel() - 1, 0))
    found = keys[pos] == cols * n + rows if keys.numel() else torch.zeros(0, dtype=torch.bool, device=dev)
    trace = (kv[mask][found] * lv[mask][order[pos[found]]]).sum()
    sums = (trace, row_k.sum(), row_l.sum(), col_k @ row_l, col_l @ row_k, mask.sum().to(torch.float64))
    return dict(zip(SUM_NAMES, (float(v) for v in sums)))
