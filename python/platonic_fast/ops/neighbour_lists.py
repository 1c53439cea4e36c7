"""Metrics over two neighbour-list matrices (N x k, int64) of the same samples.

Each op returns one number per row. The ``cpu`` backend is the compiled core (also used for
CUDA tensors: the lists are small, N x k, and are copied to the host); ``cuda`` runs the
overlap on the GPU; ``torch`` holds the plain references.
"""

from __future__ import annotations

import torch

from .._backends import available, core_available, cuda_kernels_available, register, resolve

OPS = ("mutual_overlap", "cycle_hits", "lcs_lengths", "edit_distances")


def run(op: str, a: torch.Tensor, b: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Per-row ``op`` of neighbour lists ``a`` and ``b`` (same shape N x k), as int64 on a's device."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"neighbour lists must both be N x k, got {tuple(a.shape)} and {tuple(b.shape)}")
    _, impl = resolve(op, backend, a.device)
    return impl(a, b)


def _backends_available(op: str) -> list[str]:
    """Backends that can run ``op`` on CUDA tensors here (for tests and the env report)."""
    return available(op, "cuda")


def _host_lists(t: torch.Tensor):
    return t.detach().to("cpu", torch.int64).contiguous().numpy()


def _core_op(name: str):
    def impl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from .. import _core

        out = getattr(_core, name)(_host_lists(a), _host_lists(b))
        return torch.from_numpy(out).to(a.device)

    impl.__name__ = f"{name}_cpu"
    return impl


for _op in OPS:
    register(_op, "cpu", devices=("cpu", "cuda"), is_available=core_available)(_core_op(_op))


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


@register("mutual_overlap", "cuda", devices=("cuda",), is_available=cuda_kernels_available)
def mutual_overlap_cuda(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from .. import _core

    a, b = checked_device_lists(a, b)
    out = torch.empty(a.shape[0], dtype=torch.int64, device=a.device)
    with torch.cuda.device(a.device):
        stream = torch.cuda.current_stream(a.device).cuda_stream
        _core.mutual_overlap_cuda(a.data_ptr(), b.data_ptr(), a.shape[0], a.shape[1], out.data_ptr(), stream)
    return out


def _cuda_list_op(name: str):
    def impl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from .. import _core

        if a.shape[1] > _core.CUDA_MAX_LIST_K:  # beyond the kernels' per-thread scratch
            return _core_op(name)(a, b)
        a, b = checked_device_lists(a, b)
        out = torch.empty(a.shape[0], dtype=torch.int64, device=a.device)
        scratch = torch.empty_like(a) if name == "cycle_hits" else out
        with torch.cuda.device(a.device):
            stream = torch.cuda.current_stream(a.device).cuda_stream
            _core.neighbor_list_cuda(name, a.data_ptr(), b.data_ptr(), a.shape[0], a.shape[1],
                                     scratch.data_ptr(), out.data_ptr(), stream)
        return out

    impl.__name__ = f"{name}_cuda"
    return impl


for _op in ("cycle_hits", "lcs_lengths", "edit_distances"):
    register(_op, "cuda", devices=("cuda",), is_available=cuda_kernels_available)(_cuda_list_op(_op))


# --- plain-torch references --------------------------------------------------------------------

_ROW_CHUNK = 4096


@register("mutual_overlap", "torch", devices=("cpu", "cuda"))
def mutual_overlap_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    parts = [
        (a[s : s + _ROW_CHUNK, :, None] == b[s : s + _ROW_CHUNK, None, :]).sum(dim=(1, 2))
        for s in range(0, a.shape[0], _ROW_CHUNK)
    ]
    return torch.cat(parts).to(torch.int64)


@register("cycle_hits", "torch", devices=("cpu", "cuda"))
def cycle_hits_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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


@register("lcs_lengths", "torch", devices=("cpu", "cuda"))
def lcs_lengths_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = [_lcs(x, y) for x, y in zip(a.tolist(), b.tolist())]
    return torch.tensor(out, dtype=torch.int64, device=a.device)


@register("edit_distances", "torch", devices=("cpu", "cuda"))
def edit_distances_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = [_levenshtein(x, y) for x, y in zip(a.tolist(), b.tolist())]
    return torch.tensor(out, dtype=torch.int64, device=a.device)
