// Data-parallel equivalence checks written once for every transport
// (test_data_parallel.cpp runs them on threads, test_data_parallel_mpi.cpp
// under mpirun): p ranks with batch b/p against one rank with batch b.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/weft.hpp>

namespace dp_suite {

using namespace weft;

constexpr index_t kBatch = 16, kIn = 12, kHidden = 10, kClasses = 4;

struct Data {
  Tensor<float> x{Shape{64, kIn}};
  Tensor<std::int32_t> y{Shape{64}};
  Data() {
    nn::Rng rng(3);
    for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
    for (index_t i = 0; i < 64; ++i) y.data()[i] = static_cast<std::int32_t>(rng.below(kClasses));
  }
};

struct Model {
  nn::Linear<float> l1{kIn, kHidden, 1}, l2{kHidden, kClasses, 2};
  nn::Registry<float> reg;
  Model() { reg.add("l1", l1).add("l2", l2); }
  template <class X, class Y>
  auto loss(const X& x, const Y& y) {
    return cross_entropy(l2(tanh(l1(x))), y);
  }
  std::vector<float> values() const {
    std::vector<float> v;
    for (Parameter<float>* p : reg)
      for (index_t i = 0; i < p->numel(); ++i) v.push_back(p->value.data()[i]);
    return v;
  }
};

// Rank r's share of step `step`: rows [base + r b/p, base + (r + 1) b/p).
inline std::pair<index_t, index_t> rows(int step, int r, int p) {
  index_t per = kBatch / p, base = (step * kBatch) % 64;
  return {base + r * per, base + (r + 1) * per};
}

constexpr int kSteps = 5;

// One rank, the whole batch of each step, Adam.
inline std::vector<float> single_rank_adam(const Data& data) {
  Model m;
  nn::Adam<float> opt(m.reg, {.lr = 1e-2f});
  Workspace<> ws;
  for (int s = 0; s < kSteps; ++s) {
    auto [lo, hi] = rows(s, 0, 1);
    opt.zero_grad();
    backward(m.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)), ws);
    opt.step();
  }
  return m.values();
}

// One rank computing each shard's gradient from zero, summing them in rank
// order and dividing by p: what deterministic mode must reproduce bit for bit.
inline std::vector<float> shards_in_rank_order_sgd(const Data& data, int p) {
  Model m;
  nn::SGD<float> opt(m.reg, {.lr = 0.1f, .momentum = 0.9f});
  Workspace<> ws;
  std::vector<std::vector<float>> shard(static_cast<std::size_t>(p));
  for (int s = 0; s < kSteps; ++s) {
    for (int r = 0; r < p; ++r) {
      auto [lo, hi] = rows(s, r, p);
      m.reg.zero_grad();
      backward(m.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)), ws);
      auto& g = shard[static_cast<std::size_t>(r)];
      g.clear();
      for (Parameter<float>* q : m.reg) g.insert(g.end(), q->grad.data(), q->grad.data() + q->numel());
    }
    std::vector<float> sum = shard[0];
    for (int r = 1; r < p; ++r)
      for (std::size_t i = 0; i < sum.size(); ++i) sum[i] = sum[i] + shard[static_cast<std::size_t>(r)][i];
    std::size_t k = 0;
    for (Parameter<float>* q : m.reg)
      for (index_t i = 0; i < q->numel(); ++i) q->grad.data()[i] = sum[k++] / static_cast<float>(p);
    opt.step();
  }
  return m.values();
}

// This rank's parameters after kSteps of data-parallel training; `shard`:
// the sharded update (reduce-scatter, optimizer on this rank's shard, allgather).
template <class Transport>
std::vector<float> data_parallel(Transport& t, const Data& data, bool deterministic, bool overlap = true,
                                 bool shard = false) {
  using namespace weft::comm;
  Model m;
  CommOptions o;
  o.deterministic = deterministic;
  o.timeout = std::chrono::seconds(60);
  Communicator<Ring, Transport> c{t, o};
  const int p = c.size();
  parallel::DataParallel dp(m.reg, c);
  if (deterministic) dp.set_bucket_bytes(200);  // several buckets
  dp.set_overlap(overlap);
  dp.set_shard_update(shard);
  Workspace<> ws;
  auto train = [&](auto& opt) {
    for (int s = 0; s < kSteps; ++s) {
      auto [lo, hi] = rows(s, c.rank(), p);
      opt.zero_grad();
      dp.backward(m.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)), ws);
      dp.step(opt);
    }
  };
  if (deterministic) {
    nn::SGD<float> opt(m.reg, {.lr = 0.1f, .momentum = 0.9f});
    train(opt);
  } else {
    nn::Adam<float> opt(m.reg, {.lr = 1e-2f});
    train(opt);
  }
  return m.values();
}

inline void check_close(const std::vector<float>& got, const std::vector<float>& ref) {
  REQUIRE(got.size() == ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) CHECK(std::abs(got[i] - ref[i]) <= 1e-5f * (1 + std::abs(ref[i])));
}

}  // namespace dp_suite
