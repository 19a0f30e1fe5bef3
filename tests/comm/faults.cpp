// Fault injection on thread ranks (issue 12): mismatched calls, zero-element
// calls, ranks that throw with a non-blocking call in flight, late ranks on
// the native board, counts that overflow, negative timeouts, staggered and
// missing ranks, messages larger than their buffer. Every scenario must end in
// correct data or a named error within its deadline, never a crash or a hang.
// Built like a user's release build (NDEBUG, Meson's default), so the
// defaults tested here are the ones users get; also built with ASan+UBSan and
// with TSan (tests/comm/meson.build), where the use-after-free scenarios
// would be reported even if freed memory stayed mapped.
#include <doctest/doctest.h>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/ordered.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

using namespace weft::comm;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// A buffer that is unmapped when it goes, so a late read of it faults at once
// instead of reading stale heap memory (what a use-after-free usually does).
struct Mapped {
  std::size_t n = 0;
  float* p = nullptr;
  explicit Mapped(std::size_t count, float v) : n(count) {
#if defined(__linux__)
    void* m = mmap(nullptr, n * sizeof(float), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(m != MAP_FAILED);
    p = static_cast<float*>(m);
#else
    p = new float[n];
#endif
    for (std::size_t i = 0; i < n; ++i) p[i] = v;
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
  ~Mapped() {
#if defined(__linux__)
    munmap(p, n * sizeof(float));
#else
    delete[] p;
#endif
  }
  std::span<float> span() { return {p, n}; }
};

// Waits (at most `limit`) until `flag` reaches `want`: a rank that must stay
// alive (not return, which would be reported at once) while others fail.
void hold(const std::atomic<int>& flag, int want, std::chrono::milliseconds limit = 5000ms) {
  const auto until = Clock::now() + limit;
  while (flag.load() < want && Clock::now() < until) std::this_thread::sleep_for(1ms);
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// ---- 1. silent wrong results: mismatches are caught with the default options ----

TEST_CASE("fingerprints are on by default in every build") {
  CHECK(CommOptions{}.fingerprints);
#if defined(NDEBUG)
  MESSAGE("release build (NDEBUG): the defaults checked here are a user's release defaults");
#endif
}

TEST_CASE_TEMPLATE("default options: a reduce-op, same-size dtype, root or count mismatch is named on every rank", A,
                   Ring, Tree, RecursiveDoubling, HalvingDoubling, Ordered<>, Native, Auto) {
  struct Case {
    const char* what;
    std::string want;
  };
  const Case cases[] = {
      {"reduce op", "rank 1 called allreduce(f32 x 64, max), ranks 0,2 called allreduce(f32 x 64, sum)"},
      {"dtype", "rank 1 called allreduce(i32 x 64), ranks 0,2 called allreduce(f32 x 64)"},
      {"root", "rank 1 called broadcast(f32 x 64, root 1), ranks 0,2 called broadcast(f32 x 64, root 0)"},
      {"count", "rank 1 called allreduce(f32 x 65), ranks 0,2 called allreduce(f32 x 64)"},
      {"op", "rank 1 called allgather(f32 x 64), ranks 0,2 called allreduce(f32 x 64)"},
  };
  for (const Case& k : cases) {
    CAPTURE(k.what);
    std::vector<std::string> msgs(3);
    const auto t0 = Clock::now();
    run_local(3, [&](ThreadTransport& t) {
      CommOptions o;  // the defaults, but a bounded wait if the mismatch went unnoticed
      o.timeout = 5s;
      Communicator<A, ThreadTransport> c(t, A{}, o);
      std::vector<float> f(64, float(t.rank() + 1)), f65(65, 1.0f), big(3 * 64);
      std::vector<std::int32_t> i(64, t.rank() + 1);
      try {
        if (std::string(k.what) == "reduce op") c.allreduce(f, t.rank() == 1 ? ReduceOp::max : ReduceOp::sum);
        else if (std::string(k.what) == "dtype" && t.rank() == 1) c.allreduce(i);
        else if (std::string(k.what) == "dtype") c.allreduce(f);
        else if (std::string(k.what) == "count") c.allreduce(std::span<float>(f65.data(), t.rank() == 1 ? 65 : 64));
        else if (std::string(k.what) == "op" && t.rank() == 1) c.allgather(f, big);
        else if (std::string(k.what) == "op") c.allreduce(f);
        else c.broadcast(f, t.rank() == 1 ? 1 : 0);
      } catch (const MismatchError& e) {
        msgs[static_cast<std::size_t>(t.rank())] = e.what();
        CHECK(c.broken());
      } catch (const CommError& e) {
        msgs[static_cast<std::size_t>(t.rank())] = std::string("not a mismatch: ") + e.what();
      }
    });
    CHECK(Clock::now() - t0 < 3s);
    for (auto& m : msgs) CHECK_MESSAGE(has(m, k.want), m, " | want: ", k.want);
  }
}

TEST_CASE("fingerprints can be turned off explicitly, at construction or at run time") {
  run_local(2, [](ThreadTransport& t) {
    CommOptions o;
    o.fingerprints = false;
    Communicator<Ring, ThreadTransport> c(t, Ring{}, o);
    CHECK_FALSE(c.fingerprints());
    c.set_fingerprints(true);
    CHECK(c.fingerprints());
    std::vector<float> v(8, 1.0f);
    c.allreduce(v);
    CHECK(v[0] == 2.0f);
  });
}

// ---- 2. zero-element calls agree before returning ----

TEST_CASE("default options: a 0-element call meeting a 128-element call is named at once") {
  std::vector<std::string> msgs(3);
  const auto t0 = Clock::now();
  run_local(3, [&](ThreadTransport& t) {
    CommOptions o;
    o.timeout = 10s;
    Communicator<Ring, ThreadTransport> c(t, Ring{}, o);
    std::vector<float> v(t.rank() == 1 ? 0 : 128, 1.0f);
    try {
      c.allreduce(v);
    } catch (const MismatchError& e) {
      msgs[static_cast<std::size_t>(t.rank())] = e.what();
    } catch (const CommError& e) {
      msgs[static_cast<std::size_t>(t.rank())] = std::string("not a mismatch: ") + e.what();
    }
  });
  CHECK(Clock::now() - t0 < 3s);
  for (auto& m : msgs)
    CHECK_MESSAGE(has(m, "rank 1 called allreduce(f32 x 0), ranks 0,2 called allreduce(f32 x 128)"), m);
}

TEST_CASE("fingerprints off: a 0-element call still waits for every rank instead of returning alone") {
  std::vector<double> waited(3);
  run_local(3, [&](ThreadTransport& t) {
    CommOptions o;
    o.fingerprints = false;
    o.timeout = 10s;
    Communicator<Ring, ThreadTransport> c(t, Ring{}, o);
    if (t.rank() == 2) std::this_thread::sleep_for(300ms);
    std::vector<float> v;
    const auto t0 = Clock::now();
    c.allreduce(v);
    waited[static_cast<std::size_t>(t.rank())] = std::chrono::duration<double>(Clock::now() - t0).count();
  });
  CHECK(waited[0] > 0.2);
  CHECK(waited[1] > 0.2);
}

TEST_CASE("fingerprints off: a 0-element call meeting a 128-element call ends in an error on every rank") {
  std::vector<std::string> msgs(3);
  std::atomic<int> done{0};
  const auto t0 = Clock::now();
  run_local(3, [&](ThreadTransport& t) {
    CommOptions o;
    o.fingerprints = false;
    o.timeout = 500ms;
    Communicator<Ring, ThreadTransport> c(t, Ring{}, o);
    std::vector<float> v(t.rank() == 1 ? 0 : 128, 1.0f);
    try {
      c.allreduce(v);
      msgs[static_cast<std::size_t>(t.rank())] = "returned without an error";
    } catch (const CommError& e) {
      msgs[static_cast<std::size_t>(t.rank())] = e.what();
    }
    ++done;
    hold(done, 3);  // stay until every rank has its answer (returning is itself reported)
  });
  CHECK(Clock::now() - t0 < 3s);
  CHECK_MESSAGE(has(msgs[1], "ranks 0,2 sent no fingerprint"), msgs[1]);
  for (int r : {0, 2}) CHECK_MESSAGE(has(msgs[static_cast<std::size_t>(r)], "allreduce(f32 x 128, sum) #1"), msgs[static_cast<std::size_t>(r)]);
}

// ---- 3. crashes ----

#if defined(__linux__)
TEST_CASE("a rank that throws with its non-blocking allreduce in flight: no use-after-free, peers end cleanly") {
  for (int trial = 0; trial < 3; ++trial) {
    CAPTURE(trial);
    std::vector<std::string> out(3);
    const auto t0 = Clock::now();
    try {
      run_local(3, [&](ThreadTransport& t) {
        CommOptions o;
        o.timeout = 5s;
        Communicator<Ring, ThreadTransport> c(t, Ring{}, o);
        const std::size_t n = std::size_t{1} << 18;  // 1 MiB
        if (t.rank() == 1) {
          Mapped v(n, 1.0f);
          auto r = c.iallreduce(v.span());
          throw std::runtime_error("boom on rank 1");  // r, then v, go while the allreduce runs
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100 * trial));  // the thrower is first
        std::vector<float> v(n, 1.0f);
        try {
          c.allreduce(v);
          out[static_cast<std::size_t>(t.rank())] = v[0] == 3.0f && v[n - 1] == 3.0f ? "ok" : "wrong data";
        } catch (const PeerFailedError& e) {
          out[static_cast<std::size_t>(t.rank())] = e.what();
        }
      });
      FAIL("run_local returned normally");
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()) == "boom on rank 1");
    }
    CHECK(Clock::now() - t0 < 4s);
    for (int r : {0, 2}) {
      auto& m = out[static_cast<std::size_t>(r)];
      const bool fine = m == "ok" || has(m, "rank 1 (thread rank) failed: boom on rank 1");
      CHECK_MESSAGE(fine, m);
    }
  }
}

TEST_CASE("a late rank on the native board after the others gave up reads no freed buffer") {
  std::vector<std::string> msgs(3);
  std::atomic<int> gave_up{0}, late_done{0};
  const auto t0 = Clock::now();
  run_local(3, [&](ThreadTransport& t) {
    CommOptions o;
    o.fingerprints = false;  // the board itself meets the late rank
    o.timeout = 2s;
    Communicator<Native, ThreadTransport> c(t, Native{}, o);
    const std::size_t n = std::size_t{1} << 18;
    std::string& msg = msgs[static_cast<std::size_t>(t.rank())];
    if (t.rank() != 1) {
      {
        Mapped v(n, 1.0f);
        try {
          c.allreduce(v.span(), ReduceOp::sum, CallOptions{200ms});
          msg = "returned without an error";
        } catch (const CommError& e) {
          msg = e.what();
        }
      }  // unmapped: a peer that still reads it faults
      ++gave_up;
      hold(late_done, 1);
      return;
    }
    hold(gave_up, 2);
    Mapped v(n, 1.0f);
    try {
      c.allreduce(v.span());
      msg = "returned without an error";
    } catch (const CommError& e) {
      msg = e.what();
    }
    ++late_done;
  });
  CHECK(Clock::now() - t0 < 4s);
  for (int r : {0, 2}) CHECK_MESSAGE(has(msgs[static_cast<std::size_t>(r)], "rank 1 did not arrive"), msgs[static_cast<std::size_t>(r)]);
  CHECK_MESSAGE(has(msgs[1], "ranks 0,2 gave up on this native call"), msgs[1]);
}
#endif

TEST_CASE("a request dropped without wait() waits for its call: the buffer holds the result after its scope") {
  std::vector<float> got(2);
  run_local(2, [&](ThreadTransport& t) {
    Communicator<Ring, ThreadTransport> c(t);
    std::vector<float> v(4099, float(t.rank() + 1));
    if (t.rank() == 1) std::this_thread::sleep_for(200ms);
    {
      [[maybe_unused]] auto r = c.iallreduce(v);
    }
    got[static_cast<std::size_t>(t.rank())] = v[4098];
  });
  CHECK(got[0] == 3.0f);
  CHECK(got[1] == 3.0f);
}

TEST_CASE("a count whose bytes overflow size_t is refused with a sentence, and the communicator stays usable") {
  run_local(3, [](ThreadTransport& t) {
    Communicator<Ring, ThreadTransport> c(t);
    float x[4] = {};
    const std::size_t huge = SIZE_MAX / 2;
    CHECK_THROWS_WITH_AS(c.allreduce(x, x, huge), doctest::Contains("the size_t limit"), weft::ValueError);
    CHECK_THROWS_WITH_AS(c.allreduce(x, x, huge), doctest::Contains("allreduce on rank"), weft::ValueError);
    // per-rank blocks: n fits, n x ranks does not
    const std::size_t block = SIZE_MAX / sizeof(float) / 3 + 1;
    CHECK_THROWS_WITH_AS(c.allgather(x, x, block), doctest::Contains("per rank"), weft::ValueError);
    CHECK_THROWS_AS(c.alltoall(x, x, block), weft::ValueError);
    CHECK_FALSE(c.broken());
    c.allreduce(x, x, 4);
    c.barrier();
  });
}

// ---- 4. hangs and blame ----

TEST_CASE("a negative timeout is refused with a sentence, not taken as 'no deadline'") {
  run_local(2, [](ThreadTransport& t) {
    CommOptions bad;
    bad.timeout = -1s;
    CHECK_THROWS_WITH_AS((Communicator<Ring, ThreadTransport>(t, Ring{}, bad)), doctest::Contains("is negative"),
                         weft::ValueError);
    Communicator<Ring, ThreadTransport> c(t);
    CHECK_THROWS_WITH_AS(c.set_timeout(-1ms), doctest::Contains("timeout -0.0 s is negative"), weft::ValueError);
    std::vector<float> v(4, 1.0f);
    const std::string want = "allreduce on rank " + std::to_string(t.rank()) + ": timeout -5.0 s is negative";
    CHECK_THROWS_WITH_AS(c.allreduce(v, ReduceOp::sum, CallOptions{-5s}), doctest::Contains(want.c_str()),
                         weft::ValueError);
    CHECK_FALSE(c.broken());
    c.set_timeout(Duration::max());  // no deadline, said explicitly
    c.allreduce(v);
    CHECK(v[0] == 2.0f);
  });
}

TEST_CASE("staggered arrival: a rank that arrived after another gave up is not blamed") {
  // Ranks 0 and 1 arrive at once with a 400 ms deadline, rank 2 after rank 0
  // has given up (its fingerprint withdrawn), rank 3 never.
  std::vector<std::string> msgs(4);
  std::atomic<int> failed{0};
  const auto t0 = Clock::now();
  CHECK_THROWS_AS(run_local(4,
                            [&](ThreadTransport& t) {
                              Communicator<Ring, ThreadTransport> c(t);
                              if (t.rank() == 3) {
                                hold(failed, 3);
                                return;
                              }
                              if (t.rank() == 2) std::this_thread::sleep_for(700ms);
                              std::vector<float> v(100, 1.0f);
                              try {
                                c.allreduce(v, ReduceOp::sum, CallOptions{400ms});
                              } catch (const CommError& e) {
                                msgs[static_cast<std::size_t>(t.rank())] = e.what();
                                ++failed;
                                throw;
                              }
                            }),
                  CommError);
  CHECK(Clock::now() - t0 < 4s);
  // When ranks 0 and 1 gave up, ranks 2 and 3 had not come; rank 2 then came
  // to a call the others had left: only rank 3 never arrived.
  for (int r : {0, 1}) CHECK_MESSAGE(has(msgs[static_cast<std::size_t>(r)], "ranks 2,3 did not arrive"), msgs[static_cast<std::size_t>(r)]);
  auto& m = msgs[2];
  CHECK_MESSAGE(has(m, "allreduce(f32 x 100, sum) #1 on rank 2: rank 3 did not arrive"), m);
  const bool blames_arrived = has(m, "ranks 0,3") || has(m, "ranks 0,1,3") || has(m, "ranks 1,3");
  CHECK_MESSAGE(!blames_arrived, m);
}

TEST_CASE_TEMPLATE("fingerprints off: the late rank is named, not the ring neighbour each rank waits on", A, Ring,
                   Tree, Native) {
  std::vector<std::string> msgs(4);
  std::atomic<int> failed{0};
  const auto t0 = Clock::now();
  run_local(4, [&](ThreadTransport& t) {
    CommOptions o;
    o.fingerprints = false;
    o.timeout = 500ms;
    Communicator<A, ThreadTransport> c(t, A{}, o);
    if (t.rank() == 2) {
      hold(failed, 3);
      return;
    }
    std::vector<float> v(1000, 1.0f);
    try {
      c.allreduce(v);
    } catch (const CommError& e) {
      msgs[static_cast<std::size_t>(t.rank())] = e.what();
    }
    ++failed;
    hold(failed, 3);  // returning early would be reported as leaving
  });
  CHECK(Clock::now() - t0 < 4s);
  for (int r : {0, 1, 3}) {
    auto& m = msgs[static_cast<std::size_t>(r)];
    CHECK_MESSAGE(has(m, "rank 2 did not arrive (ranks 0,1,3 did)"), m);
  }
}

TEST_CASE("a message larger than the buffer posted for it is a TransportError naming the call") {
  run_local(2, [](ThreadTransport& t) {
    Communicator<Ring, ThreadTransport> c(t);
    if (t.rank() == 0) {
      std::vector<float> big(16, 1.0f);
      c.send(big, 1, 3);
    } else {
      std::vector<float> small(4);
      CHECK_THROWS_WITH_AS(c.recv(small, 0, 3), doctest::Contains("recv from rank 0 (tag 3) on rank 1: ThreadTransport"),
                           TransportError);
    }
  });
}
