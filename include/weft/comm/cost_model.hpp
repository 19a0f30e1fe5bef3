// Alpha-beta-gamma cost model (Thakur, Rabenseifner & Gropp 2005): a message
// of n bytes costs alpha + n*beta, combining n bytes costs n*gamma. Each
// algorithm policy exposes cost(op, bytes, p, model) built from these; Auto
// picks the cheapest per call. Bytes follow nccl-tests' S: the per-rank buffer
// for allreduce/broadcast/reduce, the full p-block buffer for
// reduce_scatter/allgather/gather/scatter/alltoall.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>

namespace weft::comm {

struct CostModel {
  double alpha = 1.0e-6;          // seconds per message (intra-node)
  double beta = 1.0 / 8.0e9;      // seconds per byte moved (intra-node)
  double gamma = 1.0 / 8.0e9;     // seconds per byte combined
  double alpha_inter = 5.0e-6;    // seconds per message between nodes
  double beta_inter = 1.0 / 1.2e9;  // seconds per byte between nodes
  int ranks_per_node = 0;         // pl for hierarchical formulas (0: all ranks on one node)

  // Shared-memory threads: latency is a cache-line handoff, bandwidth ~ memcpy.
  static constexpr CostModel threads() { return CostModel{0.3e-6, 1.0 / 10.0e9, 1.0 / 8.0e9, 0.3e-6, 1.0 / 10.0e9, 0}; }
  // MPI on one machine or a fast fabric.
  static constexpr CostModel mpi() { return CostModel{2.0e-6, 1.0 / 4.0e9, 1.0 / 8.0e9, 5.0e-6, 1.0 / 1.2e9, 0}; }
};

namespace detail {
inline double lg(int p) { return p <= 1 ? 0.0 : std::ceil(std::log2(static_cast<double>(p))); }
inline bool pow2(int p) { return p > 0 && std::has_single_bit(static_cast<unsigned>(p)); }
inline double frac(int p) { return p <= 0 ? 0.0 : static_cast<double>(p - 1) / p; }
}  // namespace detail

}  // namespace weft::comm
