// The message of the kiln::Error that an action throws, or "(no error)" when it throws none: for
// tests of what a user reads when input is bad.
#pragma once

#include <functional>
#include <string>

#include "kernels/error.h"

namespace kiln::testing {

inline std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace kiln::testing
