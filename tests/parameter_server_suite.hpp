// Parameter-server checks written once for every transport
// (test_parameter_server.cpp runs them on thread ranks,
// test_parameter_server_mpi.cpp under mpirun). Each returns what the test
// compares against an independent reference: DataParallel / one rank with the
// global batch (BSP), the log of every read (SSP), a naive update (sparse rows).
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <sys/resource.h>
#include <vector>
#include <weft/parallel/parameter_server/parameter_server.hpp>

#include "data_parallel_suite.hpp"

namespace ps_suite {

using namespace weft;
namespace ps = weft::parallel::ps;
using dp_suite::Data;
using dp_suite::kSteps;
using dp_suite::Model;

// BSP training of dp_suite's model: each worker takes its share of the
// global batch (dp_suite::rows), the servers run Adam (or SGD with momentum)
// on the mean gradient. Returns the final parameters on worker ranks (empty on servers).
// pipelined: each step's pushes and clock are sent without waiting
// (push_async, clock_async); the next step's pull comes back after them and
// the handle is waited for before the gradients are overwritten.
template <class Transport>
std::vector<float> bsp_train(Transport& t, const Data& data, int n_servers, bool adam, bool pipelined = false) {
  Model m;
  auto [keys, init] = parallel::ParameterServer<parallel::BSP, Transport>::keys_of(m.reg);
  ps::Options o;
  if (adam)
    o.update = nn::AdamOptions{.lr = 1e-2f};
  else
    o.update = nn::SGDOptions{.lr = 0.1f, .momentum = 0.9f};
  parallel::ParameterServer<parallel::BSP, Transport> server(t, ps::Roles::count(n_servers, t.size()), keys, init, o);
  if (server.is_server()) {
    server.serve();
    return {};
  }
  const int w = server.roles().worker_index(t.rank()), W = static_cast<int>(server.roles().workers.size());
  Workspace<> ws;
  typename parallel::ParameterServer<parallel::BSP, Transport>::Handle sent;
  for (int s = 0; s < kSteps; ++s) {
    server.pull(m.reg);
    sent.wait();
    m.reg.zero_grad();
    auto [lo, hi] = dp_suite::rows(s, w, W);
    backward(m.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)), ws);
    if (pipelined) {
      sent = server.push_async(m.reg);
      sent += server.clock_async();
    } else {
      server.push(m.reg);
      server.clock();
    }
  }
  server.pull(m.reg);
  sent.wait();
  server.leave();
  return m.values();
}

// BSP with Aggregate: the servers only sum; every worker pushes (w + 1) * (i + 1)
// and must read back sum_w (w + 1) * (i + 1) each step. Returns the number of wrong elements.
template <class Transport>
long aggregate_sums(Transport& t, const ps::Roles& roles) {
  const std::size_t n = 1000;
  std::vector<ps::Key> keys{{"a", n, 1, false}, {"b", 7, 1, false}};
  parallel::ParameterServer<parallel::BSP, Transport> server(t, roles, keys, {}, {.update = ps::Aggregate{}});
  if (server.is_server()) {
    server.serve();
    return 0;
  }
  const int w = server.roles().worker_index(t.rank()), W = static_cast<int>(server.roles().workers.size());
  long wrong = 0;
  std::vector<float> g(n), got(n), g2(7), got2(7);
  for (int s = 0; s < 3; ++s) {
    for (std::size_t i = 0; i < n; ++i) g[i] = static_cast<float>((w + 1) * (static_cast<int>(i % 13) + 1 + s));
    for (std::size_t i = 0; i < 7; ++i) g2[i] = static_cast<float>(w + 1);
    auto a = server.push(0, g);
    auto b = server.push(1, g2);
    a.wait();
    b.wait();
    server.clock();
    auto c = server.pull(0, got);
    auto d = server.pull(1, got2);
    c.wait();
    d.wait();
    const float sw = static_cast<float>(W * (W + 1) / 2);
    for (std::size_t i = 0; i < n; ++i) wrong += got[i] != sw * static_cast<float>(static_cast<int>(i % 13) + 1 + s);
    for (std::size_t i = 0; i < 7; ++i) wrong += got2[i] != sw;
  }
  server.leave();
  return wrong;
}

template <class Transport>
long aggregate_sums(Transport& t, int n_servers) {
  return aggregate_sums(t, ps::Roles::count(n_servers, t.size()));
}

// SSP<S> (or ASP) with `slow` worker rank slow each step (sleeping `slow_ms`, or
// with `progress`, held until the others are as far ahead as allowed): every
// worker pulls, computes g = value - target, pushes, clocks. The servers log
// every read. `progress` (threads only, may be null) is each worker's own
// count of finished steps, bumped before clock(): an independent view of the
// clocks that each worker checks at every read. Returns the server's read log
// (empty on workers); `lag_seen` gets the worker's largest independent lag.
template <class C, class Transport>
std::vector<ps::ReadRecord> ssp_reads(Transport& t, int n_servers, int steps, int slow, int slow_ms,
                                      std::vector<std::atomic<std::int64_t>>* progress, std::int64_t* lag_seen) {
  const std::size_t n = 300;
  std::vector<ps::Key> keys{{"w", n, 1, false}};
  ps::Options o;
  o.update = nn::SGDOptions{.lr = 0.5f};
  o.record_reads = true;
  parallel::ParameterServer<C, Transport> server(t, ps::Roles::count(n_servers, t.size()), keys, {}, o);
  if (server.is_server()) {
    server.serve();
    return server.reads();
  }
  const int w = server.roles().worker_index(t.rank());
  std::vector<float> v(n), g(n);
  std::int64_t worst = 0;
  for (int s = 0; s < steps; ++s) {
    server.pull(0, v).wait();
    if (progress) {
      std::int64_t m = s;
      for (auto& q : *progress) m = std::min<std::int64_t>(m, q.load());
      worst = std::max<std::int64_t>(worst, s - m);
    }
    for (std::size_t i = 0; i < n; ++i) g[i] = v[i] - static_cast<float>(i % 7);
    if (t.rank() == slow) {
      if (progress) {
        // threads: hold the slow worker until every other one is as far ahead as
        // the bound lets it go (clock s + S + 1, blocked on its next read), so
        // the largest lag at a read is exactly S whatever the machine's load
        const std::int64_t want = std::min<std::int64_t>(steps, s + std::min<std::int64_t>(C::staleness, steps) + 1);
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        for (std::size_t q = 0; q < progress->size(); ++q)
          while (static_cast<int>(q) != w && (*progress)[q].load() < want && std::chrono::steady_clock::now() < until)
            std::this_thread::sleep_for(std::chrono::microseconds(200));
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms));
      }
    }
    server.push(0, g).wait();
    if (progress) (*progress)[static_cast<std::size_t>(w)].fetch_add(1);
    server.clock();
  }
  server.leave();
  if (lag_seen) *lag_seen = worst;
  return {};
}

// Sparse rows under BSP, SGD lr 1: worker w pushes rows {w, 10 + 2w, 40} of a
// 50 x 3 table with values (w + 1) * (row + 1) and pulls some rows back.
// Returns the full table as read back by a final pull_rows (worker ranks),
// to be compared with sparse_reference.
template <class Transport>
std::vector<float> sparse_rows(Transport& t, int n_servers, std::vector<float>* pulled_before) {
  const std::size_t R = 50, D = 3;
  std::vector<float> init(R * D);
  for (std::size_t i = 0; i < init.size(); ++i) init[i] = static_cast<float>(i) * 0.25f;
  std::vector<ps::Key> keys{{"emb", R, D, true}, {"dense", 5, 1, false}};
  std::vector<const float*> inits{init.data(), nullptr};
  parallel::ParameterServer<parallel::BSP, Transport> server(t, ps::Roles::count(n_servers, t.size()), keys, inits,
                                                             {.update = nn::SGDOptions{.lr = 1.0f}});
  if (server.is_server()) {
    server.serve();
    return {};
  }
  const int w = server.roles().worker_index(t.rank());
  std::vector<std::int64_t> rows{w, 10 + 2 * w, 40, 40};  // 40 twice: its rows add
  std::vector<float> vals(rows.size() * D);
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (std::size_t j = 0; j < D; ++j) vals[i * D + j] = static_cast<float>((w + 1) * (rows[i] + 1));
  std::vector<std::int64_t> probe{40, 0, 49};
  std::vector<float> before(probe.size() * D);
  server.pull_rows(0, probe, before).wait();
  if (pulled_before) *pulled_before = before;
  server.push_rows(0, rows, vals).wait();
  server.clock();
  std::vector<std::int64_t> all(R);
  for (std::size_t i = 0; i < R; ++i) all[i] = static_cast<std::int64_t>(R - 1 - i);  // reversed: scatter must follow the ids
  std::vector<float> out(R * D);
  server.pull_rows(0, all, out).wait();
  server.leave();
  std::vector<float> table(R * D);
  for (std::size_t i = 0; i < R; ++i)
    for (std::size_t j = 0; j < D; ++j) table[(R - 1 - i) * D + j] = out[i * D + j];
  return table;
}

// The naive reference for sparse_rows with W workers: the table minus the mean gradient on pushed rows.
inline std::vector<float> sparse_reference(int W) {
  const std::size_t R = 50, D = 3;
  std::vector<double> sum(R * D, 0.0);
  for (int w = 0; w < W; ++w)
    for (std::int64_t r : {std::int64_t(w), std::int64_t(10 + 2 * w), std::int64_t(40), std::int64_t(40)})
      for (std::size_t j = 0; j < D; ++j) sum[static_cast<std::size_t>(r) * D + j] += (w + 1) * (r + 1);
  std::vector<float> t(R * D);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(static_cast<double>(i) * 0.25 - sum[i] / W);
  return t;
}

// Several instances on ONE transport, one after another: each one's first
// request must reach its own server (under MPI the first instance's server
// once left an any-source receive posted that swallowed the next instance's
// first request), and each must compute what it computes alone. Returns the
// number of wrong values on this rank.
template <class Transport>
long in_sequence(Transport& t, int n_servers) {
  const int W = t.size() - n_servers;
  long wrong = aggregate_sums(t, n_servers);
  wrong += aggregate_sums(t, n_servers);
  const auto tab = sparse_rows(t, n_servers, nullptr);
  if (t.rank() >= n_servers) {
    const auto ref = sparse_reference(W);
    for (std::size_t i = 0; i < ref.size(); ++i) wrong += std::abs(tab[i] - ref[i]) > 1e-5f * (1 + std::abs(ref[i]));
  }
  wrong += aggregate_sums(t, n_servers);
  return wrong;
}

// Two instances live at once on ONE transport: A (BSP, Aggregate) and B (ASP,
// SGD lr 1), each server rank serving both (two progress threads), each
// worker interleaving requests to A and B. A's pulls must read the exact sums
// of A's pushes; B's final synced pull must read -steps (each worker pushes
// a gradient of 1 per step, averaged over the W workers). Returns the number
// of wrong values on this rank (and counts equal tag ranges as wrong).
template <class Transport>
long two_at_once(Transport& t, int n_servers) {
  const std::size_t na = 100, nb = 60;
  const int steps = 3;
  const ps::Roles roles = ps::Roles::count(n_servers, t.size());
  parallel::ParameterServer<parallel::BSP, Transport> A(t, roles, {{"a", na, 1, false}}, {}, {.update = ps::Aggregate{}});
  parallel::ParameterServer<parallel::ASP, Transport> B(t, roles, {{"b", nb, 1, false}}, {},
                                                        {.update = nn::SGDOptions{.lr = 1.0f}});
  long wrong = A.tag_base() == B.tag_base();
  if (A.is_server()) {
    A.start();
    B.start();
    A.finish();
    B.finish();
    return wrong;
  }
  const int w = roles.worker_index(t.rank()), W = static_cast<int>(roles.workers.size());
  std::vector<float> ga(na), gb(nb, 1.0f), got(na), gotb(nb);
  for (int s = 0; s < steps; ++s) {
    for (std::size_t i = 0; i < na; ++i) ga[i] = static_cast<float>((w + 1) * (static_cast<int>(i % 5) + 1 + s));
    auto pa = A.push(0, ga);
    auto pb = B.push(0, gb);
    pa.wait();
    pb.wait();
    B.clock();
    A.clock();
    A.pull(0, got).wait();
    const float sw = static_cast<float>(W * (W + 1) / 2);
    for (std::size_t i = 0; i < na; ++i) wrong += got[i] != sw * static_cast<float>(static_cast<int>(i % 5) + 1 + s);
  }
  B.pull(0, gotb, true).wait();
  for (float v : gotb) wrong += std::abs(v + static_cast<float>(steps)) > 1e-5f;
  A.leave();
  B.leave();
  return wrong;
}

// An idle server: after one pull each worker sleeps idle_ms sending nothing,
// then leaves. Returns, on the server rank, the CPU time this process used
// while serving divided by the wall time (a loop that polled without
// sleeping would show about 1 core); -1 on the other ranks.
template <class Transport>
double idle_cpu(Transport& t, int idle_ms) {
  parallel::ParameterServer<parallel::ASP, Transport> s(t, ps::Roles::count(1, t.size()), {{"x", 16, 1, false}}, {}, {});
  auto cpu = [] {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
  };
  if (s.is_server()) {
    const double c0 = cpu();
    const auto w0 = std::chrono::steady_clock::now();
    s.serve();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
    return (cpu() - c0) / wall;
  }
  std::vector<float> v(16);
  s.pull(0, v).wait();
  std::this_thread::sleep_for(std::chrono::milliseconds(idle_ms));
  s.leave();
  return -1;
}

}  // namespace ps_suite
