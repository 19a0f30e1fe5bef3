// parallel::ParameterServer on thread ranks: BSP against DataParallel, SSP's
// staleness bound from the read log and from the workers' own counters,
// sparse rows, placement, server-side optimizers against naive loops, and
// faults (a worker that throws or hangs, a server that hangs or dies).
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <string>
#include <weft/comm/run_local.hpp>
#include <weft/parallel/mesh.hpp>

#include "parameter_server_suite.hpp"

using namespace weft;
using namespace ps_suite;
using comm::ThreadTransport;

namespace {

std::vector<float> data_parallel_reference(const Data& data, int W) {
  std::vector<float> out;
  std::mutex mu;
  comm::run_local(W, [&](ThreadTransport& t) {
    auto v = dp_suite::data_parallel(t, data, false);
    std::lock_guard lock(mu);
    if (t.rank() == 0) out = v;
  });
  return out;
}

template <class F>
std::vector<std::vector<float>> per_rank(int p, F&& f) {
  std::vector<std::vector<float>> out(static_cast<std::size_t>(p));
  comm::run_local(p, [&](ThreadTransport& t) { out[static_cast<std::size_t>(t.rank())] = f(t); });
  return out;
}

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

}  // namespace

TEST_CASE("placement: key ranges cut evenly, large tensors split, sparse tables by rows") {
  std::vector<ps::Key> keys{{"big", 1000, 1, false}, {"small", 10, 1, false}, {"emb", 101, 4, true}};
  ps::Placement pl(keys, 3);
  // dense 1010 elements over 3 servers: 336, 337, 337
  CHECK(pl.pieces_of(0).size() == 3);  // "big" split across all three
  std::size_t dense[3] = {0, 0, 0};
  for (const ps::Piece& p : pl.pieces())
    if (!keys[p.key].sparse) dense[p.server] += p.end - p.begin;
  CHECK(dense[0] == 336);
  CHECK(dense[1] == 337);
  CHECK(dense[2] == 337);
  // every element of every key placed exactly once, in order
  for (std::size_t k = 0; k < keys.size(); ++k) {
    std::size_t at = 0;
    for (std::size_t pi : pl.pieces_of(k)) {
      CHECK(pl.pieces()[pi].begin == at);
      at = pl.pieces()[pi].end;
    }
    CHECK(at == keys[k].rows * (keys[k].sparse ? 1 : keys[k].cols));
  }
  const std::string d = pl.describe({0, 1, 2});
  CHECK(contains(d, "server 0 (rank 0)"));
  CHECK(contains(d, "big[0:336)"));
  CHECK(contains(d, "emb rows[0:33)"));
  CHECK_THROWS_WITH_AS(ps::Placement({{"a", 3, 1, false}, {"a", 2, 1, false}}, 2), doctest::Contains("two keys are named 'a'"),
                       ValueError);
  CHECK_THROWS_WITH_AS(ps::Roles::count(4, 4), doctest::Contains("at least one server and one worker"), ValueError);
  CHECK_THROWS_WITH_AS(ps::Roles::of({0, 0}, 3), doctest::Contains("listed twice"), ValueError);
  ps::Roles r = ps::Roles::of({3, 1}, 5);
  CHECK(r.servers == std::vector<int>{1, 3});
  CHECK(r.workers == std::vector<int>{0, 2, 4});
}

TEST_CASE("BSP on 1 server x 2 workers and 2 servers x 4 workers equals DataParallel with the same global batch") {
  const Data data;
  for (auto [servers, workers] : {std::pair{1, 2}, std::pair{2, 4}}) {
    CAPTURE(servers);
    CAPTURE(workers);
    const auto ref = data_parallel_reference(data, workers);
    auto got = per_rank(servers + workers, [&](ThreadTransport& t) { return bsp_train(t, data, servers, true); });
    for (int r = servers; r < servers + workers; ++r) dp_suite::check_close(got[static_cast<std::size_t>(r)], ref);
    // SGD with momentum on the servers: the shard gradients summed and divided by W, as one rank computes it
    const auto sgd_ref = dp_suite::shards_in_rank_order_sgd(data, workers);
    got = per_rank(servers + workers, [&](ThreadTransport& t) { return bsp_train(t, data, servers, false); });
    for (int r = servers; r < servers + workers; ++r) dp_suite::check_close(got[static_cast<std::size_t>(r)], sgd_ref);
    // the same with each step's pushes and clock sent without waiting (push_async, clock_async)
    got = per_rank(servers + workers, [&](ThreadTransport& t) { return bsp_train(t, data, servers, true, true); });
    for (int r = servers; r < servers + workers; ++r) dp_suite::check_close(got[static_cast<std::size_t>(r)], ref);
  }
}

TEST_CASE("Handle += joins requests of one instance and refuses another instance's") {
  comm::run_local(2, [&](ThreadTransport& t) {
    using PS = parallel::ParameterServer<parallel::ASP, ThreadTransport>;
    PS a(t, ps::Roles::count(1, 2), {{"x", 8, 1, false}}, {}, {.update = nn::SGDOptions{.lr = 1.0f}});
    if (a.is_server()) return a.serve();
    std::vector<float> g(8, 1.0f), v(8, 0.0f);
    PS::Handle h = a.push(0, g);
    h += a.push(0, g);
    h += PS::Handle{};  // an empty handle joins as nothing
    h.wait();
    a.pull(0, v).wait();
    CHECK(v[0] == -2.0f);  // both pushes applied: 0 - 1 - 1
    a.leave();
  });
  // two instances live at once on one transport (constructed in the same order on every rank)
  comm::run_local(2, [&](ThreadTransport& t) {
    using PS = parallel::ParameterServer<parallel::ASP, ThreadTransport>;
    PS a(t, ps::Roles::count(1, 2), {{"x", 8, 1, false}}, {}, {.update = nn::SGDOptions{.lr = 1.0f}});
    PS b(t, ps::Roles::count(1, 2), {{"y", 8, 1, false}}, {}, {.update = nn::SGDOptions{.lr = 1.0f}});
    if (a.is_server()) {
      a.start();
      b.start();
      a.finish();
      b.finish();
      return;
    }
    std::vector<float> g(8, 1.0f);
    PS::Handle h = a.push(0, g);
    PS::Handle k = b.push(0, g);
    CHECK_THROWS_WITH_AS(h += std::move(k), doctest::Contains("different ParameterServer instances"), ValueError);
    h.wait();
    k.wait();
    a.leave();
    b.leave();
  });
}

TEST_CASE("instances on one transport: in sequence, and two live at once, each serving only its own requests") {
  for (auto [servers, workers] : {std::pair{1, 2}, std::pair{2, 4}}) {
    CAPTURE(servers);
    std::atomic<long> wrong{0};
    comm::run_local(servers + workers, [&, s = servers](ThreadTransport& t) {
      wrong += in_sequence(t, s);
      wrong += two_at_once(t, s);
      wrong += in_sequence(t, s);  // the tag ranges the live pair held are free again
    });
    CHECK(wrong.load() == 0);
  }
  // instances built with different tag_base values still take disjoint ranges;
  // a tag_base inside a live instance's range is refused on every rank
  comm::run_local(2, [&](ThreadTransport& t) {
    using P = parallel::ParameterServer<parallel::ASP, ThreadTransport>;
    P a(t, ps::Roles::count(1, 2), {{"x", 4, 1, false}}, {}, {});
    // b's base is not a multiple of the span away from a's: the slot after the one given out last (a's)
    // overlaps a's range, and must be passed over
    const comm::Tag span = ps::detail::tag_span;
    const comm::Tag bb = a.tag_base() >= 0x6000 + 3 * span ? a.tag_base() - 2 * span - 512 : a.tag_base() - 512;
    P b(t, ps::Roles::count(1, 2), {{"x", 4, 1, false}}, {}, {.tag_base = bb});
    CHECK(std::max(a.tag_base(), b.tag_base()) - std::min(a.tag_base(), b.tag_base()) >= ps::detail::tag_span);
    CHECK_THROWS_WITH_AS(P(t, ps::Roles::count(1, 2), {{"x", 4, 1, false}}, {}, {.tag_base = a.tag_base() + 100}),
                         doctest::Contains("that a live instance uses"), ValueError);
    if (a.is_server()) {
      a.start();
      b.start();
      a.finish();
      b.finish();
    } else {
      a.leave();
      b.leave();
    }
  });
}

TEST_CASE("roles from a mesh axis: each node's first rank serves the workers beside it") {
  std::atomic<long> wrong{0};
  comm::run_local(6, [&](ThreadTransport& t) {
    parallel::Mesh<ThreadTransport> mesh(t, {{"node", 2}, {"local", 3}});
    const ps::Roles by_local = ps::Roles::from_mesh(mesh, "local");
    CHECK(by_local.servers == std::vector<int>{0, 3});
    CHECK(by_local.workers == std::vector<int>{1, 2, 4, 5});
    const ps::Roles by_node = ps::Roles::from_mesh(mesh, "node");
    CHECK(by_node.servers == std::vector<int>{0, 1, 2});
    CHECK(ps::Roles::from_mesh(mesh, "local", 2).servers == std::vector<int>{0, 1, 3, 4});
    CHECK_THROWS_WITH_AS(ps::Roles::from_mesh(mesh, "dp"), doctest::Contains("no axis 'dp' (axes: node, local)"),
                         ValueError);
    CHECK_THROWS_WITH_AS(ps::Roles::from_mesh(mesh, "local", 3), doctest::Contains("one that works"), ValueError);
    wrong += aggregate_sums(t, by_local);  // servers at ranks 0 and 3, not the first two
  });
  CHECK(wrong.load() == 0);
}

TEST_CASE("an idle server sleeps: CPU while 4 workers send nothing for 1.5 s") {
  std::atomic<double> frac{-1};
  comm::run_local(5, [&](ThreadTransport& t) {
    const double f = idle_cpu(t, 1500);
    if (f >= 0) frac = f;
  });
  MESSAGE("process CPU while the server idled: ", frac.load() * 100, "% of a core");
  CHECK(frac.load() >= 0);
  CHECK(frac.load() < 0.25);  // a polling loop would take a whole core
}

TEST_CASE("BSP with Aggregate: servers return the exact sum of the step's gradients") {
  for (int servers : {1, 2}) {
    std::atomic<long> wrong{0};
    comm::run_local(servers + 3, [&](ThreadTransport& t) { wrong += aggregate_sums(t, servers); });
    CHECK(wrong.load() == 0);
  }
  // Aggregate is a per-step sum: refused under SSP and ASP
  comm::run_local(2, [&](ThreadTransport& t) {
    CHECK_THROWS_WITH_AS((parallel::ParameterServer<parallel::SSP<1>, ThreadTransport>(
                             t, ps::Roles::count(1, 2), {{"a", 4, 1, false}}, {}, {.update = ps::Aggregate{}})),
                         doctest::Contains("needs BSP"), ValueError);
  });
}

template <class C>
void check_ssp(int servers, int workers, int slow_ms) {
  std::vector<std::atomic<std::int64_t>> progress(static_cast<std::size_t>(workers));
  for (auto& p : progress) p.store(0);
  std::vector<std::vector<ps::ReadRecord>> logs(static_cast<std::size_t>(servers));
  std::vector<std::int64_t> lags(static_cast<std::size_t>(servers + workers), 0);
  const int steps = 12, slow = servers + workers - 1;
  comm::run_local(servers + workers, [&](ThreadTransport& t) {
    auto log = ssp_reads<C>(t, servers, steps, slow, slow_ms, &progress, &lags[static_cast<std::size_t>(t.rank())]);
    if (t.rank() < servers) logs[static_cast<std::size_t>(t.rank())] = std::move(log);
  });
  std::int64_t worst_server = 0, worst_worker = 0;
  for (const auto& log : logs) {
    CHECK(log.size() == static_cast<std::size_t>(workers * steps));  // every pull logged
    for (const ps::ReadRecord& r : log) {
      CHECK(r.clock - r.min_clock <= C::staleness);
      worst_server = std::max(worst_server, r.clock - r.min_clock);
    }
  }
  for (std::int64_t l : lags) {
    CHECK(l <= C::staleness);  // the workers' own counters agree
    worst_worker = std::max(worst_worker, l);
  }
  // the slow worker is held until the others reach the bound: they do run ahead, exactly as far as allowed
  CHECK(worst_server == C::staleness);
  MESSAGE("SSP<", C::staleness, "> ", servers, "x", workers, ": largest lag at a read ", worst_server, " (servers' log), ",
          worst_worker, " (workers' counters)");
}

TEST_CASE("SSP<s>: at every read the reader's clock is at most s ahead of the slowest live worker") {
  check_ssp<parallel::SSP<1>>(1, 3, 20);
  check_ssp<parallel::SSP<3>>(2, 3, 20);
  check_ssp<parallel::SSP<0>>(1, 2, 5);
  // BSP reads the same way as SSP<0>: no reader ever ahead
  check_ssp<parallel::BSP>(2, 2, 5);
}

TEST_CASE("ASP: reads never wait; a slow worker does not hold the others") {
  std::vector<std::vector<ps::ReadRecord>> logs(1);
  std::vector<std::atomic<std::int64_t>> progress(3);
  for (auto& p : progress) p.store(0);
  comm::run_local(4, [&](ThreadTransport& t) {
    auto log = ssp_reads<parallel::ASP>(t, 1, 10, 3, 30, &progress, nullptr);
    if (t.rank() == 0) logs[0] = std::move(log);
  });
  std::int64_t worst = 0;
  for (const auto& r : logs[0]) worst = std::max(worst, r.clock - r.min_clock);
  CHECK(logs[0].size() == 30u);
  CHECK(worst >= 9);  // the fast workers read at clock 9 while the held one was still at 0
}

TEST_CASE("sparse push/pull: only the pushed rows travel and change") {
  for (auto [servers, workers] : {std::pair{1, 2}, std::pair{2, 3}}) {
    CAPTURE(servers);
    std::vector<std::vector<float>> before(static_cast<std::size_t>(servers + workers));
    auto got = per_rank(servers + workers, [&, s = servers](ThreadTransport& t) {
      return sparse_rows(t, s, &before[static_cast<std::size_t>(t.rank())]);
    });
    const auto ref = sparse_reference(workers);
    for (int r = servers; r < servers + workers; ++r) {
      const auto& tab = got[static_cast<std::size_t>(r)];
      REQUIRE(tab.size() == ref.size());
      for (std::size_t i = 0; i < ref.size(); ++i) {
        const std::size_t row = i / 3;
        const bool pushed = row == 40 || row < static_cast<std::size_t>(workers) ||
                            (row >= 10 && row < 10 + 2 * static_cast<std::size_t>(workers) && row % 2 == 0);
        if (pushed)
          CHECK(std::abs(tab[i] - ref[i]) <= 1e-5f * (1 + std::abs(ref[i])));
        else
          CHECK(tab[i] == static_cast<float>(i) * 0.25f);  // untouched: bit for bit the initial value
      }
      const auto& b = before[static_cast<std::size_t>(r)];  // rows 40, 0, 49 before any push
      CHECK(b[0] == 120 * 0.25f);
      CHECK(b[3] == 0.0f);
      CHECK(b[6] == 147 * 0.25f);
    }
  }
}

TEST_CASE("server-side Adagrad and SGD match naive loops (torch.optim formulas)") {
  const std::size_t n = 37;
  for (int which : {0, 1}) {
    CAPTURE(which);
    std::vector<float> init(n), result;
    for (std::size_t i = 0; i < n; ++i) init[i] = std::sin(static_cast<float>(i));
    ps::Options o;
    if (which == 0)
      o.update = ps::AdagradOptions{.lr = 0.1f, .lr_decay = 0.01f, .weight_decay = 0.001f};
    else
      o.update = nn::SGDOptions{.lr = 0.05f, .momentum = 0.8f, .dampening = 0.1f, .weight_decay = 0.01f};
    comm::run_local(3, [&](ThreadTransport& t) {
      parallel::ParameterServer<parallel::BSP, ThreadTransport> s(t, ps::Roles::count(2, 3), {{"x", n, 1, false}},
                                                                  {init.data()}, o);
      if (s.is_server()) return s.serve();
      std::vector<float> v(n), g(n);
      for (int step = 0; step < 4; ++step) {
        s.pull(0, v).wait();
        for (std::size_t i = 0; i < n; ++i) g[i] = v[i] * v[i] - 0.3f * static_cast<float>(step);
        s.push(0, g).wait();
        s.clock();
      }
      s.pull(0, v).wait();
      s.leave();
      result = v;
    });
    // naive, in double
    std::vector<double> p(init.begin(), init.end()), st(n, 0.0);
    for (int step = 1; step <= 4; ++step)
      for (std::size_t i = 0; i < n; ++i) {
        if (which == 0) {
          const double gi = p[i] * p[i] - 0.3 * (step - 1) + 0.001 * p[i];
          const double clr = 0.1 / (1 + (step - 1) * 0.01);
          st[i] += gi * gi;
          p[i] -= clr * gi / (std::sqrt(st[i]) + 1e-10);
        } else {
          const double gi = p[i] * p[i] - 0.3 * (step - 1) + 0.01 * p[i];
          st[i] = step == 1 ? gi : 0.8 * st[i] + 0.9 * gi;
          p[i] -= 0.05 * st[i];
        }
      }
    REQUIRE(result.size() == n);
    for (std::size_t i = 0; i < n; ++i) CHECK(result[i] == doctest::Approx(p[i]).epsilon(1e-5));
  }
}

TEST_CASE("bad requests are errors naming the worker, the key and the server") {
  comm::run_local(2, [&](ThreadTransport& t) {
    parallel::ParameterServer<parallel::ASP, ThreadTransport> s(t, ps::Roles::count(1, 2),
                                                                {{"x", 8, 1, false}, {"e", 4, 2, true}}, {}, {});
    if (s.is_server()) {
      CHECK_THROWS_WITH_AS((void)s.pull(0, std::span<float>()), doctest::Contains("called on rank 0, a server"), ValueError);
      return s.serve();
    }
    std::vector<float> small(3), v(8);
    CHECK_THROWS_WITH_AS((void)s.pull(0, small), doctest::Contains("key 'x' has 8 elements, got a buffer of 3"), ValueError);
    CHECK_THROWS_WITH_AS((void)s.pull(1, v), doctest::Contains("'e' is a sparse table"), ValueError);
    std::vector<std::int64_t> bad{4};
    std::vector<float> two(2);
    CHECK_THROWS_WITH_AS((void)s.push_rows(1, bad, two), doctest::Contains("row 4 of key 'e' is outside its 4 rows"), ValueError);
    CHECK_THROWS_WITH_AS(s.start(), doctest::Contains("called on rank 1, a worker"), ValueError);
    s.leave();
  });
}

TEST_CASE("a worker that throws is dropped under SSP and ASP (logged with its rank); the others finish") {
  auto run = [](auto consistency) {
    using C = decltype(consistency);
    std::vector<ps::DropRecord> drops;
    std::vector<std::string> outcome(4);
    std::vector<float> finals(4, 0.0f);
    comm::run_local(4, [&](ThreadTransport& t) {
      parallel::ParameterServer<C, ThreadTransport> s(t, ps::Roles::count(1, 4), {{"w", 64, 1, false}}, {},
                                                      {.update = nn::SGDOptions{.lr = 0.5f}, .log_to_stderr = false});
      if (s.is_server()) {
        s.serve();  // no error: training continued
        drops = s.drops();
        return;
      }
      auto err = s.run_worker([&](auto& ps) {
        std::vector<float> v(64), g(64);
        for (int step = 0; step < 10; ++step) {
          if (t.rank() == 2 && step == 4) throw std::runtime_error("worker lost its data loader");
          ps.pull(0, v).wait();
          for (std::size_t i = 0; i < 64; ++i) g[i] = v[i] - 1.0f;
          ps.push(0, g).wait();
          ps.clock();
        }
        ps.pull(0, v).wait();
        finals[static_cast<std::size_t>(t.rank())] = v[0];
      });
      outcome[static_cast<std::size_t>(t.rank())] = err ? *err : "ok";
    });
    REQUIRE(drops.size() == 1u);
    CHECK(drops[0].worker == 2);
    CHECK(drops[0].clock == 4);
    CHECK(contains(drops[0].reason, "worker lost its data loader"));
    CHECK(outcome[1] == "ok");
    CHECK(outcome[3] == "ok");
    CHECK(contains(outcome[2], "data loader"));
    CHECK(finals[1] > 0.5f);  // trained towards 1 after the drop
  };
  run(parallel::SSP<2>{});
  run(parallel::ASP{});
}

TEST_CASE("under BSP a dead worker fails the step on every rank, naming it") {
  std::string server_error;
  std::vector<std::string> outcome(4);
  comm::run_local(4, [&](ThreadTransport& t) {
    parallel::ParameterServer<parallel::BSP, ThreadTransport> s(t, ps::Roles::count(1, 4), {{"w", 16, 1, false}}, {},
                                                                {.log_to_stderr = false});
    if (s.is_server()) {
      try {
        s.serve();
      } catch (const parallel::PsError& e) {
        server_error = e.what();
      }
      return;
    }
    auto err = s.run_worker([&](auto& ps) {
      std::vector<float> v(16), g(16, 1.0f);
      for (int step = 0; step < 6; ++step) {
        if (t.rank() == 3 && step == 2) throw std::runtime_error("out of memory in backward");
        ps.pull(0, v).wait();
        ps.push(0, g).wait();
        ps.clock();
      }
    });
    outcome[static_cast<std::size_t>(t.rank())] = err ? *err : "ok";
  });
  CHECK(contains(server_error, "worker rank 3 died"));
  CHECK(contains(server_error, "out of memory in backward"));
  for (int r : {1, 2}) {
    CAPTURE(outcome[static_cast<std::size_t>(r)]);
    CHECK(contains(outcome[static_cast<std::size_t>(r)], "worker rank 3 died"));
    CHECK(contains(outcome[static_cast<std::size_t>(r)], "under BSP"));
  }
}

TEST_CASE("a worker that hangs past the deadline is dropped under ASP") {
  std::vector<ps::DropRecord> drops;
  std::vector<std::string> outcome(3);
  comm::run_local(3, [&](ThreadTransport& t) {
    ps::Options o;
    o.worker_timeout = std::chrono::milliseconds(300);
    o.timeout = std::chrono::milliseconds(5000);
    o.log_to_stderr = false;
    parallel::ParameterServer<parallel::ASP, ThreadTransport> s(t, ps::Roles::count(1, 3), {{"w", 16, 1, false}}, {}, o);
    if (s.is_server()) {
      s.serve();
      drops = s.drops();
      return;
    }
    auto err = s.run_worker([&](auto& ps) {
      std::vector<float> v(16), g(16, 1.0f);
      for (int step = 0; step < 8; ++step) {
        if (t.rank() == 2 && step == 3) std::this_thread::sleep_for(std::chrono::milliseconds(1200));  // hung
        ps.pull(0, v).wait();
        ps.push(0, g).wait();
        ps.clock();
      }
    });
    outcome[static_cast<std::size_t>(t.rank())] = err ? *err : "ok";
  });
  REQUIRE(drops.size() == 1u);
  CHECK(drops[0].worker == 2);
  CHECK(contains(drops[0].reason, "sent nothing for 0.3 s"));
  CHECK(outcome[1] == "ok");
  CHECK(contains(outcome[2], "server rank 0"));  // it came back too late: dropped, or the server already gone
}

TEST_CASE("a worker parked on one server for longer than worker_timeout is not dropped by the other (heartbeats)") {
  // keys a and b land on servers 0 and 1. Worker rank 3 keeps requesting from
  // both for 3 s before it clocks; worker rank 2 clocks at once, then waits
  // in a synced pull of a (server 0 only) until rank 3 clocks: server 1 hears
  // no request from rank 2 for 3 s, three times its worker_timeout.
  std::vector<std::vector<ps::DropRecord>> drops(2);
  std::vector<std::string> outcome(4);
  comm::run_local(4, [&](ThreadTransport& t) {
    ps::Options o;
    o.worker_timeout = std::chrono::milliseconds(1000);
    o.timeout = std::chrono::milliseconds(20000);
    o.log_to_stderr = false;
    parallel::ParameterServer<parallel::ASP, ThreadTransport> s(t, ps::Roles::count(2, 4),
                                                                {{"a", 8, 1, false}, {"b", 8, 1, false}}, {}, o);
    if (s.is_server()) {
      REQUIRE(s.placement().pieces_of(0).size() == 1u);
      s.serve();
      drops[static_cast<std::size_t>(t.rank())] = s.drops();
      return;
    }
    auto err = s.run_worker([&](auto& ps) {
      std::vector<float> a(8), b(8);
      if (t.rank() == 3) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
        while (std::chrono::steady_clock::now() < until) {
          ps.pull(0, a).wait();
          ps.pull(1, b).wait();
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        ps.clock();
      } else {
        ps.clock();
        ps.pull(0, a, true).wait();  // parked on server 0 until rank 3 clocks
        ps.pull(1, b).wait();
      }
    });
    outcome[static_cast<std::size_t>(t.rank())] = err ? *err : "ok";
  });
  CHECK(drops[0].empty());
  CHECK(drops[1].empty());
  CHECK(outcome[2] == "ok");
  CHECK(outcome[3] == "ok");
}

TEST_CASE("a server that stops answering is an error naming it and the keys it held") {
  std::vector<std::string> outcome(4);
  comm::run_local(4, [&](ThreadTransport& t) {
    ps::Options o;
    o.timeout = std::chrono::milliseconds(400);
    o.worker_timeout = std::chrono::milliseconds(5000);
    parallel::ParameterServer<parallel::SSP<1>, ThreadTransport> s(
        t, ps::Roles::count(2, 4), {{"l1.weight", 100, 1, false}, {"l1.bias", 10, 1, false}}, {}, o);
    if (t.rank() == 1) {  // server 1 hangs: never serves, stays alive past the workers' deadline
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      return;
    }
    if (s.is_server()) return s.serve();
    auto err = s.run_worker([&](auto& ps) {
      std::vector<float> v(100);
      ps.pull(0, v).wait();
    });
    outcome[static_cast<std::size_t>(t.rank())] = err ? *err : "ok";
  });
  for (int r : {2, 3}) {
    CAPTURE(outcome[static_cast<std::size_t>(r)]);
    CHECK(contains(outcome[static_cast<std::size_t>(r)], "server rank 1 (holding l1.weight[55:100) l1.bias[0:10))"));
    CHECK(contains(outcome[static_cast<std::size_t>(r)], "no answer within 0.4 s"));
  }
}

TEST_CASE("a server rank that dies: the workers' errors name the failed rank and the server's keys") {
  std::vector<std::string> outcome(3);
  std::string origin;
  try {
    comm::run_local(3, [&](ThreadTransport& t) {
      parallel::ParameterServer<parallel::ASP, ThreadTransport> s(t, ps::Roles::count(1, 3), {{"w", 10, 1, false}}, {}, {});
      if (s.is_server()) throw std::runtime_error("server machine lost power");
      auto err = s.run_worker([&](auto& ps) {
        std::vector<float> v(10);
        ps.pull(0, v).wait();
      });
      outcome[static_cast<std::size_t>(t.rank())] = err ? *err : "ok";
    });
  } catch (const std::exception& e) {
    origin = e.what();
  }
  CHECK(origin == "server machine lost power");
  for (int r : {1, 2}) {
    CAPTURE(outcome[static_cast<std::size_t>(r)]);
    CHECK(contains(outcome[static_cast<std::size_t>(r)], "server rank 0 (holding w[0:10))"));
    CHECK(contains(outcome[static_cast<std::size_t>(r)], "rank 0 (thread rank) failed: server machine lost power"));
  }
}

TEST_CASE("ASP: a synced pull waits for every worker's last step, so the final weights hold every push") {
  std::vector<float> final_value(3, 0.0f), unsynced(3, 0.0f);
  comm::run_local(3, [&](ThreadTransport& t) {
    parallel::ParameterServer<parallel::ASP, ThreadTransport> s(t, ps::Roles::count(1, 3), {{"x", 4, 1, false}}, {},
                                                                {.update = nn::SGDOptions{.lr = 1.0f}});
    if (s.is_server()) return s.serve();
    std::vector<float> v(4), g(4, 1.0f);
    for (int step = 0; step < 10; ++step) {
      if (t.rank() == 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // slower: ASP does not wait for it
      s.push(0, g).wait();
      s.clock();
    }
    s.pull(0, v, true).wait();
    final_value[static_cast<std::size_t>(t.rank())] = v[0];
    s.leave();
  });
  // 20 pushes of 1, each applied with lr 1 and scale 1/2
  CHECK(final_value[1] == -10.0f);
  CHECK(final_value[2] == -10.0f);
}

TEST_CASE("SSP and ASP: pushes held to be applied together are in every later read (pipelined requests)") {
  // Non-blocking pushes and pulls sent back to back reach the server together,
  // so it holds several pushes and applies their sum as one step; with plain
  // SGD (linear) every grouping gives the same value, so a read that missed a
  // held push, or a push applied twice, shows.
  auto run = [](auto consistency) {
    using C = decltype(consistency);
    std::vector<float> seen;
    comm::run_local(2, [&](ThreadTransport& t) {
      parallel::ParameterServer<C, ThreadTransport> s(t, ps::Roles::count(1, 2), {{"x", 1000, 1, false}}, {},
                                                      {.update = nn::SGDOptions{.lr = 1.0f}});
      if (s.is_server()) return s.serve();
      std::vector<float> g(1000, 1.0f), v(1000, 7.0f);
      for (int round = 1; round <= 20; ++round) {
        std::vector<decltype(s.push(0, g))> hs;
        for (int k = 0; k < 3; ++k) hs.push_back(s.push(0, g));  // not waited: queued together
        auto r = s.pull(0, v);
        for (auto& h : hs) h.wait();
        r.wait();
        seen.push_back(v[0]);
        CHECK(v[999] == v[0]);
      }
      s.clock();
      s.leave();
    });
    return seen;
  };
  for (const auto& seen : {run(parallel::ASP{}), run(parallel::SSP<2>{})}) {
    REQUIRE(seen.size() == 20);
    for (std::size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == -3.0f * static_cast<float>(i + 1));
  }
}
