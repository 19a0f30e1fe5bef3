// Int8: each chunk of `chunk` values is sent as one f32 scale s = max|x| / 127
// and one int8 q per value (about 4x fewer bytes at chunk 256). Not linear:
// ranks' scales differ, so payloads are allgathered and decoded per rank.
//
// Layout of a payload (n values, c = ceil(n / chunk) chunks):
//   [c x f32 scales][n x int8]
// Bound of decode(encode(x)) per element, s the element's chunk scale:
//   round to nearest:  |y - x| <= s / 2       (s = max|x over chunk| / 127)
//   stochastic:        |y - x| <  s,  and E[y] = x (unbiased; QSGD-style,
//                      Alistarh et al. 2017), so errors average out over
//                      ranks and steps instead of accumulating as a bias.
// The noise of stochastic rounding is drawn from (seed, rank, sequence
// number, index): reproducible, independent across ranks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "codec.hpp"

namespace weft::comm {

struct Int8 {
  static constexpr const char* name = "int8";
  static constexpr bool linear = false;
  using State = detail::NoState;

  std::size_t chunk = 256;  // values per scale
  bool stochastic = false;  // unbiased stochastic rounding instead of round to nearest
  std::uint64_t seed = 0x1d8;

  void check(std::size_t, const CodecCall& k) const {
    if (chunk == 0) k.fail("chunk is 0; it is the number of values sharing one scale");
  }
  std::size_t chunks(std::size_t n) const { return (n + chunk - 1) / chunk; }
  std::size_t payload_bytes(std::size_t n) const { return chunks(n) * sizeof(float) + n; }

  void encode(State&, const float* x, std::size_t n, std::byte* out, const CodecCall& k) const {
    check(n, k);
    const std::size_t nc = chunks(n);
    auto* q = reinterpret_cast<std::int8_t*>(out + nc * sizeof(float));
    const std::uint64_t stream = detail::mix64(detail::mix64(seed, k.seq), static_cast<std::uint64_t>(k.rank));
    for (std::size_t c = 0; c < nc; ++c) {
      const std::size_t lo = c * chunk, hi = std::min(n, lo + chunk);
      float amax = 0.0f;
      for (std::size_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
      for (std::size_t i = lo; i < hi && std::isfinite(amax); ++i)  // NaN/inf: poison the chunk (below)
        if (std::isnan(x[i])) amax = x[i];
      const float s = std::isfinite(amax) ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
      std::memcpy(out + c * sizeof(float), &s, sizeof(float));
      const float inv = s > 0.0f ? 127.0f / amax : 0.0f;
      for (std::size_t i = lo; i < hi; ++i) {
        float v = x[i] * inv;  // in [-127, 127] up to rounding
        v = stochastic ? std::floor(v + detail::uniform01(detail::mix64(stream, i))) : std::nearbyint(v);
        q[i] = static_cast<std::int8_t>(std::clamp(std::isfinite(v) ? v : 0.0f, -127.0f, 127.0f));
      }
    }
  }

  void decode_add(const std::byte* in, float* y, std::size_t n, const CodecCall&) const {
    const std::size_t nc = chunks(n);
    auto* q = reinterpret_cast<const std::int8_t*>(in + nc * sizeof(float));
    for (std::size_t c = 0; c < nc; ++c) {
      float s;
      std::memcpy(&s, in + c * sizeof(float), sizeof(float));
      const std::size_t lo = c * chunk, hi = std::min(n, lo + chunk);
      for (std::size_t i = lo; i < hi; ++i) y[i] += s * static_cast<float>(q[i]);
    }
  }
};

static_assert(GatherCodec<Int8>);

}  // namespace weft::comm
