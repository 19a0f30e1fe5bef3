// Exact-resume checks written once for every transport (test_checkpoint.cpp
// runs them on thread ranks, test_checkpoint_mpi.cpp under mpirun): a
// data-parallel run trained N steps in one go against k steps, a checkpoint,
// fresh objects loaded from it and N - k more steps. Uses data_parallel_suite's
// model, data and per-step batches.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/io/checkpoint/checkpoint.hpp>
#include <weft/nn/nn.hpp>
#include <weft/nn/state.hpp>
#include <weft/parallel/data_parallel.hpp>

#include "../data_parallel_suite.hpp"

namespace ckpt_suite {

using namespace weft;
namespace ck = weft::io::checkpoint;

// Rank r's rows of step s: a global batch of 12, which 1, 2, 3 and 4 ranks
// split evenly, so runs on different world sizes see the same batches.
inline std::pair<index_t, index_t> rows(int s, int r, int p) {
  const index_t per = 12 / p, base = (s * 12) % 48;
  return {base + r * per, base + (r + 1) * per};
}

// One rank's training run: model, Adam, DataParallel (deterministic mode, several buckets).
template <class Transport>
struct DpRun {
  using Comm = comm::Communicator<comm::Ring, Transport>;
  dp_suite::Model m;
  Comm c;
  parallel::DataParallel<float, Comm> dp;
  nn::Adam<float> opt;
  Workspace<> ws;

  static comm::CommOptions options() {
    comm::CommOptions o;
    o.deterministic = true;
    o.timeout = std::chrono::seconds(60);
    return o;
  }
  DpRun(Transport& t, bool shard) : c{t, options()}, dp(m.reg, c), opt(m.reg, {.lr = 1e-2f}) {
    dp.set_bucket_bytes(200);  // several buckets; some parameters cut across shards
    dp.set_shard_update(shard);
  }
  // Step s of the global batch schedule, this rank's rows of it.
  float step(const dp_suite::Data& d, int s) {
    auto [lo, hi] = rows(s, c.rank(), c.size());
    opt.zero_grad();
    const float loss = dp.backward(m.loss(d.x.slice(lo, hi), d.y.slice(lo, hi)), ws);
    dp.step(opt);
    return loss;
  }
  template <class V>
  void visit_state(V& v) {
    nn::visit_part(v, "model", m.reg);
    nn::visit_part(v, "optimizer", opt);
    nn::visit_part(v, "dp", dp);
  }
  ck::Sharding sharding() { return ck::data_parallel_sharding(dp, m.reg); }
  // Overwrites every value, so only a working load can give them back.
  void scribble() {
    for (Parameter<float>* p : m.reg)
      for (index_t i = 0; i < p->numel(); ++i) p->value.data()[i] = 0.25f;
  }
};

constexpr int kTotal = 6, kFirst = 3;

// Parameters after kTotal steps in one go.
template <class Transport>
std::vector<float> straight(Transport& t, const dp_suite::Data& d, bool shard) {
  DpRun<Transport> r(t, shard);
  for (int s = 0; s < kTotal; ++s) r.step(d, s);
  return r.m.values();
}

// kFirst steps, then a checkpoint in `dir`.
template <class Transport>
void first_part(Transport& t, const dp_suite::Data& d, bool shard, const std::filesystem::path& dir) {
  DpRun<Transport> a(t, shard);
  for (int s = 0; s < kFirst; ++s) a.step(d, s);
  ck::save(dir, a, a.c, {.step = kFirst, .sharding = a.sharding()});
}

// Fresh objects loaded from `dir`, then the remaining steps: the parameters.
template <class Transport>
std::vector<float> second_part(Transport& t, const dp_suite::Data& d, bool shard, const std::filesystem::path& dir) {
  DpRun<Transport> b(t, shard);
  b.scribble();
  const ck::CheckpointInfo info = ck::load(dir, b, b.c, {.sharding = b.sharding()});
  CHECK(info.step == kFirst);
  CHECK(info.ranks == b.c.size());
  for (int s = kFirst; s < kTotal; ++s) b.step(d, s);
  return b.m.values();
}

// Both parts in one process (fresh objects in between).
template <class Transport>
std::vector<float> resumed(Transport& t, const dp_suite::Data& d, bool shard, const std::filesystem::path& dir) {
  first_part(t, d, shard, dir);
  return second_part(t, d, shard, dir);
}

}  // namespace ckpt_suite
