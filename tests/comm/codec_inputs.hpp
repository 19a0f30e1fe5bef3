// Inputs shared by the codec tests: deterministic pseudo-random values, the
// same on every rank and transport, so each rank can build every rank's input
// and compute the naive reference itself.
#pragma once

#include <weft/comm/codec/codec.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace weft::comm::testing {

// Rank r's value i in [-1, 1), with some entries 100x larger (gradients are spiky).
inline float spiky(std::uint64_t seed, int r, std::size_t i) {
  std::uint64_t h = detail::mix64(detail::mix64(seed, static_cast<std::uint64_t>(r)), i);
  float v = 2.0f * detail::uniform01(h) - 1.0f;
  return (h & 63) == 0 ? 100.0f * v : v;
}

inline std::vector<float> spiky_vector(std::uint64_t seed, int r, std::size_t n) {
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = spiky(seed, r, i);
  return x;
}

// Rank r's (rows, cols) matrix U V_r^T with U shared by all ranks, so the sum
// over ranks has rank <= k whatever the number of ranks.
inline std::vector<float> low_rank(std::uint64_t seed, int r, std::size_t rows, std::size_t cols, std::size_t k) {
  std::vector<float> x(rows * cols, 0.0f);
  for (std::size_t c = 0; c < k; ++c)
    for (std::size_t i = 0; i < rows; ++i) {
      const float u = detail::gaussian(seed, i * k + c);
      for (std::size_t j = 0; j < cols; ++j)
        x[i * cols + j] += u * detail::gaussian(detail::mix64(seed + 1, static_cast<std::uint64_t>(r)), j * k + c);
    }
  return x;
}

}  // namespace weft::comm::testing
