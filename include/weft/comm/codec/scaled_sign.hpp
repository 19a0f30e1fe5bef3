// Scaled sign (1-bit): send one bit per value, sign(m), and one f32 scale per
// chunk, s = ||m||_1 / d (d values in the chunk): about 32x fewer bytes.
// Not linear (scales differ per rank): payloads are allgathered.
//
// This is EF-signSGD's compressor (Karimireddy et al. 2019; 1-bit SGD, Seide
// et al. 2014): with y = s sign(m),
//   ||m - y||^2 = ||m||^2 - ||m||_1^2 / d      (exact, per chunk)
// so it is a delta-compressor with delta = ||m||_1^2 / (d ||m||^2) >= 1/d.
// Sign alone is biased and can diverge; error feedback (on by default) keeps
// e' = m - y for the next step (m = x + e), so sent + e' = x + e exactly.
// sign(0) is sent as +1.
//
// Layout of a payload: [c x f32 scales][ceil(n / 8) bytes of sign bits, LSB first].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "codec.hpp"

namespace weft::comm {

struct ScaledSign {
  static constexpr const char* name = "sign";
  static constexpr bool linear = false;

  std::size_t chunk = 0;  // values per scale; 0 = one scale for the whole buffer (the paper's choice)
  bool error_feedback = true;

  struct State {
    std::vector<float> residual;  // e, n values
    std::vector<float> m;         // x + e this step (scratch)
    template <class F>
    void visit(F&& f) {
      f("residual", residual);
    }
  };

  void check(std::size_t, const CodecCall&) const {}
  std::size_t span(std::size_t n) const { return chunk ? chunk : std::max<std::size_t>(n, 1); }
  std::size_t chunks(std::size_t n) const { return (n + span(n) - 1) / span(n); }
  std::size_t payload_bytes(std::size_t n) const { return chunks(n) * sizeof(float) + (n + 7) / 8; }

  void encode(State& s, const float* x, std::size_t n, std::byte* out, const CodecCall& k) const {
    detail::feedback_input(s.m, s.residual, x, n, error_feedback, k);
    const std::size_t nc = chunks(n), w = span(n);
    auto* bits = reinterpret_cast<std::uint8_t*>(out + nc * sizeof(float));
    std::fill(bits, bits + (n + 7) / 8, std::uint8_t{0});
    for (std::size_t c = 0; c < nc; ++c) {
      const std::size_t lo = c * w, hi = std::min(n, lo + w);
      double l1 = 0;
      for (std::size_t i = lo; i < hi; ++i) l1 += std::fabs(static_cast<double>(s.m[i]));
      const float sc = static_cast<float>(l1 / static_cast<double>(hi - lo));
      std::memcpy(out + c * sizeof(float), &sc, sizeof(float));
      for (std::size_t i = lo; i < hi; ++i) {
        const bool pos = !(s.m[i] < 0.0f);
        if (pos) bits[i / 8] = static_cast<std::uint8_t>(bits[i / 8] | (1u << (i % 8)));
        if (error_feedback) s.residual[i] = s.m[i] - (pos ? sc : -sc);
      }
    }
  }

  void decode_add(const std::byte* in, float* y, std::size_t n, const CodecCall&) const {
    const std::size_t nc = chunks(n), w = span(n);
    auto* bits = reinterpret_cast<const std::uint8_t*>(in + nc * sizeof(float));
    for (std::size_t c = 0; c < nc; ++c) {
      float sc;
      std::memcpy(&sc, in + c * sizeof(float), sizeof(float));
      const std::size_t lo = c * w, hi = std::min(n, lo + w);
      for (std::size_t i = lo; i < hi; ++i) y[i] += (bits[i / 8] >> (i % 8)) & 1u ? sc : -sc;
    }
  }
};

static_assert(GatherCodec<ScaledSign>);

}  // namespace weft::comm
