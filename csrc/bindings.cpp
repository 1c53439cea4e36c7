// The only PYBIND11_MODULE. Every entry checks ranks, shapes and dtypes here (a failed check
// raises ValueError in Python), then releases the GIL for the work. Nothing here knows about
// torch: arrays arrive as NumPy buffers (zero-copy views of CPU tensors) or raw device pointers.
// Each op has one name across csrc/cpu/<op>.cpp, kernels/cuda/<op>.cu and the entries below.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "common/check.h"
#include "common/dtype.h"
#include "common/list_metric.h"
#include "common/parallel.h"
#include "cpu/cknna_sums.h"
#include "cpu/knn.h"
#include "cpu/knn_screen.h"
#include "cpu/neighbour_lists.h"
#include "cpu/outliers.h"
#include "cpu/permute_lists.h"
#ifdef PLATONIC_FAST_WITH_CUDA
#include <cuda_runtime.h>

#include "../kernels/cuda/cknna_sums.cuh"
#include "../kernels/cuda/neighbour_lists.cuh"
#include "../kernels/cuda/permute_lists.cuh"
#include "../kernels/cuda/topk_merge.cuh"
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

py::array_t<int64_t> neighbour_lists(const std::string& name, const IndexArray& a,
                                     const IndexArray& b) {
  const pf::ListMetric metric = pf::list_metric(name);
  const auto [n, k] = list_shape(a, b);
  py::array_t<int64_t> out(n);
  int64_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    pf::neighbour_lists(metric, a.data(), b.data(), n, k, dst);
  }
  return out;
}

// The dtype of value arrays: float32 or float64, else a ValueError naming the argument.
pf::Dtype dtype_of(const py::array& arr, const char* name) {
  if (py::isinstance<py::array_t<double>>(arr)) return pf::Dtype::float64;
  PF_CHECK(py::isinstance<py::array_t<float>>(arr),
           name << " must have dtype float32 or float64, got " << py::str(arr.dtype()).cast<std::string>());
  return pf::Dtype::float32;
}

// The bf16 kernels' instruction set by name: "auto" (AMX where usable, else AVX-512-BF16), "amx",
// "avx512_bf16".
pf::Bf16Isa bf16_isa_named(const std::string& name) {
  if (name == "amx") return pf::Bf16Isa::amx;
  if (name == "avx512_bf16") return pf::Bf16Isa::avx512;
  PF_CHECK(name == "auto", "isa must be 'auto', 'amx' or 'avx512_bf16', got '" << name << "'");
  return pf::Bf16Isa::automatic;
}

// One merger class for both dtypes: the instance is chosen once, at construction.
class KnnMerger {
 public:
  KnnMerger(int64_t n_rows, int64_t k, const std::string& dtype)
      : m_(pf::with_dtype(pf::dtype_named(dtype), [&](auto t) -> Any {
          return Any(std::in_place_type<pf::KnnMerger<decltype(t)>>, n_rows, k);
        })) {}

  int64_t n_rows() const { return std::visit([](const auto& m) { return m.n_rows(); }, m_); }
  int64_t k() const { return std::visit([](const auto& m) { return m.k(); }, m_); }
  std::string dtype() const {
    return std::holds_alternative<pf::KnnMerger<double>>(m_) ? "float64" : "float32";
  }

  // cols = false: tile rows are merged into their rows; true: the transposed use (add_cols).
  void add(const py::array& tile, int64_t row0, int64_t col0, bool exclude_self, bool cols) {
    std::visit(
        [&](auto& m) {
          using T = typename std::decay_t<decltype(m)>::value_type;
          const auto t = as_matrix<T>(tile, "tile");
          py::gil_scoped_release release;
          if (cols)
            m.add_cols(t.data, t.rows, t.cols, t.ld, row0, col0, exclude_self);
          else
            m.add_rows(t.data, t.rows, t.cols, t.ld, row0, col0, exclude_self);
        },
        m_);
  }

  // The fused bf16 screen (knn_screen.h): q and keys are bfloat16 bit patterns (int16 views).
  void add_bf16_product(const py::array& q, const py::array& keys, int64_t row0, int64_t col0, bool exclude_self,
                        bool mirror, const std::string& isa) {
    const pf::Bf16Isa which = bf16_isa_named(isa);
    const auto a = as_matrix<int16_t>(q, "q");
    const auto b = as_matrix<int16_t>(keys, "keys");
    PF_CHECK(a.cols == b.cols, "add_bf16_product: q and keys must have the same width, got " << a.cols << " and "
                                                                                           << b.cols);
    std::visit(
        [&](auto& m) {
          py::gil_scoped_release release;
          pf::bf16_merge_product(m, reinterpret_cast<const uint16_t*>(a.data), a.ld, a.rows,
                                 reinterpret_cast<const uint16_t*>(b.data), b.ld, b.rows, a.cols, row0, col0,
                                 exclude_self, mirror, which);
        },
        m_);
  }

  py::tuple finalize() {
    return std::visit(
        [](auto& m) -> py::tuple {
          using T = typename std::decay_t<decltype(m)>::value_type;
          py::array_t<T> values({m.n_rows(), m.k()});
          py::array_t<int64_t> indices({m.n_rows(), m.k()});
          T* v = values.mutable_data();
          int64_t* ix = indices.mutable_data();
          {
            py::gil_scoped_release release;
            m.finalize(v, ix);
          }
          return py::make_tuple(values, indices);
        },
        m_);
  }

 private:
  using Any = std::variant<pf::KnnMerger<float>, pf::KnnMerger<double>>;
  Any m_;
};

template <typename T>
py::dict cknna_sums_typed(const IndexArray& idx_k, const py::array& val_k, const IndexArray& idx_l,
                          const py::array& val_l, bool zero_diagonal) {
  const auto [n, k] = list_shape(idx_k, idx_l);
  const auto vk = as_matrix<T>(val_k, "val_k");
  const auto vl = as_matrix<T>(val_l, "val_l");
  PF_CHECK(vk.rows == n && vk.cols == k && vk.ld == k && vl.rows == n && vl.cols == k && vl.ld == k,
           "kernel values must be C-contiguous and shaped like their neighbour lists");
  pf::CknnaSums s;
  {
    py::gil_scoped_release release;
    s = pf::cknna_sums<T>(idx_k.data(), vk.data, idx_l.data(), vl.data, n, k, zero_diagonal);
  }
  py::dict d;
  const auto v = s.values();
  for (int i = 0; i < pf::CknnaSums::kCount; ++i) d[pf::CknnaSums::kNames[i]] = v[i];
  return d;
}

py::dict cknna_sums(const IndexArray& idx_k, const py::array& val_k, const IndexArray& idx_l,
                    const py::array& val_l, bool zero_diagonal) {
  return pf::with_dtype(dtype_of(val_k, "val_k"), [&](auto t) {
    return cknna_sums_typed<decltype(t)>(idx_k, val_k, idx_l, val_l, zero_diagonal);
  });
}

// The list sets of a null: every array int64 N x k (one N, one k), indices checked.
std::vector<const int64_t*> list_set(const py::list& arrays, const char* name, int64_t& n, int64_t& k) {
  std::vector<const int64_t*> out;
  for (const auto& item : arrays) {
    const auto arr = item.cast<IndexArray>();
    PF_CHECK(arr.ndim() == 2 && arr.shape(1) >= 1, name << ": every list set must be N x k with k >= 1");
    if (n < 0) {
      n = arr.shape(0);
      k = arr.shape(1);
    }
    PF_CHECK(arr.shape(0) == n && arr.shape(1) == k,
             name << ": every list set must be " << n << " x " << k << ", got " << arr.shape(0) << " x "
                  << arr.shape(1));
    pf::check_indices(arr.data(), n * k, n, name);
    out.push_back(arr.data());
  }
  return out;
}

IndexArray checked_perms(const IndexArray& perms, int64_t n) {
  PF_CHECK(perms.ndim() == 2 && perms.shape(1) == n,
           "perms must be count x N = " << n << " (one permutation per row)");
  pf::check_permutations(perms.data(), perms.shape(0), n);
  return perms;
}

// Keeps the casted arrays alive while the raw pointers are used.
py::array_t<int64_t> permute_lists_scores(const std::string& name, const py::list& a, const py::list& b,
                                          const IndexArray& perms) {
  const pf::ListMetric metric = pf::list_metric(name);
  PF_CHECK(a.size() >= 1 && b.size() >= 1, "a and b must each hold at least one list set");
  int64_t n = -1, k = 0;
  std::vector<IndexArray> keep;
  for (const auto& item : a) keep.push_back(item.cast<IndexArray>());
  for (const auto& item : b) keep.push_back(item.cast<IndexArray>());
  py::list ka, kb;
  for (size_t i = 0; i < keep.size(); ++i) (i < a.size() ? ka : kb).append(keep[i]);
  const auto pa = list_set(ka, "a", n, k);
  const auto pb = list_set(kb, "b", n, k);
  checked_perms(perms, n);
  const int64_t count = perms.shape(0);
  py::array_t<int64_t> out({count, static_cast<int64_t>(pa.size()), static_cast<int64_t>(pb.size())});
  int64_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    pf::permute_lists_scores(metric, pa, pb, n, k, perms.data(), count, dst);
  }
  return out;
}

template <typename T>
py::array_t<double> permute_lists_cknna_typed(const std::vector<IndexArray>& ai, const std::vector<py::array>& av,
                                              const std::vector<IndexArray>& bi, const std::vector<py::array>& bv,
                                              const IndexArray& perms, bool zero_diagonal) {
  int64_t n = -1, k = 0;
  py::list la, lb;
  for (const auto& x : ai) la.append(x);
  for (const auto& x : bi) lb.append(x);
  const auto pa = list_set(la, "a_idx", n, k);
  const auto pb = list_set(lb, "b_idx", n, k);
  auto values = [&](const std::vector<py::array>& vs, const char* name) {
    std::vector<const T*> out;
    for (const auto& v : vs) {
      const auto m = as_matrix<T>(v, name);
      PF_CHECK(m.rows == n && m.cols == k && m.ld == k, name << ": values must be C-contiguous N x k like the lists");
      out.push_back(m.data);
    }
    return out;
  };
  const auto va = values(av, "a_val");
  const auto vb = values(bv, "b_val");
  checked_perms(perms, n);
  const int64_t count = perms.shape(0);
  py::array_t<double> out(
      {count, static_cast<int64_t>(pa.size()), static_cast<int64_t>(pb.size()), int64_t{pf::CknnaSums::kCount}});
  double* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    pf::permute_lists_cknna<T>(pa, va, pb, vb, n, k, zero_diagonal, perms.data(), count, dst);
  }
  return out;
}

py::array_t<double> permute_lists_cknna(const std::vector<IndexArray>& a_idx, const std::vector<py::array>& a_val,
                                        const std::vector<IndexArray>& b_idx, const std::vector<py::array>& b_val,
                                        const IndexArray& perms, bool zero_diagonal) {
  PF_CHECK(!a_idx.empty() && !b_idx.empty() && a_idx.size() == a_val.size() && b_idx.size() == b_val.size(),
           "a and b must each hold at least one set, with one value array per list array");
  return pf::with_dtype(dtype_of(a_val[0], "a_val"), [&](auto t) {
    return permute_lists_cknna_typed<decltype(t)>(a_idx, a_val, b_idx, b_val, perms, zero_diagonal);
  });
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

#ifdef PLATONIC_FAST_WITH_CUDA
// A failed launch (bad sizes, no driver, no kernel image) becomes a RuntimeError naming the entry.
void cuda_check(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) throw std::runtime_error(what + ": " + cudaGetErrorString(err));
}

template <typename T>
T* device_ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

py::tuple cuda_status() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return py::make_tuple(std::string(cudaGetErrorString(err)), 0);
  }
  return py::make_tuple(std::string("ok"), count);
}
#endif

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "platonic_fast compiled core: one entry per op (knn, neighbour_lists, cknna_sums, "
            "outliers; CPU with OpenMP when built with it) and CUDA kernels when built with nvcc.";
  m.def("build_info", &build_info, "What this build contains: compiler, flags, OpenMP, CUDA.");

  // knn
  py::class_<KnnMerger>(m, "KnnMerger",
                        "Exact running top-k per row, fed with score tiles (larger first, ties to "
                        "the smaller index); dtype 'float32' or 'float64', the tiles' dtype.")
      .def(py::init<int64_t, int64_t, const std::string&>(), py::arg("n_rows"), py::arg("k"),
           py::arg("dtype") = "float32")
      .def_property_readonly("n_rows", &KnnMerger::n_rows)
      .def_property_readonly("k", &KnnMerger::k)
      .def_property_readonly("dtype", &KnnMerger::dtype)
      .def(
          "add_rows",
          [](KnnMerger& self, const py::array& tile, int64_t row0, int64_t col0, bool exclude_self) {
            self.add(tile, row0, col0, exclude_self, false);
          },
          py::arg("tile"), py::arg("row0"), py::arg("col0"), py::arg("exclude_self"),
          "tile[r, c] = score(row0 + r, col0 + c), merged into rows row0 ..")
      .def(
          "add_cols",
          [](KnnMerger& self, const py::array& tile, int64_t row0, int64_t col0, bool exclude_self) {
            self.add(tile, row0, col0, exclude_self, true);
          },
          py::arg("tile"), py::arg("row0"), py::arg("col0"), py::arg("exclude_self"),
          "The transposed use of a tile: merged into rows col0 .., candidates row0 + r.")
      .def("add_bf16_product", &KnnMerger::add_bf16_product, py::arg("q"), py::arg("keys"), py::arg("row0"),
           py::arg("col0"), py::arg("exclude_self"), py::arg("mirror"), py::arg("isa") = "auto",
           "Scores <q_r, keys_c> of bfloat16 rows (int16 bit patterns) by the AMX or AVX-512-BF16 kernel, "
           "float32 sums, merged as they are computed: rows row0 + r get candidates col0 + c (mirror: and the "
           "reverse).")
      .def("finalize", &KnnMerger::finalize, "(values, indices): the sorted best k per row.");

  // knn_screen (issue 20): the CPU features the certified bf16 screen is chosen from
  m.def("knn_screen_cpu_features", [] {
    const pf::CpuFeatures& f = pf::cpu_features();
    py::dict d;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512_bf16"] = f.avx512_bf16;
    d["amx_tile"] = f.amx_tile;
    d["amx_bf16"] = f.amx_bf16;
    d["amx_permitted"] = f.amx_permitted;
    d["amx_note"] = f.amx_note;
    return d;
  }, "CPU features detected at run time (cpuid, xgetbv; AMX: the Linux permission request).");
  m.def("knn_dot64", [](const py::array& q, const py::array& keys, const IndexArray& qi, const IndexArray& ki) {
    PF_CHECK(q.dtype().is(keys.dtype()), "knn_dot64: q and keys must have the same dtype");
    PF_CHECK(qi.ndim() == 1 && ki.ndim() == 1 && qi.shape(0) == ki.shape(0),
             "knn_dot64: qi and ki must be 1-D of the same length");
    const int64_t n = qi.shape(0);
    py::array_t<double> out(n);
    double* dst = out.mutable_data();
    auto run = [&](auto tag) {
      using T = decltype(tag);
      const auto a = as_matrix<T>(q, "q");
      const auto b = as_matrix<T>(keys, "keys");
      PF_CHECK(a.cols == b.cols, "knn_dot64: q and keys must have the same width");
      const int64_t* pi = qi.data();
      const int64_t* pk = ki.data();
      for (int64_t p = 0; p < n; ++p)
        PF_CHECK(pi[p] >= 0 && pi[p] < a.rows && pk[p] >= 0 && pk[p] < b.rows, "knn_dot64: index out of range");
      py::gil_scoped_release release;
      pf::dot64_pairs<T>(a.data, a.ld, b.data, b.ld, a.cols, pi, pk, n, dst);
    };
    if (q.dtype().is(py::dtype::of<double>())) run(double{});
    else run(float{});
    return out;
  }, py::arg("q"), py::arg("keys"), py::arg("qi"), py::arg("ki"),
     "float64 <q[qi[p]], keys[ki[p]]> per pair, in a fixed summation order (float32 or float64 rows).");
  m.def("bf16_gemm_nt", [](const py::array& a, const py::array& b, const std::string& isa) {
    const pf::Bf16Isa which = bf16_isa_named(isa);
    const auto x = as_matrix<int16_t>(a, "a");
    const auto y = as_matrix<int16_t>(b, "b");
    PF_CHECK(x.cols == y.cols, "bf16_gemm_nt: a and b must have the same width, got " << x.cols << " and " << y.cols);
    py::array_t<float> out({x.rows, y.rows});
    float* dst = out.mutable_data();
    {
      py::gil_scoped_release release;
      pf::bf16_gemm_nt(reinterpret_cast<const uint16_t*>(x.data), x.ld, x.rows,
                       reinterpret_cast<const uint16_t*>(y.data), y.ld, y.rows, x.cols, dst, y.rows, which);
    }
    return out;
  }, py::arg("a"), py::arg("b"), py::arg("isa") = "auto",
     "a · bᵀ in float32 for bfloat16 rows (int16 bit patterns) by the AMX or AVX-512-BF16 kernel: exact products, "
     "float32 sums, no output rounding.");
  // end knn_screen

  // neighbour_lists
  m.def("neighbour_lists", &neighbour_lists, py::arg("name"), py::arg("a"), py::arg("b"),
        "Per row of two int64 N x k neighbour lists: name = 'mutual_overlap' (|A(i) ∩ B(i)|), "
        "'cycle_hits' (1 if i ∈ A(j) for some j ∈ B(i)), 'lcs_lengths' (longest common "
        "subsequence of A(i), B(i)) or 'edit_distances' (unit-cost Levenshtein distance).");

  // cknna_sums
  m.def("cknna_sums", &cknna_sums, py::arg("idx_k"), py::arg("val_k"), py::arg("idx_l"),
        py::arg("val_l"), py::arg("zero_diagonal"),
        "CKNNA's sparse sums over kernel values (float32 or float64, one dtype): dict of trace_kl, "
        "sum_k, sum_l, k_then_l, l_then_k, mask_count.");

  // outliers
  m.def("outliers_abs_order_stats",
        [](const py::array& x, int64_t lo, int64_t hi) {
          const auto t = as_matrix<float>(x, "x");
          PF_CHECK(hi <= lo + 1, "hi must be lo or lo + 1");
          py::array_t<float> out_lo(t.rows), out_hi(t.rows);
          float* a = out_lo.mutable_data();
          float* b = out_hi.mutable_data();
          {
            py::gil_scoped_release release;
            pf::outliers_abs_order_stats(t.data, t.rows, t.cols, t.ld, lo, hi, a, b);
          }
          return py::make_tuple(out_lo, out_hi);
        },
        py::arg("x"), py::arg("lo"), py::arg("hi"),
        "Per row of a float32 matrix: entries lo and hi (= lo or lo + 1) of the ascending sort "
        "of |x|.");

  // permute_lists
  m.def("permute_lists",
        [](const IndexArray& lists, const IndexArray& perm, const IndexArray& inverse) {
          PF_CHECK(lists.ndim() == 2 && lists.shape(1) >= 1, "lists must be N x k with k >= 1");
          const int64_t n = lists.shape(0), k = lists.shape(1);
          PF_CHECK(perm.ndim() == 1 && perm.shape(0) == n && inverse.ndim() == 1 && inverse.shape(0) == n,
                   "perm and inverse must both hold N = " << n << " entries");
          pf::check_indices(lists.data(), n * k, n, "lists");
          pf::check_indices(perm.data(), n, n, "perm");
          pf::check_indices(inverse.data(), n, n, "inverse");
          py::array_t<int64_t> out({n, k});
          int64_t* dst = out.mutable_data();
          {
            py::gil_scoped_release release;
            pf::permute_lists(lists.data(), n, k, perm.data(), inverse.data(), dst);
          }
          return out;
        },
        py::arg("lists"), py::arg("perm"), py::arg("inverse"),
        "Lists of a row-permuted set: out[i] = inverse[lists[perm[i]]] (int64 N x k; perm a "
        "permutation of 0..N-1 and inverse its inverse).");

  m.def("permute_lists_scores", &permute_lists_scores, py::arg("name"), py::arg("a"), py::arg("b"),
        py::arg("perms"),
        "A layer-search null for a neighbour-list metric: out[t, i, j] = Σ over rows of name(a[i], "
        "b[j] relabelled by permutation t) (int64 count x len(a) x len(b)); a, b lists of int64 "
        "N x k arrays, perms int64 count x N, each row a permutation.");
  m.def("permute_lists_cknna", &permute_lists_cknna, py::arg("a_idx"), py::arg("a_val"), py::arg("b_idx"),
        py::arg("b_val"), py::arg("perms"), py::arg("zero_diagonal"),
        "CKNNA's sparse sums under every permutation: float64 count x len(a) x len(b) x 6 (trace_kl, "
        "sum_k, sum_l, k_then_l, l_then_k, mask_count); values float32 or float64, all one dtype.");

#ifdef PLATONIC_FAST_WITH_CUDA
  // CUDA: raw device pointers (C-contiguous buffers) and a cudaStream_t as integers.
  m.def("cuda_status", &cuda_status,
        "('ok', device count) or the CUDA runtime's reason it cannot run, and 0.");
  m.def("neighbour_lists_cuda",
        [](const std::string& name, uintptr_t a, uintptr_t b, int64_t n, int64_t k, uintptr_t scratch,
           uintptr_t out, uintptr_t stream) {
          const pf::ListMetric metric = pf::list_metric(name);
          // mutual_overlap keeps no per-row arrays, so only the others are bounded in k.
          const int64_t max_k = metric == pf::ListMetric::mutual_overlap ? INT64_MAX : pf::cuda::kMaxListK;
          PF_CHECK(n >= 0 && k >= 1 && k <= max_k,
                   "neighbour_lists_cuda(" << name << "): need n >= 0 and 1 <= k"
                                           << (max_k == INT64_MAX ? std::string()
                                                                  : " <= " + std::to_string(max_k)));
          PF_CHECK(a && b && out && (metric != pf::ListMetric::cycle_hits || scratch),
                   "neighbour_lists_cuda(" << name << "): null device pointer");
          py::gil_scoped_release release;
          cuda_check(pf::cuda::launch_neighbour_lists(metric, device_ptr<const int64_t>(a),
                                                      device_ptr<const int64_t>(b), n, k,
                                                      device_ptr<int64_t>(scratch),
                                                      device_ptr<int64_t>(out), as_stream(stream)),
                     "neighbour_lists_cuda(" + name + ")");
        },
        py::arg("name"), py::arg("a_ptr"), py::arg("b_ptr"), py::arg("n"), py::arg("k"),
        py::arg("scratch_ptr"), py::arg("out_ptr"), py::arg("stream"),
        "neighbour_lists on device lists (int64 N x k, C-contiguous) into an int64 N output. "
        "scratch (int64 N x k) is used by cycle_hits only; other names may pass out_ptr.");
  m.def("cknna_sums_workspace_cuda", &pf::cuda::cknna_sums_workspace, py::arg("n"), py::arg("k"),
        "Bytes of device workspace cknna_sums_cuda needs.");
  m.def("cknna_sums_cuda",
        [](uintptr_t idx_k, uintptr_t val_k, uintptr_t idx_l, uintptr_t val_l, int64_t n, int64_t k,
           bool zero_diagonal, bool is_double, uintptr_t work, uintptr_t out6, uintptr_t stream) {
          PF_CHECK(n >= 0 && k >= 1 && k <= pf::cuda::kMaxListK,
                   "cknna_sums_cuda: need n >= 0 and 1 <= k <= " << pf::cuda::kMaxListK);
          PF_CHECK(idx_k && val_k && idx_l && val_l && work && out6, "cknna_sums_cuda: null device pointer");
          py::gil_scoped_release release;
          const auto* ik = device_ptr<const int64_t>(idx_k);
          const auto* il = device_ptr<const int64_t>(idx_l);
          void* w = device_ptr<void>(work);
          double* o = device_ptr<double>(out6);
          const auto dt = is_double ? pf::Dtype::float64 : pf::Dtype::float32;
          cuda_check(pf::with_dtype(dt, [&](auto t) {
                       using T = decltype(t);
                       return pf::cuda::launch_cknna_sums<T>(ik, device_ptr<const T>(val_k), il,
                                                             device_ptr<const T>(val_l), n, k,
                                                             zero_diagonal, w, o, as_stream(stream));
                     }),
                     "cknna_sums_cuda");
        },
        py::arg("idx_k"), py::arg("val_k"), py::arg("idx_l"), py::arg("val_l"), py::arg("n"),
        py::arg("k"), py::arg("zero_diagonal"), py::arg("is_double"), py::arg("work_ptr"),
        py::arg("out6_ptr"), py::arg("stream"),
        "CKNNA sums on device: out6 = trace_kl, sum_k, sum_l, k_then_l, l_then_k, mask_count.");
  m.def("topk_merge_cuda",
        [](uintptr_t values, uintptr_t indices, int64_t n, int64_t m, int64_t k, uintptr_t out_values,
           uintptr_t out_indices, bool is_double, uintptr_t stream) {
          PF_CHECK(n >= 0 && m >= 1 && k >= 1 && k <= pf::cuda::kMaxListK,
                   "topk_merge_cuda: need n >= 0, m >= 1 and 1 <= k <= " << pf::cuda::kMaxListK);
          PF_CHECK(values && indices && out_values && out_indices, "topk_merge_cuda: null device pointer");
          py::gil_scoped_release release;
          const auto* ix = device_ptr<const int64_t>(indices);
          auto* oi = device_ptr<int64_t>(out_indices);
          const auto dt = is_double ? pf::Dtype::float64 : pf::Dtype::float32;
          cuda_check(pf::with_dtype(dt, [&](auto t) {
                       using T = decltype(t);
                       return pf::cuda::launch_topk_merge<T>(device_ptr<const T>(values), ix, n, m, k,
                                                             device_ptr<T>(out_values), oi, as_stream(stream));
                     }),
                     "topk_merge_cuda");
        },
        py::arg("values_ptr"), py::arg("indices_ptr"), py::arg("n"), py::arg("m"), py::arg("k"),
        py::arg("out_values_ptr"), py::arg("out_indices_ptr"), py::arg("is_double"), py::arg("stream"),
        "k-selection merge of m candidates per row into the best k (device pointers).");
  m.def("permute_lists_cuda",
        [](uintptr_t lists, int64_t n, int64_t k, uintptr_t perm, uintptr_t inverse, uintptr_t out,
           uintptr_t stream) {
          PF_CHECK(n >= 0 && k >= 1, "permute_lists_cuda: need n >= 0 and k >= 1");
          PF_CHECK(lists && perm && inverse && out, "permute_lists_cuda: null device pointer");
          py::gil_scoped_release release;
          cuda_check(pf::cuda::launch_permute_lists(device_ptr<const int64_t>(lists), n, k,
                                                    device_ptr<const int64_t>(perm),
                                                    device_ptr<const int64_t>(inverse),
                                                    device_ptr<int64_t>(out), as_stream(stream)),
                     "permute_lists_cuda");
        },
        py::arg("lists_ptr"), py::arg("n"), py::arg("k"), py::arg("perm_ptr"), py::arg("inverse_ptr"),
        py::arg("out_ptr"), py::arg("stream"),
        "permute_lists on device: out[i] = inverse[lists[perm[i]]] (int64, C-contiguous, checked by the caller).");
  m.attr("CUDA_MAX_LIST_K") = pf::cuda::kMaxListK;
#endif
}
