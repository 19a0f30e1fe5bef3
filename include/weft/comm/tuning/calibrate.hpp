// calibrate(): measures a transport and returns the cost model Auto should
// use on it: alpha, beta, gamma fitted from a ping-pong between ranks 0 and 1,
// and the decision table (for each op and size range, which of Auto's
// candidates measured fastest at this rank count). `weft-bench calibrate`
// calls it and writes the result to a cost file (cost_file.hpp); a program
// can also calibrate at start-up and build its Auto from the result:
//
//   weft::comm::run_local(2, [](auto& t) {
//     CalibrateOptions o;
//     o.sizes = geometric_sizes(8, 1 << 20, 4);
//     CostModel m = calibrate(t, CostModel::threads(), o);   // same on every rank
//     Communicator<Auto, std::decay_t<decltype(t)>> comm{t, Auto{.model = m}};
//   });
//
// It is collective: every rank of `t` calls it with the same options. It
// splits `t` for its own traffic (one control communicator, one per
// candidate), so it may run beside other communicators on `t`. Every rank
// returns the same model: rank 0's fitted constants, and a table every rank
// computes from the same gathered timings.
//
// Sizes are nccl-tests' S (cost_model.hpp): the per-rank buffer for
// allreduce/broadcast/reduce, the p-block buffer for the others. Inputs are
// zeros: the times do not depend on values (no denormals, no NaNs).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/error.hpp"
#include "../algorithm/auto.hpp"
#include "../algorithm/ring.hpp"
#include "../collective.hpp"
#include "../communicator.hpp"
#include "../deadline.hpp"
#include "../error.hpp"
#include "../reduce_op.hpp"
#include "../transport.hpp"
#include "cost_model.hpp"

namespace weft::comm {

struct CalibrateOptions {
  // The ops to build tables for. The default leaves out broadcast, gather,
  // scatter, alltoall and barrier: Auto's candidates share one implementation
  // of those, so a table would only record noise.
  std::vector<Collective> ops{Collective::allreduce, Collective::reduce_scatter, Collective::allgather,
                              Collective::reduce};
  std::vector<std::size_t> sizes = geometric_sizes(8, std::size_t{64} << 20, 2);  // S in bytes, ascending
  dtype type = dtype::f32;
  ReduceOp reduce = ReduceOp::sum;
  int root = 0;     // clamped to the last rank
  int passes = 3;   // sweeps over every (op, size); see measure_decisions
  // false: keep base's alpha, beta, gamma and only measure the table. The
  // ping-pong runs between ranks 0 and 1 while the others wait; with more
  // ranks than cores their waiting skews it.
  bool fit_constants = true;
  Duration setup_timeout = std::chrono::seconds(60);  // deadline of the splits
  // Progress and measurements, one line at a time (rank 0 only); empty: silent.
  std::function<void(const std::string&)> log{};

  static std::vector<std::size_t> geometric_sizes(std::size_t from, std::size_t to, double factor) {
    std::vector<std::size_t> s;
    for (std::size_t b = std::max<std::size_t>(from, 1); b <= to;) {
      s.push_back(b);
      const auto next = static_cast<std::size_t>(std::ceil(static_cast<double>(b) * factor));
      if (next <= b) break;
      b = next;
    }
    return s;
  }
};

using CalibrateLog = std::function<void(const std::string&)>;

namespace detail {

template <class... A>
std::string format(const char* fmt, A... a) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, a...);
  return buf;
}

// Buffer elements per rank a call of `op` with count n needs (its larger
// buffer: collective.hpp's extent).
inline std::size_t calibration_elems(Collective op, std::size_t n, int p) {
  return collectives::visit(op, [&](auto d) { return collectives::reported_bytes(decltype(d)::extent(n, p), 1); });
}

// One out-of-place call of `op` on `comm`, through its descriptor.
template <class Comm>
void call_collective(Comm& comm, Collective op, dtype t, ReduceOp redop, const void* in, void* out, std::size_t n,
                     int root) {
  detail::visit_dtype(t, [&](auto tag) {
    using E = decltype(tag);
    collectives::visit(op, [&](auto d) {
      decltype(d)::call(comm, static_cast<const E*>(in), static_cast<E*>(out), n, root, redop);
    });
  });
}

// One communicator per candidate of Auto, each on its own split of the
// transport, so the candidates can be timed in alternation without sharing
// sequence numbers or tags.
template <class T, class... C>
struct CandidateComms {
  static constexpr std::size_t count = sizeof...(C);
  static constexpr const char* names[] = {C::name...};
  std::tuple<std::unique_ptr<Communicator<C, T>>...> comms;

  CandidateComms(T& t, const std::tuple<C...>& policies, Deadline dl)
      : comms{std::make_unique<Communicator<C, T>>(t.split(0, t.rank(), dl), std::get<C>(policies))...} {}

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

// alpha: half the round trip of an 8-byte ping-pong between ranks 0 and 1
// (10th percentile over repetitions); beta: least-squares slope of one-way
// time minus alpha against bytes, over 64 KiB .. 4 MiB; gamma: time per byte
// of a local f32 sum out = a + b over 512 KiB operands, or, on a RecvReduce
// transport, the extra time per byte of a receive-and-combine over a plain
// receive (128 KiB .. 2 MiB). Cache-resident sizes on purpose: Auto's
// crossovers (rd -> ring at S = 2a/g for p = 2) lie there; DRAM-bound buffers
// are slower than predicted, for every algorithm alike. Returns rank 0's fit
// on rank 0; the other ranks' values are not meaningful (calibrate()
// broadcasts rank 0's).
template <Transport T>
CostModel fit_constants(T& t, CostModel base, Deadline setup, const CalibrateLog& log) {
  using Clock = std::chrono::steady_clock;
  const int r = t.rank();
  auto say = [&](const std::string& s) {
    if (r == 0 && log) log(s);
  };
  T pp = t.split(0, r, setup);
  std::vector<std::size_t> ns;
  for (std::size_t b = 8; b <= (std::size_t{64} << 20); b *= 4) ns.push_back(b);
  std::vector<std::byte> a(ns.back()), b(ns.back());
  std::vector<std::pair<double, double>> pts;  // (bytes, one-way seconds)
  double alpha = 0;
  const auto dl = Deadline::max();
  auto failed = [] { throw_error<CommError>("calibrate: ping-pong failed"); };
  for (std::size_t n : ns) {
    const int reps = static_cast<int>(std::clamp<std::size_t>((std::size_t{512} << 20) / n, 5, 2000));
    std::vector<double> times;
    for (int k = 0; k < reps + 3; ++k) {
      auto t0 = Clock::now();
      if (r == 0) {
        auto s = pp.isend(a.data(), n, 1, 1);
        auto q = pp.irecv(b.data(), n, 1, 2);
        if (pp.wait(s, dl) != WaitStatus::done || pp.wait(q, dl) != WaitStatus::done) failed();
      } else if (r == 1) {
        auto q = pp.irecv(b.data(), n, 0, 1);
        if (pp.wait(q, dl) != WaitStatus::done) failed();
        auto s = pp.isend(a.data(), n, 0, 2);
        if (pp.wait(s, dl) != WaitStatus::done) failed();
      }
      if (k >= 3) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / 2);
    }
    // 10th percentile, not the median: on a shared machine most of the spread
    // is preemption, which is not the transport's cost.
    std::sort(times.begin(), times.end());
    double m = times[times.size() / 10];
    if (n == 8) alpha = m;
    say(format("  ping-pong %10zu B  one-way %10.2f us  %7.2f GB/s", n, m * 1e6,
               static_cast<double>(n) / m / 1e9));
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
  if constexpr (RecvReduce<T>) {
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
          if (pp.wait(s, dl) != WaitStatus::done || pp.wait(q, dl) != WaitStatus::done) failed();
        } else if (r == 1) {
          auto q = pp.irecv_reduce(lf.data(), of.data(), n / sizeof(float), dtype::f32, ReduceOp::sum, 0, 3);
          if (pp.wait(q, dl) != WaitStatus::done) failed();
          auto s = pp.isend(a.data(), n, 0, 4);
          if (pp.wait(s, dl) != WaitStatus::done) failed();
        }
        if (k >= 3) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
      std::sort(times.begin(), times.end());
      const double rr = times[times.size() / 10] - plain;  // the receive-and-combine direction
      say(format("  recv_reduce %8zu B  one-way %10.2f us (plain receive %.2f us)", n, rr * 1e6, plain * 1e6));
      rxy += x * (rr - alpha);
      rxx += x * x;
    }
    const double g_rr = rxx > 0 ? rxy / rxx : beta;
    say(format("  receive-and-combine %.2f GB/s vs receive %.2f GB/s: gamma = %.3g s/B beyond beta", 1e-9 / g_rr,
               1e-9 / beta, std::max(0.0, g_rr - beta)));
    gamma = std::max(0.0, g_rr - beta);
  }
  double gamma_dram = reduce_rate(std::size_t{64} << 20, 5);
  say(format("  local f32 sum: %.2f GB/s in cache (gamma), %.2f GB/s from DRAM", 1e-9 / gamma, 1e-9 / gamma_dram));
  CostModel m = base;
  m.alpha = alpha;
  m.beta = beta;
  m.gamma = gamma;
  return m;
}

// Times each of Auto's candidates at every size of o.sizes for every op of
// o.ops, and returns the measured decisions: sizes with the same winner
// merged into one range, range boundaries at the geometric midpoint between
// neighbouring sizes, the first range from 0 B and the last to no end. Every
// rank returns the same table (the timings are gathered to all).
//
// A sample is one call's time on the slowest rank (what weft-bench's run
// tables report). Candidates are interleaved: rounds that each visit every
// candidate (rotating who goes first) for a warm-up call and at most five
// timed calls, so a burst of load lands on all candidates alike, and each is
// timed in short bursts after another ran, as in a run's table and in a
// program that mixes sizes and ops. Each pass yields, per size, the median of
// 12 to 200 samples per candidate (as many as move 256 MiB).
//
// The whole sweep (every op and size) runs o.passes times (default 3), so
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
// next run met the first regime, rd 2x faster.) The lowest score wins. Scores
// within 3% are a tie: the previous size's winner is kept if it is among them
// (fewer, larger ranges), else the first in Auto's candidate order. The
// margin recorded is the runner-up's score over the chosen one's.
template <Transport T, class Ctl, class... C>
std::vector<Decision> measure_decisions(T& t, Ctl& ctl, const AutoOf<C...>& policy, const CalibrateOptions& o,
                                        Deadline setup) {
  using Clock = std::chrono::steady_clock;
  const int p = t.size(), r = t.rank();
  auto say = [&](const std::string& s) {
    if (r == 0 && o.log) o.log(s);
  };
  CandidateComms<T, C...> cands(t, policy.candidates, setup);
  const std::size_t nc = cands.count;
  constexpr double tie = 1.03;  // 3%: see above

  const std::size_t es = dtype_size(o.type);
  std::size_t max_elems = 1;
  for (std::size_t b : o.sizes) max_elems = std::max(max_elems, (b + es - 1) / es);
  std::vector<std::byte> send((max_elems + static_cast<std::size_t>(p)) * es), recv(send.size());

  struct Point {
    Collective op;
    std::size_t n, bytes;
    std::vector<std::vector<double>> median;  // [pass][candidate], seconds
  };
  std::vector<Point> points;
  for (Collective op : o.ops) {
    if (op == Collective::barrier) continue;
    for (std::size_t S : o.sizes) {
      const std::size_t n =
          calibration_elems(op, 1, p) == 1 ? S / es : S / (es * static_cast<std::size_t>(p));
      if (n > 0) points.push_back({op, n, calibration_elems(op, n, p) * es, {}});
    }
  }
  for (int pass = 0; pass < o.passes; ++pass) {
    say(format("# Auto's table: pass %d of %d", pass + 1, o.passes));
    for (Point& pt : points) {
      const Collective op = pt.op;
      const int root = has_root(op) ? std::min(o.root, p - 1) : -1;
      const int samples = static_cast<int>(std::clamp<std::size_t>((std::size_t{256} << 20) / pt.bytes, 12, 200));
      const int per_visit = std::min(samples, 5);
      const int rounds = (samples + per_visit - 1) / per_visit;
      std::vector<std::vector<double>> mine(nc);
      for (int round = 0; round < rounds; ++round)
        for (std::size_t v = 0; v < nc; ++v) {
          const std::size_t k = (v + static_cast<std::size_t>(round)) % nc;
          cands.with(k, [&](auto& comm) {
            ctl.barrier();
            // warm-up: this candidate's buffers and cache lines
            call_collective(comm, op, o.type, o.reduce, send.data(), recv.data(), pt.n, root);
            for (int i = 0; i < per_visit; ++i) {
              auto t0 = Clock::now();
              call_collective(comm, op, o.type, o.reduce, send.data(), recv.data(), pt.n, root);
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

  say(format("# Auto's table, %d ranks: per candidate the median time per call (us, slowest rank) of each pass,", p));
  say("# then the score (mean over the passes of the ratio to the pass's fastest);");
  say("# the lowest score is chosen");
  std::vector<Decision> out;
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
    if (r == 0 && o.log) {
      std::string line = format("  %-14s %10zu", collective_name(pt.op), pt.bytes);
      for (std::size_t k = 0; k < nc; ++k) {
        line += format("  %s", cands.names[k]);
        for (const auto& m : pt.median) line += format(" %.2f", m[k] * 1e6);
        line += format(" (%.2f)", score[k]);
      }
      line += format("  -> %s, margin %.3f", cands.names[pick], margin);
      o.log(line);
    }
    const bool first = i == 0 || points[i - 1].op != pt.op;
    const bool last = i + 1 == points.size() || points[i + 1].op != pt.op;
    const double b = static_cast<double>(pt.bytes);
    const std::size_t lo =
        first ? 0 : static_cast<std::size_t>(std::sqrt(static_cast<double>(points[i - 1].bytes) * b)) + 1;
    const std::size_t hi = last ? std::numeric_limits<std::size_t>::max()
                                : static_cast<std::size_t>(std::sqrt(b * static_cast<double>(points[i + 1].bytes)));
    if (!first && out.back().algorithm == cands.names[pick]) {
      Decision& d = out.back();  // same winner as the size below: widen its range
      d.max_bytes = hi;
      if (margin < d.margin) {
        d.margin = margin;
        d.runner_up = cands.names[runner];
      }
      continue;
    }
    out.push_back(Decision{pt.op, p, lo, hi, cands.names[pick], margin, cands.names[runner]});
  }
  return out;
}

}  // namespace detail

// Calibrates `t` for `policy`'s candidates (their settings, e.g. chunk_bytes,
// are the ones timed): returns `base` with alpha, beta, gamma fitted (unless
// o.fit_constants is false) and `decisions` holding the measured table for
// this rank count. Other fields of `base` (alpha_inter, beta_inter,
// ranks_per_node: one machine cannot measure them) are kept. Collective;
// needs at least 2 ranks.
template <Transport T, class... C>
CostModel calibrate(T& t, const AutoOf<C...>& policy, CostModel base, const CalibrateOptions& o = {}) {
  if (t.size() < 2) throw_error<ValueError>("calibrate needs at least 2 ranks, got ", t.size());
  if (o.passes < 1) throw_error<ValueError>("calibrate: passes must be at least 1, got ", o.passes);
  const Deadline setup = deadline_after(o.setup_timeout);
  T ctl_t = t.split(0, t.rank(), setup);
  Communicator<Ring, T> ctl{ctl_t};
  CostModel m = base;
  if (o.fit_constants) {
    m = detail::fit_constants(t, base, setup, o.log);
    double fitted[3] = {m.alpha, m.beta, m.gamma};  // rank 0's ping-pong is the measurement
    ctl.broadcast(fitted, 3, 0);
    m.alpha = fitted[0];
    m.beta = fitted[1];
    m.gamma = fitted[2];
  }
  m.decisions = detail::measure_decisions(t, ctl, policy, o, setup);
  return m;
}

// The same for a default Auto's candidates (Ring, Tree, RecursiveDoubling,
// HalvingDoubling with their default settings).
template <Transport T>
CostModel calibrate(T& t, CostModel base, const CalibrateOptions& o = {}) {
  return calibrate(t, Auto{}, std::move(base), o);
}

}  // namespace weft::comm
