// Mesh and ZeRO checks written once for every transport (test_zero.cpp runs
// them on thread ranks, test_zero_mpi.cpp under mpirun): DP, ZeRO-1, -2, -3
// after 20 steps against one rank with the whole batch (float tolerance) and
// against each other (bit for bit in deterministic mode); mesh coordinates
// and sub-communicators against the layout computed by hand.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/parallel/mesh.hpp>
#include <weft/parallel/zero.hpp>
#include <weft/weft.hpp>

namespace zero_suite {

using namespace weft;

// An MLP of three nn::Linear layers (three ZeRO units), Fashion-MNIST's
// shape shrunk so the suite stays fast: 20 inputs, 16 hidden, 5 classes.
constexpr index_t kBatch = 16, kIn = 20, kHidden = 16, kClasses = 5, kRows = 128;
constexpr int kSteps = 20;

struct Data {
  Tensor<float> x{Shape{kRows, kIn}};
  Tensor<std::int32_t> y{Shape{kRows}};
  Data() {
    nn::Rng rng(11);
    for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
    for (index_t i = 0; i < kRows; ++i) y.data()[i] = static_cast<std::int32_t>(rng.below(kClasses));
  }
};

struct Model {
  nn::Linear<float> l1{kIn, kHidden, 1}, l2{kHidden, kHidden, 2}, l3{kHidden, kClasses, 3};
  nn::Registry<float> reg;
  Model() { reg.add("l1", l1).add("l2", l2).add("l3", l3); }
  template <class X, class Y>
  auto loss(const X& x, const Y& y) {
    return cross_entropy(l3(tanh(l2(tanh(l1(x))))), y);
  }
  std::vector<float> values() const {
    std::vector<float> v;
    for (Parameter<float>* p : reg) v.insert(v.end(), p->value.data(), p->value.data() + p->numel());
    return v;
  }
};

inline const nn::AdamOptions kAdam{.lr = 1e-2f, .weight_decay = 1e-3f};

// Rank r's rows of step s.
inline std::pair<index_t, index_t> rows(int s, int r, int p) {
  const index_t per = kBatch / p, base = (s * kBatch) % kRows;
  return {base + r * per, base + (r + 1) * per};
}

inline std::vector<float> single_rank(const Data& data) {
  Model m;
  nn::Adam<float> opt(m.reg, kAdam);
  Workspace<> ws;
  for (int s = 0; s < kSteps; ++s) {
    auto [lo, hi] = rows(s, 0, 1);
    opt.zero_grad();
    backward(m.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)), ws);
    opt.step();
  }
  return m.values();
}

inline comm::CommOptions options(bool deterministic) {
  comm::CommOptions o;
  o.deterministic = deterministic;
  o.timeout = std::chrono::seconds(60);
  return o;
}

// Stage 0: DataParallel with nn::Adam (plain DP, the reference).
template <class Transport>
std::vector<float> train_dp(Transport& t, const Data& data, bool deterministic) {
  using namespace weft::comm;
  Model m;
  Communicator<Ring, Transport> c{t, options(deterministic)};
  parallel::DataParallel dp(m.reg, c);
  nn::Adam<float> opt(m.reg, kAdam);
  Workspace<> ws;
  for (int s = 0; s < kSteps; ++s) {
    auto [lo, hi] = rows(s, c.rank(), c.size());
    opt.zero_grad();
    dp.backward(m.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)), ws);
    dp.step(opt);
  }
  return m.values();
}

// This rank's view of every parameter after kSteps under ZeRO stage Stage.
template <class Stage, class Transport>
std::vector<float> train_zero(Transport& t, const Data& data, bool deterministic, bool overlap = true) {
  using namespace weft::comm;
  Model m;
  using C = Communicator<Ring, Transport>;
  C c{t, options(deterministic)};
  parallel::Zero<float, Stage, C> z(m.reg, c, kAdam, {.overlap = overlap});
  Workspace<> ws;
  for (int s = 0; s < kSteps; ++s) {
    auto [lo, hi] = rows(s, c.rank(), c.size());
    z.backward([&] { return m.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)); }, ws);
    z.step();
  }
  return z.full_values();
}

// Hybrid sharding on a replicate x shard mesh (the shard axis innermost):
// Zero over "shard", gradient shards averaged over "replicate".
template <class Stage, class Transport>
std::vector<float> train_hybrid(Transport& t, const Data& data, int replicas) {
  using namespace weft::comm;
  Model m;
  using C = Communicator<Ring, Transport>;
  parallel::Mesh<Transport> mesh(t, {{"replicate", replicas}, {"shard", t.size() / replicas}});
  C& shard = mesh.template comm<Ring>("shard", Ring{}, options(false));
  C& replicate = mesh.template comm<Ring>("replicate", Ring{}, options(false));
  parallel::Zero<float, Stage, C, C> z(m.reg, shard, replicate, kAdam);
  Workspace<> ws;
  for (int s = 0; s < kSteps; ++s) {
    auto [lo, hi] = rows(s, t.rank(), t.size());
    z.backward([&] { return m.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)); }, ws);
    z.step();
  }
  return z.full_values();
}

// ---- stage 3 layer by layer (parallel::zero_layers) ----------------------------

// The suite's MLP as the layer sequence l1, tanh, l2, tanh, l3 (loss: cross-entropy).
inline auto xent() {
  return [](auto out, TensorView<std::int32_t> y) { return cross_entropy(out, y); };
}

template <class Stage = parallel::Zero3, class Transport>
std::vector<float> train_layers(Transport& t, const Data& data, bool deterministic,
                                parallel::ZeroPrecision prec = parallel::ZeroPrecision::f32,
                                nn::AdamOptions adam = kAdam, bool overlap = true) {
  using namespace weft::comm;
  Model m;
  nn::Tanh act;
  using C = Communicator<Ring, Transport>;
  C c{t, options(deterministic)};
  parallel::Zero<float, Stage, C> z(m.reg, c, adam, {.precision = prec, .overlap = overlap});
  auto fsdp = parallel::zero_layers<std::int32_t>(z, std::tie(m.l1, act, m.l2, act, m.l3), xent());
  for (int s = 0; s < kSteps; ++s) {
    auto [lo, hi] = rows(s, c.rank(), c.size());
    fsdp.backward(data.x.slice(lo, hi), data.y.slice(lo, hi));
    z.step();
  }
  return z.full_values();
}

// Hybrid sharding, per layer.
template <class Transport>
std::vector<float> train_hybrid_layers(Transport& t, const Data& data, int replicas) {
  using namespace weft::comm;
  Model m;
  nn::Tanh act;
  using C = Communicator<Ring, Transport>;
  parallel::Mesh<Transport> mesh(t, {{"replicate", replicas}, {"shard", t.size() / replicas}});
  C& shard = mesh.template comm<Ring>("shard", Ring{}, options(false));
  C& replicate = mesh.template comm<Ring>("replicate", Ring{}, options(false));
  parallel::Zero<float, parallel::Zero3, C, C> z(m.reg, shard, replicate, kAdam);
  auto fsdp = parallel::zero_layers<std::int32_t>(z, std::tie(m.l1, act, m.l2, act, m.l3), xent());
  for (int s = 0; s < kSteps; ++s) {
    auto [lo, hi] = rows(s, t.rank(), t.size());
    fsdp.backward(data.x.slice(lo, hi), data.y.slice(lo, hi));
    z.step();
  }
  return z.full_values();
}

inline float to_bf16(float x) { return static_cast<float>(weft::bfloat16(x)); }

// The mixed-precision reference, with no communication at all: one process
// keeps the f32 master model and nn::Adam; each step copies the master
// values rounded to bf16 into a compute model, computes every rank's batch
// gradient in f32 (the whole-model expression, not layer by layer), rounds
// each to bf16, averages them in f32 and rounds the average to bf16: the
// points where Zero<..., bf16> rounds. (Zero's ring rounds partial sums of
// more than two ranks once more per hop: a difference of order 2^-8 of the
// gradient, hence a tolerance at 4 ranks.)
inline std::vector<float> mixed_reference(const Data& data, int p, nn::AdamOptions adam, bool round) {
  Model master, work;
  nn::Adam<float> opt(master.reg, adam);
  Workspace<> ws;
  for (int s = 0; s < kSteps; ++s) {
    for (std::size_t k = 0; k < master.reg.size(); ++k) {
      const Parameter<float>& a = master.reg[k];
      Parameter<float>& b = work.reg[k];
      for (index_t i = 0; i < a.numel(); ++i) b.value.data()[i] = round ? to_bf16(a.value.data()[i]) : a.value.data()[i];
    }
    std::vector<std::vector<float>> sum(master.reg.size());
    for (std::size_t k = 0; k < master.reg.size(); ++k) sum[k].assign(static_cast<std::size_t>(master.reg[k].numel()), 0.0f);
    for (int r = 0; r < p; ++r) {
      auto [lo, hi] = rows(s, r, p);
      work.reg.zero_grad();
      backward(work.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)), ws);
      for (std::size_t k = 0; k < work.reg.size(); ++k)
        for (index_t i = 0; i < work.reg[k].numel(); ++i) {
          const float g = work.reg[k].grad.data()[i];
          sum[k][static_cast<std::size_t>(i)] += round ? to_bf16(g) : g;
        }
    }
    for (std::size_t k = 0; k < master.reg.size(); ++k)
      for (index_t i = 0; i < master.reg[k].numel(); ++i) {
        const float avg = sum[k][static_cast<std::size_t>(i)] / static_cast<float>(p);
        master.reg[k].grad.data()[i] = round ? to_bf16(avg) : avg;
      }
    opt.step();
  }
  return master.values();
}

// Largest relative difference, as check_close measures it.
inline double worst_relative(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]) / (1e-3 + std::fabs(static_cast<double>(b[i]))));
  return worst;
}

// ||a - b|| / ||b||.
inline double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    d += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    n += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(d / std::max(n, 1e-30));
}

inline void check_close(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]) / (1e-3 + std::fabs(static_cast<double>(b[i]))));
  INFO(what << ": worst relative difference " << worst);
  CHECK(worst < 2e-3);
}

// Every stage at this transport's rank count: close to one rank (ring,
// float rounding), and bit for bit equal to DP and to each other in
// deterministic mode.
template <class Transport>
void check_stages(Transport& t, const Data& data, const std::vector<float>& one_rank) {
  const auto dp = train_dp(t, data, false);
  check_close(dp, one_rank, "DP");
  check_close(train_zero<parallel::Zero1>(t, data, false), one_rank, "ZeRO-1");
  check_close(train_zero<parallel::Zero2>(t, data, false), one_rank, "ZeRO-2");
  check_close(train_zero<parallel::Zero3>(t, data, false), one_rank, "ZeRO-3");
  const auto dpd = train_dp(t, data, true);
  CHECK(train_zero<parallel::Zero1>(t, data, true) == dpd);
  CHECK(train_zero<parallel::Zero2>(t, data, true) == dpd);
  CHECK(train_zero<parallel::Zero3>(t, data, true) == dpd);
  // collectives on the calling thread (ZeroOptions::overlap = false): the same bits
  CHECK(train_zero<parallel::Zero2>(t, data, true, false) == dpd);
  CHECK(train_zero<parallel::Zero3>(t, data, true, false) == dpd);
  check_close(train_zero<parallel::Zero3>(t, data, false, false), one_rank, "ZeRO-3, overlap off");
  // stage 3 layer by layer (prefetched gathers, per-layer reduce-scatters)
  check_close(train_layers(t, data, false), one_rank, "ZeRO-3 per layer");
  CHECK(train_layers(t, data, true) == dpd);
  // per layer with overlap off (no prefetch; gathers and reduce-scatters on the calling thread)
  CHECK(train_layers(t, data, true, parallel::ZeroPrecision::f32, kAdam, false) == dpd);
  CHECK(train_layers(t, data, true, parallel::ZeroPrecision::bf16, kAdam, false) ==
        train_layers(t, data, true, parallel::ZeroPrecision::bf16, kAdam, true));
}

// Mixed precision (bf16 on the wire and in the layers' parameters, f32
// master and Adam) against mixed_reference: tight at 1 and 2 ranks (the same
// roundings), within a few bf16 roundings at 4; and measurably away from
// f32 training, so the bf16 really is there.
inline const nn::AdamOptions kAdamMixed{.lr = 1e-3f, .weight_decay = 1e-3f};
template <class Transport>
void check_mixed(Transport& t, const Data& data, const std::vector<float>& ref, const std::vector<float>& ref_f32) {
  const auto mixed = train_layers(t, data, false, parallel::ZeroPrecision::bf16, kAdamMixed);
  const double to_ref = worst_relative(mixed, ref), to_f32 = worst_relative(mixed, ref_f32);
  const double l2_ref = relative_l2(mixed, ref), l2_f32 = relative_l2(mixed, ref_f32);
  INFO("ranks " << t.size() << ": bf16 Zero vs the bf16 reference: worst " << to_ref << ", l2 " << l2_ref
                << "; vs f32 training: worst " << to_f32 << ", l2 " << l2_f32);
  if (t.size() <= 2) {
    CHECK(to_ref < 1e-4);
    CHECK(to_f32 > 20 * to_ref);
  } else {
    CHECK(l2_ref < 3e-4);
    CHECK(l2_f32 > 2 * l2_ref);
  }
}

// Mesh over the whole transport: coordinates, groups and every axis's
// communicator checked against the row-major layout computed by hand.
template <class Transport>
void check_mesh(Transport& t, std::vector<parallel::MeshAxis> axes) {
  using namespace weft::comm;
  parallel::Mesh<Transport> mesh(t, axes);
  const int r = t.rank();
  // row-major coordinates, last axis innermost
  std::vector<int> c(axes.size());
  int rest = r;
  for (std::size_t i = axes.size(); i-- > 0;) {
    c[i] = rest % axes[i].size;
    rest /= axes[i].size;
  }
  CHECK(mesh.coords() == c);
  CHECK(mesh.rank_of(c) == r);
  for (std::size_t i = 0; i < axes.size(); ++i) {
    auto& comm = mesh.template comm<Ring>(axes[i].name);
    CHECK(comm.size() == axes[i].size);
    CHECK(comm.rank() == c[i]);
    // the group: every rank that differs from this one in axis i only
    std::vector<int> expect;
    for (int v = 0; v < axes[i].size; ++v) {
      std::vector<int> d = c;
      d[i] = v;
      expect.push_back(mesh.rank_of(d));
    }
    CHECK(mesh.group(axes[i].name) == expect);
    // the communicator really spans that group: sum of world ranks
    std::vector<std::int64_t> x{r};
    comm.allreduce(x);
    std::int64_t sum = 0;
    for (int q : expect) sum += q;
    CHECK(x[0] == sum);
    // a second policy on the same axis is its own communicator
    auto& tree = mesh.template comm<Tree>(axes[i].name);
    CHECK(static_cast<void*>(&tree) != static_cast<void*>(&comm));
    CHECK(&mesh.template comm<Ring>(axes[i].name) == &comm);
    std::vector<std::int64_t> y{1};
    tree.allreduce(y);
    CHECK(y[0] == axes[i].size);
  }
  if (axes.size() >= 2) {
    // the group of the last two axes, ranked row-major over them
    const std::string g = axes[axes.size() - 2].name + "," + axes.back().name;
    auto& comm = mesh.template comm<Ring>(g);
    CHECK(comm.size() == axes[axes.size() - 2].size * axes.back().size);
    CHECK(comm.rank() == c[axes.size() - 2] * axes.back().size + c.back());
    std::vector<std::int64_t> x{r};
    comm.allreduce(x);
    std::int64_t sum = 0;
    for (int q : mesh.group(g)) sum += q;
    CHECK(x[0] == sum);
  }
}

}  // namespace zero_suite
