// 3-D parallelism checks written once for every transport
// (test_3d_parallel.cpp runs them on 8 thread ranks, test_3d_parallel_mpi.cpp
// under mpirun -np 8): a small transformer classifier trained on a device mesh
// whose axes each carry one strategy, against one rank training the unsharded
// model on the same global batches.
//
//   the model     4 pre-LN blocks (nn::TransformerBlock, C 16, 4 heads, MLP 32,
//                 block l seeded kSeed + 100 l), mean over the tokens, a linear
//                 head to 4 classes, cross-entropy; SGD with momentum
//   the data      x (N, T, C) normal; the label of a sequence is the argmax of
//                 its first 4 features summed over the tokens (learnable, so the
//                 loss curve falls); global batch 16, cycling through 64 rows
//   the mesh      tp: ParallelTransformerStack's blocks (heads, MLP columns / rows
//                 split; parameters sliced from the unsharded blocks' values)
//                 pp: a Pipeline of 2 stages (blocks 0-1 | blocks 2-3 + head)
//                 dp: DataParallel or Zero (stage 1 or 2) over the replicas,
//                 each fed its slice of the global batch
//
// The reference is one rank: the same model (nn::TransformerBlock), one
// backward over the whole global batch per step. The sharded run's loss is
// the mean of its replicas' (micro-batch means averaged = the global mean);
// every rank's parameters after the steps are compared with the matching
// slice of the reference's (by name: attn.qkv's columns per q, k, v; proj's
// and fc2's weight rows; fc1's columns; the rest replicated). Not bitwise:
// the sums run in different orders (micro-batches, replicas, tensor-parallel
// partial products), so within stated float tolerances.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <sstream>
#include <string>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/parallel/mesh.hpp>
#include <weft/parallel/pipeline/pipeline.hpp>
#include <weft/parallel/tensor_parallel/transformer.hpp>
#include <weft/parallel/zero.hpp>
#include <weft/weft.hpp>

namespace p3d {

using namespace weft;
namespace tp = weft::parallel::tensor_parallel;
namespace pp = weft::parallel::pipeline;

constexpr index_t kT = 8, kC = 16, kHeads = 4, kF = 32, kClasses = 4, kBatch = 16, kRows = 64;
constexpr int kBlocks = 4, kSteps = 8;
constexpr std::uint64_t kSeed = 5, kHeadSeed = 77;
constexpr float kLr = 0.05f, kMomentum = 0.9f;
// Tolerances (measured differences are printed by the tests; see docs/architecture.md).
constexpr double kLossTol = 1e-5;   // |loss - reference| <= kLossTol (1 + |reference|), every step
constexpr double kParamTol = 1e-5;  // every parameter element after kSteps steps, absolute

inline nn::BlockConfig block_config() { return {.dim = kC, .heads = kHeads, .mlp = kF, .causal = false, .attn_dropout = 0}; }

struct Data {
  Tensor<float> x{Shape{kRows, kT, kC}};
  Tensor<std::int32_t> y{Shape{kRows}};
  Data() {
    nn::Rng rng(21);
    for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
    for (index_t n = 0; n < kRows; ++n) {
      int best = 0;
      float top = -1e30f;
      for (int k = 0; k < kClasses; ++k) {
        float s = 0;
        for (index_t t = 0; t < kT; ++t) s += x.data()[(n * kT + t) * kC + k];
        if (s > top) top = s, best = k;
      }
      y.data()[n] = best;
    }
  }
  index_t first(int step) const { return (step * kBatch) % kRows; }
  // Rows [lo, hi) of step `step`'s global batch.
  TensorView<float> xs(int step, index_t lo = 0, index_t hi = kBatch) const { return x.slice(first(step) + lo, first(step) + hi); }
  TensorView<std::int32_t> ys(int step, index_t lo = 0, index_t hi = kBatch) const {
    return y.slice(first(step) + lo, first(step) + hi);
  }
};

inline auto loss_fn() {
  return [](auto logits, TensorView<std::int32_t> y) { return cross_entropy(std::move(logits), y); };
}

// ---- the one-rank reference -----------------------------------------------------------
struct RefParam {
  std::string name;  // as the sharded run's registry names it
  const Parameter<float>* p;
};

struct Reference {
  std::vector<double> losses;
  std::deque<nn::TransformerBlock<float>> blocks;
  nn::Linear<float> head{kC, kClasses, kHeadSeed};

  explicit Reference(const Data& data) {
    for (int l = 0; l < kBlocks; ++l) blocks.emplace_back(block_config(), kSeed + 100 * static_cast<std::uint64_t>(l));
    nn::Registry<float> all;
    for (int l = 0; l < kBlocks; ++l) all.add("b" + std::to_string(l), blocks[static_cast<std::size_t>(l)]);
    all.add("head", head);
    nn::SGD<float> opt(all, {.lr = kLr, .momentum = kMomentum});
    Workspace<> ws;
    for (int s = 0; s < kSteps; ++s) {
      opt.zero_grad();
      auto h = blocks[3](blocks[2](blocks[1](blocks[0](data.xs(s)))));
      losses.push_back(weft::backward(cross_entropy(head(nn::mean_pool(std::move(h))), data.ys(s)), ws).item());
      opt.step();
    }
  }
  Reference(const Reference&) = delete;

  // Blocks [first, first + count) (and the head), named as the sharded run
  // registers its part ("s.blocks.<l>.<name>", "head.<name>"), in its order.
  std::vector<RefParam> part(int first, int count, bool with_head) {
    std::vector<RefParam> v;
    for (int l = 0; l < count; ++l)
      blocks[static_cast<std::size_t>(first + l)].for_each_parameter(
          [&](const std::string& n, Parameter<float>& q) { v.push_back({"s.blocks." + std::to_string(l) + "." + n, &q}); });
    if (with_head) head.for_each_parameter([&](const std::string& n, Parameter<float>& q) { v.push_back({"head." + n, &q}); });
    return v;
  }
};

// The reference, trained once per process (on first use; a thread-safe
// static, and read only afterwards).
inline Reference& reference(const Data& data) {
  static Reference ref(data);
  return ref;
}

// ---- comparisons ------------------------------------------------------------------------
// Rank r of p's shard of a reference parameter, chosen by its name.
inline std::vector<float> expected_shard(const std::string& n, const Parameter<float>& ref, int r, int p) {
  auto ends = [&](const char* s) {
    const std::string t(s);
    return n.size() >= t.size() && n.compare(n.size() - t.size(), t.size(), t) == 0;
  };
  const float* v = ref.value.data();
  std::vector<float> out;
  const bool is_weight = ref.shape().rank == 2;
  const index_t rows = is_weight ? ref.shape()[0] : 1, cols = is_weight ? ref.shape()[1] : ref.shape()[0];
  auto columns = [&](index_t lo, index_t w) {
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = lo; j < lo + w; ++j) out.push_back(v[i * cols + j]);
  };
  if (ends("attn.qkv.weight") || ends("attn.qkv.bias")) {  // q, k, v: columns [part C + r C/p, + C/p) each
    const index_t c = cols / 3, w = c / p;
    std::vector<float> tmp;
    for (index_t i = 0; i < rows; ++i)
      for (index_t part = 0; part < 3; ++part)
        for (index_t j = 0; j < w; ++j) tmp.push_back(v[i * cols + part * c + r * w + j]);
    return tmp;
  }
  if (ends("fc1.weight") || ends("fc1.bias")) {  // column-parallel
    columns(r * (cols / p), cols / p);
    return out;
  }
  if (ends("attn.proj.weight") || ends("fc2.weight")) {  // row-parallel: rows [r I/p, (r + 1) I/p)
    const index_t w = rows / p;
    return std::vector<float>(v + r * w * cols, v + (r + 1) * w * cols);
  }
  return std::vector<float>(v, v + ref.numel());  // replicated
}

// Largest |shard - expected| over the pairs, or a sentence when the lists do
// not pair up.
inline std::string compare_params(nn::Registry<float>& mine, const std::vector<RefParam>& ref, int tp_rank, int tp_size, double& worst,
                                  const std::string& where) {
  if (mine.size() != ref.size())
    return where + ": " + std::to_string(mine.size()) + " parameters here, the reference's part has " + std::to_string(ref.size());
  for (std::size_t k = 0; k < mine.size(); ++k) {
    Parameter<float>& a = mine[k];
    const RefParam& b = ref[k];
    if (a.name != b.name) return where + ": parameter " + std::to_string(k) + " is '" + a.name + "', the reference's '" + b.name + "'";
    const std::vector<float> want = expected_shard(b.name, *b.p, tp_rank, tp_size);
    if (static_cast<index_t>(want.size()) != a.numel())
      return where + ": '" + a.name + "' has " + std::to_string(a.numel()) + " elements, its slice of the reference " +
             std::to_string(want.size());
    for (index_t i = 0; i < a.numel(); ++i) {
      const double d = std::abs(static_cast<double>(a.value.data()[i]) - want[static_cast<std::size_t>(i)]);
      if (!(d <= kParamTol)) {
        std::ostringstream os;
        os << where << ": '" << a.name << "' element " << i << " is " << a.value.data()[i] << ", the reference's " << want[static_cast<std::size_t>(i)]
           << " (tolerance " << kParamTol << ")";
        return os.str();
      }
      worst = std::max(worst, d);
    }
  }
  return "";
}

struct Result {
  std::string err;
  double loss_diff = 0, param_diff = 0;  // largest differences seen (this rank's parameters; the loss as agreed)
  std::vector<double> losses;
};

// Every rank gets the mean of the replicas' losses: `mine` counts on the
// ranks that hold it once per replica (the last stage, tensor rank 0).
template <class World>
double global_loss(World& world, double mine, bool counts, int replicas) {
  double v = counts ? mine / replicas : 0.0;
  world.allreduce(&v, &v, 1);
  return v;
}

inline void check_losses(Result& res, const Reference& ref, const std::string& where) {
  for (std::size_t s = 0; s < res.losses.size() && res.err.empty(); ++s) {
    const double d = std::abs(res.losses[s] - ref.losses[s]);
    res.loss_diff = std::max(res.loss_diff, d);
    if (!(d <= kLossTol * (1 + std::abs(ref.losses[s])))) {
      std::ostringstream os;
      os << where << ": step " << s << "'s loss is " << res.losses[s] << ", one rank's " << ref.losses[s] << " (tolerance " << kLossTol << " relative)";
      res.err = os.str();
    }
  }
  if (res.err.empty() && !(ref.losses.back() < 0.9 * ref.losses.front())) {
    std::ostringstream os;
    os << where << ": the reference's loss went from " << ref.losses.front() << " to " << ref.losses.back() << ", it did not train";
    res.err = os.str();
  }
}

template <class Tr>
using Ring = comm::Communicator<comm::Ring, Tr>;

template <class Tr>
using Stack2 = tp::ParallelTransformerStack<Ring<Tr>, Ring<Tr>, 2>;

enum class DpKind { data_parallel, zero1, zero2 };

inline const char* name_of(DpKind k) { return k == DpKind::data_parallel ? "DataParallel" : k == DpKind::zero1 ? "ZeRO-1" : "ZeRO-2"; }

// A mesh with axes pp, dp and tp (in `axes`' order, any sizes with pp = 2):
// tensor-parallel blocks on comm("tp"), a 2-stage pipeline on the pp axis
// (schedule `policy`, m micro-batches per replica), the gradients averaged
// over comm("dp") by DataParallel or sharded by Zero.
template <class Tr, class Policy>
Result pipeline_3d(Tr t, std::vector<parallel::MeshAxis> axes, DpKind kind, Policy policy, int m, const Data& data) {
  Result res;
  parallel::Mesh<Tr> mesh(t, axes);
  const std::string where = mesh.describe() + " (" + name_of(kind) + ", " + policy.build(2, m).name + ", m = " + std::to_string(m) +
                            ") rank " + std::to_string(t.rank());
  if (mesh.axis_size("pp") != 2) return {where + ": this check cuts the model into 2 stages; give pp2", 0, 0, {}};
  // Collective constructions, in the same order on every rank.
  auto& tpc = mesh.template comm<comm::Ring>("tp");
  auto& dpc = mesh.template comm<comm::Ring>("dp");
  auto& world = mesh.template comm<comm::Ring>("pp,dp,tp");  // (every axis: the whole mesh, for the loss)
  Tr pipe_t = mesh.split("pp");
  const int stage = mesh.coord("pp"), replicas = mesh.axis_size("dp"), d = mesh.coord("dp");

  // Every rank builds both stages (the pipeline derives the boundary shapes
  // from them) and trains its own.
  Stack2<Tr> s0(tpc, tpc, block_config(), kSeed), s1(tpc, tpc, block_config(), kSeed + 200);
  nn::Linear<float> head(kC, kClasses, kHeadSeed);
  auto stage0 = [&s0](auto x) { return s0(std::move(x)); };
  auto stage1 = [&s1, &head](auto x) { return head(nn::mean_pool(s1(std::move(x)))); };
  auto pipe = pp::make_pipeline<float, std::int32_t>(pipe_t, policy, m, std::make_tuple(stage0, stage1), loss_fn());
  nn::Registry<float> reg;
  if (stage == 0) reg.add("s", s0);
  else reg.add("s", s1).add("head", head);

  const index_t rows = kBatch / replicas;
  auto run = [&](auto& strategy, auto&& before_step, auto&& after_step) {
    for (int s = 0; s < kSteps; ++s) {
      before_step();
      const double l = pipe.step(data.xs(s, d * rows, (d + 1) * rows), data.ys(s, d * rows, (d + 1) * rows), strategy);
      after_step();
      res.losses.push_back(global_loss(world, l, pipe.is_last_rank() && mesh.coord("tp") == 0, replicas));
    }
  };
  if (kind == DpKind::data_parallel) {
    parallel::DataParallel dp(reg, dpc);
    nn::SGD<float> opt(reg, {.lr = kLr, .momentum = kMomentum});
    run(dp, [&] { opt.zero_grad(); }, [&] { dp.step(opt); });
  } else {
    auto zero_run = [&]<class Stage>(Stage) {
      parallel::Zero<float, Stage, std::decay_t<decltype(dpc)>> z(reg, dpc, nn::SGDOptions{.lr = kLr, .momentum = kMomentum});
      std::string mem;
      run(z, [] {}, [&] {
        z.step();
        // Between steps the full gradient is gone: only this rank's shards
        // (stage 2), or the one buffer (stage 1); optimizer state for the shard.
        const parallel::MemoryBytes b = z.memory();
        const std::size_t shard = z.shard_elems() * sizeof(float);
        if (mem.empty() && (b.optimizer != shard || (Stage::stage == 2 && b.grads != shard)))
          mem = where + ": between steps " + std::to_string(b.grads) + " gradient bytes and " + std::to_string(b.optimizer) +
                " optimizer bytes; the shard is " + std::to_string(shard) + " bytes";
      });
      if (res.err.empty()) res.err = mem;
    };
    if (kind == DpKind::zero1) zero_run(parallel::Zero1{});
    else zero_run(parallel::Zero2{});
  }
  Reference& ref = reference(data);
  if (res.err.empty()) check_losses(res, ref, where);
  if (res.err.empty()) {
    const std::vector<RefParam> want = ref.part(2 * stage, 2, stage == 1);
    res.err = compare_params(reg, want, mesh.coord("tp"), mesh.axis_size("tp"), res.param_diff, where);
  }
  return res;
}

// dp x tp, no pipeline: the 4 tensor-parallel blocks and the head on every
// rank, weft::backward with DataParallel's hook (buckets allreduced during
// backward), or Zero-2's (units reduce-scattered during backward).
template <class Tr>
Result data_tensor(Tr t, std::vector<parallel::MeshAxis> axes, DpKind kind, const Data& data) {
  Result res;
  parallel::Mesh<Tr> mesh(t, axes);
  const std::string where = mesh.describe() + " (" + name_of(kind) + ") rank " + std::to_string(t.rank());
  auto& tpc = mesh.template comm<comm::Ring>("tp");
  auto& dpc = mesh.template comm<comm::Ring>("dp");
  auto& world = mesh.template comm<comm::Ring>("dp,tp");
  const int replicas = mesh.axis_size("dp"), d = mesh.coord("dp");
  tp::ParallelTransformerStack<Ring<Tr>, Ring<Tr>, kBlocks> stack(tpc, tpc, block_config(), kSeed);
  nn::Linear<float> head(kC, kClasses, kHeadSeed);
  nn::Registry<float> reg;
  reg.add("s", stack).add("head", head);
  const index_t rows = kBatch / replicas;
  auto loss_of = [&](int s) {
    return cross_entropy(head(nn::mean_pool(stack(data.xs(s, d * rows, (d + 1) * rows)))), data.ys(s, d * rows, (d + 1) * rows));
  };
  Workspace<> ws;
  const bool counts = mesh.coord("tp") == 0;
  if (kind == DpKind::data_parallel) {
    parallel::DataParallel dp(reg, dpc);
    nn::SGD<float> opt(reg, {.lr = kLr, .momentum = kMomentum});
    for (int s = 0; s < kSteps; ++s) {
      opt.zero_grad();
      const double l = dp.backward(loss_of(s), ws);
      dp.step(opt);
      res.losses.push_back(global_loss(world, l, counts, replicas));
    }
  } else {
    parallel::Zero<float, parallel::Zero2, std::decay_t<decltype(dpc)>> z(reg, dpc, nn::SGDOptions{.lr = kLr, .momentum = kMomentum});
    for (int s = 0; s < kSteps; ++s) {
      const double l = z.backward([&] { return loss_of(s); }, ws);
      z.step();
      res.losses.push_back(global_loss(world, l, counts, replicas));
    }
  }
  Reference& ref = reference(data);
  check_losses(res, ref, where);
  if (res.err.empty()) {
    const std::vector<RefParam> want = ref.part(0, kBlocks, true);
    res.err = compare_params(reg, want, mesh.coord("tp"), mesh.axis_size("tp"), res.param_diff, where);
  }
  return res;
}

// A tensor-parallel axis that does not divide the heads: every rank of the
// mesh throws the layer's sentence (decided locally, so no rank waits).
template <class Tr>
std::string heads_not_divisible(Tr t) {
  parallel::Mesh<Tr> mesh(t, {{"dp", t.size() / 4}, {"tp", 4}});
  auto& tpc = mesh.template comm<comm::Ring>("tp");
  try {
    tp::ParallelTransformerStack<Ring<Tr>, Ring<Tr>, 2> stack(tpc, tpc, {.dim = kC, .heads = 2, .mlp = kF}, kSeed, 0.0f, "stack");
  } catch (const ShapeError& e) {
    const std::string want = "stack.blocks.0.attn(width 16, heads 2): 2 heads are not divisible by the tensor-parallel degree 4";
    if (std::string(e.what()).find(want) == std::string::npos) return std::string("rank ") + std::to_string(t.rank()) + " threw '" + e.what() + "'";
    return "";
  }
  return "rank " + std::to_string(t.rank()) + ": 2 heads on a tp4 axis built without an error";
}

}  // namespace p3d
