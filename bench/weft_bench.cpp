// weft-bench: collective micro-benchmarks in nccl-tests' terms (size, count,
// type, redop, root | time, algbw, busbw, #wrong for out-of-place and
// in-place), plus p50/p99, the cost model's prediction and arrival skew (the
// largest gap between the first and last rank entering a call, and who was
// last). Runs on the thread transport (--np N ranks in this process) or on
// MPI (--transport mpi under mpirun).
//
//   weft-bench -b 8 -e 64M -f 2 --algo ring,native,auto --np 2 -c 1
//   mpirun -np 2 weft-bench --transport mpi --algo ring,halving_doubling,mpi
//   weft-bench calibrate --np 2 --model cost.txt        (then: --model cost.txt)
//   weft-bench project --model cost.txt --transport threads
//   weft-bench memcpy -e 64M
//
// Files: weft_bench/options (command line), weft_bench/collectives (the
// shared collective descriptions of weft/comm/collective.hpp: placement,
// exact inputs, checks, calls, busbw), weft_bench/run (measurement, reports,
// projection), weft_bench_calibrate.cpp (calibrate), weft_bench/codec.hpp
// (--codec); this file is main().
//
// Sizes follow nccl-tests: S bytes is the per-rank buffer for allreduce,
// broadcast and reduce, and the p-block buffer for reduce_scatter, allgather,
// gather, scatter and alltoall. algbw = S / time; busbw = algbw x factor
// (allreduce 2(p-1)/p; reduce_scatter, allgather, gather, scatter, alltoall
// (p-1)/p; broadcast, reduce 1).
#include <cstdint>
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <weft/comm/tuning/cost_model.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/comm/transport/thread.hpp>

#include "weft_bench/codec.hpp"
#include "weft_bench/contend.hpp"
#include "weft_bench/options.hpp"
#include "weft_bench/run.hpp"
#if WEFT_BENCH_MPI
#include <weft/comm/transport/mpi.hpp>
#endif

using namespace weft_bench;

namespace {
// --codec: the compressed-allreduce table (weft_bench/codec.hpp).
int run_codecs(const Options& o, int& argc, char**& argv) {
  std::vector<std::string> algos;
  for (Algo a : o.algos) algos.push_back(name_of(a));
  const weft_bench::codec::Settings s{o.codecs, algos, sizes(o), o.iters, o.warmup};
  std::vector<weft_bench::codec::Row> rows;
  if (o.transport == "thread") {
    wc::run_local(o.np, [&](wc::ThreadTransport& t) { weft_bench::codec::run(t, s, rows); });
    if (!o.quiet) weft_bench::codec::print(rows, "threads", o.np);
    return 0;
  }
#if WEFT_BENCH_MPI
  int provided = 0, rank = 0, p = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  {
    wc::MpiTransport t{MPI_COMM_WORLD};
    rank = t.rank();
    p = t.size();
    weft_bench::codec::run(t, s, rows);
  }
  if (rank == 0 && !o.quiet) weft_bench::codec::print(rows, "mpi", p);
  MPI_Finalize();
#else
  (void)argc;
  (void)argv;
#endif
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "weft-bench: %s\n", e.what());
    return 2;
  }
  if (o.help) {
    std::fputs(usage(), stdout);
    return 0;
  }
  try {
    const Contenders contenders(o.contend);
    if (o.mode == "memcpy") {
      memcpy_bw(o);
      return 0;
    }
    if (o.mode == "project") {
      const char* section = o.transport == "mpi" ? "mpi" : "threads";
      project(model_for(o, section, o.transport == "mpi" ? wc::CostModel::mpi() : wc::CostModel::threads()), o,
              section);
      return 0;
    }
    if (!o.codecs.empty()) return run_codecs(o, argc, argv);
    std::vector<Row> rows;
    if (o.transport == "thread") {
      wc::run_local(o.np, [&](wc::ThreadTransport& t) {
        if (o.bind) {
          // Unpinned, two ranks can share a core while other processes load the
          // machine: a rank then spins through its peer's time slice.
          long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
          cpu_set_t set;
          CPU_ZERO(&set);
          CPU_SET(static_cast<int>(t.rank() % (ncpu > 0 ? ncpu : 1)), &set);
          pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        }
        std::vector<Row> mine;
        run_mode(t, o, "threads", wc::CostModel::threads(), mine);
        if (t.rank() == 0) rows = std::move(mine);
      });
      if (o.mode == "run") finish(o, rows);
      return total_wrong(rows) ? 1 : 0;
    }
#if WEFT_BENCH_MPI
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rank = 0;
    {
      wc::MpiTransport t{MPI_COMM_WORLD};
      rank = t.rank();
      run_mode(t, o, "mpi", wc::CostModel::mpi(), rows);
    }
    std::int64_t w = total_wrong(rows);
    if (rank == 0 && o.mode == "run") finish(o, rows);
    MPI_Finalize();
    return w ? 1 : 0;
#endif
  } catch (const UsageError& e) {
    std::fprintf(stderr, "weft-bench: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "weft-bench: error: out of memory: the sizes up to -e/--maxbytes %zu B need more than this "
                         "machine could give (the transport stages messages too): lower -e or --np\n",
                 o.max_bytes);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "weft-bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
