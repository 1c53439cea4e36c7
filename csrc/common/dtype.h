// The one dtype switch of the compiled core. Bindings take the dtype (a name, or the dtype of
// the arrays they are given) and run the template instance for it here, so that Python never
// picks a float32 or float64 entry by name.
#pragma once
#include <string>

#include "check.h"

namespace pf {

enum class Dtype { float32, float64 };

inline Dtype dtype_named(const std::string& name) {
  if (name == "float64") return Dtype::float64;
  PF_CHECK(name == "float32", "dtype must be 'float32' or 'float64', got '" << name << "'");
  return Dtype::float32;
}

inline const char* dtype_name(Dtype dt) { return dt == Dtype::float64 ? "float64" : "float32"; }

// f(T{}) with T the C++ type of dt (float or double); both instances return the same type.
template <typename F>
decltype(auto) with_dtype(Dtype dt, F&& f) {
  if (dt == Dtype::float64) return f(double{});
  return f(float{});
}

}  // namespace pf
