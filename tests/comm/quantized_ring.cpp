// QuantizedRing<Int8> (decode-reduce-encode at every ring hop) on thread
// ranks: within the bound stated in algorithm/quantized_ring.hpp of a naive
// double sum, bitwise equal on every rank, about a quarter of the f32 ring's
// bytes; other dtypes and ops pass through exactly; deterministic mode is
// refused with a sentence.
#include <doctest/doctest.h>

#include <weft/comm/algorithm/quantized_ring.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "codec_inputs.hpp"

using namespace weft::comm;
using weft::comm::testing::spiky_vector;

TEST_CASE("QuantizedRing<Int8>: within p quantization steps of the sum, equal on every rank, a quarter of the bytes") {
  for (int p : {2, 3, 4}) {
    for (std::size_t n : {std::size_t{1}, std::size_t{5}, std::size_t{1000}, std::size_t{70001}}) {
      CAPTURE(p);
      CAPTURE(n);
      std::vector<std::vector<float>> x(static_cast<std::size_t>(p)), y(static_cast<std::size_t>(p));
      for (int r = 0; r < p; ++r) x[static_cast<std::size_t>(r)] = spiky_vector(11, r, n);
      std::vector<std::uint64_t> bytes(static_cast<std::size_t>(p)), ring_bytes(static_cast<std::size_t>(p));
      for (int reduce = 0; reduce < 2; ++reduce) {
        const ReduceOp op = reduce ? ReduceOp::avg : ReduceOp::sum;
        run_local(p, [&](ThreadTransport& t) {
          const auto me = static_cast<std::size_t>(t.rank());
          Communicator<QuantizedRing<>, ThreadTransport> q(t, CommOptions{.timeout = std::chrono::seconds(30)});
          Communicator<Ring, ThreadTransport> ring(t.split(0, t.rank()), CommOptions{.timeout = std::chrono::seconds(30)});
          y[me] = x[me];
          const std::uint64_t b0 = q.sent_bytes();
          q.allreduce(y[me], op);
          bytes[me] = q.sent_bytes() - b0;
          std::vector<float> z = x[me];
          const std::uint64_t b1 = ring.sent_bytes();
          ring.allreduce(z, op);
          ring_bytes[me] = ring.sent_bytes() - b1;
        });
        // Per block (the ring's n/p split): |y - sum| <= p * max over the block of sum_r |x_r| / 254, plus float rounding.
        std::string first_bad;
        for (int b = 0; b < p && first_bad.empty(); ++b) {
          const std::size_t lo = static_cast<std::size_t>(b) * n / static_cast<std::size_t>(p),
                            hi = static_cast<std::size_t>(b + 1) * n / static_cast<std::size_t>(p);
          double m = 0;
          for (std::size_t i = lo; i < hi; ++i) {
            double a = 0;
            for (int r = 0; r < p; ++r) a += std::fabs(x[static_cast<std::size_t>(r)][i]);
            m = std::max(m, a);
          }
          const double bound = (p * m / 254.0 + 1e-5 * m) / (reduce ? p : 1);
          for (std::size_t i = lo; i < hi; ++i) {
            double s = 0;
            for (int r = 0; r < p; ++r) s += x[static_cast<std::size_t>(r)][i];
            if (reduce) s /= p;
            if (std::fabs(y[0][i] - s) > bound) {
              first_bad = "element " + std::to_string(i) + ": " + std::to_string(y[0][i]) + " vs sum " +
                          std::to_string(s) + ", bound " + std::to_string(bound);
              break;
            }
          }
        }
        CHECK(first_bad == "");
        for (int r = 1; r < p; ++r)
          CHECK(std::memcmp(y[static_cast<std::size_t>(r)].data(), y[0].data(), n * sizeof(float)) == 0);
        if (n >= 1000) {
          // n/p values and n/(256 p) scales per payload against n/p f32s (fingerprints excluded: they are equal)
          const double ratio = static_cast<double>(bytes[0]) / static_cast<double>(ring_bytes[0]);
          CAPTURE(ratio);
          CHECK(ratio < 0.3);
        }
      }
    }
  }
}

TEST_CASE("QuantizedRing: other dtypes and reduce ops run the fallback exactly; deterministic mode is refused") {
  run_local(3, [&](ThreadTransport& t) {
    Communicator<QuantizedRing<>, ThreadTransport> q(t, CommOptions{.timeout = std::chrono::seconds(30)});
    std::vector<std::int32_t> a(1001);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<std::int32_t>(i) * (t.rank() + 1);
    q.allreduce(a);
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i] == static_cast<std::int32_t>(i) * 6);
    std::vector<float> m(100, static_cast<float>(t.rank()) + 0.5f);
    q.allreduce(m, ReduceOp::max);
    CHECK(m[99] == 2.5f);
    CHECK_THROWS_WITH_AS(q.set_deterministic(true), doctest::Contains("deterministic mode reduces uncompressed"),
                         weft::ValueError);
  });
}
