// Errors in kiln are exceptions whose message says what went wrong and how to fix it.
// Library code never calls exit(); only the CLI (launch/) turns an Error into an exit code.
// It sits in kernels/, the bottom of the include graph, because kernels throw it too.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  append(out, rest...);
}
}  // namespace detail

// Builds a message from any streamable parts: kiln::message("n_head=", n, " must divide ", c).
template <class... Parts>
std::string message(const Parts&... parts) {
  std::ostringstream out;
  detail::append(out, parts...);
  return out.str();
}

}  // namespace kiln

// KILN_CHECK(cond, parts...) throws kiln::Error with the parts joined, when cond is false.
// Write the parts so that the message names the value at fault and the fix.
#define KILN_CHECK(cond, ...)                                 \
  do {                                                        \
    if (!(cond)) throw ::kiln::Error(::kiln::message(__VA_ARGS__)); \
  } while (0)

// KILN_ASSERT is for internal invariants (a bug in kiln, not in the user's input).
#define KILN_ASSERT(cond)                                                                   \
  do {                                                                                      \
    if (!(cond))                                                                            \
      throw ::kiln::Error(::kiln::message("internal error: ", #cond, " failed at ", __FILE__, \
                                          ":", __LINE__, " (please report this)"));         \
  } while (0)
