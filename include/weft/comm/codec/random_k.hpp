// Random-k: send k of the n values, at indices every rank draws from the same
// seed (the call's sequence number), so the payloads line up and the inner
// algorithm sums them while compressed: linear, n/k fewer bytes.
//
// With error feedback (the default) the values not sent are kept in a
// residual and added to the next step's gradient, so nothing is lost, only
// delayed (Stich, Cordonnier, Jaggi 2018: "Sparsified SGD with memory"):
//   m = x + e;   send m[I];   e' = m with m[I] set to 0
//   => sent + e' = x + e exactly, and over steps sum(sent) = sum(x) - e_T.
// Without error feedback the sent values are scaled by n/k, which makes the
// estimate unbiased (E[y] = x) at the price of variance.
//
// Indices: selection sampling (Knuth's Algorithm S), each index kept with
// probability (k - kept) / (n - i): exactly k distinct indices, uniformly,
// in increasing order, without a shuffle buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "codec.hpp"

namespace weft::comm {

struct RandomK {
  static constexpr const char* name = "random-k";
  static constexpr bool linear = true;
  using payload_type = float;

  double fraction = 0.01;      // k = round(fraction * n), at least 1
  std::size_t count = 0;       // or exactly k (overrides fraction)
  bool error_feedback = true;
  std::uint64_t seed = 0x7a4d;  // must be equal on every rank

  struct State {
    std::vector<float> residual;        // e, n values (error feedback)
    std::vector<std::uint32_t> index;   // this step's indices (scratch)
    template <class F>
    void visit(F&& f) {
      f("residual", residual);
    }
  };

  std::size_t k_of(std::size_t n, const CodecCall& k) const {
    return detail::indexed_keep_count(count, fraction, n, k);
  }
  void check(std::size_t n, const CodecCall& k) const { (void)k_of(n, k); }
  int rounds(const State&, std::size_t) const { return 1; }
  std::size_t payload_count(const State&, std::size_t n, int) const {
    return detail::keep_count(count, fraction, n, CodecCall{});
  }

  void encode(State& s, const float* x, std::size_t n, float* out, int, const CodecCall& k) const {
    const std::size_t kk = k_of(n, k);  // checks n as check() does
    s.index.resize(kk);
    const std::uint64_t stream = detail::mix64(detail::mix64(seed, k.seq), n);
    std::size_t kept = 0;
    for (std::size_t i = 0; i < n && kept < kk; ++i) {
      const double u = static_cast<double>(detail::mix64(stream, i) >> 11) * 0x1p-53;
      if (static_cast<double>(n - i) * u < static_cast<double>(kk - kept)) s.index[kept++] = static_cast<std::uint32_t>(i);
    }
    if (error_feedback) {
      detail::fit_state(s.residual, n, "residual", k);
      for (std::size_t i = 0; i < n; ++i) s.residual[i] += x[i];  // e <- m = x + e
      for (std::size_t t = 0; t < kk; ++t) {
        out[t] = s.residual[s.index[t]];
        s.residual[s.index[t]] = 0.0f;
      }
    } else {
      const float scale = static_cast<float>(static_cast<double>(n) / static_cast<double>(kk));
      for (std::size_t t = 0; t < kk; ++t) out[t] = x[s.index[t]] * scale;
    }
  }

  void decode(State& s, const float* in, float* y, std::size_t n, int, const CodecCall&) const {
    for (std::size_t i = 0; i < n; ++i) y[i] = 0.0f;
    for (std::size_t t = 0; t < s.index.size(); ++t) y[s.index[t]] = in[t];
  }
};

static_assert(LinearCodec<RandomK>);

}  // namespace weft::comm
