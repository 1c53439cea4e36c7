// The four metrics of the neighbour_lists op, named once: the CPU core and the CUDA kernels
// both dispatch on ListMetric, and the bindings turn Python's name into it.
#pragma once
#include <string>

#include "check.h"

namespace pf {

enum class ListMetric { mutual_overlap, cycle_hits, lcs_lengths, edit_distances };

inline const char* list_metric_name(ListMetric m) {
  switch (m) {
    case ListMetric::mutual_overlap: return "mutual_overlap";
    case ListMetric::cycle_hits: return "cycle_hits";
    case ListMetric::lcs_lengths: return "lcs_lengths";
    case ListMetric::edit_distances: return "edit_distances";
  }
  return "?";
}

// Throws std::invalid_argument (ValueError in Python) for any other name.
inline ListMetric list_metric(const std::string& name) {
  for (ListMetric m : {ListMetric::mutual_overlap, ListMetric::cycle_hits, ListMetric::lcs_lengths,
                       ListMetric::edit_distances})
    if (name == list_metric_name(m)) return m;
  PF_CHECK(false, "unknown neighbour-list metric '" << name << "'; expected one of mutual_overlap, "
                                                       "cycle_hits, lcs_lengths, edit_distances");
  return ListMetric::mutual_overlap;  // unreachable
}

}  // namespace pf
