// Story 8b: 3-D parallelism. A small Vision Transformer on Fashion-MNIST,
// trained by 8 thread ranks on a pp2 x dp2 x tp2 mesh, each axis carrying one
// strategy on its own communicator:
//
//   tp  Megatron blocks (parallel::tensor_parallel::ParallelTransformerStack):
//       each rank of a tensor-parallel pair holds 2 of the 4 heads and half of
//       the MLP's columns / rows; 2 ring allreduces forward, 2 backward, per block
//   pp  a Pipeline of 2 stages (1F1B, 4 micro-batches per step); stage 0 = patch
//       embedding + positions + blocks 0-1, stage 1 = blocks 2-3 + LayerNorm +
//       mean over tokens + head; activations and their gradients by send / recv
//   dp  ZeRO-2 over the 2 replicas (AdamW state and gradients sharded; the
//       accumulated gradients reduce-scattered after the step's last backward,
//       the updated shards all-gathered), or DataParallel (ddp)
//
// Rank (pp, dp, tp) = 4 pp + 2 dp + tp: the tensor-parallel pair, the
// chattiest axis, is innermost (consecutive ranks). Every rank builds the whole
// model (a pipeline derives the stage boundaries from it) with the same seeds;
// it trains its own stage's parameters. For the test accuracy each stage's
// parameters are broadcast over the pp axis, and the 4 tensor-parallel pairs
// each classify a quarter of the test set (their counts summed over the mesh).
//
//   build/examples/08_3d_parallel [epochs = 2] [zero2 | ddp] [--quick]
// --quick: 4096 training images, 1 epoch (a smoke run).
// Model: 28 x 28 images in 7 x 7 patches (16 tokens of 49 pixels), width 32,
// 4 heads, MLP 64, 4 pre-LN blocks; AdamW lr 2e-3, global batch 64.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/io/idx.hpp>
#include <weft/io/sampler.hpp>
#include <weft/nn/nn.hpp>
#include <weft/nn/transformer.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/parallel/mesh.hpp>
#include <weft/parallel/pipeline/pipeline.hpp>
#include <weft/parallel/tensor_parallel/transformer.hpp>
#include <weft/parallel/zero.hpp>
#include <weft/weft.hpp>

using namespace weft;
using Tr = comm::ThreadTransport;
using Ring = comm::Communicator<comm::Ring, Tr>;
namespace tp = weft::parallel::tensor_parallel;
namespace pp = weft::parallel::pipeline;

namespace {

constexpr index_t kSide = 28, kPatch = 7, kTokens = 16, kPixels = 49, kDim = 32, kHeads = 4, kMlp = 64, kBatch = 64;
constexpr int kMicro = 4;

struct Options {
  int epochs = 2;
  bool zero = true, quick = false;
};

// Images (B, 784) -> patches (B, 16, 49).
void to_patches(const nn::PatchEmbedding<float>& e, const Tensor<float>& images, Tensor<float>& patches) {
  e.patchify(images.data(), images.size(0), kSide, kSide, patches.data());
}

double train(Tr& t, const io::Dataset& train_set, const io::Dataset& test_set, const Options& o) {
  parallel::Mesh<Tr> mesh(t, {{"pp", 2}, {"dp", 2}, {"tp", 2}});
  auto& tpc = mesh.comm<comm::Ring>("tp");
  auto& dpc = mesh.comm<comm::Ring>("dp");
  auto& ppc = mesh.comm<comm::Ring>("pp");         // (evaluation: stage parameters broadcast)
  auto& world = mesh.comm<comm::Ring>("pp,dp,tp");  // (the loss and the test counts)
  Tr pipe_t = mesh.split("pp");
  const int stage = mesh.coord("pp"), d = mesh.coord("dp");
  const nn::BlockConfig cfg{.dim = kDim, .heads = kHeads, .mlp = kMlp};

  // The model: every rank builds all of it with the same seeds.
  nn::PatchEmbedding<float> embed(1, kPatch, kDim, 11);
  nn::PositionalEmbedding<float> pos(kTokens, kDim, 12);
  tp::ParallelTransformerStack<Ring, Ring, 2> s0(tpc, tpc, cfg, 13), s1(tpc, tpc, cfg, 213);
  nn::LayerNorm<float> norm(kDim);
  nn::Linear<float> head(kDim, 10, 16);
  auto stage0 = [&](auto x) { return s0(pos(embed(std::move(x)))); };                      // (b, 16, 49) -> (b, 16, C)
  auto stage1 = [&](auto x) { return head(nn::mean_pool(norm(s1(std::move(x))))); };      // (b, 16, C) -> (b, 10)
  auto loss = [](auto logits, TensorView<std::int32_t> y) { return cross_entropy(std::move(logits), y); };
  auto pipe = pp::make_pipeline<float, std::int32_t>(pipe_t, pp::OneFOneB{}, kMicro, std::make_tuple(stage0, stage1), loss);
  nn::Registry<float> mine, part0, part1;
  part0.add("embed", embed).add("pos", pos).add("s0", s0);
  part1.add("s1", s1).add("norm", norm).add("head", head);
  if (stage == 0) mine.add("embed", embed).add("pos", pos).add("s0", s0);
  else mine.add("s1", s1).add("norm", norm).add("head", head);

  if (t.rank() == 0) {
    std::printf("mesh %s on %d thread ranks (rank = 4 pp + 2 dp + tp)\n", mesh.describe().c_str(), t.size());
    std::printf("  axis pp (%d ranks): Pipeline, %s, %d micro-batches per step; stage 0 = patches + blocks 0-1, stage 1 = blocks 2-3 + head\n",
                pipe.ranks(), pipe.schedule().name.c_str(), pipe.micro_batches());
    std::printf("  axis dp (%d ranks): %s, by ring\n", dpc.size(),
                o.zero ? "ZeRO-2 (AdamW state and gradients sharded; reduce-scatter after the last backward, all-gather of the update)"
                       : "DataParallel (gradients allreduced after the last backward)");
    std::printf("  axis tp (%d ranks): Megatron blocks, %lld of %lld heads and %lld of %lld MLP columns per rank, allreduce by ring\n",
                tpc.size(), (long long)(kHeads / tpc.size()), (long long)kHeads, (long long)(kMlp / tpc.size()), (long long)kMlp);
  }

  const index_t n = o.quick ? 4096 : train_set.images.size(0), rows = kBatch / mesh.axis_size("dp");
  // The replicas split the data; the ranks of one replica (both stages, both
  // tensor ranks) read the same rows.
  io::DistributedSampler sampler(n, d, mesh.axis_size("dp"), 1, io::Remainder::drop);
  const index_t steps = sampler.shard_size() / rows;
  Tensor<float> xb({rows, kSide * kSide}), patches({rows, kTokens, kPixels});
  Tensor<std::int32_t> yb({rows});
  const nn::AdamWOptions adam{.lr = 2e-3f, .weight_decay = 0.01f};
  std::unique_ptr<parallel::Zero<float, parallel::Zero2, Ring>> zero;
  std::unique_ptr<parallel::DataParallel<float, Ring>> ddp;
  std::unique_ptr<nn::AdamW<float>> opt;
  if (o.zero) zero = std::make_unique<parallel::Zero<float, parallel::Zero2, Ring>>(mine, dpc, adam);
  else ddp = std::make_unique<parallel::DataParallel<float, Ring>>(mine, dpc), opt = std::make_unique<nn::AdamW<float>>(mine, adam);

  const auto t0 = std::chrono::steady_clock::now();
  for (int epoch = 1; epoch <= (o.quick ? 1 : o.epochs); ++epoch) {
    auto idx = sampler.indices(static_cast<std::uint64_t>(epoch));
    double sum = 0;
    for (index_t s = 0; s < steps; ++s) {
      io::gather_batch(train_set, idx, s * rows, xb, yb);
      to_patches(embed, xb, patches);
      double l = 0;
      if (o.zero) {
        l = pipe.step(patches.view(), yb.view(), *zero);
        zero->step();
      } else {
        opt->zero_grad();
        l = pipe.step(patches.view(), yb.view(), *ddp);
        ddp->step(*opt);
      }
      sum += pipe.is_last_rank() && mesh.coord("tp") == 0 ? l / mesh.axis_size("dp") : 0.0;
    }
    world.allreduce(&sum, &sum, 1);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (t.rank() == 0)
      std::printf("epoch %d  train loss %.4f  (%.0f samples/s, %.0f s)\n", epoch, sum / static_cast<double>(steps),
                  static_cast<double>(epoch * steps * kBatch) / secs, secs);
  }

  // Evaluation: each stage's parameters broadcast over the pp axis, then the
  // 4 tensor-parallel pairs classify a quarter of the test set each.
  for (int s = 0; s < 2; ++s)
    for (Parameter<float>* p : (s == 0 ? part0 : part1))
      ppc.broadcast(std::span<float>(p->value.data(), static_cast<std::size_t>(p->numel())), s);
  const index_t nt = test_set.images.size(0), group = 2 * stage + d, per = nt / 4, chunk = 500;
  double correct = 0;
  Workspace<> ws;
  for (index_t at = group * per; at < (group + 1) * per; at += chunk) {
    const index_t b = std::min(chunk, (group + 1) * per - at);
    Tensor<float> imgs({b, kSide * kSide}), pt({b, kTokens, kPixels});
    Tensor<std::int32_t> labels({b});
    std::memcpy(imgs.data(), test_set.images.data() + at * kSide * kSide, static_cast<std::size_t>(b * kSide * kSide) * sizeof(float));
    std::memcpy(labels.data(), test_set.labels.data() + at, static_cast<std::size_t>(b) * sizeof(std::int32_t));
    to_patches(embed, imgs, pt);
    Tensor<float> logits = eval(stage1(stage0(pt.view())), ws);
    correct += nn::accuracy(logits, labels) * static_cast<double>(b);
  }
  if (mesh.coord("tp") != 0) correct = 0;  // (both ranks of a pair computed the same logits)
  world.allreduce(&correct, &correct, 1);
  const double acc = 100.0 * correct / static_cast<double>(4 * per);
  if (t.rank() == 0) std::printf("test accuracy %.2f%% (%lld images)\n", acc, (long long)(4 * per));
  return acc;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  int pos_arg = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") o.quick = true;
    else if (a == "zero2") o.zero = true;
    else if (a == "ddp") o.zero = false;
    else if (pos_arg++ == 0 && std::atoi(a.c_str()) >= 1) o.epochs = std::atoi(a.c_str());
    else {
      std::fprintf(stderr, "usage: 08_3d_parallel [epochs >= 1] [zero2 | ddp] [--quick]\n");
      return 2;
    }
  }
  openblas_set_num_threads(1);
  auto train_set = io::load_fashion_mnist("train");
  auto test_set = io::load_fashion_mnist("test");
  const float mu = eval(mean(train_set.images)).item();
  const float sd = std::sqrt(eval(mean(square(train_set.images - mu))).item());
  train_set.images = (train_set.images - mu) / sd;
  test_set.images = (test_set.images - mu) / sd;
  comm::run_local(8, [&](Tr& t) { train(t, train_set, test_set, o); });
  return 0;
}
