// Portable deterministic random numbers for initialisers and dropout.
//
// std::uniform_real_distribution and std::normal_distribution produce
// implementation-defined sequences (libstdc++, libc++ and MSVC differ), so a
// seeded model would not be reproducible across platforms. weft defines every
// step itself:
//   - mix64: the SplitMix64 finaliser (Steele, Lea & Flood 2014), a bijection
//     on 64-bit words with full avalanche;
//   - hash(seed, counter): a stateless counter-based generator (the counter-th
//     SplitMix64 output of the stream keyed by mix64(seed)); usable in device
//     code, so a dropout mask element i is hash(seed, i) wherever it is drawn;
//   - Rng: xoshiro256** (Blackman & Vigna 2018) seeded by SplitMix64, for
//     sequential host-side draws (initialisers, shuffling).
// Integer outputs and uniform() are bit-identical everywhere (integer ops and
// one exact power-of-two scaling). normal() calls std::log/std::cos/std::sin in
// double and rounds to float; libms agree on those to within an ulp of double,
// which leaves the float result identical except with probability ~1e-8 per draw.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <string_view>

#include "../core/config.hpp"
#include "../core/random.hpp"
#include "../core/error.hpp"

namespace weft::nn {

// The stateless part lives in core/random.hpp (dropout masks in expr/ draw from it).
using weft::golden_gamma;
using weft::hash;
using weft::hash_uniform;
using weft::mix64;
using weft::to_unit_double;
using weft::to_unit_float;

// Sequential generator: xoshiro256** over a 256-bit state filled by SplitMix64
// from the seed (which can never leave the state all zero: SplitMix64 outputs
// four consecutive values of a bijection of distinct inputs).
class Rng {
 public:
  explicit constexpr Rng(std::uint64_t seed = 0) {
    std::uint64_t x = seed;
    for (std::uint64_t& w : s_) {
      x += golden_gamma;
      w = mix64(x);
    }
  }

  // The 256-bit state, to save and restore a generator (checkpoints). Restoring
  // drops a pending Box-Muller value, so save between whole normal pairs.
  constexpr std::array<std::uint64_t, 4> state() const { return {s_[0], s_[1], s_[2], s_[3]}; }
  static constexpr Rng from_state(const std::array<std::uint64_t, 4>& s) {
    if (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0)
      throw_error<ValueError>("Rng::from_state: the all-zero state is a fixed point of xoshiro256**");
    Rng r;
    for (int i = 0; i < 4; ++i) r.s_[i] = s[static_cast<std::size_t>(i)];
    return r;
  }

  // Checkpoints (nn/state.hpp): the four state words "state0".."state3"
  // (std::uint64_t) and the pending Box-Muller value ("spare", double;
  // "has_spare", bool), so a restored generator continues the exact stream.
  // Restoring the all-zero state throws, as from_state does.
  template <class V>
  void visit_state(V& v) {
    std::uint64_t s[4] = {s_[0], s_[1], s_[2], s_[3]};
    v(std::string_view("state0"), s[0]);
    v(std::string_view("state1"), s[1]);
    v(std::string_view("state2"), s[2]);
    v(std::string_view("state3"), s[3]);
    double spare = spare_;
    bool has_spare = has_spare_;
    v(std::string_view("spare"), spare);
    v(std::string_view("has_spare"), has_spare);
    if (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0)
      throw_error<ValueError>("Rng::visit_state: restoring the all-zero state, a fixed point of xoshiro256**");
    for (int i = 0; i < 4; ++i) s_[i] = s[i];
    spare_ = spare;
    has_spare_ = has_spare;
  }

  constexpr std::uint64_t next_u64() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // Integer in [0, n) for n >= 1, unbiased: reject the lowest 2^64 mod n words
  // so that the rest cover every residue equally often.
  std::uint64_t below(std::uint64_t n) {
    if (n == 0) throw_error<ValueError>("Rng::below(n): n must be at least 1");
    const std::uint64_t threshold = (0 - n) % n;
    for (;;) {
      const std::uint64_t x = next_u64();
      if (x >= threshold) return x % n;
    }
  }

  constexpr float uniform() { return to_unit_float(next_u64()); }
  constexpr double uniform_double() { return to_unit_double(next_u64()); }
  // In [lo, hi) up to rounding of lo + (hi - lo) * u.
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform_double(); }

  // Standard normal by Box-Muller in double; the second value of each pair is
  // kept for the next call (part of the generator's state, so copies of an Rng
  // produce identical streams).
  double normal_double() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - uniform_double();  // (0, 1]: log stays finite
    const double u2 = uniform_double();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double theta = 2.0 * std::numbers::pi * u2;
    spare_ = r * std::sin(theta);
    has_spare_ = true;
    return r * std::cos(theta);
  }
  float normal() { return static_cast<float>(normal_double()); }
  double normal(double mean, double stddev) { return mean + stddev * normal_double(); }

 private:
  static constexpr std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

  std::uint64_t s_[4] = {};
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace weft::nn
