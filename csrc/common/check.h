// The one check macro of the compiled core. A failed check throws std::invalid_argument,
// which pybind11 turns into a Python ValueError: bad input never aborts the interpreter.
#pragma once
#include <sstream>
#include <stdexcept>

#define PF_CHECK(cond, ...)                                              \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::ostringstream pf_check_msg_;                                  \
      pf_check_msg_ << __VA_ARGS__;                                      \
      throw std::invalid_argument(pf_check_msg_.str());                  \
    }                                                                    \
  } while (0)
