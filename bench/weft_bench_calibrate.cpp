// weft-bench calibrate (weft_bench/calibrate.hpp): the code below is moved
// verbatim from weft_bench.cpp, for the tuning work to turn into a library
// function (comm/tuning/).
#include "weft_bench/calibrate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/cost_file.hpp>
#include <weft/comm/transport/thread.hpp>
#if WEFT_BENCH_MPI
#include <weft/comm/transport/mpi.hpp>
#endif

#include "weft_bench/collectives.hpp"
#include "weft_bench/run.hpp"

namespace weft_bench {

// ------------------------------------------------------------ calibrate ----

// alpha: half the round trip of an 8-byte ping-pong between ranks 0 and 1
// (10th percentile over repetitions);
// beta: least-squares slope of one-way time minus alpha against bytes, over
// 64 KiB .. 4 MiB; gamma: time per byte of a local f32 sum out = a + b over
// 512 KiB operands, or, on a RecvReduce transport, the extra time per byte of
// a receive-and-combine over a plain receive (128 KiB .. 2 MiB). Cache-resident sizes on purpose: Auto's crossovers (rd ->
// ring at S = 2a/g for p = 2) lie there; DRAM-bound buffers are slower than
// predicted, for every algorithm alike.
template <class T>
std::optional<wc::CostModel> calibrate(T& t, const Options& o, wc::CostModel base) {
  const int r = t.rank();
  T pp = t.split(0, r, wc::deadline_after(std::chrono::seconds(60)));
  std::vector<std::size_t> ns;
  for (std::size_t b = 8; b <= (std::size_t{64} << 20); b *= 4) ns.push_back(b);
  std::vector<std::byte> a(ns.back()), b(ns.back());
  std::vector<std::pair<double, double>> pts;  // (bytes, one-way seconds)
  double alpha = 0;
  const auto dl = wc::Deadline::max();
  for (std::size_t n : ns) {
    const int reps = static_cast<int>(std::clamp<std::size_t>((std::size_t{512} << 20) / n, 5, 2000));
    std::vector<double> times;
    for (int k = 0; k < reps + 3; ++k) {
      auto t0 = Clock::now();
      if (r == 0) {
        auto s = pp.isend(a.data(), n, 1, 1);
        auto q = pp.irecv(b.data(), n, 1, 2);
        if (pp.wait(s, dl) != wc::WaitStatus::done || pp.wait(q, dl) != wc::WaitStatus::done)
          throw std::runtime_error("calibrate: ping-pong failed");
      } else if (r == 1) {
        auto q = pp.irecv(b.data(), n, 0, 1);
        if (pp.wait(q, dl) != wc::WaitStatus::done) throw std::runtime_error("calibrate: ping-pong failed");
        auto s = pp.isend(a.data(), n, 0, 2);
        if (pp.wait(s, dl) != wc::WaitStatus::done) throw std::runtime_error("calibrate: ping-pong failed");
      }
      if (k >= 3) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / 2);
    }
    // 10th percentile, not the median: on a shared machine most of the spread
    // is preemption, which is not the transport's cost.
    std::sort(times.begin(), times.end());
    double m = times[times.size() / 10];
    if (n == 8) alpha = m;
    if (r == 0 && !o.quiet) std::printf("  ping-pong %10zu B  one-way %10.2f us  %7.2f GB/s\n", n, m * 1e6, n / m / 1e9);
    pts.push_back({static_cast<double>(n), m});
  }
  double sxy = 0, sxx = 0;
  for (auto [x, y] : pts)
    if (x >= 64 * 1024 && x <= 4 * 1024 * 1024) {
      sxy += x * (y - alpha);
      sxx += x * x;
    }
  double beta = sxx > 0 ? sxy / sxx : base.beta;
  // local reduction, cache-resident (512 KiB operands) where Auto's crossovers
  // lie, and DRAM-bound (64 MiB) for reference
  auto reduce_rate = [&](std::size_t bytes, int reps) {
    const std::size_t rn = bytes / sizeof(float);
    std::vector<float> x(rn, 1.0f), y(rn, 2.0f), z(rn);
    std::vector<double> gt;
    for (int k = 0; k < reps; ++k) {
      auto t0 = Clock::now();
      for (std::size_t i = 0; i < rn; ++i) z[i] = x[i] + y[i];
      gt.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      x[static_cast<std::size_t>(k) % rn] = z[rn - 1 - static_cast<std::size_t>(k) % rn];  // keep the loop observable
    }
    std::sort(gt.begin(), gt.end());
    return gt[gt.size() / 10] / static_cast<double>(bytes);
  };
  double gamma = reduce_rate(std::size_t{512} << 10, 200);
  // A transport that combines straight from the peer's buffer (RecvReduce)
  // moves and reduces in one pass: its gamma is what a receive-and-combine
  // costs per byte beyond a plain receive (ping-pong with irecv_reduce one way).
  if constexpr (wc::RecvReduce<T>) {
    std::vector<float> lf(ns.back() / sizeof(float), 1.0f), of(ns.back() / sizeof(float));
    double rxy = 0, rxx = 0;
    for (auto [x, plain] : pts) {
      const auto n = static_cast<std::size_t>(x);
      if (n < 128 * 1024 || n > 2 * 1024 * 1024) continue;
      const int reps = static_cast<int>(std::clamp<std::size_t>((std::size_t{512} << 20) / n, 5, 2000));
      std::vector<double> times;
      for (int k = 0; k < reps + 3; ++k) {
        auto t0 = Clock::now();
        if (r == 0) {
          auto s = pp.isend(a.data(), n, 1, 3);
          auto q = pp.irecv(b.data(), n, 1, 4);
          if (pp.wait(s, dl) != wc::WaitStatus::done || pp.wait(q, dl) != wc::WaitStatus::done)
            throw std::runtime_error("calibrate: ping-pong failed");
        } else if (r == 1) {
          auto q = pp.irecv_reduce(lf.data(), of.data(), n / sizeof(float), dtype::f32, ReduceOp::sum, 0, 3);
          if (pp.wait(q, dl) != wc::WaitStatus::done) throw std::runtime_error("calibrate: ping-pong failed");
          auto s = pp.isend(a.data(), n, 0, 4);
          if (pp.wait(s, dl) != wc::WaitStatus::done) throw std::runtime_error("calibrate: ping-pong failed");
        }
        if (k >= 3) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
      std::sort(times.begin(), times.end());
      const double rr = times[times.size() / 10] - plain;  // the receive-and-combine direction
      if (r == 0 && !o.quiet)
        std::printf("  recv_reduce %8zu B  one-way %10.2f us (plain receive %.2f us)\n", n, rr * 1e6, plain * 1e6);
      rxy += x * (rr - alpha);
      rxx += x * x;
    }
    const double g_rr = rxx > 0 ? rxy / rxx : beta;
    if (r == 0 && !o.quiet)
      std::printf("  receive-and-combine %.2f GB/s vs receive %.2f GB/s: gamma = %.3g s/B beyond beta\n", 1e-9 / g_rr,
                  1e-9 / beta, std::max(0.0, g_rr - beta));
    gamma = std::max(0.0, g_rr - beta);
  }
  double gamma_dram = reduce_rate(std::size_t{64} << 20, 5);
  if (r == 0 && !o.quiet) std::printf("  local f32 sum: %.2f GB/s in cache (gamma), %.2f GB/s from DRAM\n", 1e-9 / gamma, 1e-9 / gamma_dram);
  if (r != 0) return std::nullopt;
  wc::CostModel m = base;
  m.alpha = alpha;
  m.beta = beta;
  m.gamma = gamma;
  std::printf("calibrated %s: alpha %.3g s  beta %.3g s/B (%.2f GB/s)  gamma %.3g s/B (%.2f GB/s)\n", t.name(), alpha,
              beta, 1e-9 / beta, gamma, 1e-9 / gamma);
  return m;
}

// ------------------------------------------------------------ Auto's table ----

// One communicator per candidate of Auto, each on its own split of the
// transport, so the candidates can be timed in alternation without sharing
// sequence numbers or tags.
template <class T, class... C>
struct CandidateComms {
  static constexpr std::size_t count = sizeof...(C);
  static constexpr const char* names[] = {C::name...};
  std::tuple<std::unique_ptr<wc::Communicator<C, T>>...> comms;

  CandidateComms(T& t, const std::tuple<C...>& policies)
      : comms{std::make_unique<wc::Communicator<C, T>>(
            t.split(0, t.rank(), wc::deadline_after(std::chrono::seconds(60))), std::get<C>(policies))...} {}

  template <class F>
  void with(std::size_t k, F&& f) {
    with_index(k, f, std::index_sequence_for<C...>{});
  }

 private:
  template <class F, std::size_t... I>
  void with_index(std::size_t k, F& f, std::index_sequence<I...>) {
    ((k == I ? (f(*std::get<I>(comms)), 0) : 0), ...);
  }
};

template <class T, class... C>
auto candidate_comms(T& t, const std::tuple<C...>& policies) {
  return std::make_unique<CandidateComms<T, C...>>(t, policies);
}

// Times each of Auto's candidates at every size of -b .. -e (factor -f) for
// every --op, and returns (on rank 0) the measured decisions, sizes with the
// same winner merged into one range, range boundaries at the geometric
// midpoint between neighbouring sizes, the first range from 0 B and the last
// to no end.
//
// A sample is one call's time on the slowest rank (what the run tables
// report). Candidates are interleaved: rounds that each visit every
// candidate (rotating who goes first) for a warm-up call and at most five
// timed calls, so a burst of load lands on all candidates alike, and each is
// timed in short bursts after another ran, as in a run's table and in a
// program that mixes sizes and ops. Each pass yields, per size, the median of
// 12 to 200 samples per candidate (as many as move 256 MiB).
//
// The whole sweep (every op and size) runs --passes times (default 3), so
// the passes lie a sweep's duration apart: a shared machine drifts between
// regimes (16 KiB allreduces over MPI on the development machine: ring, tree
// and recursive doubling took 9.0, 11.2 and 6.8 us in one calibration, 4.9,
// 4.3 and 4.4 us in the next, minutes later), and a choice must hold in all
// of them. A candidate's score at a size is its mean ratio to the pass's
// fastest median over the passes: the slowdown Auto should expect from
// choosing it in whichever regime a later run meets. (Dropping each
// candidate's worst pass, as tried first, let a regime that only one pass
// saw decide nothing: at 512 KiB on threads recursive doubling took 29, 45
// and 48 us against the ring's 65, 43 and 46, the ring was chosen, and the
// next run met the first regime, rd 2x faster.) The lowest score wins. Scores within 3%
// are a tie: the previous size's winner is kept if it is among them (fewer,
// larger ranges), else the first in Auto's candidate order. The margin
// recorded is the runner-up's score over the chosen one's.
template <class T>
std::vector<wc::Decision> decision_table(T& t, const Options& o) {
  const int p = t.size(), r = t.rank();
  wc::Auto au;
  if (o.chunk) {
    std::get<wc::Ring>(au.candidates).chunk_bytes = o.chunk;
    std::get<wc::Tree>(au.candidates).chunk_bytes = o.chunk;
    std::get<wc::HalvingDoubling>(au.candidates).chunk_bytes = o.chunk;
  }
  T ctl_t = t.split(0, r, wc::deadline_after(std::chrono::seconds(60)));
  wc::Communicator<wc::Ring, T> ctl{ctl_t};
  auto cands = candidate_comms(t, au.candidates);
  const std::size_t nc = cands->count;
  constexpr double tie = 1.03;

  const std::size_t es = weft::dtype_size(o.type);
  const auto all_sizes = sizes(o);
  std::size_t max_elems = 1;
  for (std::size_t b : all_sizes) max_elems = std::max(max_elems, (b + es - 1) / es);
  std::vector<std::byte> send((max_elems + static_cast<std::size_t>(p)) * es), recv(send.size());

  struct Point {
    Collective op;
    std::size_t n, bytes;
    std::vector<std::vector<double>> median;  // [pass][candidate], seconds
  };
  std::vector<Point> points;
  for (Collective op : o.ops) {
    if (op == Collective::barrier) continue;
    for (std::size_t S : all_sizes) {
      const std::size_t n = total_elems(op, 1, p) == 1 ? S / es : S / (es * static_cast<std::size_t>(p));
      if (n > 0) points.push_back({op, n, total_elems(op, n, p) * es, {}});
    }
  }
  for (int pass = 0; pass < o.passes; ++pass) {
    if (r == 0 && !o.quiet) {
      std::printf("# Auto's table: pass %d of %d\n", pass + 1, o.passes);
      std::fflush(stdout);
    }
    for (Point& pt : points) {
      const Collective op = pt.op;
      const int root = wc::has_root(op) ? std::min(o.root, p - 1) : -1;
      const int samples = static_cast<int>(std::clamp<std::size_t>((std::size_t{256} << 20) / pt.bytes, 12, 200));
      const int per_visit = std::min(samples, 5);
      const int rounds = (samples + per_visit - 1) / per_visit;
      std::vector<std::vector<double>> mine(nc);
      const Layout L = layout(op, false, send.data(), recv.data(), pt.n, es, r, root);
      fill(op, o.type, o.redop, L, pt.n, r, p, root < 0 ? 0 : root);
      for (int round = 0; round < rounds; ++round)
        for (std::size_t v = 0; v < nc; ++v) {
          const std::size_t k = (v + static_cast<std::size_t>(round)) % nc;
          cands->with(k, [&](auto& comm) {
            ctl.barrier();
            invoke(comm, op, o.type, o.redop, L, pt.n, root);  // warm-up: this candidate's buffers and cache lines
            for (int i = 0; i < per_visit; ++i) {
              auto t0 = Clock::now();
              invoke(comm, op, o.type, o.redop, L, pt.n, root);
              mine[k].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
            }
          });
        }
      // slowest rank per call, then the median per candidate
      std::vector<double> median(nc);
      for (std::size_t k = 0; k < nc; ++k) {
        std::vector<double> all(mine[k].size() * static_cast<std::size_t>(p));
        ctl.allgather(mine[k], all);
        std::vector<double> worst(mine[k].size(), 0.0);
        for (int q = 0; q < p; ++q)
          for (std::size_t i = 0; i < worst.size(); ++i)
            worst[i] = std::max(worst[i], all[static_cast<std::size_t>(q) * worst.size() + i]);
        std::nth_element(worst.begin(), worst.begin() + static_cast<std::ptrdiff_t>(worst.size() / 2), worst.end());
        median[k] = worst[worst.size() / 2];
      }
      pt.median.push_back(std::move(median));
    }
  }
  if (r != 0) return {};

  if (!o.quiet)
    std::printf("# Auto's table, %d ranks: per candidate the median time per call (us, slowest rank) of each pass,\n"
                "# then the score (mean over the passes of the ratio to the pass's fastest);\n"
                "# the lowest score is chosen\n",
                p);
  std::vector<wc::Decision> out;
  std::size_t prev = nc;  // previous size's pick (none yet)
  for (std::size_t i = 0; i < points.size(); ++i) {
    const Point& pt = points[i];
    if (i > 0 && points[i - 1].op != pt.op) prev = nc;
    std::vector<double> score(nc, 0.0);
    for (std::size_t k = 0; k < nc; ++k) {
      for (const auto& m : pt.median) score[k] += m[k] / *std::min_element(m.begin(), m.end());
      score[k] /= static_cast<double>(pt.median.size());
    }
    std::size_t best = 0;
    for (std::size_t k = 1; k < nc; ++k)
      if (score[k] < score[best]) best = k;
    std::size_t pick = best;
    if (prev < nc && score[prev] <= score[best] * tie) {
      pick = prev;
    } else {
      for (std::size_t k = 0; k < nc; ++k)
        if (score[k] <= score[best] * tie) {
          pick = k;
          break;
        }
    }
    std::size_t runner = pick == 0 ? 1 : 0;
    for (std::size_t k = 0; k < nc; ++k)
      if (k != pick && score[k] < score[runner]) runner = k;
    if (nc == 1) runner = pick;
    const double margin = score[runner] / score[pick];
    prev = pick;
    if (!o.quiet) {
      std::printf("  %-14s %10zu", wc::collective_name(pt.op), pt.bytes);
      for (std::size_t k = 0; k < nc; ++k) {
        std::printf("  %s", cands->names[k]);
        for (const auto& m : pt.median) std::printf(" %.2f", m[k] * 1e6);
        std::printf(" (%.2f)", score[k]);
      }
      std::printf("  -> %s, margin %.3f\n", cands->names[pick], margin);
    }
    const bool first = i == 0 || points[i - 1].op != pt.op;
    const bool last = i + 1 == points.size() || points[i + 1].op != pt.op;
    const double b = static_cast<double>(pt.bytes);
    const std::size_t lo =
        first ? 0 : static_cast<std::size_t>(std::sqrt(static_cast<double>(points[i - 1].bytes) * b)) + 1;
    const std::size_t hi = last ? std::numeric_limits<std::size_t>::max()
                                : static_cast<std::size_t>(std::sqrt(b * static_cast<double>(points[i + 1].bytes)));
    if (!first && out.back().algorithm == cands->names[pick]) {
      wc::Decision& d = out.back();  // same winner as the size below: widen its range
      d.max_bytes = hi;
      if (margin < d.margin) {
        d.margin = margin;
        d.runner_up = cands->names[runner];
      }
      continue;
    }
    out.push_back(wc::Decision{pt.op, p, lo, hi, cands->names[pick], margin, cands->names[runner]});
  }
  std::fflush(stdout);
  return out;
}

template std::optional<wc::CostModel> calibrate<wc::ThreadTransport>(wc::ThreadTransport&, const Options&,
                                                                     wc::CostModel);
template std::vector<wc::Decision> decision_table<wc::ThreadTransport>(wc::ThreadTransport&, const Options&);
#if WEFT_BENCH_MPI
template std::optional<wc::CostModel> calibrate<wc::MpiTransport>(wc::MpiTransport&, const Options&, wc::CostModel);
template std::vector<wc::Decision> decision_table<wc::MpiTransport>(wc::MpiTransport&, const Options&);
#endif

}  // namespace weft_bench
