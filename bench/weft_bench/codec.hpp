// weft-bench --codec: compressed allreduce (comm::Compressed) per codec, inner
// algorithm and size, next to the uncompressed algorithm ("none"). Columns:
//   wire_B     bytes the transport really sent per rank per call (counted by
//              the transport: ThreadTransport, MpiTransport point-to-point)
//   ratio      wire bytes of the uncompressed algorithm / wire bytes of this row
//   algbw_eff  S / time, S the uncompressed buffer; busbw_eff = algbw_eff x 2(p-1)/p,
//              nccl-tests' allreduce factor, so rows compare with uncompressed busbw
//   max_err    max |result - exact sum| / max |exact sum| of the first call
//              (a fresh communicator, so no error-feedback residual yet)
// Self-contained (its own options) so weft_bench.cpp only hands over argv.
//   weft-bench --codec none,f16,int8,topk:0.01,sign,powersgd:4 --algo ring,native --np 4 -b 64K -e 16M
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/codec/int8.hpp>
#include <weft/comm/codec/powersgd.hpp>
#include <weft/comm/codec/random_k.hpp>
#include <weft/comm/codec/scaled_sign.hpp>
#include <weft/comm/codec/top_k.hpp>
#include <weft/comm/communicator.hpp>

namespace weft_bench::codec {

namespace wc = weft::comm;

struct Settings {
  std::vector<std::string> codecs;  // name or name:parameter (topk:0.01, randomk:0.01, powersgd:4, int8:256)
  std::vector<std::string> algos;   // ring, tree, recursive_doubling, halving_doubling, native, auto
  std::vector<std::size_t> sizes{64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20};  // bytes (options.hpp's sizes())
  int iters = 10, warmup = 2;
};

struct Row {
  std::string codec, algo;
  std::size_t bytes = 0;
  double time_us = 0, wire = 0, ratio = 0, algbw = 0, busbw = 0, max_err = 0;
};

inline double parameter(const std::string& spec, double fallback) {
  auto colon = spec.find(':');
  if (colon == std::string::npos) return fallback;
  char* end = nullptr;
  double v = std::strtod(spec.c_str() + colon + 1, &end);
  if (end == spec.c_str() + colon + 1 || *end) throw std::invalid_argument("--codec: bad parameter in '" + spec + "'");
  return v;
}

// Calls f(policy) with the Compressed policy (or plain algorithm for "none").
template <class A, class F>
void with_policy(const std::string& spec, F&& f) {
  const std::string name = spec.substr(0, spec.find(':'));
  if (name == "none") f(A{});
  else if (name == "f16") f(wc::Compressed<wc::F16, A>{});
  else if (name == "bf16") f(wc::Compressed<wc::BF16, A>{});
  else if (name == "int8") f(wc::Compressed<wc::Int8, A>{.codec = {.chunk = static_cast<std::size_t>(parameter(spec, 256))}});
  else if (name == "topk") f(wc::Compressed<wc::TopK, A>{.codec = {.fraction = parameter(spec, 0.01)}});
  else if (name == "randomk") f(wc::Compressed<wc::RandomK, A>{.codec = {.fraction = parameter(spec, 0.01)}});
  else if (name == "sign") f(wc::Compressed<wc::ScaledSign, A>{});
  else if (name == "powersgd") f(wc::Compressed<wc::PowerSGD, A>{.codec = {.rank = static_cast<int>(parameter(spec, 4))}});
  else
    throw std::invalid_argument("--codec: unknown codec '" + name +
                                "' (accepted: none, f16, bf16, int8[:chunk], topk[:fraction], randomk[:fraction], "
                                "sign, powersgd[:rank])");
}

template <class F>
void with_algorithm(const std::string& a, F&& f) {
  if (a == "ring") f(wc::Ring{});
  else if (a == "tree") f(wc::Tree{});
  else if (a == "recursive_doubling" || a == "rd") f(wc::RecursiveDoubling{});
  else if (a == "halving_doubling" || a == "hd") f(wc::HalvingDoubling{});
  else if (a == "native") f(wc::Native{});
  else if (a == "auto") f(wc::Auto::from_environment());  // the table WEFT_COST_MODEL names, as before
  else
    throw std::invalid_argument("--codec: algorithm '" + a +
                                "' is not offered with codecs (accepted: ring, tree, recursive_doubling, "
                                "halving_doubling, native, auto)");
}

inline float input(int r, std::size_t i) {  // spiky values, as gradients are
  std::uint64_t h = wc::detail::mix64(wc::detail::mix64(7, static_cast<std::uint64_t>(r)), i);
  float v = 2.0f * wc::detail::uniform01(h) - 1.0f;
  return (h & 63) == 0 ? 100.0f * v : v;
}

// One row: fresh communicator, first call checked, then timed calls.
template <class Policy, class T>
Row measure(T& t, Policy policy, std::size_t bytes, const Settings& s) {
  wc::CommOptions o;
  o.fingerprints = false;  // their small messages are not the codec's
  wc::Communicator<Policy, T> comm{t, policy, o};
  const int p = comm.size();
  const std::size_t n = std::max<std::size_t>(1, bytes / sizeof(float));
  std::vector<float> x(n), y(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = input(comm.rank(), i);
  Row row;
  row.bytes = n * sizeof(float);
  comm.allreduce(x, y);
  double worst = 0, top = 0;
  for (std::size_t i = 0; i < n; ++i) {
    double exact = 0;
    for (int r = 0; r < p; ++r) exact += input(r, i);
    worst = std::max(worst, std::fabs(y[i] - exact));
    top = std::max(top, std::fabs(exact));
  }
  row.max_err = top > 0 ? worst / top : 0;
  for (int i = 0; i < s.warmup; ++i) comm.allreduce(x, y);
  comm.barrier();
  const std::uint64_t b0 = comm.sent_bytes();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < s.iters; ++i) comm.allreduce(x, y);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / s.iters;
  row.wire = static_cast<double>(comm.sent_bytes() - b0) / s.iters;
  double slowest = secs;  // the call takes as long as its slowest rank
  comm.allreduce(std::span<double>(&slowest, 1), wc::ReduceOp::max);
  row.time_us = slowest * 1e6;
  row.algbw = static_cast<double>(row.bytes) / slowest / 1e9;
  row.busbw = row.algbw * 2.0 * (p - 1) / p;
  return row;
}

// Runs every (algorithm, size, codec) on this rank; rows are filled on rank 0.
template <class T>
void run(T& t, const Settings& s, std::vector<Row>& rows) {
  for (const std::string& a : s.algos)
    with_algorithm(a, [&](auto algo) {
      using A = decltype(algo);
      for (const std::size_t b : s.sizes) {
        double plain_wire = 0;
        {
          Row none = measure(t, A{}, b, s);
          plain_wire = none.wire;
        }
        for (const std::string& c : s.codecs)
          with_policy<A>(c, [&](auto policy) {
            Row row = measure(t, policy, b, s);
            row.codec = c;
            row.algo = a;
            row.ratio = row.wire > 0 ? plain_wire / row.wire : 0;
            if (t.rank() == 0) rows.push_back(row);
          });
      }
    });
}

inline void print(const std::vector<Row>& rows, const char* transport, int p) {
  std::printf("#\n# weft-bench --codec  transport %s  ranks %d  allreduce f32 sum, out of place\n#\n", transport, p);
  std::printf("# %-14s %-18s %12s %10s %12s %8s %9s %9s %10s\n", "codec", "algo", "size(B)", "time(us)", "wire_B/rank",
              "ratio", "algbw_eff", "busbw_eff", "max_err");
  for (const Row& r : rows)
    std::printf("  %-14s %-18s %12zu %10.1f %12.0f %8.2f %9.3f %9.3f %10.2e\n", r.codec.c_str(), r.algo.c_str(), r.bytes,
                r.time_us, r.wire, r.ratio, r.algbw, r.busbw, r.max_err);
}

}  // namespace weft_bench::codec
