"""k-selection merge: the best k of m candidates per row (values, indices).

Partial top-k lists of tiles or shards (e.g. one per GPU under torch.distributed) laid side by
side along dim 1 merge into one exact top-k: larger value first, ties to the smaller index;
index -1 marks an empty slot. ``cuda`` runs the compiled kernel; ``torch`` is the reference.
"""

from __future__ import annotations

import torch

from .._backends import MIN_CUDA_CAPABILITY, cuda_max_list_k, launch, register, resolve


def topk_merge(values: torch.Tensor, indices: torch.Tensor, k: int, *, backend: str = "auto"):
    """Merge candidate lists: (values, indices) N x m -> the best k per row (N x k each).

    Raises
    ------
    ValueError
        Shapes or devices differ, inputs are not 2-D, k is not in [1, m], or a value is NaN.
    """
    if values.dim() != 2 or values.shape != indices.shape:
        raise ValueError(f"values and indices must both be N x m, got {tuple(values.shape)} and {tuple(indices.shape)}")
    if values.device != indices.device:
        raise ValueError(f"values and indices must be on one device, got {values.device} and {indices.device}")
    if not values.is_floating_point() or indices.is_floating_point() or indices.dtype == torch.bool:
        raise TypeError(f"values must be floating point and indices integers, got {values.dtype} and {indices.dtype}")
    if bool(torch.isnan(values).any()):  # NaN has no place in the order (larger first)
        raise ValueError("values must not contain NaN")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= values.shape[1]:
        raise ValueError(f"k must be an integer in [1, {values.shape[1]}], got {k!r}")
    _, impl = resolve("topk_merge", backend, values.device, dtypes=(values.dtype,), k=k)
    return impl(values, indices, k)


@register("topk_merge", "cuda", devices=("cuda",), dtypes=(torch.float32, torch.float64), max_k=cuda_max_list_k,
          min_capability=MIN_CUDA_CAPABILITY, needs=("cuda_kernels",))
def topk_merge_cuda(values: torch.Tensor, indices: torch.Tensor, k: int):
    from .. import _core

    v = values.contiguous()
    ix = indices.to(torch.int64).contiguous()
    n, m = v.shape
    out_v = torch.empty(n, k, dtype=v.dtype, device=v.device)
    out_i = torch.empty(n, k, dtype=torch.int64, device=v.device)
    launch(_core.topk_merge_cuda, v.device, v.data_ptr(), ix.data_ptr(), n, m, k, out_v.data_ptr(),
           out_i.data_ptr(), v.dtype == torch.float64)
    return out_v, out_i


@register("topk_merge", "torch", devices=("cpu", "cuda"))
def topk_merge_torch(values: torch.Tensor, indices: torch.Tensor, k: int):
    """Reference: order by (value desc, index asc) with two stable sorts, empty slots last."""
    v = torch.where(indices < 0, torch.full_like(values, -torch.inf), values)
    ix = torch.where(indices < 0, torch.full_like(indices, torch.iinfo(torch.int64).max), indices)
    order = ix.argsort(dim=1, stable=True)
    v, ix = v.gather(1, order), ix.gather(1, order)
    order = v.argsort(dim=1, descending=True, stable=True)[:, :k]
    v, ix = v.gather(1, order), ix.gather(1, order)
    return v, torch.where(ix == torch.iinfo(torch.int64).max, torch.full_like(ix, -1), ix)
