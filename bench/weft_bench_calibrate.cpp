// weft-bench calibrate (weft_bench/calibrate.hpp). The measurement is
// comm::calibrate() (weft/comm/tuning/calibrate.hpp): the fitted constants and
// Auto's table for this rank count, the same on every rank. Here: the options
// from the command line, and the printing.
#include "weft_bench/calibrate.hpp"

#include <cstdio>
#include <string>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/transport/thread.hpp>
#include <weft/comm/tuning/calibrate.hpp>
#if WEFT_BENCH_MPI
#include <weft/comm/transport/mpi.hpp>
#endif

namespace weft_bench {

template <class T>
wc::CostModel calibrate(T& t, const Options& o, wc::CostModel base) {
  wc::Auto au;
  if (o.chunk) {
    std::get<wc::Ring>(au.candidates).chunk_bytes = o.chunk;
    std::get<wc::Tree>(au.candidates).chunk_bytes = o.chunk;
    std::get<wc::HalvingDoubling>(au.candidates).chunk_bytes = o.chunk;
  }
  wc::CalibrateOptions co;
  co.ops = o.ops;
  co.sizes = sizes(o);
  co.type = o.type;
  co.reduce = o.redop;
  co.root = o.root;
  co.passes = o.passes;
  co.fit_constants = !o.table_only;
  if (!o.quiet)
    co.log = [](const std::string& line) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    };
  wc::CostModel m = wc::calibrate(t, au, base, co);
  if (t.rank() == 0 && co.fit_constants)
    std::printf("calibrated %s: alpha %.3g s  beta %.3g s/B (%.2f GB/s)  gamma %.3g s/B (%.2f GB/s)\n", t.name(),
                m.alpha, m.beta, 1e-9 / m.beta, m.gamma, 1e-9 / m.gamma);
  std::fflush(stdout);
  return m;
}

template wc::CostModel calibrate<wc::ThreadTransport>(wc::ThreadTransport&, const Options&, wc::CostModel);
#if WEFT_BENCH_MPI
template wc::CostModel calibrate<wc::MpiTransport>(wc::MpiTransport&, const Options&, wc::CostModel);
#endif

}  // namespace weft_bench
