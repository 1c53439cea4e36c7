// The only PYBIND11_MODULE. Every entry checks ranks, shapes and dtypes here (a failed check
// raises ValueError in Python), then releases the GIL for the work. Nothing here knows about
// torch: arrays arrive as NumPy buffers (zero-copy views of CPU tensors) or raw device pointers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "common/check.h"
#include "common/parallel.h"
#include "cpu/cknna.h"
#include "cpu/neighbor_lists.h"
#include "cpu/order_stats.h"
#include "cpu/topk_merge.h"
#ifdef PLATONIC_FAST_WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace py = pybind11;

namespace {

// A 2-D array of T whose rows may be strided (a view into a bigger buffer) but whose
// columns are contiguous.
template <typename T>
struct Matrix {
  const T* data;
  int64_t rows, cols, ld;
};

template <typename T>
Matrix<T> as_matrix(const py::array& arr, const char* name) {
  PF_CHECK(py::isinstance<py::array_t<T>>(arr),
           name << " must have dtype " << py::str(py::dtype::of<T>()).cast<std::string>()
                << ", got " << py::str(arr.dtype()).cast<std::string>());
  PF_CHECK(arr.ndim() == 2, name << " must be 2-D, got " << arr.ndim() << "-D");
  const int64_t item = static_cast<int64_t>(sizeof(T));
  PF_CHECK(arr.shape(1) <= 1 || arr.strides(1) == item,
           name << " must have contiguous rows (column stride " << arr.strides(1) << ")");
  PF_CHECK(arr.shape(0) <= 1 || (arr.strides(0) % item == 0 && arr.strides(0) >= item * arr.shape(1)),
           name << " has an unsupported row stride " << arr.strides(0));
  const int64_t ld = arr.shape(0) <= 1 ? arr.shape(1) : arr.strides(0) / item;
  return {static_cast<const T*>(arr.data()), arr.shape(0), arr.shape(1), ld};
}

// Neighbour lists: C-contiguous int64 N x k.
using IndexArray = py::array_t<int64_t, py::array::c_style>;

std::pair<int64_t, int64_t> list_shape(const IndexArray& a, const IndexArray& b) {
  PF_CHECK(a.ndim() == 2 && b.ndim() == 2, "neighbour lists must be 2-D (N x k)");
  PF_CHECK(a.shape(0) == b.shape(0) && a.shape(1) == b.shape(1),
           "neighbour lists must have the same shape, got (" << a.shape(0) << ", " << a.shape(1)
                                                             << ") and (" << b.shape(0) << ", "
                                                             << b.shape(1) << ")");
  PF_CHECK(a.shape(1) >= 1, "neighbour lists must have k >= 1 columns");
  const int64_t n = a.shape(0), k = a.shape(1);
  pf::check_indices(a.data(), n * k, n, "first neighbour list");
  pf::check_indices(b.data(), n * k, n, "second neighbour list");
  return {n, k};
}

using ListOp = void (*)(const int64_t*, const int64_t*, int64_t, int64_t, int64_t*);

py::array_t<int64_t> run_list_op(ListOp op, const IndexArray& a, const IndexArray& b) {
  const auto [n, k] = list_shape(a, b);
  py::array_t<int64_t> out(n);
  int64_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    op(a.data(), b.data(), n, k, dst);
  }
  return out;
}

template <typename T>
void bind_topk(py::module_& m, const char* name) {
  using Merger = pf::TopKMerger<T>;
  py::class_<Merger>(m, name,
                     "Exact running top-k per row, fed with score tiles (larger first, ties to "
                     "the smaller index).")
      .def(py::init<int64_t, int64_t>(), py::arg("n_rows"), py::arg("k"))
      .def_property_readonly("n_rows", &Merger::n_rows)
      .def_property_readonly("k", &Merger::k)
      .def(
          "add_rows",
          [](Merger& self, const py::array& tile, int64_t row0, int64_t col0, bool exclude_self) {
            const auto t = as_matrix<T>(tile, "tile");
            py::gil_scoped_release release;
            self.add_rows(t.data, t.rows, t.cols, t.ld, row0, col0, exclude_self);
          },
          py::arg("tile"), py::arg("row0"), py::arg("col0"), py::arg("exclude_self"))
      .def(
          "add_cols",
          [](Merger& self, const py::array& tile, int64_t row0, int64_t col0, bool exclude_self) {
            const auto t = as_matrix<T>(tile, "tile");
            py::gil_scoped_release release;
            self.add_cols(t.data, t.rows, t.cols, t.ld, row0, col0, exclude_self);
          },
          py::arg("tile"), py::arg("row0"), py::arg("col0"), py::arg("exclude_self"))
      .def("finalize", [](Merger& self) {
        py::array_t<T> values({self.n_rows(), self.k()});
        py::array_t<int64_t> indices({self.n_rows(), self.k()});
        T* v = values.mutable_data();
        int64_t* ix = indices.mutable_data();
        {
          py::gil_scoped_release release;
          self.finalize(v, ix);
        }
        return py::make_tuple(values, indices);
      });
}

template <typename T>
py::dict masked_sums(const IndexArray& idx_k, const py::array& val_k, const IndexArray& idx_l,
                     const py::array& val_l, bool zero_diagonal) {
  const auto [n, k] = list_shape(idx_k, idx_l);
  const auto vk = as_matrix<T>(val_k, "val_k");
  const auto vl = as_matrix<T>(val_l, "val_l");
  PF_CHECK(vk.rows == n && vk.cols == k && vk.ld == k && vl.rows == n && vl.cols == k && vl.ld == k,
           "kernel values must be C-contiguous and shaped like their neighbour lists");
  pf::MaskedKernelSums s;
  {
    py::gil_scoped_release release;
    s = pf::masked_kernel_sums<T>(idx_k.data(), vk.data, idx_l.data(), vl.data, n, k,
                                  zero_diagonal);
  }
  py::dict d;
  d["trace_kl"] = s.trace_kl;
  d["sum_k"] = s.sum_k;
  d["sum_l"] = s.sum_l;
  d["k_then_l"] = s.k_then_l;
  d["l_then_k"] = s.l_then_k;
  d["mask_count"] = s.mask_count;
  return d;
}

py::dict build_info() {
  py::dict d;
  d["version"] = PLATONIC_FAST_VERSION;
  d["compiler"] = PLATONIC_FAST_COMPILER;
  d["build_type"] = PLATONIC_FAST_BUILD_TYPE;
  d["cxx_flags"] = PLATONIC_FAST_CXX_FLAGS;
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_version"] = _OPENMP;
#else
  d["openmp"] = false;
  d["openmp_version"] = 0;
#endif
  d["max_threads"] = pf::max_threads();
#ifdef PLATONIC_FAST_WITH_CUDA
  d["cuda"] = true;
  d["cuda_version"] = PLATONIC_FAST_CUDA_VERSION;
  d["cuda_archs"] = PLATONIC_FAST_CUDA_ARCHS;
#else
  d["cuda"] = false;
  d["cuda_version"] = "";
  d["cuda_archs"] = "";
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "platonic_fast compiled core: CPU top-k merging and neighbour-list metrics (OpenMP), "
            "and CUDA kernels when built with nvcc.";
  m.def("build_info", &build_info, "What this build contains: compiler, flags, OpenMP, CUDA.");

  bind_topk<float>(m, "TopKMergerF32");
  bind_topk<double>(m, "TopKMergerF64");

  m.def("mutual_overlap", [](const IndexArray& a, const IndexArray& b) {
    return run_list_op(pf::mutual_overlap, a, b);
  }, py::arg("a"), py::arg("b"), "Per row: |A(i) ∩ B(i)|.");
  m.def("cycle_hits", [](const IndexArray& a, const IndexArray& b) {
    return run_list_op(pf::cycle_hits, a, b);
  }, py::arg("a"), py::arg("b"), "Per row: 1 if i ∈ A(j) for some j ∈ B(i).");
  m.def("lcs_lengths", [](const IndexArray& a, const IndexArray& b) {
    return run_list_op(pf::lcs_lengths, a, b);
  }, py::arg("a"), py::arg("b"), "Per row: longest common subsequence of A(i) and B(i).");
  m.def("edit_distances", [](const IndexArray& a, const IndexArray& b) {
    return run_list_op(pf::edit_distances, a, b);
  }, py::arg("a"), py::arg("b"), "Per row: unit-cost Levenshtein distance of A(i) and B(i).");

  m.def("abs_order_stats",
        [](const py::array& x, int64_t lo, int64_t hi) {
          const auto t = as_matrix<float>(x, "x");
          PF_CHECK(hi <= lo + 1, "hi must be lo or lo + 1");
          py::array_t<float> out_lo(t.rows), out_hi(t.rows);
          float* a = out_lo.mutable_data();
          float* b = out_hi.mutable_data();
          {
            py::gil_scoped_release release;
            pf::abs_order_stats(t.data, t.rows, t.cols, t.ld, lo, hi, a, b);
          }
          return py::make_tuple(out_lo, out_hi);
        },
        py::arg("x"), py::arg("lo"), py::arg("hi"),
        "Per row of a float32 matrix: entries lo and hi (= lo or lo + 1) of the ascending sort "
        "of |x|.");
  m.def("masked_kernel_sums_f32", &masked_sums<float>, py::arg("idx_k"), py::arg("val_k"),
        py::arg("idx_l"), py::arg("val_l"), py::arg("zero_diagonal"));
  m.def("masked_kernel_sums_f64", &masked_sums<double>, py::arg("idx_k"), py::arg("val_k"),
        py::arg("idx_l"), py::arg("val_l"), py::arg("zero_diagonal"));

#ifdef PLATONIC_FAST_WITH_CUDA
  m.def("cuda_status", []() {
    int count = 0;
    std::string status = pf::cuda_runtime_status(&count);
    return py::make_tuple(status, count);
  }, "('ok', device count) or the CUDA runtime's reason it cannot run, and 0.");
  m.def("mutual_overlap_cuda",
        [](uintptr_t a, uintptr_t b, int64_t n, int64_t k, uintptr_t out, uintptr_t stream) {
          PF_CHECK(n >= 0 && k >= 1, "mutual_overlap_cuda: need n >= 0 and k >= 1");
          PF_CHECK(a && b && out, "mutual_overlap_cuda: null device pointer");
          py::gil_scoped_release release;
          pf::mutual_overlap_cuda(a, b, n, k, out, stream);
        },
        py::arg("a_ptr"), py::arg("b_ptr"), py::arg("n"), py::arg("k"), py::arg("out_ptr"),
        py::arg("stream"),
        "Device pointers to two C-contiguous int64 N x k lists and an int64 N output.");
  m.def("neighbor_list_cuda",
        [](const std::string& op, uintptr_t a, uintptr_t b, int64_t n, int64_t k, uintptr_t scratch,
           uintptr_t out, uintptr_t stream) {
          PF_CHECK(n >= 0 && k >= 1 && k <= pf::max_list_k_cuda(),
                   "neighbor_list_cuda: need n >= 0 and 1 <= k <= " << pf::max_list_k_cuda());
          PF_CHECK(a && b && out && (op != "cycle_hits" || scratch), "neighbor_list_cuda: null device pointer");
          py::gil_scoped_release release;
          pf::neighbor_list_cuda(op, a, b, n, k, scratch, out, stream);
        },
        py::arg("op"), py::arg("a_ptr"), py::arg("b_ptr"), py::arg("n"), py::arg("k"),
        py::arg("scratch_ptr"), py::arg("out_ptr"), py::arg("stream"),
        "cycle_hits / lcs_lengths / edit_distances on device lists (int64 N x k, C-contiguous).");
  m.def("masked_kernel_sums_workspace_cuda", &pf::masked_kernel_sums_workspace_cuda, py::arg("n"),
        py::arg("k"), "Bytes of device workspace masked_kernel_sums_cuda needs.");
  m.def("masked_kernel_sums_cuda",
        [](uintptr_t idx_k, uintptr_t val_k, uintptr_t idx_l, uintptr_t val_l, int64_t n, int64_t k,
           bool zero_diagonal, bool is_double, uintptr_t work, uintptr_t out6, uintptr_t stream) {
          PF_CHECK(n >= 0 && k >= 1 && k <= pf::max_list_k_cuda(),
                   "masked_kernel_sums_cuda: need n >= 0 and 1 <= k <= " << pf::max_list_k_cuda());
          PF_CHECK(idx_k && val_k && idx_l && val_l && work && out6, "masked_kernel_sums_cuda: null device pointer");
          py::gil_scoped_release release;
          pf::masked_kernel_sums_cuda(idx_k, val_k, idx_l, val_l, n, k, zero_diagonal, is_double, work,
                                      out6, stream);
        },
        py::arg("idx_k"), py::arg("val_k"), py::arg("idx_l"), py::arg("val_l"), py::arg("n"),
        py::arg("k"), py::arg("zero_diagonal"), py::arg("is_double"), py::arg("work_ptr"),
        py::arg("out6_ptr"), py::arg("stream"),
        "CKNNA sums on device: out6 = trace_kl, sum_k, sum_l, k_then_l, l_then_k, mask_count.");
  m.def("topk_merge_cuda",
        [](uintptr_t values, uintptr_t indices, int64_t n, int64_t m, int64_t k, uintptr_t out_values,
           uintptr_t out_indices, bool is_double, uintptr_t stream) {
          PF_CHECK(n >= 0 && m >= 1 && k >= 1 && k <= pf::max_list_k_cuda(),
                   "topk_merge_cuda: need n >= 0, m >= 1 and 1 <= k <= " << pf::max_list_k_cuda());
          PF_CHECK(values && indices && out_values && out_indices, "topk_merge_cuda: null device pointer");
          py::gil_scoped_release release;
          pf::topk_merge_cuda(values, indices, n, m, k, out_values, out_indices, is_double, stream);
        },
        py::arg("values_ptr"), py::arg("indices_ptr"), py::arg("n"), py::arg("m"), py::arg("k"),
        py::arg("out_values_ptr"), py::arg("out_indices_ptr"), py::arg("is_double"), py::arg("stream"),
        "k-selection merge of m candidates per row into the best k (device pointers).");
  m.attr("CUDA_MAX_LIST_K") = pf::max_list_k_cuda();
#endif
}
