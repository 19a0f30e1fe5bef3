// The Sobol low-discrepancy sequence in up to 19 dimensions, with the
// direction numbers of Joe & Kuo, "Constructing Sobol sequences with better
// two-dimensional projections", SIAM J. Sci. Comput. 30 (2008), table
// new-joe-kuo-6.21201 (its first 18 rows; dimension 1 is van der Corput).
//
// Dimension j >= 2 has a primitive polynomial of degree s with inner
// coefficients a (bits a_1..a_{s-1}) and initial numbers m_1..m_s (m_k odd,
// m_k < 2^k). Direction numbers v_k = m_k / 2^k continue by
//   m_k = 2 a_1 m_{k-1} ^ 2^2 a_2 m_{k-2} ^ ... ^ 2^{s-1} a_{s-1} m_{k-s+1} ^ 2^s m_{k-s} ^ m_{k-s}.
// Point i is the XOR of v_k over the set bits of gray(i) = i ^ (i >> 1)
// (Antonov & Saleev's ordering, as in Joe & Kuo's own code and SciPy), so
// point(i) needs no state and is the same on every platform: integer ops and
// one exact scaling by 2^-32. Point 0 is the origin.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"

namespace weft::tune {

class Sobol {
 public:
  static constexpr int bits = 32;
  static constexpr int max_dimensions = 19;

  explicit Sobol(int dimensions) : d_(dimensions) {
    if (dimensions < 1 || dimensions > max_dimensions)
      throw_error<ValueError>("tune::Sobol: ", dimensions, " dimensions requested; this table holds 1 to ",
                              max_dimensions);
    v_.assign(static_cast<std::size_t>(d_), {});
    for (int k = 0; k < bits; ++k) v_[0][static_cast<std::size_t>(k)] = std::uint32_t(1) << (bits - 1 - k);
    for (int j = 1; j < d_; ++j) {
      const Row& r = table[static_cast<std::size_t>(j - 1)];
      std::array<std::uint32_t, bits> m{};
      for (int k = 0; k < r.s; ++k) m[static_cast<std::size_t>(k)] = r.m[static_cast<std::size_t>(k)];
      for (int k = r.s; k < bits; ++k) {
        std::uint32_t x = m[static_cast<std::size_t>(k - r.s)] ^ (m[static_cast<std::size_t>(k - r.s)] << r.s);
        for (int i = 1; i < r.s; ++i)
          if ((r.a >> (r.s - 1 - i)) & 1u) x ^= m[static_cast<std::size_t>(k - i)] << i;
        m[static_cast<std::size_t>(k)] = x;
      }
      // v_k = m_k / 2^(k+1) as a 32-bit fraction.
      for (int k = 0; k < bits; ++k) v_[static_cast<std::size_t>(j)][static_cast<std::size_t>(k)] = m[static_cast<std::size_t>(k)] << (bits - 1 - k);
    }
  }

  int dimensions() const { return d_; }

  // The i-th point (i < 2^32), coordinates in [0, 1).
  std::vector<double> point(std::uint64_t i) const {
    if (i >> bits) throw_error<ValueError>("tune::Sobol: point ", i, " is past the 2^32 points of a 32-bit sequence");
    const std::uint64_t g = i ^ (i >> 1);
    std::vector<double> x(static_cast<std::size_t>(d_));
    for (int j = 0; j < d_; ++j) {
      std::uint32_t acc = 0;
      for (int k = 0; k < bits; ++k)
        if ((g >> k) & 1u) acc ^= v_[static_cast<std::size_t>(j)][static_cast<std::size_t>(k)];
      x[static_cast<std::size_t>(j)] = static_cast<double>(acc) * 0x1.0p-32;
    }
    return x;
  }

 private:
  struct Row {
    int s;
    std::uint32_t a;
    std::array<std::uint32_t, 6> m;
  };
  // new-joe-kuo-6.21201, dimensions 2..19: degree s, coefficients a, m_1..m_s.
  static constexpr std::array<Row, 18> table{{
      {1, 0, {1}},
      {2, 1, {1, 3}},
      {3, 1, {1, 3, 1}},
      {3, 2, {1, 1, 1}},
      {4, 1, {1, 1, 3, 3}},
      {4, 4, {1, 3, 5, 13}},
      {5, 2, {1, 1, 5, 5, 17}},
      {5, 4, {1, 1, 5, 5, 5}},
      {5, 7, {1, 1, 7, 11, 19}},
      {5, 11, {1, 1, 5, 1, 1}},
      {5, 13, {1, 1, 1, 3, 11}},
      {5, 14, {1, 3, 5, 5, 31}},
      {6, 1, {1, 3, 3, 9, 7, 49}},
      {6, 13, {1, 1, 1, 15, 21, 21}},
      {6, 16, {1, 3, 1, 13, 27, 49}},
      {6, 19, {1, 1, 1, 15, 7, 5}},
      {6, 22, {1, 3, 1, 15, 13, 25}},
      {6, 25, {1, 1, 5, 5, 19, 61}},
  }};

  int d_;
  std::vector<std::array<std::uint32_t, bits>> v_;
};

}  // namespace weft::tune
