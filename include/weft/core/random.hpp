// Stateless, portable random words: the counter-based part of weft's random
// numbers (nn/rng.hpp has the sequential generator and the whole rationale).
//   - mix64: the SplitMix64 finaliser (Steele, Lea & Flood 2014), a bijection
//     on 64-bit words with full avalanche;
//   - hash(seed, counter): the counter-th SplitMix64 output of the stream keyed
//     by mix64(seed); usable in device code, so a dropout mask element i is
//     hash(seed, i) wherever it is drawn.
// Every output is bit-identical on every platform, host or device.
#pragma once

#include <cstdint>

#include "config.hpp"

namespace weft {

inline constexpr std::uint64_t golden_gamma = 0x9E3779B97F4A7C15ull;  // 2^64 / phi, SplitMix64's increment

// SplitMix64 finaliser: a bijective 64-bit mix.
WEFT_HD constexpr std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Stateless: the same (seed, counter) gives the same word on every platform,
// host or device, in any order of evaluation.
WEFT_HD constexpr std::uint64_t hash(std::uint64_t seed, std::uint64_t counter) {
  return mix64(mix64(seed) + golden_gamma * (counter + 1));
}

// Float in [0, 1) from the top 24 bits (every value is a multiple of 2^-24,
// exactly representable, so no rounding can produce 1.0f).
WEFT_HD constexpr float to_unit_float(std::uint64_t bits) {
  return static_cast<float>(bits >> 40) * 0x1.0p-24f;
}
// Double in [0, 1) from the top 53 bits.
WEFT_HD constexpr double to_unit_double(std::uint64_t bits) {
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Stateless uniform in [0, 1): the dropout mask draw, keep = hash_uniform(seed, i) >= p.
WEFT_HD constexpr float hash_uniform(std::uint64_t seed, std::uint64_t counter) {
  return to_unit_float(hash(seed, counter));
}

}  // namespace weft
