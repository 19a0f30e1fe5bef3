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

// A parameter used on some ranks only, with several buckets and overlap on
// (issue 12): three same-sized parameters a, b, c, one bucket each; b is used
// on rank 0 only, so on the other ranks its gradient is final only after
// backward. Buckets must still start in the same order on every rank, or
// same-sized allreduces pair up across parameters (b averaged with c). With
// `c_before_b` c is registered before b, which flips the bucket order against
// the order in which rank 0's hooks fire: one of the two orders mismatches
// whatever order backward reports gradients in. One SGD step with lr 1 from
// zero: each value is minus its averaged gradient, which rank 0 returns as
// (a, b, c); rank r's gradients are a: r + 1, b: 10 (rank 0 only), c: 100 (r + 1).
template <class Transport>
std::vector<float> unused_on_some_ranks(Transport& t, bool c_before_b, bool shard) {
  using namespace weft::comm;
  Parameter<float> a("a", {4}), b("b", {4}), c("c", {4});
  nn::Registry<float> reg;
  reg.add(a, "a");
  if (c_before_b)
    reg.add(c, "c").add(b, "b");
  else
    reg.add(b, "b").add(c, "c");
  CommOptions o;
  o.timeout = std::chrono::seconds(60);
  Communicator<Ring, Transport> comm{t, o};
  const int r = comm.rank();
  parallel::DataParallel dp(reg, comm);
  dp.set_bucket_bytes(4 * sizeof(float));  // one parameter per bucket
  dp.set_shard_update(shard);
  const Tensor<float> xa(Shape{4}, float(r + 1)), xb(Shape{4}, 10.0f), xc(Shape{4}, 100.0f * float(r + 1));
  nn::SGD<float> opt(reg, {.lr = 1.0f});
  Workspace<> ws;
  opt.zero_grad();
  if (r == 0)
    dp.backward(sum(b * xb) + sum(c * xc) + sum(a * xa), ws);
  else
    dp.backward(sum(c * xc) + sum(a * xa), ws);
  dp.step(opt);
  if (comm.size() > 1) CHECK(dp.buckets() == 3);
  std::vector<float> v;
  for (const Parameter<float>* q : {&a, &b, &c})
    for (index_t i = 0; i < 4; ++i) v.push_back(q->value.data()[i]);
  return v;
}

// What every rank must hold after unused_on_some_ranks on p ranks.
inline void check_unused_on_some_ranks(const std::vector<float>& got, int p) {
  const float n = static_cast<float>(p), a = -(n + 1) / 2, b = -10 / n, c = -100 * (n + 1) / 2;
  REQUIRE(got.size() == 12u);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(got[i] == doctest::Approx(a).epsilon(1e-6));
    CHECK(got[4 + i] == doctest::Approx(b).epsilon(1e-6));
    CHECK(got[8 + i] == doctest::Approx(c).epsilon(1e-6));
  }
}

inline void check_close(const std::vector<float>& got, const std::vector<float>& ref) {
  REQUIRE(got.size() == ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) CHECK(std::abs(got[i] - ref[i]) <= 1e-5f * (1 + std::abs(ref[i])));
}

}  // namespace dp_suite
