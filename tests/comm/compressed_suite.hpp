// Compressed allreduce checks, written once and run on every transport
// (compressed_threads.cpp: run_local; compressed_mpi.cpp: mpirun). Each rank
// builds every rank's input (codec_inputs.hpp), computes the uncompressed sum
// and the codec's bound around it with naive loops, and returns "" or a
// message naming the first element outside the bound.
#pragma once

#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/codec/int8.hpp>
#include <weft/comm/codec/powersgd.hpp>
#include <weft/comm/codec/random_k.hpp>
#include <weft/comm/codec/scaled_sign.hpp>
#include <weft/comm/codec/top_k.hpp>
#include <weft/comm/communicator.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "codec_inputs.hpp"

namespace weft::comm::testing {

// The codecs every algorithm is checked with (settings small buffers can show).
inline F16 test_codec(F16) { return {}; }
inline BF16 test_codec(BF16) { return {}; }
inline Int8 test_codec(Int8) { return {.chunk = 64, .stochastic = true}; }
inline RandomK test_codec(RandomK) { return {.fraction = 0.1}; }
inline TopK test_codec(TopK) { return {.fraction = 0.1}; }
inline ScaledSign test_codec(ScaledSign) { return {.chunk = 100}; }
inline PowerSGD test_codec(PowerSGD) { return {.rank = 4}; }

// Naive top-k of x (ties to the lower index): what one rank sends.
inline std::vector<float> naive_top_k(const std::vector<float>& x, std::size_t k) {
  std::vector<std::size_t> idx(x.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  std::vector<float> y(x.size(), 0.0f);
  for (std::size_t t = 0; t < k; ++t) y[idx[t]] = x[idx[t]];
  return y;
}

// Rank r's input for codec C on an n-element buffer: low rank (2) matrices
// for PowerSGD where it compresses (so the result is exact), spiky values otherwise.
template <class C>
std::vector<float> codec_input(const C& c, std::uint64_t seed, int r, std::size_t n) {
  if constexpr (std::is_same_v<C, PowerSGD>) {
    auto s = c.shape(n, CodecCall{});
    if (s.compressed) return low_rank(seed, r, s.rows, s.cols, 2);
  }
  return spiky_vector(seed, r, n);
}

// One compressed allreduce of n values (op sum or avg, in place or not) on a
// fresh communicator (fresh codec state), then a second call on the same
// buffer for top-k (its error feedback through the transport). Compares
// with the naive reference within the codec's bound.
template <class Policy, class T>
std::string check_compressed(T& transport, std::size_t n, std::uint64_t seed, ReduceOp op, bool in_place,
                             CommOptions opts = {}) {
  using C = typename Policy::codec_type;
  Policy policy{};
  policy.codec = test_codec(C{});
  Communicator<Policy, T> comm{transport, policy, opts};
  const int p = comm.size(), me = comm.rank();
  const C& c = comm.algorithm().codec;
  const std::size_t k = std::max<std::size_t>(1, static_cast<std::size_t>(std::round(0.1 * static_cast<double>(n))));
  std::vector<std::vector<float>> xs;
  for (int r = 0; r < p; ++r) xs.push_back(codec_input(c, seed, r, n));
  std::vector<std::vector<float>> residual(static_cast<std::size_t>(p), std::vector<float>(n, 0.0f));
  std::ostringstream err;
  const int calls = std::is_same_v<C, TopK> ? 2 : 1;
  // Codec state is kept per buffer (address, length): both calls use the same buffers.
  std::vector<float> x(n), y(n);
  for (int call = 0; call < calls; ++call) {
    if (call == 1)
      for (int r = 0; r < p; ++r) xs[static_cast<std::size_t>(r)] = codec_input(c, seed + 77, r, n);
    x = xs[static_cast<std::size_t>(me)];
    std::fill(y.begin(), y.end(), -1.0f);
    if (in_place) {
      comm.allreduce(x, op);
      y = x;
    } else {
      comm.allreduce(x, y, op);
    }
    const double div = op == ReduceOp::avg ? p : 1;
    std::vector<double> want(n, 0.0), tol(n, 0.0), mag(n, 0.0);
    for (int r = 0; r < p; ++r)
      for (std::size_t i = 0; i < n; ++i) {
        want[i] += xs[static_cast<std::size_t>(r)][i];
        mag[i] += std::fabs(xs[static_cast<std::size_t>(r)][i]);
      }
    if constexpr (requires { C::unit_roundoff; }) {
      for (std::size_t i = 0; i < n; ++i) tol[i] = p * C::unit_roundoff * mag[i] * 1.01 + p * 0x1p-24;
    } else if constexpr (std::is_same_v<C, Int8>) {
      for (int r = 0; r < p; ++r)
        for (std::size_t lo = 0; lo < n; lo += c.chunk) {
          const std::size_t hi = std::min(n, lo + c.chunk);
          double amax = 0;
          for (std::size_t i = lo; i < hi; ++i) amax = std::max(amax, static_cast<double>(std::fabs(xs[static_cast<std::size_t>(r)][i])));
          for (std::size_t i = lo; i < hi; ++i) tol[i] += amax / 127 * (c.stochastic ? 1.0 : 0.5) * (1 + 1e-5);
        }
      for (std::size_t i = 0; i < n; ++i) tol[i] += 1e-5 * mag[i];
    } else if constexpr (std::is_same_v<C, TopK>) {
      // Exact reference: the sum over ranks of each rank's naive top-k of x + e.
      std::fill(want.begin(), want.end(), 0.0);
      for (int r = 0; r < p; ++r) {
        auto& e = residual[static_cast<std::size_t>(r)];
        std::vector<float> m(n);
        for (std::size_t i = 0; i < n; ++i) m[i] = xs[static_cast<std::size_t>(r)][i] + e[i];
        auto sent = naive_top_k(m, k);
        for (std::size_t i = 0; i < n; ++i) {
          want[i] += sent[i];
          e[i] = m[i] - sent[i];
        }
      }
      for (std::size_t i = 0; i < n; ++i) tol[i] = 1e-5 * (mag[i] + std::fabs(want[i]));
    } else if constexpr (std::is_same_v<C, ScaledSign>) {
      std::fill(want.begin(), want.end(), 0.0);
      for (int r = 0; r < p; ++r)
        for (std::size_t lo = 0; lo < n; lo += c.chunk) {
          const std::size_t hi = std::min(n, lo + c.chunk);
          double l1 = 0;
          for (std::size_t i = lo; i < hi; ++i) l1 += std::fabs(xs[static_cast<std::size_t>(r)][i]);
          const double s = l1 / static_cast<double>(hi - lo);
          for (std::size_t i = lo; i < hi; ++i) {
            want[i] += xs[static_cast<std::size_t>(r)][i] < 0 ? -s : s;
            tol[i] += 1e-5 * s;
          }
        }
    } else if constexpr (std::is_same_v<C, RandomK>) {
      // Shared indices: exactly k coordinates carry the full sum, the rest are 0.
      std::size_t nonzero = 0;
      for (std::size_t i = 0; i < n; ++i)
        if (y[i] != 0.0f) {
          ++nonzero;
        } else {
          want[i] = 0;
        }
      if (nonzero != k && n > 1) err << "random-k: " << nonzero << " nonzero results, expected k = " << k << "; ";
      for (std::size_t i = 0; i < n; ++i) tol[i] = 1e-5 * mag[i] * p;
    } else {  // PowerSGD: rank-2 sums are reproduced exactly (up to rounding)
      double amax = 0;
      for (double v : want) amax = std::max(amax, std::fabs(v));
      for (std::size_t i = 0; i < n; ++i) tol[i] = 1e-4 * amax + 1e-5 * mag[i];
    }
    for (std::size_t i = 0; i < n; ++i) {
      const double w = want[i] / div, t = tol[i] / div;
      if (!(std::fabs(y[i] - w) <= t)) {
        err << C::name << " over " << Policy::name << "/" << decltype(policy.inner)::name << ", " << p
            << " ranks, n = " << n << ", " << reduce_op_name(op) << (in_place ? " in place" : "") << ", call "
            << call << ": rank " << me << " element " << i << " = " << y[i] << ", expected " << w << " +- " << t;
        return err.str();
      }
    }
  }
  return err.str();
}

// Every codec over algorithm A: sizes, sum and avg, in place and out of place.
template <class A, class T>
std::string check_all_codecs(T& t, CommOptions opts = {}) {
  std::string out;
  auto each = [&](auto codec) {
    using C = decltype(codec);
    std::uint64_t seed = 1;
    for (std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{1031}, std::size_t{1920}}) {
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg}) {
        ++seed;
        out += check_compressed<Compressed<C, A>>(t, n, seed, op, (seed & 1) != 0, opts);
        if (!out.empty()) return;
      }
    }
  };
  each(F16{});
  if (out.empty()) each(BF16{});
  if (out.empty()) each(Int8{});
  if (out.empty()) each(RandomK{});
  if (out.empty()) each(TopK{});
  if (out.empty()) each(ScaledSign{});
  if (out.empty()) each(PowerSGD{});
  return out;
}

}  // namespace weft::comm::testing
