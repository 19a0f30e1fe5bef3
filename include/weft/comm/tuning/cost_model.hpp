// Alpha-beta-gamma cost model (Thakur, Rabenseifner & Gropp 2005): a message
// of n bytes costs alpha + n*beta, combining n bytes costs n*gamma. Each
// algorithm policy exposes cost(op, bytes, p, model) built from these; Auto
// picks the cheapest per call. Bytes follow nccl-tests' S: the per-rank buffer
// for allreduce/broadcast/reduce, the full p-block buffer for
// reduce_scatter/allgather/gather/scatter/alltoall.
//
// Three constants cannot express everything a transport does (a ring's two
// steps on shared memory cost far more than two alphas; MPI switches
// protocols at message sizes of its own), so a model may also carry measured
// decisions: for (op, ranks, size range) the algorithm that was fastest when
// `weft-bench calibrate` timed every candidate (Open MPI's coll_tuned dynamic
// rules and NCCL's tuner plugins play the same role). Auto follows them where
// they exist and uses the formulas elsewhere. Files: cost_file.hpp; the
// measurement: calibrate.hpp.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "../collective.hpp"

namespace weft::comm {

// A measured choice: for `op` at `ranks` ranks and S in [min_bytes,
// max_bytes], `algorithm` measured fastest. margin is how much slower the
// runner-up measured, as a ratio (weft-bench calibrate: its worst-case ratio
// to the fastest over the passes, over the chosen one's; near 1.0 the choice
// hardly matters): informational, Auto does not read it.
struct Decision {
  Collective op = Collective::allreduce;
  int ranks = 0;
  std::size_t min_bytes = 0, max_bytes = 0;
  std::string algorithm;
  double margin = 1.0;
  std::string runner_up;
};

struct CostModel {
  double alpha = 1.0e-6;          // seconds per message (intra-node)
  double beta = 1.0 / 8.0e9;      // seconds per byte moved (intra-node)
  double gamma = 1.0 / 8.0e9;     // seconds per byte combined
  double alpha_inter = 5.0e-6;    // seconds per message between nodes
  double beta_inter = 1.0 / 1.2e9;  // seconds per byte between nodes
  int ranks_per_node = 0;         // pl for hierarchical formulas (0: all ranks on one node)
  std::vector<Decision> decisions{};  // measured tables, any number of (op, ranks)

  // Shared-memory threads: latency is a cache-line handoff, bandwidth ~ memcpy.
  // Evidence: `weft-bench calibrate --np 2` on the 2-core development VM
  // (docs/benchmarks.md) fitted alpha 3.48e-7 s and beta 9.99e-11 s/B (10 GB/s).
  // gamma (8 GB/s) has no recorded measurement; that calibration fitted
  // 2.44e-11 s/B as a receive-and-combine's cost beyond a receive. Starting
  // points: calibrate your machine.
  static CostModel threads() {
    return CostModel{.alpha = 0.3e-6, .beta = 1.0 / 10.0e9, .gamma = 1.0 / 8.0e9, .alpha_inter = 0.3e-6,
                     .beta_inter = 1.0 / 10.0e9, .ranks_per_node = 0};
  }
  // MPI on one machine or a fast fabric. No measurement backs these: alpha
  // 2 us and 4 GB/s are typical of Open MPI's shared-memory path, 5 us and
  // 1.2 GB/s (alpha_inter, beta_inter) of a 10 GbE link; calibrate under
  // mpirun for your own.
  static CostModel mpi() {
    return CostModel{.alpha = 2.0e-6, .beta = 1.0 / 4.0e9, .gamma = 1.0 / 8.0e9, .alpha_inter = 5.0e-6,
                     .beta_inter = 1.0 / 1.2e9, .ranks_per_node = 0};
  }

  // The measured decision for (op, bytes, p), or nullptr when the model has no
  // table for (op, p). A size outside the table's ranges takes the nearest
  // range (calibrate writes ranges that cover every size). No allocation:
  // Auto calls this on every collective.
  const Decision* decide(Collective op, std::size_t bytes, int p) const {
    const Decision* below = nullptr;  // the highest range under `bytes`
    const Decision* above = nullptr;  // the lowest range over it
    for (const Decision& d : decisions) {
      if (d.op != op || d.ranks != p) continue;
      if (bytes >= d.min_bytes && bytes <= d.max_bytes) return &d;
      if (d.max_bytes < bytes && (!below || d.max_bytes > below->max_bytes)) below = &d;
      if (d.min_bytes > bytes && (!above || d.min_bytes < above->min_bytes)) above = &d;
    }
    return below ? below : above;
  }
};

namespace detail {
inline double lg(int p) { return p <= 1 ? 0.0 : std::ceil(std::log2(static_cast<double>(p))); }
inline bool pow2(int p) { return p > 0 && std::has_single_bit(static_cast<unsigned>(p)); }
inline double frac(int p) { return p <= 0 ? 0.0 : static_cast<double>(p - 1) / p; }
}  // namespace detail

}  // namespace weft::comm
