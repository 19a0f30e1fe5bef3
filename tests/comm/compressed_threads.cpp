// Compressed communicators on the thread transport: every codec over every
// algorithm for 1..5 ranks against the uncompressed reference within the
// codec's bound (compressed_suite.hpp); bytes on the wire counted by the
// transport; collectives that pass through uncompressed; settings that do not
// fit the buffer fail on every rank with a message naming call, rank, sizes.
#include <doctest/doctest.h>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/run_local.hpp>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "compressed_suite.hpp"
#include "suite.hpp"

using namespace weft;
using namespace weft::comm;
using namespace std::chrono_literals;

using testing::checked;

namespace {

// Runs f(transport) on p ranks and collects the ranks' messages.
template <class F>
std::string on_ranks(int p, F&& f) {
  std::mutex m;
  std::string all;
  run_local(p, [&](ThreadTransport& t) {
    std::string e = f(t);
    std::lock_guard lock(m);
    all += e;
  });
  return all;
}

}  // namespace

TEST_CASE_TEMPLATE("compressed: every codec equals the uncompressed sum within its bound", A, Ring, Tree,
                   RecursiveDoubling, HalvingDoubling, Hierarchical<>, Native, Auto) {
  for (int p = 1; p <= 5; ++p) {
    CAPTURE(p);
    CHECK(on_ranks(p, [](ThreadTransport& t) { return testing::check_all_codecs<A>(t, checked()); }) == "");
  }
}

TEST_CASE("compressed: the transport counts the bytes it really sends") {
  // 4 ranks, 4096 f32 (16 KiB), ring, fingerprints off (they add small messages).
  CommOptions o;
  o.fingerprints = false;
  const std::size_t n = 4096;
  std::mutex m;
  std::vector<std::uint64_t> plain(4), f16(4), topk(4), psgd(4);
  run_local(4, [&](ThreadTransport& t) {
    std::vector<float> x = testing::spiky_vector(5, t.rank(), n);
    const auto r = static_cast<std::size_t>(t.rank());
    auto measure = [&](auto& comm) {
      const std::uint64_t before = comm.sent_bytes();
      comm.allreduce(x, ReduceOp::avg);
      return comm.sent_bytes() - before;
    };
    Communicator<Ring, ThreadTransport> ring{t, Ring{}, o};
    Communicator<Compressed<F16, Ring>, ThreadTransport> c16{t, {}, o};
    Communicator<Compressed<TopK, Ring>, ThreadTransport> ctk{t, {.codec = {.fraction = 0.01}}, o};
    Communicator<Compressed<PowerSGD, Ring>, ThreadTransport> cps{t, {.codec = {.rank = 4}}, o};
    const std::uint64_t a = measure(ring), b = measure(c16), c = measure(ctk), d = measure(cps);
    std::lock_guard lock(m);
    plain[r] = a;
    f16[r] = b;
    topk[r] = c;
    psgd[r] = d;
  });
  for (std::size_t r = 0; r < 4; ++r) {
    CAPTURE(r);
    CHECK(plain[r] == 2 * 3 * n / 4 * sizeof(float));  // ring: 2 (p-1)/p of the buffer
    CHECK(f16[r] == plain[r] / 2);                      // the same schedule on 2-byte values
    CHECK(topk[r] == 3 * 41 * 8);                       // allgather: (p-1) payloads of k = 41 (index, value) pairs
    CHECK(psgd[r] == 2 * 3 * (64 * 4) / 4 * sizeof(float) * 2);  // 64 x 64, rank 4: P and Q, each 64 x 4
  }
}

TEST_CASE("compressed: other collectives, dtypes and ops pass through uncompressed") {
  CHECK(on_ranks(3, [](ThreadTransport& t) {
          Communicator<Compressed<TopK, Ring>, ThreadTransport> c{t, {.codec = {.count = 1}}, checked()};
          std::string e;
          std::vector<double> d(10, t.rank() + 1.0);
          c.allreduce(d);  // f64: not compressed, so the exact sum 1 + 2 + 3
          for (double v : d) e += v == 6.0 ? "" : "f64 allreduce was compressed; ";
          std::vector<float> f(10, static_cast<float>(t.rank()));
          c.allreduce(f, ReduceOp::max);
          for (float v : f) e += v == 2.0f ? "" : "max allreduce was compressed; ";
          c.broadcast(f, 0);
          for (float v : f) e += v == 2.0f ? "" : "broadcast changed values; ";
          std::vector<int> all(3), one{t.rank()};
          c.allgather(one, all);
          e += all == std::vector<int>{0, 1, 2} ? "" : "allgather wrong; ";
          CHECK(c.algorithm().states->size() == 0);  // no codec state was created
          return e;
        }) == "");
}

TEST_CASE("compressed: deterministic mode is refused, not silently bypassed") {
  run_local(2, [](ThreadTransport& t) {
    CommOptions o = checked();
    o.deterministic = true;
    using C = Communicator<Compressed<TopK, Ring>, ThreadTransport>;
    CHECK_THROWS_WITH_AS(C(t, {}, o), doctest::Contains("deterministic mode reduces uncompressed"), ValueError);
    C c{t, {}, checked()};
    CHECK_THROWS_WITH_AS(c.set_deterministic(true), doctest::Contains("rank"), ValueError);
    c.set_deterministic(false);
  });
}

TEST_CASE("compressed: non-blocking calls and state that persists per buffer") {
  CHECK(on_ranks(2, [](ThreadTransport& t) {
          Communicator<Compressed<TopK, Ring>, ThreadTransport> c{t, {.codec = {.fraction = 0.25}}, checked()};
          c.algorithm().states->set_prefix("l1");
          std::vector<float> a(8, 1.0f), b(16, 1.0f);
          auto r1 = c.iallreduce(a);
          auto r2 = c.iallreduce(b);
          r1.wait();
          r2.wait();
          std::fill(a.begin(), a.end(), 1.0f);  // the same buffer again: its residual is added
          c.allreduce(a);
          std::string e;
          auto names = c.algorithm().states->names();
          e += names == std::vector<std::string>{"l1/0/residual", "l1/1/residual"} ? "" : "wrong state names; ";
          // a: 8 ones, k = 2 per call. Call 1 sends indices 0, 1 (ties go to the
          // lower index); call 2 sees m = [1 1 2 2 2 2 2 2] and sends 2, 3, so
          // the residual is [1 1 0 0 2 2 2 2]: four coordinates hold two steps.
          auto res = c.algorithm().states->save("l1/0/residual");
          int twos = 0;
          for (float v : res) twos += v == 2.0f;
          e += twos == 4 ? "" : "residual of buffer a is not the unsent mass; ";
          return e;
        }) == "");
}

TEST_CASE("compressed: a named buffer keeps its codec state when it moves to a new address") {
  // The same two steps of top-k with error feedback, once on a buffer that
  // stays put and once on one that moves between the steps (as a gradient
  // reallocated or a bucket rebuilt would): under one name, the second step
  // sees the first step's residual either way, so results and residuals match.
  CHECK(on_ranks(2, [](ThreadTransport& t) {
          using C = Communicator<Compressed<TopK, Ring>, ThreadTransport>;
          C stay{t, {.codec = {.fraction = 0.25}}, checked()}, move{t, {.codec = {.fraction = 0.25}}, checked()};
          const std::vector<float> step(8, 1.0f + static_cast<float>(t.rank()));
          const CallOptions named{.name = "l1.weight"};
          std::vector<float> a = step;
          stay.allreduce(a, ReduceOp::sum, named);
          a = step;
          stay.allreduce(a, ReduceOp::sum, named);
          auto first = std::make_unique<std::vector<float>>(step);
          move.iallreduce(*first, ReduceOp::sum, named).wait();
          auto second = std::make_unique<std::vector<float>>(step);  // another address
          first.reset();
          move.allreduce(*second, ReduceOp::sum, named);
          std::string e;
          e += *second == a ? "" : "a moved buffer's result differs; ";
          e += move.algorithm().states->names() == std::vector<std::string>{"compressed/l1.weight/residual"}
                   ? ""
                   : "a moved buffer got a second state; ";
          e += move.algorithm().states->save("compressed/l1.weight/residual") ==
                       stay.algorithm().states->save("compressed/l1.weight/residual")
                   ? ""
                   : "residuals differ; ";
          // a name reused for a buffer of another size is refused on every rank
          std::vector<float> other(16, 1.0f);
          try {
            move.allreduce(other, ReduceOp::sum, named);
            e += "a name reused for another size was accepted; ";
          } catch (const ValueError& x) {
            e += std::string(x.what()).find("belongs to a buffer of 8 elements, but this buffer has 16") !=
                         std::string::npos
                     ? ""
                     : std::string("unexpected error: ") + x.what();
          }
          return e;
        }) == "");
}

TEST_CASE("compressed: settings that do not fit the buffer fail on every rank, naming call, rank and sizes") {
  std::mutex m;
  std::vector<std::string> what;
  run_local(3, [&](ThreadTransport& t) {
    Communicator<Compressed<TopK, Ring>, ThreadTransport> c{t, {.codec = {.count = 500}}, checked()};
    std::vector<float> x(100, 1.0f);
    try {
      c.allreduce(x);
    } catch (const ValueError& e) {
      std::lock_guard lock(m);
      what.push_back(e.what());
    }
    // The communicator is not broken by a bad argument: the next call works.
    Communicator<Compressed<PowerSGD, Ring>, ThreadTransport> ps{t, {.codec = {.cols = 7}}, checked()};
    try {
      ps.allreduce(x);
    } catch (const ValueError& e) {
      std::lock_guard lock(m);
      what.push_back(e.what());
    }
    std::vector<float> big(600, 1.0f);
    c.allreduce(big);
  });
  REQUIRE(what.size() == 6);
  int topk = 0, psgd = 0;
  for (auto& w : what) {
    topk += w.find("allreduce(f32 x 100, sum) #") == 0 &&
            w.find("(top-k codec): k = 500 is more than the buffer's 100 elements") != std::string::npos;
    psgd += w.find("(powersgd codec): a buffer of 100 elements is not a matrix with 7 columns") != std::string::npos;
  }
  CHECK(topk == 3);
  CHECK(psgd == 3);
}
