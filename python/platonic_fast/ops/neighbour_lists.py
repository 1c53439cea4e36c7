"""Per-row comparisons of two neighbour-list matrices (N x k, int64) of the same samples.

One op, four kinds, each giving one integer per row:
- ``mutual_overlap``: |kNN_A(i) ∩ kNN_B(i)|;
- ``cycle_hits``: 1 when i is in kNN_A(j) for some j in kNN_B(i);
- ``lcs_lengths``: the longest common subsequence of the two ordered lists;
- ``edit_distances``: their Levenshtein distance (unit costs).

Backends: ``cpu``, the compiled core (it also serves CUDA tensors: the lists are small and are
copied to the host); ``cuda``, the compiled kernels (k up to their per-thread scratch);
``torch``, the plain references, on any device.
"""

from __future__ import annotations

import torch

from .._backends import MIN_CUDA_CAPABILITY, cuda_max_list_k, launch, register, resolve

KINDS = ("mutual_overlap", "cycle_hits", "lcs_lengths", "edit_distances")
INDEX_DTYPES = (torch.int64, torch.int32)


def run(kind: str, a: torch.Tensor, b: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Per-row ``kind`` of neighbour lists ``a`` and ``b`` (same shape N x k), int64 on a's device."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"neighbour lists must both be N x k, got {tuple(a.shape)} and {tuple(b.shape)}")
    _, impl = resolve("neighbour_lists", backend, a.device, dtypes=(a.dtype, b.dtype), k=a.shape[1])
    return impl(kind, a, b)


def total(kind: str, a: torch.Tensor, b: torch.Tensor, *, backend: str = "auto", comm=None, layout=None) -> int:
    """The sum over rows of ``kind`` (an exact integer). With a process group's ``comm``, over
    every rank's rows: ``a``, ``b`` are this rank's rows of the lists (global indices) and
    ``layout`` the rows each rank holds (collective)."""
    if comm is None:
        return int(run(kind, a, b, backend=backend).sum())
    if kind == "cycle_hits":  # row i reads the A-lists of its B-neighbours, held by other ranks
        return _cycle_total(comm, layout, a, b)
    with comm.step():
        count = 0
        if a.shape[0]:
            # only equality inside a row matters: small indices let the op check them against its rows
            ra, rb = _relabel_rows(a, b)
            count = int(run(kind, ra, rb, backend=backend)[: a.shape[0]].sum())
    return int(comm.all_reduce(torch.tensor([count], dtype=torch.int64))[0])


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


_LOOKUP_ELEMENTS = 1 << 22  # keys searched at a time


def sorted_keys(rows: torch.Tensor, cols: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted keys row·N + col of (row, col) pairs and the order that sorts them."""
    return torch.sort(rows * n + cols)


def lookup(keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(found, position) of each query among sorted ``keys``."""
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool), torch.zeros_like(query)
    pos = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
    return keys[pos] == query, pos


def _cycle_total(comm, layout, a: torch.Tensor, b: torch.Tensor) -> int:
    """Σ_i [i ∈ kNN_A(j) for some j ∈ kNN_B(i)] over shards: the A-lists travel between ranks one
    block at a time, and each rank looks its (i, j) pairs up in the visiting block."""
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
                keys, _ = sorted_keys(rows_p.reshape(-1), block.reshape(-1).to(torch.int64), n)
                ii, pp = sel.nonzero(as_tuple=True)
                query = (b[ii, pp].to(torch.int64) - s_p) * n + me[ii]
                for c0 in range(0, query.numel(), _LOOKUP_ELEMENTS):
                    found, _ = lookup(keys, query[c0: c0 + _LOOKUP_ELEMENTS])
                    hit[ii[c0: c0 + _LOOKUP_ELEMENTS][found]] = True
        del block
    return int(comm.all_reduce(torch.tensor([int(hit.sum())], dtype=torch.int64))[0])


def _host(t: torch.Tensor):
    return t.detach().to("cpu", torch.int64).contiguous().numpy()


@register("neighbour_lists", "cpu", devices=("cpu", "cuda"), dtypes=INDEX_DTYPES, needs=("core",))
def neighbour_lists_cpu(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from .. import _core

    return torch.from_numpy(_core.neighbour_lists(kind, _host(a), _host(b))).to(a.device)


def checked_device_lists(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both lists as C-contiguous int64 on a's GPU, with every index checked (kernels trust them)."""
    a = a.to(torch.int64).contiguous()
    b = b.to(device=a.device, dtype=torch.int64).contiguous()
    n = a.shape[0]
    if a.numel() and b.numel():
        lo, hi = torch.stack([a.min(), b.min()]), torch.stack([a.max(), b.max()])
        if int(lo.min()) < 0 or int(hi.max()) >= n:
            raise ValueError(f"neighbour lists hold indices outside [0, {n})")
    return a, b


@register("neighbour_lists", "cuda", devices=("cuda",), dtypes=INDEX_DTYPES, max_k=cuda_max_list_k,
          min_capability=MIN_CUDA_CAPABILITY, needs=("cuda_kernels",))
def neighbour_lists_cuda(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from .. import _core

    a, b = checked_device_lists(a, b)
    out = torch.empty(a.shape[0], dtype=torch.int64, device=a.device)
    scratch = torch.empty_like(a) if kind == "cycle_hits" else out  # only cycle needs scratch
    launch(_core.neighbour_lists_cuda, a.device, kind, a.data_ptr(), b.data_ptr(), a.shape[0], a.shape[1],
           scratch.data_ptr(), out.data_ptr())
    return out


# --- plain-torch references --------------------------------------------------------------------

_ROW_CHUNK = 4096


def _mutual_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    parts = [
        (a[s : s + _ROW_CHUNK, :, None] == b[s : s + _ROW_CHUNK, None, :]).sum(dim=(1, 2))
        for s in range(0, a.shape[0], _ROW_CHUNK)
    ]
    return torch.cat(parts).to(torch.int64)


def _cycle_hits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    parts = []
    for s in range(0, a.shape[0], _ROW_CHUNK):
        rows = torch.arange(s, min(a.shape[0], s + _ROW_CHUNK), device=a.device)
        back = a[b[rows]]  # rows x k x k: the A-lists of each of i's B-neighbours
        parts.append((back == rows[:, None, None]).flatten(1).any(dim=1))
    return torch.cat(parts).to(torch.int64)


def _lcs(x: list[int], y: list[int]) -> int:
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _levenshtein(x: list[int], y: list[int]) -> int:
    prev = list(range(len(y) + 1))
    for i, xi in enumerate(x, 1):
        cur = [i]
        for j, yj in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (xi != yj)))
        prev = cur
    return prev[-1]


def _per_row(fn):
    def impl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = [fn(x, y) for x, y in zip(a.tolist(), b.tolist())]
        return torch.tensor(out, dtype=torch.int64, device=a.device)

    return impl


_TORCH = {"mutual_overlap": _mutual_overlap, "cycle_hits": _cycle_hits,
          "lcs_lengths": _per_row(_lcs), "edit_distances": _per_row(_levenshtein)}


@register("neighbour_lists", "torch", devices=("cpu", "cuda"), dtypes=INDEX_DTYPES)
def neighbour_lists_torch(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _TORCH[kind](a.to(torch.int64), b.to(device=a.device, dtype=torch.int64))
