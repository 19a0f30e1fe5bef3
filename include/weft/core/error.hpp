// Error types. Every error weft throws names what was wrong and where
// (operation, shapes, rank, path), so a user can act on the message alone.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace weft {

// Base of every weft exception.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Shapes that do not fit an operation (names the op and both shapes).
struct ShapeError : Error {
  using Error::Error;
};

// Invalid argument or state that is not a shape problem (bad axis, bad option).
struct ValueError : Error {
  using Error::Error;
};

// Files: missing, truncated, wrong format (names the path).
struct IoError : Error {
  using Error::Error;
};

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace detail

// throw_error<ShapeError>("add: ", a, " and ", b, " do not broadcast")
template <class E = Error, class... Args>
[[noreturn]] void throw_error(Args&&... args) {
  throw E(detail::concat(std::forward<Args>(args)...));
}

}  // namespace weft
