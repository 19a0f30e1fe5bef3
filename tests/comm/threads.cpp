// Collectives on the thread transport: every algorithm x 1..8 ranks x sizes x
// dtypes x reduce ops against the naive reference, deterministic mode, and
// the failure paths (mismatch, missing rank, failing rank, broken
// communicator), each bounded by a deadline. Also built with
// -fsanitize=thread (WEFT_COMM_TEST_QUICK shrinks the matrix there).
// Counts heap allocations made by threads that opt in, to prove steady-state
// collectives allocate nothing (not in the TSan build, which owns operator new).
#if !defined(WEFT_COMM_TEST_QUICK)
#include "../alloc_counter.hpp"  // first: it replaces operator new for this executable
#endif

#include <doctest/doctest.h>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/ordered.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>

#include <atomic>
#include <fstream>
#include <cstdlib>
#include <new>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "suite.hpp"

using namespace weft::comm;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// The TSan build checks the transport's code paths (point-to-point, reduce
// from the peer's buffer, native board, split) through fewer policies.
#if defined(WEFT_COMM_TEST_QUICK)
#define WEFT_COMM_POLICIES Ring, RecursiveDoubling, Hierarchical<>, Native
#define WEFT_COMM_MATRIX_POLICIES WEFT_COMM_POLICIES
#else
#define WEFT_COMM_POLICIES Ring, Tree, RecursiveDoubling, HalvingDoubling, Hierarchical<>, Native, Auto
#define WEFT_COMM_MATRIX_POLICIES \
  WEFT_COMM_POLICIES, Hierarchical<Tree, RecursiveDoubling>, testing::HierarchicalLeaders, Ordered<Ring>
#endif

#if defined(WEFT_COMM_TEST_QUICK)
constexpr int max_ranks = 4;
const std::vector<std::size_t> sizes = {0, 1, 13};
constexpr std::size_t large = std::size_t{1} << 16;
#else
constexpr int max_ranks = 8;
const std::vector<std::size_t> sizes = {0, 1, 7, 1031};  // 7, 1031: primes, not divisible by most rank counts
constexpr std::size_t large = std::size_t{4} << 20;      // 16 MiB of f32 per rank
#endif

using testing::small_chunks;

// Runs fn(comm) on p ranks and returns each rank's message.
template <class A, class F>
std::vector<std::string> on_ranks(int p, F&& fn, CommOptions opts = {}, A algo = {}) {
  std::vector<std::string> errs(static_cast<std::size_t>(p));
  run_local(
      p,
      [&](ThreadTransport& t) {
        Communicator<A, ThreadTransport> c(t, algo, opts);
        errs[static_cast<std::size_t>(t.rank())] = fn(c);
      },
      LocalOptions{2});  // two ranks per emulated node: Hierarchical runs two-level
  return errs;
}

CommOptions checked() { return testing::checked(20s); }

}  // namespace

TEST_CASE_TEMPLATE("every collective x dtype x reduce op matches the reference", A, WEFT_COMM_MATRIX_POLICIES) {
  for (int p = 1; p <= max_ranks; ++p) {
    CAPTURE(p);
    auto errs = on_ranks<A>(p, [](auto& c) { return testing::erased(c, [](auto& e) { return testing::check_matrix(e, sizes); }); }, checked(), small_chunks<A>());
    for (int r = 0; r < p; ++r) CHECK_MESSAGE(errs[static_cast<std::size_t>(r)] == "", "rank ", r);
  }
}

TEST_CASE_TEMPLATE("the collective descriptors' exact inputs and checks hold on every algorithm", A, WEFT_COMM_POLICIES,
                   Ordered<Ring>) {
  for (int p = 1; p <= max_ranks; ++p) {
    CAPTURE(p);
    auto errs = on_ranks<A>(
        p,
        [](auto& c) {
          return testing::erased(c, [](auto& e) {
            std::string x = testing::check_descriptors<float>(e, 7) + testing::check_descriptors<weft::bfloat16>(e, 1031) +
                            testing::check_descriptors<std::uint8_t>(e, 13);
            return x;
          });
        },
        checked(), small_chunks<A>());
    for (int r = 0; r < p; ++r) CHECK_MESSAGE(errs[static_cast<std::size_t>(r)] == "", "rank ", r);
  }
}

TEST_CASE_TEMPLATE("large buffers (16 MiB per rank)", A, WEFT_COMM_POLICIES) {
  for (int p : {2, 3, 4}) {
    CAPTURE(p);
    auto errs = on_ranks<A>(p, [](auto& c) { return testing::erased(c, [](auto& e) { return testing::check_large(e, large); }); }, checked());
    for (int r = 0; r < p; ++r) CHECK_MESSAGE(errs[static_cast<std::size_t>(r)] == "", "rank ", r);
  }
}

TEST_CASE_TEMPLATE("deterministic mode: bitwise equal to the rank-order fold for every algorithm", A, WEFT_COMM_POLICIES) {
  CommOptions o = checked();
  o.deterministic = true;
  for (int p = 1; p <= max_ranks; ++p) {
    CAPTURE(p);
    for (std::size_t chunk : {std::size_t{64}, std::size_t{1} << 20}) {
      A algo = small_chunks<A>();
      if constexpr (requires { algo.chunk_bytes; }) algo.chunk_bytes = chunk;
      auto errs = on_ranks<A>(
          p,
          [](auto& c) {
            std::string e[] = {testing::erased(c, [](auto& e) { return testing::check_deterministic<float>(e, 1000, 11); }),
                               testing::erased(c, [](auto& e) { return testing::check_deterministic<double>(e, 777, 12); }),
                               testing::erased(c, [](auto& e) { return testing::check_deterministic<weft::bfloat16>(e, 515, 13); }),
                               testing::erased(c, [](auto& e) { return testing::check_deterministic<weft::half>(e, 64, 14); })};
            for (auto& x : e)
              if (!x.empty()) return x;
            return std::string();
          },
          o, algo);
      for (int r = 0; r < p; ++r) CHECK_MESSAGE(errs[static_cast<std::size_t>(r)] == "", "rank ", r);
    }
  }
}

// The policy itself, without the option: its communicator reports deterministic
// mode (and fingerprints it) and every reduction is the rank-order fold.
TEST_CASE_TEMPLATE("Ordered<Inner>: bitwise equal to the rank-order fold whatever the inner algorithm", A, Ordered<Ring>,
                   Ordered<HalvingDoubling>, Ordered<Hierarchical<>>) {
  for (int p = 1; p <= max_ranks; ++p) {
    CAPTURE(p);
    auto errs = on_ranks<A>(
        p,
        [](auto& c) {
          if (!c.deterministic()) return std::string("deterministic() is false for an Ordered policy");
          std::string e[] = {testing::erased(c, [](auto& e) { return testing::check_deterministic<float>(e, 1000, 11); }),
                             testing::erased(c, [](auto& e) { return testing::check_deterministic<weft::bfloat16>(e, 515, 13); })};
          return e[0] + e[1];
        },
        checked());
    for (int r = 0; r < p; ++r) CHECK_MESSAGE(errs[static_cast<std::size_t>(r)] == "", "rank ", r);
  }
}

TEST_CASE("Native on threads folds in rank order even without deterministic mode") {
  for (int p : {2, 3, 5, 8}) {
    auto errs = on_ranks<Native>(p, [](auto& c) { return testing::erased(c, [](auto& e) { return testing::check_deterministic<float>(e, 3001, 21); }); }, checked());
    for (auto& e : errs) CHECK(e == "");
  }
}

TEST_CASE("a native collective names the ranks that did not arrive") {
  std::vector<std::string> msgs(3);
  std::atomic<int> failed{0};
  CHECK_THROWS_AS(run_local(3,
                            [&](ThreadTransport& t) {
                              CommOptions o;
                              o.fingerprints = false;  // the board itself knows who is missing
                              o.timeout = 300ms;
                              Communicator<Native, ThreadTransport> c(t, Native{}, o);
                              if (t.rank() == 1) {
                                auto until = Clock::now() + 5s;
                                while (failed.load() < 2 && Clock::now() < until) std::this_thread::sleep_for(1ms);
                                return;
                              }
                              std::vector<float> v(64, 1.0f);
                              try {
                                c.allreduce(v);
                              } catch (const CommError& e) {
                                msgs[static_cast<std::size_t>(t.rank())] = e.what();
                                ++failed;
                                throw;
                              }
                            }),
                  CommError);
  for (int r : {0, 2}) CHECK_MESSAGE(msgs[static_cast<std::size_t>(r)].find("rank 1 did not arrive") != std::string::npos, msgs[static_cast<std::size_t>(r)]);
}

#if !defined(WEFT_COMM_TEST_QUICK)
TEST_CASE_TEMPLATE("steady-state collectives allocate nothing", A, WEFT_COMM_POLICIES) {
  for (bool deterministic : {false, true}) {
    CommOptions o = checked();
    o.deterministic = deterministic;
    std::vector<long> counts(4);
    run_local(
        4,
        [&](ThreadTransport& t) {
          Communicator<A, ThreadTransport> c(t, small_chunks<A>(), o);
          std::vector<float> a(3001, 1.0f), b(3001), g(3001 * 4), part(3001);
          std::vector<float> g2(g.size());
          auto steady = [&] {
            c.allreduce(a, b);
            c.allreduce(b, ReduceOp::avg);
            c.reduce_scatter(g, part);
            c.allgather(part, g);
            c.broadcast(a, 1);
            c.reduce(a, b, 2, ReduceOp::max);
            c.alltoall(g, g2);
            c.barrier();
          };
          steady();  // warm-up: workspaces and request pools grow here
          counts[static_cast<std::size_t>(t.rank())] = alloc_counter::on_this_thread([&] {
            for (int i = 0; i < 5; ++i) steady();
          });
        },
        LocalOptions{2});
    CAPTURE(deterministic);
    long total = 0;
    for (long n : counts) total += n;
    CHECK(total == 0);
  }
}
#endif

TEST_CASE("non-blocking collectives overlap and complete in issue order") {
  for (int p : {1, 2, 3, 5}) {
    auto errs = on_ranks<Ring>(p, [](auto& c) -> std::string {
      const int n = 4099, q = c.size();
      std::vector<float> a(n, 1.0f), b(n, float(c.rank())), g(static_cast<std::size_t>(n * q));
      auto ra = c.iallreduce(a);
      auto rb = c.iallreduce(b, ReduceOp::max);
      std::vector<float> mine(n, float(c.rank()));
      auto rg = c.iallgather(mine, g);
      auto bar = c.ibarrier();
      std::vector<float> red(c.rank() == 0 ? n : 0), all(static_cast<std::size_t>(q)), one(1, float(c.rank()));
      std::vector<float> sc(static_cast<std::size_t>(c.rank() == q - 1 ? q : 0)), mine1(1), t_in(static_cast<std::size_t>(q)), t_out(static_cast<std::size_t>(q));
      for (int k = 0; k < q && c.rank() == q - 1; ++k) sc[static_cast<std::size_t>(k)] = float(10 * k);
      for (int k = 0; k < q; ++k) t_in[static_cast<std::size_t>(k)] = float(100 * c.rank() + k);
      auto rr = c.ireduce(mine, red, 0);
      auto rgat = c.igather(one, all, q - 1);
      auto rsc = c.iscatter(sc, mine1, q - 1);
      auto ra2a = c.ialltoall(t_in, t_out);
      double busy = 0;
      for (int i = 0; i < 1000; ++i) busy += i * 0.5;  // computation while communicating
      while (!ra.test()) std::this_thread::yield();
      rb.wait();
      rg.wait();
      bar.wait();
      rr.wait();
      rgat.wait();
      rsc.wait();
      ra2a.wait();
      if (c.rank() == 0 && red[0] != float(q * (q - 1) / 2)) return "ireduce " + std::to_string(red[0]);
      if (c.rank() == q - 1)
        for (int k = 0; k < q; ++k)
          if (all[static_cast<std::size_t>(k)] != float(k)) return "igather";
      if (mine1[0] != float(10 * c.rank())) return "iscatter";
      for (int k = 0; k < q; ++k)
        if (t_out[static_cast<std::size_t>(k)] != float(100 * k + c.rank())) return "ialltoall";
      c.allreduce(a);  // a blocking call after non-blocking ones
      for (int i = 0; i < n; ++i) {
        if (a[static_cast<std::size_t>(i)] != float(q * q)) return "iallreduce then allreduce: " + std::to_string(a[0]);
        if (b[static_cast<std::size_t>(i)] != float(q - 1)) return "iallreduce max";
      }
      for (int i = 0; i < n * q; ++i)
        if (g[static_cast<std::size_t>(i)] != float(i / n)) return "iallgather";
      return busy > 0 ? "" : "?";
    }, checked());
    for (auto& e : errs) CHECK(e == "");
  }
}

TEST_CASE("split makes independent sub-communicators") {
  auto errs = std::vector<std::string>(6);
  run_local(6, [&](ThreadTransport& t) {
    ThreadTransport sub = t.split(t.rank() % 2, -t.rank(), Clock::now() + 10s);  // reversed order by key
    Communicator<Ring, ThreadTransport> c(sub, Ring{}, checked());
    std::vector<std::int32_t> v(5, t.rank());
    c.allreduce(v);
    int want = t.rank() % 2 ? 1 + 3 + 5 : 0 + 2 + 4;
    std::string e;
    if (sub.size() != 3) e = "size " + std::to_string(sub.size());
    else if (sub.rank() != ((t.rank() % 2 ? 5 : 4) - t.rank()) / 2) e = "rank " + std::to_string(sub.rank());
    else if (v[0] != want) e = "sum " + std::to_string(v[0]);
    errs[static_cast<std::size_t>(t.rank())] = e;
  });
  for (auto& e : errs) CHECK(e == "");
}

// ---- failure paths: each must end with the right error within a few seconds ----

TEST_CASE("mismatched calls fail on every rank naming the ranks and their calls") {
  std::vector<std::string> msgs(4);
  auto t0 = Clock::now();
  CHECK_THROWS_AS(run_local(4,
                            [&](ThreadTransport& t) {
                              Communicator<Ring, ThreadTransport> c(t, Ring{}, checked());
                              std::vector<float> v(t.rank() == 2 ? 1025 : 262144, 1.0f);
                              try {
                                c.allreduce(v);
                              } catch (const MismatchError& e) {
                                msgs[static_cast<std::size_t>(t.rank())] = e.what();
                                CHECK(c.broken());
                                CHECK_THROWS_AS(c.barrier(), BrokenError);  // later calls fail at once
                                throw;
                              }
                            }),
                  MismatchError);
  CHECK(Clock::now() - t0 < 5s);
  for (auto& m : msgs)
    CHECK_MESSAGE(m.find("rank 2 called allreduce(f32 x 1025), ranks 0,1,3 called allreduce(f32 x 262144)") !=
                      std::string::npos,
                  m);
}

TEST_CASE("a rank that never arrives: the others time out naming it") {
  std::vector<std::string> msgs(4);
  std::atomic<int> failed{0};
  auto t0 = Clock::now();
  CHECK_THROWS_AS(run_local(4,
                            [&](ThreadTransport& t) {
                              CommOptions o = checked();
                              o.timeout = 30s;  // the per-call override below wins
                              Communicator<Tree, ThreadTransport> c(t, Tree{}, o);
                              if (t.rank() == 3) {  // alive, but never calls: wait until the others gave up
                                auto until = Clock::now() + 5s;
                                while (failed.load() < 3 && Clock::now() < until) std::this_thread::sleep_for(1ms);
                                return;
                              }
                              std::vector<double> v(100, 1.0);
                              try {
                                c.allreduce(v, ReduceOp::sum, CallOptions{500ms});
                              } catch (const CommError& e) {  // the first to time out; the rest see its failure
                                msgs[static_cast<std::size_t>(t.rank())] = e.what();
                                ++failed;
                                throw;
                              }
                            }),
                  TimeoutError);
  CHECK(Clock::now() - t0 < 4s);
  for (int r = 0; r < 3; ++r) {
    auto& m = msgs[static_cast<std::size_t>(r)];
    CHECK_MESSAGE(m.find("allreduce(f64 x 100, sum) #1") != std::string::npos, m);
    CHECK_MESSAGE(m.find("rank 3 did not arrive") != std::string::npos, m);
  }
}

TEST_CASE("without fingerprints a missing rank still ends in a bounded error") {
  std::atomic<int> failed{0};
  auto t0 = Clock::now();
  CHECK_THROWS_AS(run_local(3,
                            [&](ThreadTransport& t) {
                              CommOptions o;
                              o.fingerprints = false;
                              o.timeout = 400ms;
                              Communicator<Ring, ThreadTransport> c(t, Ring{}, o);
                              if (t.rank() == 1) {
                                auto until = Clock::now() + 5s;
                                while (failed.load() < 1 && Clock::now() < until) std::this_thread::sleep_for(1ms);
                                return;
                              }
                              std::vector<float> v(64, 1.0f);
                              try {
                                c.allreduce(v);
                              } catch (const CommError&) {
                                ++failed;
                                throw;
                              }
                            }),
                  CommError);
  CHECK(Clock::now() - t0 < 3s);
}

TEST_CASE("a rank that returns early is named at once, not after the deadline") {
  std::string msg;
  auto t0 = Clock::now();
  CHECK_THROWS_AS(run_local(3,
                            [&](ThreadTransport& t) {
                              CommOptions o = checked();
                              o.timeout = 60s;
                              Communicator<Ring, ThreadTransport> c(t, Ring{}, o);
                              if (t.rank() == 2) return;
                              std::vector<float> v(10, 1.0f);
                              try {
                                c.allreduce(v);
                              } catch (const PeerFailedError& e) {
                                if (t.rank() == 0) msg = e.what();
                                throw;
                              }
                            }),
                  PeerFailedError);
  CHECK(Clock::now() - t0 < 5s);
  CHECK_MESSAGE(msg.find("rank 2 did not arrive") != std::string::npos, msg);
}

TEST_CASE("an exception on one rank makes the others fail fast; run_local rethrows the origin") {
  std::vector<std::string> msgs(4);
  auto t0 = Clock::now();
  try {
    run_local(4, [&](ThreadTransport& t) {
      CommOptions o = checked();
      o.timeout = 60s;
      Communicator<HalvingDoubling, ThreadTransport> c(t, HalvingDoubling{}, o);
      std::vector<float> v(1 << 16, 1.0f);
      c.allreduce(v);
      if (t.rank() == 1) throw std::runtime_error("boom on rank 1");
      try {
        c.allreduce(v);
      } catch (const PeerFailedError& e) {
        msgs[static_cast<std::size_t>(t.rank())] = e.what();
        throw;
      }
    });
    FAIL("run_local returned normally");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "boom on rank 1");
  }
  CHECK(Clock::now() - t0 < 5s);
  for (int r : {0, 2, 3})
    CHECK_MESSAGE(msgs[static_cast<std::size_t>(r)].find("rank 1 (thread rank) failed: boom on rank 1") != std::string::npos,
                  msgs[static_cast<std::size_t>(r)]);
}

TEST_CASE("receive from any rank and probe (AnySource)") {
  for (int p : {1, 2, 3, 5}) {
    CAPTURE(p);
    auto errs = on_ranks<Ring>(p, [](auto& c) { return testing::check_any_source(c); }, checked());
    for (int r = 0; r < p; ++r) CHECK_MESSAGE(errs[static_cast<std::size_t>(r)] == "", "rank ", r);
  }
  // Nobody sends: the wait ends at its deadline, saying so.
  run_local(2, [](ThreadTransport& t) {
    Communicator<Ring, ThreadTransport> c(t, Ring{}, checked());
    if (c.rank() == 0) {
      std::vector<float> v(4);
      CHECK(!c.probe(3));
      CHECK_THROWS_WITH_AS(c.recv_any(v, 3, CallOptions{100ms}), doctest::Contains("recv from any rank (tag 3) on rank 0 timed out: no rank sent"),
                           TimeoutError);
    }
    c.barrier();
  });
}

TEST_CASE("bad arguments name the call and the rank") {
  run_local(2, [&](ThreadTransport& t) {
    Communicator<Ring, ThreadTransport> c(t, Ring{}, checked());
    std::vector<float> a(4), b(5);
    CHECK_THROWS_WITH_AS(c.allreduce(a, b), doctest::Contains("allreduce on rank"), weft::ValueError);
    CHECK_THROWS_WITH_AS(c.broadcast(a, 2), doctest::Contains("root 2 is not a rank"), weft::ValueError);
    CHECK_THROWS_AS(c.send(a, t.rank(), 0), weft::ValueError);
    CHECK_THROWS_AS(c.send(a, 1 - t.rank(), 99999), weft::ValueError);
    CHECK_FALSE(c.broken());  // argument errors do not break the communicator
    c.barrier();
  });
}

TEST_CASE("Auto picks latency-bound algorithms for small messages and bandwidth-bound ones for large") {
  Auto a;
  a.model = CostModel::threads();
  CHECK(std::string(a.choice(Collective::allreduce, 8, 8)) != "ring");
  CHECK(std::string(a.choice(Collective::allreduce, std::size_t{64} << 20, 8)) != "tree");
  CHECK(std::string(a.choice(Collective::allreduce, std::size_t{64} << 20, 8)) != "recursive_doubling");
  CHECK(Ring::cost(Collective::allreduce, 1 << 20, 4, *a.model) < Tree::cost(Collective::allreduce, 1 << 20, 4, *a.model));
}

TEST_CASE_TEMPLATE("in-place alltoall equals the out-of-place result", A, WEFT_COMM_POLICIES) {
  for (int p : {2, 3, 4}) {
    CAPTURE(p);
    const std::size_t n = 5;
    std::vector<std::vector<std::int32_t>> got(static_cast<std::size_t>(p)), want(static_cast<std::size_t>(p));
    run_local(p, [&](ThreadTransport& t) {
      Communicator<A, ThreadTransport> c{t};
      const int r = c.rank();
      std::vector<std::int32_t> buf(n * static_cast<std::size_t>(p));
      for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = r * 1000 + static_cast<std::int32_t>(i);
      c.alltoall(buf.data(), buf.data(), n);  // in place
      got[static_cast<std::size_t>(r)] = buf;
      // block k of the result is block r of rank k's input: k * 1000 + r * n + j
      auto& w = want[static_cast<std::size_t>(r)];
      for (int k = 0; k < p; ++k)
        for (std::size_t j = 0; j < n; ++j) w.push_back(k * 1000 + r * static_cast<std::int32_t>(n) + static_cast<std::int32_t>(j));
    });
    for (int r = 0; r < p; ++r) CHECK(got[static_cast<std::size_t>(r)] == want[static_cast<std::size_t>(r)]);
  }
}

#if defined(__linux__)
TEST_CASE("run_local bind_cores: each rank on one CPU, ranks spread over the allowed CPUs, caller restored") {
  cpu_set_t before;
  REQUIRE(pthread_getaffinity_np(pthread_self(), sizeof before, &before) == 0);
  const int k = CPU_COUNT(&before);
  const int p = 3;
  std::vector<int> cpu(p, -1), count(p, 0);
  run_local(
      p,
      [&](ThreadTransport& t) {
        cpu_set_t s;
        pthread_getaffinity_np(pthread_self(), sizeof s, &s);
        count[static_cast<std::size_t>(t.rank())] = CPU_COUNT(&s);
        for (int c = 0; c < CPU_SETSIZE; ++c)
          if (CPU_ISSET(c, &s)) cpu[static_cast<std::size_t>(t.rank())] = c;
        // A thread the rank starts (a progress thread) inherits the pin.
        std::thread([&] {
          cpu_set_t inner;
          pthread_getaffinity_np(pthread_self(), sizeof inner, &inner);
          CHECK(CPU_COUNT(&inner) == 1);
        }).join();
      },
      {.bind_cores = true});
  for (int r = 0; r < p; ++r) {
    CHECK(count[static_cast<std::size_t>(r)] == 1);
    CHECK(CPU_ISSET(cpu[static_cast<std::size_t>(r)], &before));
  }
  if (k >= 2) CHECK(cpu[0] != cpu[1]);
  if (k >= 3) CHECK(cpu[2] != cpu[0]);
  if (k == 2) CHECK(cpu[2] == cpu[0]);  // r mod k
  cpu_set_t after;
  REQUIRE(pthread_getaffinity_np(pthread_self(), sizeof after, &after) == 0);
  CHECK(CPU_EQUAL(&before, &after));
}

TEST_CASE("more runnable threads than CPUs mark the run contended; contended waiters sleep at once") {
  detail::Contention c;
  detail::Bell bell;
  const detail::SpinPolicy sp;
  cpu_set_t before;
  REQUIRE(pthread_getaffinity_np(pthread_self(), sizeof before, &before) == 0);
  if (CPU_COUNT(&before) < 2) {
    MESSAGE("this thread may run on one CPU only: a pinned waiter always spins, test skipped");
    return;
  }
  // No spins, no yields (an oversubscribed world's policy): it sleeps from the first check on.
  {
    detail::Contention quiet;
    detail::SpinPolicy none;
    none.spins = 0, none.yields = 0, none.yield_ns = 0;
    long checks = 0;
    WaitStatus s = detail::wait_until(bell, none, quiet, Deadline(Clock::now() + 5ms), [&] { return ++checks < 0; },
                                      [] { return WaitStatus::done; });
    CHECK(s == WaitStatus::timed_out);
    CHECK(checks < 20);
  }
  // Contended: wait_until neither spins nor yields, it only re-checks around its sleeps.
  c.until_ns.store(detail::Contention::now_ns() + 10'000'000'000, std::memory_order_relaxed);
  long checks = 0;
  WaitStatus s = detail::wait_until(bell, sp, c, Deadline(Clock::now() + 5ms), [&] { return ++checks < 0; },
                                    [] { return WaitStatus::done; });
  CHECK(s == WaitStatus::timed_out);
  CHECK(checks < 20);
  // Not contended: it spins first (sp.spins checks at least).
  detail::Contention quiet;
  checks = 0;
  s = detail::wait_until(bell, sp, quiet, Deadline(Clock::now() + 5ms), [&] { return ++checks < 0; },
                         [] { return WaitStatus::done; });
  CHECK(s == WaitStatus::timed_out);
  if (quiet.until_ns.load() == 0) CHECK(checks >= sp.spins);  // (unless this machine is busy right now)
  // Contended but pinned to one CPU: it spins (no peer can take its core).
  {
    int cpu = 0;
    while (!CPU_ISSET(cpu, &before)) ++cpu;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    REQUIRE(pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0);
    std::this_thread::sleep_for(20ms);  // a new window: the waiter reads its affinity again
    checks = 0;
    s = detail::wait_until(bell, sp, c, Deadline(Clock::now() + 5ms), [&] { return ++checks < 0; },
                           [] { return WaitStatus::done; });
    REQUIRE(pthread_setaffinity_np(pthread_self(), sizeof before, &before) == 0);
    CHECK(s == WaitStatus::timed_out);
    CHECK(checks >= sp.spins);
    std::this_thread::sleep_for(20ms);  // and back: movable again at the next window
    CHECK(c.contended());
  }

  // More busy threads than CPUs: the run is marked contended within a few windows.
  const int cpus = static_cast<int>(std::thread::hardware_concurrency());
  if (!std::ifstream("/proc/loadavg") || cpus < 1 || cpus > 64) {
    MESSAGE("no /proc/loadavg here (or over 64 CPUs): contention detection part skipped");
    return;
  }
  detail::Contention shared;
  bool seen = false;
  {
    std::atomic<bool> stop{false};
    std::vector<std::thread> busy;
    for (int i = 0; i <= cpus; ++i)
      busy.emplace_back([&] {
        while (!stop.load(std::memory_order_relaxed)) detail::cpu_relax();
      });
    const auto until = Clock::now() + 3s;
    while (!seen && Clock::now() < until) {
      std::this_thread::sleep_for(1ms);
      seen = shared.contended();
    }
    stop.store(true);
    for (auto& t : busy) t.join();
  }
  CHECK(seen);
}
#endif
