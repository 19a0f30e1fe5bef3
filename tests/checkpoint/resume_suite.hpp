// Exact-resume checks written once for every transport (test_checkpoint.cpp
// runs them on thread ranks, test_checkpoint_mpi.cpp under mpirun): a
// data-parallel run trained N steps in one go against k steps, a checkpoint,
// fresh objects loaded from it and N - k more steps. Uses data_parallel_suite's
// model, data and per-step batches. CodecRun does the same with a compressed
// communicator, whose codec state (error-feedback residuals, PowerSGD
// factors) the checkpoint carries.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <type_traits>
#include <filesystem>
#include <vector>
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/codec/powersgd.hpp>
#include <weft/comm/codec/top_k.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/io/checkpoint/checkpoint.hpp>
#include <weft/io/checkpoint/codec_state.hpp>
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

// One rank's training run: model, Adam, DataParallel (several buckets;
// deterministic mode unless the algorithm compresses, which refuses it).
template <class Transport, class Algo = comm::Ring>
struct DpRun {
  using Comm = comm::Communicator<Algo, Transport>;
  dp_suite::Model m;
  Comm c;
  parallel::DataParallel<float, Comm> dp;
  nn::Adam<float> opt;
  Workspace<> ws;

  static comm::CommOptions options() {
    comm::CommOptions o;
    o.deterministic = !requires { Algo::compresses; };
    o.timeout = std::chrono::seconds(60);
    return o;
  }
  DpRun(Transport& t, bool shard, Algo algo = {}) : c{t, algo, options()}, dp(m.reg, c), opt(m.reg, {.lr = 1e-2f}) {
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

// DpRun through a compressed communicator (Codec: TopK or PowerSGD, both with
// error feedback), the update unsharded, its codec state in the checkpoint.
// Not deterministic mode, but gather codecs decode in rank order and the ring
// sums in a fixed order, so a run repeats bit for bit.
template <class Transport, class Codec>
struct CodecRun : DpRun<Transport, comm::Compressed<Codec, comm::Ring>> {
  using Algo = comm::Compressed<Codec, comm::Ring>;
  using Base = DpRun<Transport, Algo>;
  ck::CodecState<typename Algo::state_table> codec;

  static Algo policy() {
    Algo a;
    if constexpr (std::is_same_v<Codec, comm::TopK>) a.codec.fraction = 0.1;
    else a.codec.rank = 2;
    return a;
  }
  explicit CodecRun(Transport& t) : Base(t, false, policy()), codec(this->c) {}
  template <class V>
  void visit_state(V& v) {
    Base::visit_state(v);
    auto k = nn::prefixed("codec", v);
    codec.visit_state(k);
  }
  ck::Sharding sharding() { return Base::sharding().per_rank("codec."); }
};

template <class Codec, class Transport>
std::vector<float> codec_straight(Transport& t, const dp_suite::Data& d) {
  CodecRun<Transport, Codec> r(t);
  for (int s = 0; s < kTotal; ++s) r.step(d, s);
  return r.m.values();
}

// kFirst steps, save, fresh objects, load, the rest. restore_codec = false
// loads everything but the codec state (the control: residuals matter).
template <class Codec, class Transport>
std::vector<float> codec_resumed(Transport& t, const dp_suite::Data& d, const std::filesystem::path& dir, bool restore_codec = true) {
  {
    CodecRun<Transport, Codec> a(t);
    for (int s = 0; s < kFirst; ++s) a.step(d, s);
    CHECK(a.c.algorithm().states->size() > 1);
    ck::save(dir, a, a.c, {.step = kFirst, .sharding = a.sharding()});
  }
  CodecRun<Transport, Codec> b(t);
  if (restore_codec) b.codec.expect(dir, b.c);
  CHECK(ck::load(dir, b, b.c, {.sharding = b.sharding(), .strict = restore_codec}).step == kFirst);
  for (int s = kFirst; s < kTotal; ++s) b.step(d, s);
  return b.m.values();
}

}  // namespace ckpt_suite
