// weft-bench's measurement loop, its policies (MPI's own collectives
// included), reports, projection and the run / calibrate modes (run.hpp).
#include "run.hpp"

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
#include <weft/comm/tuning/cost_file.hpp>
#include <weft/comm/transport/thread.hpp>
#if WEFT_BENCH_MPI
#include <weft/comm/transport/mpi.hpp>
#endif

#include "calibrate.hpp"
#include "collectives.hpp"

namespace weft_bench {

double seconds_since_boot(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

// Cost of `a` as its policy states it (Auto: the cheapest candidate).
double predicted(Algo a, Collective op, std::size_t bytes, int p, const wc::CostModel& m) {
  switch (a) {
    case Algo::ring: return wc::Ring::cost(op, bytes, p, m);
    case Algo::tree: return wc::Tree::cost(op, bytes, p, m);
    case Algo::recursive_doubling: return wc::RecursiveDoubling::cost(op, bytes, p, m);
    case Algo::halving_doubling: return wc::HalvingDoubling::cost(op, bytes, p, m);
    case Algo::hierarchical: return wc::Hierarchical<>::cost(op, bytes, p, m);
    case Algo::hierarchical_leaders: return wc::HierarchicalLeaders<>::cost(op, bytes, p, m);
    case Algo::native:
    case Algo::mpi: return wc::Native::cost(op, bytes, p, m);
    case Algo::automatic: return wc::Auto::cost(op, bytes, p, m);
  }
  return 0;
}

void print_header(const Options& o, const char* tname, int p, Algo a) {
  std::printf("#\n# weft-bench  transport %s  ranks %d  algorithm %s  iters %d  warmup %d  check %d\n#\n", tname, p,
              name_of(a), o.iters, o.warmup, o.check);
  std::printf("#%67s %-33s  %-33s  %-9s %-9s %-9s %-14s\n", "", "out-of-place", "in-place", "", "", "", "");
  std::printf("# %10s %12s %8s %6s %5s  %10s %7s %7s %6s  %10s %7s %7s %6s  %9s %9s %9s %9s %4s  %-14s %s\n", "size",
              "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw",
              "#wrong", "p50", "p99", "pred", "skew", "last", "op", "auto->");
  std::printf("# %10s %12s %8s %6s %5s  %10s %7s %7s %6s  %10s %7s %7s %6s  %9s %9s %9s %9s %4s\n", "(B)",
              "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(us)",
              "(us)", "(us)", "");
  std::fflush(stdout);
}

// One selected algorithm: its communicator (on its own split of the
// transport) behind a call that runs one collective, so the measurement loop
// can alternate between algorithms of different policy types.
struct Runner {
  Algo algo = Algo::ring;
  std::shared_ptr<void> owner;  // the communicator
  std::function<void(Collective, const Layout&, std::size_t, int)> call;
  std::function<std::string(Collective, std::size_t, bool)> chosen;  // Auto's pick (in place or not), "" for the others
};

// Auto's pick for the table: one name, or "oop/ip" when the placements differ.
std::string auto_choice(const Row& row) {
  if (row.oop.chosen == row.ip.chosen || row.ip.chosen.empty()) return row.oop.chosen;
  if (row.oop.chosen.empty()) return row.ip.chosen;
  return row.oop.chosen + "/" + row.ip.chosen;
}

void print_row(const Row& row) {
  auto sm = [](const Sample& x, char* buf, std::size_t len) {
    if (!x.run)
      std::snprintf(buf, len, "%10s %7s %7s %6s", "n/a", "", "", "");
    else if (x.wrong < 0)
      std::snprintf(buf, len, "%10.2f %7.2f %7.2f %6s", x.time_us, x.algbw, x.busbw, "N/A");
    else
      std::snprintf(buf, len, "%10.2f %7.2f %7.2f %6lld", x.time_us, x.algbw, x.busbw,
                    static_cast<long long>(x.wrong));
  };
  char a[96], b[96];
  sm(row.oop, a, sizeof a);
  sm(row.ip, b, sizeof b);
  std::printf("%12zu %12zu %8s %6s %5d  %s  %s  %9.2f %9.2f %9.2f %9.2f %4d  %-14s %s\n", row.bytes, row.count,
              weft::dtype_name(row.type), wc::is_reduction(row.op) ? wc::reduce_op_name(row.redop) : "none", row.root, a,
              b, row.oop.p50_us, row.oop.p99_us, row.pred_us, row.oop.skew_us, row.oop.last_rank,
              wc::collective_name(row.op), auto_choice(row).c_str());
}

// Runs every (op, size, placement) of every selected algorithm. The
// algorithms take turns at each size: the iterations of one (op, size,
// placement) are split into up to five rounds, each round running every
// algorithm (rotating who goes first, one warm-up call each) for its share,
// so load from other processes and the state of the shared buffers fall on
// all algorithms alike and their medians can be compared within the run.
// `ctl` is a Ring communicator on a separate transport group that gathers
// timings and counts.
template <class Ctl>
void measure(std::vector<Runner>& runners, Ctl& ctl, const char* tname, const Options& o,
             const wc::CostModel& model, std::vector<Row>& rows) {
  const int p = ctl.size(), r = ctl.rank();
  const std::size_t na = runners.size();
  const std::size_t es = weft::dtype_size(o.type);
  const auto all_sizes = sizes(o);
  std::size_t max_elems = 0;
  for (std::size_t b : all_sizes) max_elems = std::max(max_elems, (b + es - 1) / es);
  max_elems = std::max<std::size_t>(max_elems, 1) + static_cast<std::size_t>(p);
  std::vector<std::byte> send(max_elems * es), recv(max_elems * es);
  std::vector<std::vector<Row>> by_algo(na);

  for (Collective op : o.ops) {
    const bool rooted = wc::has_root(op);
    const int root = rooted ? o.root : -1;
    if (rooted && root >= p)
      throw UsageError("-r/--root: root " + std::to_string(root) + " is not a rank of " + std::to_string(p));
    std::vector<std::size_t> op_sizes = op == Collective::barrier ? std::vector<std::size_t>{0} : all_sizes;
    for (std::size_t S : op_sizes) {
      std::size_t n = 0;
      if (op != Collective::barrier) {
        n = total_elems(op, 1, p) == 1 ? S / es : S / (es * static_cast<std::size_t>(p));
        if (n == 0) continue;
      }
      const std::size_t bytes = total_elems(op, n, p) * es;
      const int most = bytes <= 8192 && o.small_iters > 0 ? o.small_iters : o.iters;
      const int iters = static_cast<int>(std::clamp<std::size_t>(o.bytes_budget / std::max<std::size_t>(bytes, 1), 3,
                                                                 static_cast<std::size_t>(most)));
      const int warm = std::min(o.warmup, std::max(1, iters / 2));
      const int rounds = std::min(iters, 5);
      std::vector<Row> row(na);
      for (std::size_t a = 0; a < na; ++a) {
        Row& w = row[a];
        w.transport = tname;
        w.algo = name_of(runners[a].algo);
        w.op = op;
        w.type = o.type;
        w.redop = o.redop;
        w.root = root;
        w.ranks = p;
        w.bytes = bytes;
        w.count = n;
        w.pred_us = predicted(runners[a].algo, op, bytes, p, model) * 1e6;
        w.iters = iters;
      }
      for (int placement = 0; placement < 2; ++placement) {
        const bool in_place = placement == 1;
        const Layout L = layout(op, in_place, send.data(), recv.data(), n, es, r, root);
        fill(op, o.type, o.redop, L, n, r, p, root < 0 ? 0 : root);
        std::vector<std::vector<double>> entry(na, std::vector<double>(static_cast<std::size_t>(iters))),
            dur(na, std::vector<double>(static_cast<std::size_t>(iters)));
        for (int round = 0, done = 0; round < rounds; ++round) {
          const int share = (iters - done) / (rounds - round);
          for (std::size_t v = 0; v < na; ++v) {
            const std::size_t a = (v + static_cast<std::size_t>(round)) % na;
            // Auto with in-run selection gets the whole --warmup, uncapped: its
            // trials (every candidate, --in-run calls each) must end before the
            // timed calls, or they are timed as Auto's (at large sizes the cap
            // below left 1-2 warmup calls for 7 candidates).
            const int w = runners[a].algo == Algo::automatic && o.in_run > 0 ? std::max(warm, o.warmup) : warm;
            for (int k = 0; k < (round == 0 ? w : 1); ++k) runners[a].call(op, L, n, root);
            ctl.barrier();
            for (int k = done; k < done + share; ++k) {
              auto t0 = Clock::now();
              runners[a].call(op, L, n, root);
              auto t1 = Clock::now();
              entry[a][static_cast<std::size_t>(k)] = seconds_since_boot(t0);
              dur[a][static_cast<std::size_t>(k)] = std::chrono::duration<double>(t1 - t0).count();
            }
          }
          done += share;
        }
        // Auto's pick once the warmup has run (in-run selection decides during it).
        for (std::size_t a = 0; a < na; ++a) (in_place ? row[a].ip : row[a].oop).chosen = runners[a].chosen(op, bytes, in_place);
        for (std::size_t a = 0; a < na; ++a) {
          Sample& s = in_place ? row[a].ip : row[a].oop;
          std::int64_t wrong = -1;
          if (o.check && op != Collective::barrier) {
            fill(op, o.type, o.redop, L, n, r, p, root < 0 ? 0 : root);
            runners[a].call(op, L, n, root);
            std::int64_t w = count_wrong(op, o.type, o.redop, L, n, r, p, root < 0 ? 0 : root);
            ctl.allreduce(&w, &w, 1);
            wrong = w;
          }
          std::vector<double> mine(2 * static_cast<std::size_t>(iters));
          std::copy(entry[a].begin(), entry[a].end(), mine.begin());
          std::copy(dur[a].begin(), dur[a].end(), mine.begin() + iters);
          std::vector<double> all(mine.size() * static_cast<std::size_t>(p), 0);
          ctl.allgather(mine, all);
          // iteration k: the slowest rank's duration; skew = last entry - first entry.
          std::vector<double> t(static_cast<std::size_t>(iters));
          double sum = 0;
          for (int k = 0; k < iters; ++k) {
            double worst = 0, first = 1e300, last = -1e300;
            int last_rank = 0;
            for (int q = 0; q < p; ++q) {
              const double* b = all.data() + static_cast<std::size_t>(q) * mine.size();
              worst = std::max(worst, b[iters + k]);
              first = std::min(first, b[k]);
              if (b[k] > last) {
                last = b[k];
                last_rank = q;
              }
            }
            t[static_cast<std::size_t>(k)] = worst;
            sum += worst;
            if (last - first > s.skew_us * 1e-6 || s.last_rank < 0) {
              s.skew_us = (last - first) * 1e6;
              s.last_rank = last_rank;
            }
          }
          std::sort(t.begin(), t.end());
          auto pct = [&](double q) {
            return t[std::min(t.size() - 1, static_cast<std::size_t>(std::ceil(q * static_cast<double>(t.size())) - 1))];
          };
          s.time_us = sum / iters * 1e6;
          s.p50_us = pct(0.5) * 1e6;
          s.p99_us = pct(0.99) * 1e6;
          s.algbw = s.time_us > 0 ? static_cast<double>(bytes) / (s.time_us * 1e-6) / 1e9 : 0;
          s.busbw = s.algbw * bus_factor(op, p);
          s.wrong = wrong;
          s.run = true;
        }
      }
      if (r == 0 && !o.quiet && na > 1) {
        std::printf("# measured %-14s %12zu B\n", wc::collective_name(op), bytes);  // progress; tables follow
        std::fflush(stdout);
      }
      for (std::size_t a = 0; a < na; ++a) by_algo[a].push_back(std::move(row[a]));
    }
  }
  for (std::size_t a = 0; a < na; ++a) {
    if (r == 0 && !o.quiet) {
      print_header(o, tname, p, runners[a].algo);
      for (const Row& w : by_algo[a]) print_row(w);
      std::fflush(stdout);
    }
    if (r == 0) rows.insert(rows.end(), by_algo[a].begin(), by_algo[a].end());
  }
}

// ------------------------------------------------------------ MPI's own ----
#if WEFT_BENCH_MPI
// MPI's blocking collectives, as the peer a user would otherwise call
// directly (no weft deadline: MPI_Allreduce and friends block).
struct MpiDirect {
  static constexpr const char* name = "mpi";
  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    check(MPI_Allreduce(in == out ? MPI_IN_PLACE : in, out, cnt(n), type(ctx), op(ctx), comm(ctx)));
  }
  template <class Ctx>
  void reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    const bool alias = static_cast<const std::byte*>(in) + static_cast<std::size_t>(ctx.rank()) * n * es(ctx) == out;
    check(MPI_Reduce_scatter_block(alias ? MPI_IN_PLACE : in, alias ? const_cast<void*>(in) : out, cnt(n), type(ctx),
                                   op(ctx), comm(ctx)));
    if (alias) std::memmove(out, in, n * es(ctx));
  }
  template <class Ctx>
  void allgather(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    const bool ip = static_cast<const std::byte*>(out) + static_cast<std::size_t>(ctx.rank()) * n * es(ctx) == in;
    check(MPI_Allgather(ip ? MPI_IN_PLACE : in, cnt(n), type(ctx), out, cnt(n), type(ctx), comm(ctx)));
  }
  template <class Ctx>
  void broadcast(Ctx& ctx, void* buf, std::size_t n, int root) const {
    check(MPI_Bcast(buf, cnt(n), type(ctx), root, comm(ctx)));
  }
  template <class Ctx>
  void reduce(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    check(MPI_Reduce(ctx.rank() == root && in == out ? MPI_IN_PLACE : in, out, cnt(n), type(ctx), op(ctx), root,
                     comm(ctx)));
  }
  template <class Ctx>
  void gather(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    const bool ip = ctx.rank() == root && static_cast<const std::byte*>(out) + static_cast<std::size_t>(root) * n * es(ctx) == in;
    check(MPI_Gather(ip ? MPI_IN_PLACE : in, cnt(n), type(ctx), out, cnt(n), type(ctx), root, comm(ctx)));
  }
  template <class Ctx>
  void scatter(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    const bool ip = ctx.rank() == root && static_cast<const std::byte*>(in) + static_cast<std::size_t>(root) * n * es(ctx) == out;
    check(MPI_Scatter(in, cnt(n), type(ctx), ip ? MPI_IN_PLACE : out, cnt(n), type(ctx), root, comm(ctx)));
  }
  template <class Ctx>
  void alltoall(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    check(MPI_Alltoall(in == out ? MPI_IN_PLACE : in, cnt(n), type(ctx), out, cnt(n), type(ctx), comm(ctx)));
  }
  template <class Ctx>
  void barrier(Ctx& ctx) const {
    check(MPI_Barrier(comm(ctx)));
  }
  static double cost(Collective c, std::size_t bytes, int p, const wc::CostModel& m) {
    return wc::Native::cost(c, bytes, p, m);
  }

 private:
  static void check(int rc) {
    if (rc != MPI_SUCCESS) throw std::runtime_error("MPI collective failed with code " + std::to_string(rc));
  }
  static int cnt(std::size_t n) {
    if (n > static_cast<std::size_t>(INT32_MAX)) throw std::runtime_error("--algo mpi: count exceeds MPI's int");
    return static_cast<int>(n);
  }
  template <class Ctx>
  static MPI_Comm comm(Ctx& ctx) { return ctx.transport().comm(); }
  template <class Ctx>
  static std::size_t es(Ctx& ctx) { return weft::dtype_size(ctx.call.type); }
  // MpiTransport's mapping (the one Native uses): f16/bf16 as 16-bit words with
  // user-op reductions. avg has no MPI op (Native divides afterwards; a user
  // calling MPI directly would too, which is not what this peer measures).
  template <class Ctx>
  static MPI_Datatype type(Ctx& ctx) { return wc::MpiTransport::mpi_type(ctx.call.type); }
  template <class Ctx>
  static MPI_Op op(Ctx& ctx) {
    if (ctx.call.reduce == ReduceOp::avg)
      throw UsageError("--algo mpi: MPI has no avg reduction (use -o sum, prod, min, max)");
    return ctx.transport().mpi_op(ctx.call.type, ctx.call.reduce);
  }
};
static_assert(wc::AlgorithmFor<MpiDirect, wc::MpiTransport>);
#endif

// Runs f(policy) with each selected algorithm's policy object.
template <class T, class F>
void with_policy(Algo a, const wc::CostModel& model, std::size_t chunk, const Options& o, F&& f) {
  wc::Ring ring;
  wc::Tree tree;
  wc::HalvingDoubling hd;
  if (chunk) ring.chunk_bytes = tree.chunk_bytes = hd.chunk_bytes = chunk;
  switch (a) {
    case Algo::ring: f(ring); return;
    case Algo::tree: f(tree); return;
    case Algo::recursive_doubling: f(wc::RecursiveDoubling{}); return;
    case Algo::halving_doubling: f(hd); return;
    case Algo::hierarchical: {
      wc::Hierarchical<> h;
      h.intra = h.inter = ring;
      f(h);
      return;
    }
    case Algo::hierarchical_leaders: {
      wc::HierarchicalLeaders<> h;
      h.intra = h.inter = ring;
      if (chunk) h.leader_chunk_bytes = chunk;
      f(h);
      return;
    }
    case Algo::native: f(wc::Native{}); return;
    case Algo::automatic: {
      wc::Auto au;
      au.model = model;
      std::get<wc::Ring>(au.candidates) = ring;
      std::get<wc::Tree>(au.candidates) = tree;
      std::get<wc::HalvingDoubling>(au.candidates) = hd;
      au.in_run = {.calls_per_candidate = o.in_run, .recheck_every = o.recheck, .sync_trials = o.in_run_sync};
      if (o.auto_wide) {
        // For clusters: the two-level schedule and the transport's own are candidates too.
        wc::AutoOf<wc::Ring, wc::Tree, wc::RecursiveDoubling, wc::HalvingDoubling, wc::Hierarchical<>,
                   wc::HierarchicalLeaders<>, wc::Native>
            w;
        w.model = model;
        w.in_run = au.in_run;
        std::get<wc::Ring>(w.candidates) = ring;
        std::get<wc::Tree>(w.candidates) = tree;
        std::get<wc::HalvingDoubling>(w.candidates) = hd;
        std::get<wc::Hierarchical<>>(w.candidates).intra = std::get<wc::Hierarchical<>>(w.candidates).inter = ring;
        std::get<wc::HierarchicalLeaders<>>(w.candidates).intra =
            std::get<wc::HierarchicalLeaders<>>(w.candidates).inter = ring;
        f(w);
        return;
      }
      f(au);
      return;
    }
    case Algo::mpi:
#if WEFT_BENCH_MPI
      if constexpr (std::is_same_v<T, wc::MpiTransport>) {
        f(MpiDirect{});
        return;
      }
#endif
      throw UsageError("--algo mpi needs --transport mpi");
  }
}

template <class T>
void run_all(T& t, const Options& o, const wc::CostModel& model, const char* tname, std::vector<Row>& rows) {
  const auto dl = wc::deadline_after(std::chrono::seconds(60));
  T ctl_t = t.split(0, t.rank(), dl);
  wc::Communicator<wc::Ring, T> ctl{ctl_t};
  std::vector<Runner> runners;
  for (Algo a : o.algos)
    with_policy<T>(a, model, o.chunk, o, [&](auto policy) {
      using P = decltype(policy);
      auto comm = std::make_shared<wc::Communicator<P, T>>(t.split(0, t.rank(), dl), policy);
      comm->set_fingerprints(o.fingerprints);
      Runner run;
      run.algo = a;
      run.owner = comm;
      run.call = [c = comm.get(), &o](Collective op, const Layout& L, std::size_t n, int root) {
        invoke(*c, op, o.type, o.redop, L, n, root);
      };
      run.chosen = [c = comm.get(), size = t.size(), name = std::string(t.name())](Collective op, std::size_t bytes,
                                                                                   bool in_place) {
        std::string s;
        if constexpr (requires { c->algorithm().tuning(); }) {
          // In-run selection: what the communicator's own state runs next (its winner once decided).
          const P& au = c->algorithm();
          const std::size_t guess = au.choose(op, bytes, size, name);
          s = au.tuning() ? P::candidate_name(au.tuning()->next(op, bytes, in_place, guess)) : au.choice(op, bytes, size, name);
          // WEFT_BENCH_TRIALS=1: the slowest-rank times the ranks agreed on, per candidate (stderr).
          if (au.tuning() && std::getenv("WEFT_BENCH_TRIALS") && c->rank() == 0)
            if (const auto* e = au.tuning()->find(op, bytes, in_place); e && e->decided) {
              std::fprintf(stderr, "trials %zu B%s:", bytes, in_place ? " in place" : "");
              for (std::size_t i = 0; i < e->agreed.size(); ++i)
                std::fprintf(stderr, " %s %.0f", P::candidate_name(i), e->agreed[i] * 1e6);
              std::fprintf(stderr, " (us) -> %s\n", s.c_str());
            }
        }
        return s;
      };
      runners.push_back(std::move(run));
    });
  measure(runners, ctl, tname, o, model, rows);
}

// ------------------------------------------------------------ reports ----

void write_csv(const std::string& path, const std::vector<Row>& rows) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write --csv file '" + path + "'");
  f << "impl,transport,algo,op,type,redop,root,ranks,size,count,placement,time_us,p50_us,p99_us,algbw_GBps,"
       "busbw_GBps,wrong,pred_us,skew_us,last_rank,auto_choice\n";
  for (const Row& r : rows)
    for (int k = 0; k < 2; ++k) {
      const Sample& s = k ? r.ip : r.oop;
      if (!s.run) continue;
      f << "weft," << r.transport << ',' << r.algo << ',' << wc::collective_name(r.op) << ','
        << weft::dtype_name(r.type) << ',' << (wc::is_reduction(r.op) ? wc::reduce_op_name(r.redop) : "none") << ','
        << r.root << ',' << r.ranks << ',' << r.bytes << ',' << r.count << ',' << (k ? "ip" : "oop") << ','
        << s.time_us << ',' << s.p50_us << ',' << s.p99_us << ',' << s.algbw << ',' << s.busbw << ','
        << (s.wrong < 0 ? std::string() : std::to_string(s.wrong)) << ',' << r.pred_us << ',' << s.skew_us << ','
        << s.last_rank << ',' << s.chosen << '\n';
    }
}

void write_json(const std::string& path, const std::vector<Row>& rows) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write --json file '" + path + "'");
  f << "{\"impl\": \"weft\", \"rows\": [\n";
  bool first = true;
  for (const Row& r : rows)
    for (int k = 0; k < 2; ++k) {
      const Sample& s = k ? r.ip : r.oop;
      if (!s.run) continue;
      f << (first ? "  " : ",\n  ");
      first = false;
      f << "{\"impl\": \"weft\", \"transport\": \"" << r.transport << "\", \"algo\": \"" << r.algo << "\", \"op\": \""
        << wc::collective_name(r.op) << "\", \"type\": \"" << weft::dtype_name(r.type) << "\", \"redop\": \""
        << (wc::is_reduction(r.op) ? wc::reduce_op_name(r.redop) : "none") << "\", \"root\": " << r.root
        << ", \"ranks\": " << r.ranks << ", \"size\": " << r.bytes << ", \"count\": " << r.count
        << ", \"placement\": \"" << (k ? "ip" : "oop") << "\", \"time_us\": " << s.time_us
        << ", \"p50_us\": " << s.p50_us << ", \"p99_us\": " << s.p99_us << ", \"algbw_GBps\": " << s.algbw
        << ", \"busbw_GBps\": " << s.busbw << ", \"wrong\": " << (s.wrong < 0 ? std::string("null") : std::to_string(s.wrong))
        << ", \"pred_us\": " << r.pred_us << ", \"skew_us\": " << s.skew_us << ", \"last_rank\": " << s.last_rank
        << ", \"auto_choice\": \"" << s.chosen << "\"}";
    }
  f << "\n]}\n";
}

// Auto against the best other policy measured in the same run, per (op,
// size, placement). Medians (p50), not means, so one preempted iteration on a
// shared machine does not decide. Two ratios: Auto's choice (the p50 its
// chosen policy measured in its own rows) and Auto itself (its own p50: the
// choice plus what Auto costs, its trials during warmup excluded). The
// summary lines judge Auto itself: `auto_within_10pct_everywhere` and
// `auto_worst_ratio_to_best` (issue 19's target, 1.10).
bool auto_table(const std::vector<Row>& rows) {
  bool any = false;
  double worst = 0;
  std::string worst_at;
  for (const Row& a : rows) {
    if (a.algo != "auto") continue;
    for (int k = 0; k < 2; ++k) {
      const Sample& as = k ? a.ip : a.oop;
      if (!as.run) continue;
      const Row* best = nullptr;
      const Row* chosen = nullptr;
      auto of = [k](const Row& r) -> const Sample& { return k ? r.ip : r.oop; };
      for (const Row& r : rows) {
        if (r.op != a.op || r.bytes != a.bytes || r.transport != a.transport || r.algo == "auto" || !of(r).run) continue;
        if (!best || of(r).p50_us < of(*best).p50_us) best = &r;
        if (r.algo == as.chosen) chosen = &r;
      }
      if (!best) continue;
      if (!any) {
        std::printf("#\n# Auto vs the best other policy measured in this run, p50 times (choice: the p50 of the\n"
                    "# policy Auto chose, in its own rows; auto: Auto's own p50)\n");
        std::printf("# %-14s %12s %-4s %-18s %10s  %-18s %10s %10s %7s %7s\n", "op", "size", "pl", "best", "best_us",
                    "auto_choice", "choice_us", "auto_us", "choice", "auto");
        any = true;
      }
      const double b = of(*best).p50_us;
      const double ct = chosen ? of(*chosen).p50_us : as.p50_us;
      const double ra = as.p50_us / b;
      if (ra > worst) {
        worst = ra;
        worst_at = std::string(wc::collective_name(a.op)) + " " + std::to_string(a.bytes) + " B " + (k ? "in place" : "out of place");
      }
      std::printf("  %-14s %12zu %-4s %-18s %10.2f  %-18s %10.2f %10.2f %7.3f %7.3f%s\n", wc::collective_name(a.op),
                  a.bytes, k ? "ip" : "oop", best->algo.c_str(), b, as.chosen.c_str(), ct, as.p50_us, ct / b, ra,
                  ra <= 1.10 ? "" : "  >1.10");
    }
  }
  if (any) {
    std::printf("auto_within_10pct_everywhere: %s\n", worst <= 1.10 ? "yes" : "no");
    std::printf("auto_worst_ratio_to_best: %.2f   (%s)\n", worst, worst_at.c_str());
  }
  return worst <= 1.10;
}

// ------------------------------------------------------------ project ----

// Beyond one machine: nodes of --ranks-per-node ranks. Flat algorithms
// (ring, tree, recursive doubling, halving-doubling) are charged the
// inter-node constants for every step once p exceeds a node (their schedules
// cross node boundaries at every step, so the slowest link paces them);
// hierarchical uses the intra-node constants inside a node and the inter-node
// ones across (Hierarchical<Ring, Ring>::cost).
void project(const wc::CostModel& m0, const Options& o, const char* tname) {
  wc::CostModel m = m0;
  m.ranks_per_node = o.ranks_per_node;
  wc::CostModel flat = m;
  flat.alpha = m.alpha_inter;
  flat.beta = m.beta_inter;
  const std::size_t sz[] = {8, 64 << 10, 1 << 20, 64 << 20, 256u << 20};
  const Algo algos[] = {Algo::ring, Algo::tree, Algo::recursive_doubling, Algo::halving_doubling, Algo::hierarchical};
  std::printf("# allreduce projection from the [%s] cost model: intra-node alpha %.3g s, beta %.3g s/B, gamma %.3g s/B;\n"
              "# %d ranks per node; inter-node alpha_inter %.3g s, beta_inter %.3g s/B (edit the file or recalibrate\n"
              "# on a cluster: one machine cannot measure them). Times in us, busbw in GB/s.\n",
              tname, m.alpha, m.beta, m.gamma, m.ranks_per_node, m.alpha_inter, m.beta_inter);
  std::printf("# %6s %10s", "ranks", "size");
  for (Algo a : algos) std::printf(" %14s %7s", name_of(a) == std::string("recursive_doubling") ? "rec_doubling" : name_of(a) == std::string("halving_doubling") ? "halv_doubling" : name_of(a), "busbw");
  std::printf("\n");
  for (int p = 8; p <= 4096; p *= 2)
    for (std::size_t S : sz) {
      std::printf("  %6d %10s", p, (S >= (1u << 20) ? std::to_string(S >> 20) + "MiB" : S >= 1024 ? std::to_string(S >> 10) + "KiB" : std::to_string(S) + "B").c_str());
      for (Algo a : algos) {
        const wc::CostModel& mm = a == Algo::hierarchical || p <= m.ranks_per_node ? m : flat;
        double t = predicted(a, Collective::allreduce, S, p, mm);
        double bus = static_cast<double>(S) / t / 1e9 * bus_factor(Collective::allreduce, p);
        std::printf(" %14.1f %7.3f", t * 1e6, bus);
      }
      std::printf("\n");
    }
}

// ------------------------------------------------------------ memcpy ----

void memcpy_bw(const Options& o) {
  const std::size_t n = std::max<std::size_t>(o.max_bytes, 1 << 20);
  std::vector<std::byte> a(n, std::byte{1}), b(n);
  std::vector<double> t;
  for (int k = 0; k < std::max(5, o.iters / 2); ++k) {
    auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), n);
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    a[static_cast<std::size_t>(k) % n] = b[n - 1];
  }
  std::sort(t.begin(), t.end());
  std::printf("memcpy_bytes: %zu\nmemcpy_GBps: %.3f\n", n, static_cast<double>(n) / t[0] / 1e9);
}

wc::CostModel model_for(const Options& o, const char* section, wc::CostModel fallback) {
  if (o.model_file.empty() || (o.mode == "calibrate" && !std::ifstream(o.model_file).good())) return fallback;
  const wc::CostFile f = wc::CostFile::load(o.model_file);
  const wc::CostModel* m = f.find(section);
  if (!m) {
    std::fprintf(stderr, "weft-bench: %s has no [%s] section; using built-in constants\n", o.model_file.c_str(),
                 section);
    return fallback;
  }
  return *m;
}

// Writes one transport's section: the fitted constants, and the measured
// decisions merged with the file's (those for an (op, ranks) measured now
// replace the old ones; other rank counts are kept, so calibrating --np 2
// and --np 4 into one file keeps both tables).
void save_model(const Options& o, const char* section, const wc::CostModel& m) {
  std::string path = o.model_file.empty() ? std::string("weft-cost-model.txt") : o.model_file;
  wc::CostFile f;
  if (std::ifstream(path).good()) f = wc::CostFile::load(path);
  std::vector<wc::Decision> kept;
  if (const wc::CostModel* old = f.find(section))
    for (const wc::Decision& d : old->decisions) {
      bool replaced = false;
      for (const wc::Decision& n : m.decisions) replaced = replaced || (n.op == d.op && n.ranks == d.ranks);
      if (!replaced) kept.push_back(d);
    }
  wc::CostModel& out = f.sections[section];
  out = m;
  out.decisions.insert(out.decisions.begin(), kept.begin(), kept.end());
  f.save(path);
  std::printf("wrote [%s] to %s\n", section, path.c_str());
}

template <class T>
void run_mode(T& t, const Options& o, const char* section, wc::CostModel fallback, std::vector<Row>& rows) {
  if (o.mode == "calibrate") {
    if (t.size() < 2) throw UsageError("calibrate needs at least 2 ranks (--np 2, or mpirun -np 2)");
    wc::CostModel base = model_for(o, section, fallback);
    bool had = false;
    if (!o.model_file.empty() && std::ifstream(o.model_file).good())
      had = wc::CostFile::load(o.model_file).find(section) != nullptr;
    if (!had) {  // not measurable on one machine: start from a typical fabric (edit the file on a cluster)
      base.alpha_inter = wc::CostModel::mpi().alpha_inter;
      base.beta_inter = wc::CostModel::mpi().beta_inter;
    }
    // Constants come from a ping-pong between ranks 0 and 1; with more ranks
    // than cores the others' waiting skews them, so --table-only keeps them.
    const wc::CostModel m = calibrate(t, o, base);
    if (t.rank() == 0) save_model(o, section, m);
    return;
  }
  run_all(t, o, model_for(o, section, fallback), section, rows);
}

void finish(const Options& o, const std::vector<Row>& rows) {
  if (!o.csv.empty()) write_csv(o.csv, rows);
  if (!o.json.empty()) write_json(o.json, rows);
  if (!o.quiet) {
    double sum = 0;
    int k = 0;
    for (const Row& r : rows)
      if (r.op != Collective::barrier) sum += r.oop.busbw, ++k;
    std::printf("# Avg bus bandwidth    : %g\n", k ? sum / k : 0.0);
    std::int64_t wrong = 0;
    for (const Row& r : rows) wrong += std::max<std::int64_t>(0, r.oop.wrong) + std::max<std::int64_t>(0, r.ip.wrong);
    std::printf("# Out of bounds values : %lld %s\n", static_cast<long long>(wrong), wrong ? "FAILED" : "OK");
    auto_table(rows);
  }
}

std::int64_t total_wrong(const std::vector<Row>& rows) {
  std::int64_t w = 0;
  for (const Row& r : rows) w += std::max<std::int64_t>(0, r.oop.wrong) + std::max<std::int64_t>(0, r.ip.wrong);
  return w;
}

template void run_mode<wc::ThreadTransport>(wc::ThreadTransport&, const Options&, const char*, wc::CostModel,
                                            std::vector<Row>&);
#if WEFT_BENCH_MPI
template void run_mode<wc::MpiTransport>(wc::MpiTransport&, const Options&, const char*, wc::CostModel,
                                         std::vector<Row>&);
#endif

}  // namespace weft_bench
