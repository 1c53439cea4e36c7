"""Type stub of the compiled module (csrc/bindings.cpp): every name it exposes.

One op, one name: ``knn`` (KnnMerger), ``neighbour_lists``, ``cknna_sums``, ``outliers`` and
the CUDA-only ``topk_merge``, as in csrc/cpu/<op>.cpp and kernels/cuda/<op>.cu.
"""

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

_ListMetric = Literal["mutual_overlap", "cycle_hits", "lcs_lengths", "edit_distances"]

def build_info() -> dict[str, object]: ...

# knn
_Dtype = Literal["float32", "float64"]
_Bf16Isa = Literal["auto", "amx", "avx512_bf16"]

class KnnMerger:
    """One merger for both dtypes (chosen at construction; tiles must have that dtype)."""
    def __init__(self, n_rows: int, k: int, dtype: _Dtype = "float32") -> None: ...
    @property
    def n_rows(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def dtype(self) -> _Dtype: ...
    def add_rows(self, tile: npt.NDArray[np.floating], row0: int, col0: int, exclude_self: bool) -> None: ...
    def add_cols(self, tile: npt.NDArray[np.floating], row0: int, col0: int, exclude_self: bool) -> None: ...
    # the bf16 screen's kernel: bfloat16 rows as int16 bit patterns, scores merged as computed
    def add_bf16_product(
        self, q: npt.NDArray[np.int16], keys: npt.NDArray[np.int16], row0: int, col0: int, exclude_self: bool,
        mirror: bool, isa: _Bf16Isa = "auto",
    ) -> None: ...
    def finalize(self) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64]]: ...

# knn_screen: avx512f, avx512bw, avx512vl, avx512_bf16, amx_tile, amx_bf16, amx_permitted (bool), amx_note (str)
def knn_screen_cpu_features() -> dict[str, bool | str]: ...
# float64 dot product per pair (q[qi[p]], keys[ki[p]]), fixed summation order; float32 or float64 rows
def knn_dot64(
    q: npt.NDArray[Any], keys: npt.NDArray[Any], qi: npt.NDArray[np.int64], ki: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]: ...

# a · bᵀ in float32 for bfloat16 rows (int16 bit patterns): the screen's kernel, stored
def bf16_gemm_nt(
    a: npt.NDArray[np.int16], b: npt.NDArray[np.int16], isa: _Bf16Isa = "auto"
) -> npt.NDArray[np.float32]: ...

# neighbour_lists: ValueError for any other name
def neighbour_lists(name: _ListMetric, a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]: ...

# cknna_sums: keys trace_kl, sum_k, sum_l, k_then_l, l_then_k, mask_count
def cknna_sums(
    idx_k: npt.NDArray[np.int64], val_k: npt.NDArray[np.floating],
    idx_l: npt.NDArray[np.int64], val_l: npt.NDArray[np.floating], zero_diagonal: bool,
) -> dict[str, float]: ...  # values float32 or float64 (one dtype): the switch is in C++

# outliers
def outliers_abs_order_stats(
    x: npt.NDArray[np.float32], lo: int, hi: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...

# permute_lists
def permute_lists(
    lists: npt.NDArray[np.int64], perm: npt.NDArray[np.int64], inverse: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]: ...

def permute_lists_scores(
    name: _ListMetric, a: list[npt.NDArray[np.int64]], b: list[npt.NDArray[np.int64]],
    perms: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]: ...
def permute_lists_cknna(
    a_idx: list[npt.NDArray[np.int64]], a_val: list[npt.NDArray[np.floating]],
    b_idx: list[npt.NDArray[np.int64]], b_val: list[npt.NDArray[np.floating]],
    perms: npt.NDArray[np.int64], zero_diagonal: bool,
) -> npt.NDArray[np.float64]: ...

# --- CUDA-only: present only in builds with CUDA kernels (build_info()["cuda"]) ---
# Pointers are device addresses of C-contiguous buffers (int), stream a cudaStream_t (int).
CUDA_MAX_LIST_K: int
def cuda_status() -> tuple[str, int]: ...
def neighbour_lists_cuda(
    name: _ListMetric, a_ptr: int, b_ptr: int, n: int, k: int, scratch_ptr: int, out_ptr: int, stream: int,
) -> None: ...
def cknna_sums_workspace_cuda(n: int, k: int) -> int: ...
def cknna_sums_cuda(
    idx_k: int, val_k: int, idx_l: int, val_l: int, n: int, k: int, zero_diagonal: bool,
    is_double: bool, work_ptr: int, out6_ptr: int, stream: int,
) -> None: ...
def topk_merge_cuda(
    values_ptr: int, indices_ptr: int, n: int, m: int, k: int, out_values_ptr: int,
    out_indices_ptr: int, is_double: bool, stream: int,
) -> None: ...
def permute_lists_cuda(
    lists_ptr: int, n: int, k: int, perm_ptr: int, inverse_ptr: int, out_ptr: int, stream: int,
) -> None: ...
