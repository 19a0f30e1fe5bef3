// The data-parallel training step timed by bench_dp (threads) and bench_dp_mpi:
// MLP 784-256-256-10, ReLU, cross-entropy, Adam lr 1e-3, global batch 128
// split evenly over the ranks, random data, one BLAS thread per rank.
// Environment: WEFT_DP_ALGO = ring (default) | native | recursive_doubling |
// auto; WEFT_DP_SHARD = 1: sharded update; WEFT_DP_NO_OVERLAP = 1: blocking
// reductions after backward; WEFT_DP_BUCKET_BYTES = N: bucket size (default
// one parameter per bucket); WEFT_DP_NO_COMM = 1: each rank does its own work
// (batch b/p, the optimizer on all or, sharded, 1/p of every parameter) and
// nothing else: the ceiling that communication can only lower. Its parameters
// drift apart, so it measures speed only.
#pragma once

#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <algorithm>
#include <string>
#include <vector>
#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/weft.hpp>

#include "mlp.hpp"

namespace dpbench {

using namespace weft;

// Returns global samples/s (all ranks), measured on rank 0's clock between
// two barriers around `seconds` of steps.
template <class Algo, class Transport>
double run(Transport& t, double seconds, index_t global_batch = 128) {
  using namespace weft::comm;
  Algo policy{};
  if constexpr (requires { Algo::from_environment(); }) policy = Algo::from_environment();  // Auto: WEFT_COST_MODEL
  Communicator<Algo, Transport> ring{t, policy};
  const int size = ring.size();
  const index_t batch = global_batch / size;
  const benchmlp::RandomData data(4096, nn::Rng(100 + static_cast<std::uint64_t>(ring.rank())));
  benchmlp::Mlp m;
  nn::Registry<float>& params = m.params;
  parallel::DataParallel dp(params, ring);
  // Default: one bucket per parameter (reduced in place, started as each
  // gradient is final); WEFT_DP_BUCKET_BYTES=N packs parameters into N-byte buckets.
  const char* bb = std::getenv("WEFT_DP_BUCKET_BYTES");
  dp.set_bucket_bytes(bb ? std::strtoull(bb, nullptr, 10) : 1);
  if (std::getenv("WEFT_DP_NO_OVERLAP")) dp.set_overlap(false);
  if (std::getenv("WEFT_DP_SHARD")) dp.set_shard_update(true);
  nn::Adam<float> opt(params, {.lr = 1e-3f});
  const bool no_comm = std::getenv("WEFT_DP_NO_COMM") != nullptr;
  std::vector<nn::ParamRange> mine;  // no_comm and sharded: this rank's 1/p of each parameter
  for (std::size_t k = 0; k < params.size(); ++k) {
    const index_t n = params[k].numel(), per = (n + size - 1) / size;
    mine.push_back({k, std::min(n, per * ring.rank()), std::min(n, per * (ring.rank() + 1))});
  }
  benchmlp::Batches b(data, batch);
  Workspace<> ws;
  auto step = [&] {
    b.next();
    opt.zero_grad();
    if (no_comm) {
      backward(m.loss(b.x, b.y), ws);
      if (dp.shard_update())
        opt.step(mine);
      else
        opt.step();
      return;
    }
    dp.backward(m.loss(b.x, b.y), ws);
    dp.step(opt);
  };
  for (int w = 0; w < 10; ++w) step();
  // Rank 0 decides the number of steps from a timed probe, so every rank runs the same count.
  ring.barrier();
  auto t0 = std::chrono::steady_clock::now();
  for (int w = 0; w < 20; ++w) step();
  double probe = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 20;
  ring.broadcast(std::span<double>(&probe, 1), 0);
  const long steps = static_cast<long>(seconds / probe) + 1;
  ring.barrier();
  t0 = std::chrono::steady_clock::now();
  for (long s = 0; s < steps; ++s) step();
  ring.barrier();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(steps * batch * size) / secs;
}

// The algorithm named by WEFT_DP_ALGO.
template <class Transport>
double run(Transport& t, double seconds) {
  const char* a = std::getenv("WEFT_DP_ALGO");
  const std::string algo = a ? a : "ring";
  if (algo == "ring") return run<comm::Ring>(t, seconds);
  if (algo == "native") return run<comm::Native>(t, seconds);
  if (algo == "recursive_doubling") return run<comm::RecursiveDoubling>(t, seconds);
  if (algo == "auto") return run<comm::Auto>(t, seconds);
  throw_error<ValueError>("WEFT_DP_ALGO=", algo, ": expected ring, native, recursive_doubling or auto");
}

}  // namespace dpbench
