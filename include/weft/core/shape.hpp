// Runtime shapes (rank 0..max_rank) and NumPy-style broadcasting.
// Shapes stay runtime values so one template instantiation serves every batch size.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <sstream>
#include <string>

#include "config.hpp"
#include "error.hpp"

namespace weft {

using index_t = std::int64_t;

struct Shape {
  int rank = 0;
  index_t dims[max_rank] = {};

  Shape() = default;
  Shape(std::initializer_list<index_t> d) {
    if (d.size() > static_cast<std::size_t>(max_rank))
      throw_error<ShapeError>("shape: rank ", d.size(), " exceeds weft's maximum rank ", max_rank);
    for (index_t v : d) {
      if (v < 0) throw_error<ShapeError>("shape: negative dimension ", v);
      dims[rank++] = v;
    }
  }

  WEFT_HD index_t operator[](int i) const { return dims[i]; }
  WEFT_HD index_t& operator[](int i) { return dims[i]; }

  WEFT_HD index_t numel() const {
    index_t n = 1;
    for (int i = 0; i < max_rank; ++i)  // a fixed trip count: no out-of-range reads for the compiler to suspect
      if (i < rank) n *= dims[i];
    return n;
  }

  // Dimension counted from the end (-1 is the last), as NumPy does.
  index_t back(int from_end = 1) const { return dims[rank - from_end]; }

  friend WEFT_HD bool operator==(const Shape& a, const Shape& b) {
    if (a.rank != b.rank) return false;
    for (int i = 0; i < a.rank; ++i)
      if (a.dims[i] != b.dims[i]) return false;
    return true;
  }
  friend WEFT_HD bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }

  std::string str() const {
    std::ostringstream os;
    os << '(';
    for (int i = 0; i < rank; ++i) os << (i ? ", " : "") << dims[i];
    if (rank == 1) os << ',';
    os << ')';
    return os.str();
  }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }
};

// Row-major strides of a contiguous tensor of this shape, in elements.
struct Strides {
  index_t s[max_rank] = {};
  WEFT_HD index_t operator[](int i) const { return s[i]; }
  WEFT_HD index_t& operator[](int i) { return s[i]; }
};

inline Strides contiguous_strides(const Shape& shape) {
  Strides st;
  index_t acc = 1;
  for (int i = shape.rank - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

// The broadcast of two shapes, or nullopt-like failure reported by the caller.
inline bool broadcast_shapes(const Shape& a, const Shape& b, Shape& out) {
  int r = a.rank > b.rank ? a.rank : b.rank;
  Shape res;
  res.rank = r;
  for (int i = 0; i < r; ++i) {
    int ia = a.rank - r + i, ib = b.rank - r + i;
    index_t da = ia >= 0 ? a[ia] : 1;
    index_t db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1) return false;
    res[i] = (da == 1) ? db : da;
  }
  out = res;
  return true;
}

inline Shape broadcast_or_throw(const char* op, const Shape& a, const Shape& b) {
  Shape out;
  if (!broadcast_shapes(a, b, out))
    throw_error<ShapeError>(op, ": shapes ", a, " and ", b, " do not broadcast (trailing dimensions must be equal or 1)");
  return out;
}

// True when `from` broadcasts to exactly `to` (assignment into a destination).
inline bool broadcasts_to(const Shape& from, const Shape& to) {
  Shape out;
  return from.rank <= to.rank && broadcast_shapes(from, to, out) && out == to;
}

// Strides for reading a tensor of shape `from` (with strides `st`) as if it had
// shape `to`, right-aligned to max_rank: broadcast dimensions get stride 0.
// The result indexes a max_rank-dimensional index whose leading dims are padding.
inline Strides aligned_strides(const Shape& from, const Strides& st, const Shape& to) {
  Strides out;
  for (int i = 0; i < max_rank; ++i) out[i] = 0;
  // Checked (once per bound operand, not per element), which also tells GCC's
  // -Warray-bounds that j stays inside the array.
  if (from.rank < 0 || from.rank > to.rank || to.rank > max_rank)
    throw_error<ShapeError>("aligned_strides: shape ", from, " cannot be read as shape ", to);
  const int lead = to.rank - from.rank;
  for (int i = 0; i < from.rank; ++i) {
    const int j = max_rank - from.rank + i;
    out[j] = (from[i] == 1 && to[lead + i] != 1) ? 0 : st[i];
  }
  return out;
}

// `shape` padded on the left with ones to max_rank.
inline Shape padded(const Shape& shape) {
  Shape p;
  p.rank = max_rank;
  int off = max_rank - shape.rank;
  for (int i = 0; i < max_rank; ++i) p[i] = i < off ? 1 : shape[i - off];
  return p;
}

inline int normalize_axis(const char* op, int axis, int rank) {
  int a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw_error<ValueError>(op, ": axis ", axis, " is out of range for a tensor of rank ", rank);
  return a;
}

}  // namespace weft
