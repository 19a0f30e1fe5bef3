// Top-k: send the k values of largest magnitude with their indices (8 bytes
// each: n / 2k fewer bytes than f32). Not linear: each rank picks its own
// indices, so payloads are allgathered and every rank adds all p of them.
//
// Layout of a payload: [k x u32 index, increasing][k x f32 value].
// Contraction (Stich et al. 2018): keeping the k largest of n values,
//   ||x - y||^2 <= (1 - k/n) ||x||^2,   and every dropped |x_i| <= every kept one.
// Top-k is biased; error feedback (on by default) keeps what was not sent
// and adds it to the next step (m = x + e; send top-k(m); e' = m - sent), so
// sent + e' = x + e exactly and sum over steps of sent = sum of x - e_T.
// DGC (Lin et al. 2018) reaches 270-600x this way.
//
// Ties in magnitude go to the lower index (deterministic); NaN counts as the
// largest magnitude so it is sent, not hidden in the residual.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "codec.hpp"

namespace weft::comm {

struct TopK {
  static constexpr const char* name = "top-k";
  static constexpr bool linear = false;

  double fraction = 0.01;  // k = round(fraction * n), at least 1
  std::size_t count = 0;   // or exactly k (overrides fraction)
  bool error_feedback = true;

  struct State {
    std::vector<float> residual;       // e, n values (error feedback)
    std::vector<float> m;              // x + e this step (scratch)
    std::vector<std::uint32_t> mag;    // bits of |m|, NaN as +inf (scratch)
    std::vector<std::uint32_t> hist;   // radix-select histogram (scratch)
    std::vector<std::uint32_t> order;  // the kept indices (scratch)
    template <class F>
    void visit(F&& f) {
      f("residual", residual);
    }
  };

  std::size_t k_of(std::size_t n, const CodecCall& k) const {
    return detail::indexed_keep_count(count, fraction, n, k);
  }
  void check(std::size_t n, const CodecCall& k) const { (void)k_of(n, k); }
  std::size_t payload_bytes(std::size_t n) const {
    return detail::keep_count(count, fraction, n, CodecCall{}) * (sizeof(std::uint32_t) + sizeof(float));
  }

  void encode(State& s, const float* x, std::size_t n, std::byte* out, const CodecCall& k) const {
    const std::size_t kk = k_of(n, k);  // checks n as check() does
    detail::feedback_input(s.m, s.residual, x, n, error_feedback, k);
    // Select by threshold rather than sorting indices: find the k-th largest
    // magnitude t, then one scan in index order keeps every |m_i| > t and the
    // lowest-indexed ties at t. That is the same set as ordering by
    // (magnitude desc, index asc), already in increasing index order. t comes
    // from a radix select over the magnitudes' bit patterns (for floats >= 0
    // unsigned order is float order): three histogram passes of 11, 11 and
    // 10 bits, each narrowing to the bin that holds the k-th largest. The
    // passes have no data-dependent branches; nth_element's compares
    // mispredict half the time on gradients: 3x slower at 256K elements.
    s.mag.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      const float a = std::fabs(s.m[i]);
      s.mag[i] = a != a ? 0x7f800000u : std::bit_cast<std::uint32_t>(a);  // NaN counts as the largest (+inf)
    }
    std::uint32_t prefix = 0, mask = 0;
    std::size_t need = kk;  // rank of the threshold from the top, among values matching prefix
    for (const int shift : {21, 10, 0}) {
      const std::uint32_t bins = shift == 0 ? 1024u : 2048u, low = bins - 1;
      s.hist.assign(bins, 0);
      for (std::size_t i = 0; i < n; ++i)
        s.hist[(s.mag[i] >> shift) & low] += static_cast<std::uint32_t>((s.mag[i] & mask) == prefix);
      for (std::uint32_t b = bins; b-- > 0;) {
        if (s.hist[b] >= need) {
          prefix |= b << shift;
          mask |= low << shift;
          break;
        }
        need -= s.hist[b];
      }
    }
    const std::uint32_t thr = prefix;
    std::size_t above = 0;
    for (std::size_t i = 0; i < n; ++i) above += s.mag[i] > thr;
    std::size_t ties = kk - above;  // ties at thr to keep, lowest indices first
    s.order.resize(kk);
    for (std::size_t i = 0, t_out = 0; i < n && t_out < kk; ++i) {
      if (s.mag[i] < thr || (s.mag[i] == thr && ties == 0)) continue;
      if (s.mag[i] == thr) --ties;
      s.order[t_out++] = static_cast<std::uint32_t>(i);
    }
    auto* values = out + kk * sizeof(std::uint32_t);
    for (std::size_t t_out = 0; t_out < kk; ++t_out) {
      const std::uint32_t i = s.order[t_out];
      std::memcpy(out + t_out * sizeof(std::uint32_t), &i, sizeof(i));
      std::memcpy(values + t_out * sizeof(float), &s.m[i], sizeof(float));
    }
    if (error_feedback) {
      std::copy(s.m.begin(), s.m.end(), s.residual.begin());
      for (std::size_t t = 0; t < kk; ++t) s.residual[s.order[t]] = 0.0f;
    }
  }

  void decode_add(const std::byte* in, float* y, std::size_t n, const CodecCall& k) const {
    const std::size_t kk = detail::keep_count(count, fraction, n, k);
    const std::byte* values = in + kk * sizeof(std::uint32_t);
    for (std::size_t t = 0; t < kk; ++t) {
      std::uint32_t i;
      float v;
      std::memcpy(&i, in + t * sizeof(std::uint32_t), sizeof(i));
      std::memcpy(&v, values + t * sizeof(float), sizeof(v));
      if (i >= n) k.fail("a received payload names index ", i, " of a ", n, "-element buffer (corrupt payload)");
      y[i] += v;
    }
  }
};

static_assert(GatherCodec<TopK>);

}  // namespace weft::comm
