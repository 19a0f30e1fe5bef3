// Codecs on their own (no communication): decode(encode(x)) within each
// codec's stated bound, checked against naive reference loops; error feedback
// keeps sent + residual equal to the sum of true values over many steps;
// PowerSGD is exact on matrices of rank <= r; state naming, save and restore;
// bad settings give errors naming the call, rank and sizes. Several ranks are
// simulated here by summing payloads by hand (linear) or decoding every
// rank's payload (gather), as Compressed does over a transport.
#include <doctest/doctest.h>

#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/codec/int8.hpp>
#include <weft/comm/codec/powersgd.hpp>
#include <weft/comm/codec/powersgd_blas.hpp>
#include <weft/comm/codec/random_k.hpp>
#include <weft/comm/codec/scaled_sign.hpp>
#include <weft/comm/codec/state.hpp>
#include <weft/comm/codec/top_k.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "codec_inputs.hpp"

using namespace weft;
using namespace weft::comm;
using testing::low_rank;
using testing::spiky_vector;

namespace {

CodecCall call_for(int rank, int size, std::uint64_t seq, const char* name) {
  CodecCall k;
  k.seq = seq;
  k.rank = rank;
  k.size = size;
  k.codec = name;
  return k;
}

// p simulated ranks, one call: every rank's result (they must all be equal).
template <LinearCodec C>
std::vector<std::vector<float>> run(const C& c, std::vector<typename C::State>& st,
                                    const std::vector<std::vector<float>>& x, std::uint64_t seq) {
  using P = typename C::payload_type;
  const int p = static_cast<int>(x.size());
  const std::size_t n = x[0].size();
  std::vector<std::vector<float>> y(x.size(), std::vector<float>(n));
  for (int round = 0; round < c.rounds(st[0], n); ++round) {
    const std::size_t pc = c.payload_count(st[0], n, round);
    std::vector<double> sum(pc, 0.0);
    std::vector<P> pl(pc);
    for (int r = 0; r < p; ++r) {
      c.encode(st[static_cast<std::size_t>(r)], x[static_cast<std::size_t>(r)].data(), n, pl.data(), round,
               call_for(r, p, seq, C::name));
      for (std::size_t i = 0; i < pc; ++i) sum[i] += static_cast<double>(static_cast<float>(pl[i]));
    }
    for (std::size_t i = 0; i < pc; ++i) pl[i] = P(static_cast<float>(sum[i]));
    for (int r = 0; r < p; ++r)
      c.decode(st[static_cast<std::size_t>(r)], pl.data(), y[static_cast<std::size_t>(r)].data(), n, round,
               call_for(r, p, seq, C::name));
  }
  return y;
}

template <GatherCodec C>
std::vector<std::vector<float>> run(const C& c, std::vector<typename C::State>& st,
                                    const std::vector<std::vector<float>>& x, std::uint64_t seq) {
  const int p = static_cast<int>(x.size());
  const std::size_t n = x[0].size(), b = c.payload_bytes(n);
  std::vector<std::byte> all(b * x.size());
  for (int r = 0; r < p; ++r)
    c.encode(st[static_cast<std::size_t>(r)], x[static_cast<std::size_t>(r)].data(), n,
             all.data() + static_cast<std::size_t>(r) * b, call_for(r, p, seq, C::name));
  std::vector<std::vector<float>> y(x.size(), std::vector<float>(n, 0.0f));
  for (int r = 0; r < p; ++r)
    for (int s = 0; s < p; ++s)
      c.decode_add(all.data() + static_cast<std::size_t>(s) * b, y[static_cast<std::size_t>(r)].data(), n,
                   call_for(r, p, seq, C::name));
  return y;
}

// One rank, one step: decode(encode(x)).
template <class C>
std::vector<float> roundtrip(const C& c, typename C::State& st, const std::vector<float>& x, std::uint64_t seq = 1) {
  std::vector<typename C::State> s(1);
  std::swap(s[0], st);
  auto y = run(c, s, {x}, seq)[0];
  std::swap(s[0], st);
  return y;
}

double norm2(const std::vector<float>& v) {
  double s = 0;
  for (float f : v) s += static_cast<double>(f) * f;
  return s;
}

}  // namespace

TEST_CASE("codec: f16 and bf16 casts round to within one unit roundoff") {
  std::vector<float> x = spiky_vector(3, 0, 5000);
  x.push_back(1e-6f);  // f16 subnormal
  x.push_back(0.0f);
  x.push_back(-3.0e-8f);
  auto check = [&](auto codec) {
    using C = decltype(codec);
    typename C::State st;
    auto y = roundtrip(codec, st, x);
    for (std::size_t i = 0; i < x.size(); ++i)
      REQUIRE(std::fabs(y[i] - x[i]) <= C::unit_roundoff * std::fabs(x[i]) + 0x1p-25);
  };
  check(F16{});
  check(BF16{});
  F16::State st;
  CHECK(std::isinf(roundtrip(F16{}, st, {70000.0f})[0]));  // f16's range ends at 65504: inf, as the hardware cast
  CHECK(roundtrip(BF16{}, st, {70000.0f})[0] == doctest::Approx(70000.0f).epsilon(0x1p-8));
}

TEST_CASE("codec: int8 per-chunk scales, nearest and stochastic rounding") {
  const std::vector<float> x = spiky_vector(4, 0, 1000);  // 4 chunks of 256, the last short
  for (bool stochastic : {false, true}) {
    CAPTURE(stochastic);
    Int8 c{.chunk = 256, .stochastic = stochastic};
    CHECK(c.payload_bytes(1000) == 1000 + 4 * sizeof(float));
    Int8::State st;
    auto y = roundtrip(c, st, x);
    for (std::size_t lo = 0; lo < x.size(); lo += 256) {
      const std::size_t hi = std::min(x.size(), lo + 256);
      float amax = 0;
      for (std::size_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
      const double s = amax / 127.0;
      for (std::size_t i = lo; i < hi; ++i)
        REQUIRE(std::fabs(y[i] - x[i]) <= (stochastic ? s : s / 2) * (1 + 1e-5));
    }
  }
  // Stochastic rounding is unbiased: the mean of many independent draws approaches x.
  Int8 c{.chunk = 8, .stochastic = true};
  const std::vector<float> v = {0.3f, -0.71f, 1.0f, 0.05f, -0.5f, 0.999f, 0.0f, 0.2f};
  std::vector<double> mean(v.size(), 0.0);
  const int draws = 4000;
  for (int t = 0; t < draws; ++t) {
    Int8::State st;
    auto y = roundtrip(c, st, v, static_cast<std::uint64_t>(t));
    for (std::size_t i = 0; i < v.size(); ++i) mean[i] += y[i] / draws;
  }
  const double s = 1.0 / 127, sigma = s / 2 / std::sqrt(static_cast<double>(draws));
  for (std::size_t i = 0; i < v.size(); ++i) CHECK(std::fabs(mean[i] - v[i]) < 5 * sigma);
  // A non-finite value poisons its chunk on every rank instead of throwing on one.
  Int8::State st;
  auto y = roundtrip(Int8{.chunk = 2}, st, {1.0f, NAN, 2.0f, 3.0f});
  CHECK(std::isnan(y[0]));
  CHECK(y[3] == doctest::Approx(3.0f));
}

TEST_CASE("codec: top-k keeps the k largest magnitudes (naive sort reference) and contracts") {
  for (std::size_t n : {1u, 10u, 1000u, 4097u}) {
    CAPTURE(n);
    const std::vector<float> x = spiky_vector(5, 0, n);
    TopK c{.fraction = 0.1, .error_feedback = false};
    const std::size_t k = std::max<std::size_t>(1, static_cast<std::size_t>(std::round(0.1 * static_cast<double>(n))));
    CHECK(c.payload_bytes(n) == 8 * k);
    TopK::State st;
    auto y = roundtrip(c, st, x);
    std::vector<std::size_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
    std::vector<float> ref(n, 0.0f);
    for (std::size_t t = 0; t < k; ++t) ref[idx[t]] = x[idx[t]];
    CHECK(y == ref);
    std::vector<float> diff(n);
    for (std::size_t i = 0; i < n; ++i) diff[i] = x[i] - y[i];
    CHECK(norm2(diff) <= (1.0 - static_cast<double>(k) / static_cast<double>(n)) * norm2(x) * (1 + 1e-9));
  }
  TopK::State st;
  auto y = roundtrip(TopK{.count = 2, .error_feedback = false}, st, {1.0f, NAN, -3.0f, 0.5f});
  CHECK(std::isnan(y[1]));  // NaN is sent, not hidden in the residual
  CHECK(y[2] == -3.0f);
}

// Many equal magnitudes: the kept set is the k largest by (magnitude desc,
// index asc), checked against a stable sort over quantised random values.
TEST_CASE("codec: top-k breaks ties in magnitude toward the lower index") {
  TopK::State st;
  CHECK(roundtrip(TopK{.count = 3, .error_feedback = false}, st, {1.0f, -2.0f, 2.0f, 0.5f, 2.0f, -2.0f}) ==
        std::vector<float>{0.0f, -2.0f, 2.0f, 0.0f, 2.0f, 0.0f});
  std::uint64_t seed = 12345;
  for (std::size_t n : {7u, 64u, 1000u}) {
    std::vector<float> x(n);
    for (float& v : x) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      v = static_cast<float>(static_cast<int>(seed >> 60) - 8);  // 16 levels: many ties
    }
    for (std::size_t k : {std::size_t{1}, n / 3 + 1, n}) {
      CAPTURE(n);
      CAPTURE(k);
      std::vector<std::size_t> idx(n);
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
      std::vector<float> ref(n, 0.0f);
      for (std::size_t t = 0; t < k; ++t) ref[idx[t]] = x[idx[t]];
      TopK::State s;
      CHECK(roundtrip(TopK{.count = k, .error_feedback = false}, s, x) == ref);
    }
  }
}

TEST_CASE("codec: random-k draws k distinct indices shared by every rank, fresh each call") {
  const std::size_t n = 1000;
  RandomK c{.fraction = 0.05, .error_feedback = false};
  std::vector<RandomK::State> st(3);
  std::vector<std::vector<float>> ones(3, std::vector<float>(n, 1.0f));
  auto y = run(c, st, ones, 7);
  std::set<std::uint32_t> first(st[0].index.begin(), st[0].index.end());
  CHECK(first.size() == 50);
  CHECK(st[1].index == st[0].index);  // same seed, same call: the same indices on every rank
  CHECK(st[2].index == st[0].index);
  std::size_t nonzero = 0;
  for (float v : y[0]) {
    if (v != 0.0f) {
      ++nonzero;
      CHECK(v == doctest::Approx(3 * 20.0));  // unbiased without error feedback: scaled by n/k
    }
  }
  CHECK(nonzero == 50);
  run(c, st, ones, 8);
  CHECK(st[0].index != std::vector<std::uint32_t>(first.begin(), first.end()));
  // Unbiased: over many calls each coordinate's mean approaches x.
  const std::vector<float> x = spiky_vector(9, 0, 40);
  std::vector<double> mean(x.size(), 0.0);
  const int calls = 20000;
  RandomK::State s1;
  for (int t = 0; t < calls; ++t) {
    auto z = roundtrip(RandomK{.fraction = 0.25, .error_feedback = false}, s1, x, static_cast<std::uint64_t>(t));
    for (std::size_t i = 0; i < x.size(); ++i) mean[i] += z[i] / calls;
  }
  for (std::size_t i = 0; i < x.size(); ++i)  // variance per draw (n/k - 1) x^2 = 3 x^2
    CHECK(std::fabs(mean[i] - x[i]) < 5 * std::sqrt(3.0 / calls) * std::fabs(x[i]) + 1e-6);
}

TEST_CASE("codec: scaled sign meets ||m - y||^2 = ||m||^2 - ||m||_1^2 / d per chunk") {
  for (std::size_t chunk : {0u, 64u}) {
    CAPTURE(chunk);
    const std::vector<float> x = spiky_vector(11, 0, 1000);
    ScaledSign c{.chunk = chunk, .error_feedback = false};
    CHECK(c.payload_bytes(1000) == (chunk ? 16 : 1) * sizeof(float) + 125);
    ScaledSign::State st;
    auto y = roundtrip(c, st, x);
    const std::size_t w = chunk ? chunk : x.size();
    for (std::size_t lo = 0; lo < x.size(); lo += w) {
      const std::size_t hi = std::min(x.size(), lo + w);
      double l1 = 0, l2 = 0, err = 0;
      for (std::size_t i = lo; i < hi; ++i) {
        l1 += std::fabs(x[i]);
        l2 += static_cast<double>(x[i]) * x[i];
      }
      for (std::size_t i = lo; i < hi; ++i) {
        err += (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
        REQUIRE(std::fabs(y[i]) == doctest::Approx(l1 / static_cast<double>(hi - lo)));  // s = ||x||_1 / d
        REQUIRE((y[i] >= 0) == (x[i] >= 0));
      }
      CHECK(err == doctest::Approx(l2 - l1 * l1 / static_cast<double>(hi - lo)).epsilon(1e-4));
    }
  }
}

TEST_CASE_TEMPLATE("codec: error feedback: sent + residual tracks the sum of true values over steps", C, TopK,
                   ScaledSign, RandomK, PowerSGD) {
  const std::size_t n = 1024;
  C c{};
  if constexpr (requires { c.fraction; }) c.fraction = 0.05;
  if constexpr (requires { c.rank; }) c.rank = 2;
  typename C::State st;
  std::vector<double> sent(n, 0.0), truth(n, 0.0);
  double max_x = 0;
  const int steps = 60;
  for (int t = 0; t < steps; ++t) {
    const std::vector<float> x = spiky_vector(100 + static_cast<std::uint64_t>(t), 0, n);
    max_x = std::max(max_x, std::sqrt(norm2(x)));
    auto y = roundtrip(c, st, x, static_cast<std::uint64_t>(t));
    for (std::size_t i = 0; i < n; ++i) {
      sent[i] += y[i];
      truth[i] += x[i];
    }
  }
  // Invariant: sum(sent) + e_T = sum(x) (up to f32 rounding of T steps).
  double gap = 0, scale = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = sent[i] + st.residual[i] - truth[i];
    gap = std::max(gap, std::fabs(d));
    scale = std::max(scale, std::fabs(truth[i]));
  }
  CHECK(gap <= 1e-4 * (scale + steps * 100));
  // And the residual stays bounded instead of growing with T: what was not
  // sent is a small part of what was.
  CHECK(std::sqrt(norm2(st.residual)) < 0.5 * std::sqrt([&] {
          double s = 0;
          for (double v : truth) s += v * v;
          return s;
        }()) + 20 * max_x);
  if constexpr (std::is_same_v<C, TopK>) {  // contraction: ||e|| <= sqrt(1-d) / (1 - sqrt(1-d)) max ||x||
    const double q = std::sqrt(1.0 - 0.05);
    CHECK(std::sqrt(norm2(st.residual)) <= q / (1 - q) * max_x);
  }
}

TEST_CASE("codec: PowerSGD is exact on matrices of rank <= r, compresses, and warm-starts") {
  for (int p : {1, 3, 4}) {
    for (std::size_t k : {1u, 2u, 4u}) {
      CAPTURE(p);
      CAPTURE(k);
      const std::size_t rows = 48, cols = 40, n = rows * cols;
      PowerSGD c{.rank = 4, .cols = cols};
      std::vector<std::vector<float>> x;
      std::vector<double> sum(n, 0.0);
      for (int r = 0; r < p; ++r) {
        x.push_back(low_rank(21, r, rows, cols, k));
        for (std::size_t i = 0; i < n; ++i) sum[i] += x.back()[i];
      }
      std::vector<PowerSGD::State> st(static_cast<std::size_t>(p));
      CHECK(c.payload_count(st[0], n, 0) == rows * 4);
      CHECK(c.payload_count(st[0], n, 1) == cols * 4);
      for (int step = 0; step < 2; ++step) {  // the second step starts from the first's Q
        auto y = run(c, st, x, static_cast<std::uint64_t>(step));
        double amax = 0;
        for (double v : sum) amax = std::max(amax, std::fabs(v));
        for (int r = 0; r < p; ++r) {
          CHECK(y[static_cast<std::size_t>(r)] == y[0]);
          double worst = 0;
          for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(y[static_cast<std::size_t>(r)][i] - sum[i]));
          CHECK(worst <= 1e-4 * amax);
        }
        // Error feedback: sum over ranks of residuals + result = sum of inputs (+ earlier residuals, ~0 here).
        for (std::size_t i = 0; i < n; i += 97) {
          double e = 0;
          for (auto& s : st) e += s.residual[i];
          CHECK(std::fabs(e) <= 1e-4 * amax);
        }
      }
      CHECK(st[0].q.size() == cols * 4);
      CHECK(st[0].q == st[p - 1].q);  // the shared (summed) Q, equal on every rank
    }
  }
  // Full-rank input: the result is the projection of the sum onto span(P^):
  // never larger than the sum, and the residuals hold the rest exactly.
  {
    const std::size_t rows = 30, cols = 20, n = rows * cols;
    PowerSGD c{.rank = 3, .cols = cols};
    std::vector<std::vector<float>> x = {spiky_vector(30, 0, n), spiky_vector(30, 1, n)};
    std::vector<PowerSGD::State> st(2);
    auto y = run(c, st, x, 0);
    std::vector<float> s(n);
    for (std::size_t i = 0; i < n; ++i) s[i] = x[0][i] + x[1][i];
    CHECK(norm2(y[0]) <= norm2(s) * (1 + 1e-5));
    for (std::size_t i = 0; i < n; ++i)
      CHECK(y[0][i] + st[0].residual[i] + st[1].residual[i] == doctest::Approx(s[i]).epsilon(1e-4).scale(100));
  }
  // Buffers too small to gain (a bias) go uncompressed, exactly.
  PowerSGD c{.rank = 4};
  PowerSGD::State st;
  CHECK(c.rounds(st, 10) == 1);
  const std::vector<float> b = spiky_vector(40, 0, 10);
  CHECK(roundtrip(c, st, b) == b);
  // cols = 0 picks the squarest factorisation.
  CHECK(c.shape(200704, CodecCall{}).cols == 448);
  CHECK(c.shape(65536, CodecCall{}).rows == 256);
}

TEST_CASE("codec: bad settings name the call, the rank and the sizes") {
  CodecCall k = call_for(2, 4, 5, "top-k");
  TopK::State ts;
  std::vector<float> x(100, 1.0f);
  std::vector<std::byte> out(8 * 500);
  CHECK_THROWS_WITH_AS(TopK{.count = 500}.encode(ts, x.data(), 100, out.data(), k),
                       "encode on rank 2 (top-k codec): k = 500 is more than the buffer's 100 elements", ValueError);
  CHECK_THROWS_WITH_AS(TopK{.fraction = 0}.check(100, k), doctest::Contains("fraction 0 is not in (0, 1]"), ValueError);
  k.codec = "powersgd";
  CHECK_THROWS_WITH_AS(PowerSGD{.cols = 7}.check(100, k),
                       doctest::Contains("rank 2 (powersgd codec): a buffer of 100 elements is not a matrix with 7 "
                                         "columns"),
                       ValueError);
  CHECK_THROWS_WITH_AS(PowerSGD{.rank = 0}.check(100, k), doctest::Contains("rank 0 must be at least 1"), ValueError);
  CHECK_THROWS_WITH_AS(Int8{.chunk = 0}.check(100, k), doctest::Contains("chunk is 0"), ValueError);
  // A residual restored for another buffer size is refused, not silently reshaped.
  ts.residual.assign(99, 0.0f);
  CHECK_THROWS_WITH_AS(TopK{}.encode(ts, x.data(), 100, out.data(), k),
                       doctest::Contains("its residual holds 99 values but this buffer needs 100"), ValueError);
}

TEST_CASE("codec state under a stable name: found by name wherever the buffer lives, visited for saving") {
  CodecStates<PowerSGD::State> t("l1");
  CodecCall k;
  auto& w = t.by_name("l1.weight", 600, k);
  auto& b = t.by_name("l1.bias", 20, k);
  CHECK(&t.by_name("l1.weight", 600, k) == &w);  // no address involved: a moved buffer finds it again
  CHECK(&w != &b);
  w.residual = {1, 2, 3};
  // two different buffers under one name: refused, naming both sizes
  CHECK_THROWS_WITH_AS(t.by_name("l1.weight", 300, k),
                       doctest::Contains("codec state \"l1.weight\" belongs to a buffer of 600 elements, but this "
                                         "buffer has 300"),
                       ValueError);
  CHECK_THROWS_WITH_AS(t.by_name("7", 600, k), doctest::Contains("is only digits"), ValueError);
  // visit: every array, with its full name, for a checkpoint to save
  std::vector<std::string> seen;
  std::vector<float> weight_residual;
  t.visit([&](const std::string& name, std::vector<float>& v) {
    seen.push_back(name);
    if (name == "l1/l1.weight/residual") weight_residual = v;
  });
  CHECK(seen == std::vector<std::string>{"l1/l1.bias/residual", "l1/l1.bias/q", "l1/l1.bias/p",
                                         "l1/l1.weight/residual", "l1/l1.weight/q", "l1/l1.weight/p"});
  CHECK(weight_residual == std::vector<float>{1, 2, 3});
  CHECK(t.names() == seen);
  CHECK(t.save("l1/l1.weight/residual") == std::vector<float>{1, 2, 3});
  // restore into a fresh table: staged under the name, found by the first call with that name
  CodecStates<PowerSGD::State> u("l1");
  u.load("l1/l1.weight/residual", weight_residual);
  CHECK(u.by_name("l1.weight", 600, k).residual == weight_residual);
  CHECK_THROWS_WITH_AS(u.save("l1/l2.weight/q"), doctest::Contains("no buffer named \"l2.weight\" has state (named: "
                                                                   "l1.weight)"),
                       ValueError);
  // named and unnamed buffers side by side: numbered names stay as they were
  float a[1];
  u.at(a, 50, k);
  CHECK(u.names() == std::vector<std::string>{"l1/0/residual", "l1/0/q", "l1/0/p", "l1/l1.weight/residual",
                                              "l1/l1.weight/q", "l1/l1.weight/p"});
}

TEST_CASE("codec state: named per buffer, saved and restored for checkpoints") {
  CodecStates<PowerSGD::State> t("l1");
  CodecCall k;
  float a[1], b[1];
  auto& s0 = t.at(a, 600, k);
  auto& s1 = t.at(b, 600, k);
  CHECK(&t.at(a, 600, k) == &s0);  // the same buffer finds its state again
  CHECK(&s0 != &s1);
  s0.residual = {1, 2, 3};
  CHECK(t.names() == std::vector<std::string>{"l1/0/residual", "l1/0/q", "l1/0/p", "l1/1/residual", "l1/1/q",
                                               "l1/1/p"});
  CHECK(t.save("l1/0/residual") == std::vector<float>{1, 2, 3});
  // Restoring into a fresh table (a new process): staged, bound to the first buffer that arrives.
  CodecStates<PowerSGD::State> u("l1");
  const std::vector<float> saved = t.save("l1/0/residual");
  u.load("l1/0/residual", saved);
  float c[1];
  CHECK(u.at(c, 600, k).residual == saved);
  CHECK_THROWS_WITH_AS(u.save("l1/0/momentum"), doctest::Contains("this codec keeps residual, q, p"), ValueError);
  CHECK_THROWS_WITH_AS(u.save("l2/0/q"), doctest::Contains("names look like \"l1/<buffer>/<field>\""), ValueError);
  CHECK_THROWS_WITH_AS(u.save("l1/7/q"), doctest::Contains("only 1 buffers have state"), ValueError);
  // The policy's table is shared by its copies (the communicator keeps a copy).
  Compressed<TopK, Ring> policy{.codec = {.fraction = 0.5}};
  Compressed<TopK, Ring> copy = policy;
  CHECK(copy.states == policy.states);
  CHECK(policy.payload_bytes(1000) == 500 * 8);
}

TEST_CASE("codec: PowerSGD's products through CBLAS match the loops within float rounding") {
  // Full-rank and low-rank inputs, two steps (warm start), three ranks: the
  // result and every rank's residual and Q agree with the loops' to 1e-5 of
  // the largest magnitude (only the order of summation differs).
  for (std::size_t k : {2u, 0u}) {
    CAPTURE(k);
    const std::size_t rows = 64, cols = 48, n = rows * cols;
    PowerSGD loops{.rank = 4, .cols = cols}, blas = with_blas(loops);
    REQUIRE(static_cast<bool>(blas.gemm));
    std::vector<std::vector<float>> x;
    for (int r = 0; r < 3; ++r) x.push_back(k ? low_rank(7, r, rows, cols, k) : spiky_vector(7, r, n));
    std::vector<PowerSGD::State> sl(3), sb(3);
    for (int step = 0; step < 2; ++step) {
      auto yl = run(loops, sl, x, static_cast<std::uint64_t>(step));
      auto yb = run(blas, sb, x, static_cast<std::uint64_t>(step));
      double amax = 0;
      for (float v : yl[0]) amax = std::max(amax, static_cast<double>(std::fabs(v)));
      for (std::size_t r = 0; r < 3; ++r) {
        CHECK(yb[r] == yb[0]);  // equal on every rank, as with the loops
        double worst = 0, worst_e = 0;
        for (std::size_t i = 0; i < n; ++i) {
          worst = std::max(worst, static_cast<double>(std::fabs(yb[r][i] - yl[r][i])));
          worst_e = std::max(worst_e, static_cast<double>(std::fabs(sb[r].residual[i] - sl[r].residual[i])));
        }
        CHECK(worst <= 1e-5 * amax + 1e-6);
        CHECK(worst_e <= 1e-5 * amax + 1e-6);
      }
    }
  }
}
