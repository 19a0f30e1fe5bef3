// Story 8: a 2-D mesh of 4 thread ranks, replicate2 x shard2, training the
// Fashion-MNIST MLP (784-256-256-10, ReLU, Adam, global batch 128) with
// hybrid sharding: ZeRO (stage 3 by default) over the inner "shard" axis and
// plain data-parallel averaging of the gradient shards over the outer
// "replicate" axis. Each axis gets its own communicator and policy from the
// mesh. Prints one line per axis, the loss and test accuracy per epoch, and
// rank 0's bytes against the ZeRO formula for its shard group.
// Stage 3 runs all at once (every layer gathered before the one-expression
// forward) by default, or layer by layer (path "layers": parallel::zero_layers,
// each layer gathered just before its forward and backward, the next one
// prefetched) or layer by layer in bf16 (path "bf16": bf16 parameters and
// gradients on the wire, f32 master weights and Adam state).
//   build/examples/08_mesh_zero [epochs = 2] [stage = 3] [replicas = 2] [ranks = 4] [path = all|layers|bf16]
// The tensor- and pipeline-parallel axes of a 3-D mesh (pp x dp x tp): examples/08_3d_parallel.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/io/idx.hpp>
#include <weft/io/sampler.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/mesh.hpp>
#include <weft/parallel/zero.hpp>
#include <weft/weft.hpp>

using namespace weft;
using T = comm::ThreadTransport;

enum class Path { all, layers, bf16 };

template <class Stage>
double train(T& t, const io::Dataset& train, const io::Dataset& test, int epochs, int replicas, Path path) {
  parallel::Mesh<T> mesh(t, {{"replicate", replicas}, {"shard", t.size() / replicas}});
  // The shard axis carries every layer's reduce-scatter and allgather: the ring.
  // The replicate axis carries 1/N of a DP allreduce: a tree, latency-bound sizes.
  auto& shard = mesh.comm<comm::Ring>("shard");
  auto& replicate = mesh.comm<comm::Tree>("replicate");
  if (t.rank() == 0) {
    std::printf("mesh %s on %d thread ranks\n", mesh.describe().c_str(), t.size());
    std::printf("  axis shard     (%d ranks): ZeRO-%d%s, reduce-scatter / allgather by ring\n", shard.size(), Stage::stage,
                path == Path::all ? "" : path == Path::layers ? " layer by layer" : " layer by layer, bf16 on the wire");
    std::printf("  axis replicate (%d ranks): gradient shards averaged by tree allreduce\n", replicate.size());
  }
  nn::Linear<float> l1(784, 256, 1), l2(256, 256, 2), l3(256, 10, 3);
  nn::Registry<float> params;
  params.add("l1", l1).add("l2", l2).add("l3", l3);
  auto model = [&](const auto& x) { return l3(relu(l2(relu(l1(x))))); };
  const double P = static_cast<double>(params.numel());  // before stage 3 frees the values
  parallel::Zero<float, Stage, std::decay_t<decltype(shard)>, std::decay_t<decltype(replicate)>> z(
      params, shard, replicate, nn::AdamOptions{.lr = 1e-3f},
      {.precision = path == Path::bf16 ? parallel::ZeroPrecision::bf16 : parallel::ZeroPrecision::f32});
  // The same model as a layer sequence, for the per-layer path.
  nn::ReLU act;
  auto layered = [&] {
    if constexpr (Stage::stage == 3)
      return parallel::zero_layers<std::int32_t>(z, std::tie(l1, act, l2, act, l3),
                                                 [](auto out, TensorView<std::int32_t> y) { return cross_entropy(out, y); });
    else
      return 0;
  }();

  const index_t batch = 128 / t.size(), n = train.images.size(0);
  io::DistributedSampler sampler(n, t.rank(), t.size(), 1, io::Remainder::drop);
  const index_t steps = sampler.shard_size() / batch;
  Tensor<float> xb({batch, 784});
  Tensor<std::int32_t> yb({batch});
  Workspace<> ws;
  double accuracy = 0;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    auto idx = sampler.indices(static_cast<std::uint64_t>(epoch));
    double loss = 0;
    for (index_t s = 0; s < steps; ++s) {
      io::gather_batch(train, idx, s * batch, xb, yb);
      if constexpr (Stage::stage == 3)
        if (path != Path::all) {
          loss += layered.backward(xb.view(), yb.view());
          z.step();
          continue;
        }
      loss += z.backward([&] { return cross_entropy(model(xb), yb); }, ws);
      z.step();
    }
    // Evaluation needs the full parameters: stage 3 gathers them for one forward.
    std::vector<float> full = z.full_values();
    if (t.rank() == 0) {
      nn::Linear<float> e1(784, 256), e2(256, 256), e3(256, 10);
      nn::Registry<float> er;
      er.add("l1", e1).add("l2", e2).add("l3", e3);
      std::size_t k = 0;
      for (Parameter<float>* p : er)
        for (index_t i = 0; i < p->numel(); ++i) p->value.data()[i] = full[k++];
      Workspace<> ews;
      Tensor<float> logits = eval(e3(relu(e2(relu(e1(test.images))))), ews);
      accuracy = 100.0 * nn::accuracy(logits, test.labels);
      std::printf("epoch %d  loss %.4f (rank 0)  test accuracy %.2f%%\n", epoch, loss / static_cast<double>(steps), accuracy);
    }
  }
  if (t.rank() == 0) {
    const double N = shard.size();
    std::printf("rank 0's peak during a step: %.0f bytes, %.0f of them gathered parameters\n",
                static_cast<double>(z.peak_total()), static_cast<double>(z.memory_peak().gathered));
    std::printf("rank 0 holds %.0f bytes between steps (ZeRO-%d formula for P = %.0f on N = %.0f: %.0f; plain DP: %.0f)\n",
                static_cast<double>(z.memory().total()), Stage::stage, P, N, parallel::zero_formula(Stage::stage, P, N),
                parallel::zero_formula(0, P, N));
  }
  return accuracy;
}

int main(int argc, char** argv) {
  const int epochs = argc > 1 ? std::atoi(argv[1]) : 2;
  const int stage = argc > 2 ? std::atoi(argv[2]) : 3;
  const int replicas = argc > 3 ? std::atoi(argv[3]) : 2;
  const int ranks = argc > 4 ? std::atoi(argv[4]) : 4;
  const std::string p = argc > 5 ? argv[5] : "all";
  const Path path = p == "layers" ? Path::layers : p == "bf16" ? Path::bf16 : Path::all;
  if (epochs < 1 || stage < 1 || stage > 3 || replicas < 1 || ranks < 1 || ranks % replicas != 0 || 128 % ranks != 0 ||
      (p != "all" && p != "layers" && p != "bf16") || (path != Path::all && stage != 3)) {
    std::fprintf(stderr,
                 "usage: 08_mesh_zero [epochs >= 1] [stage 1..3] [replicas dividing ranks] [ranks dividing 128] "
                 "[all | layers | bf16 (stage 3)]\n");
    return 2;
  }
  openblas_set_num_threads(1);
  auto train_set = io::load_fashion_mnist("train");
  auto test_set = io::load_fashion_mnist("test");
  const float mu = eval(mean(train_set.images)).item();
  const float sd = std::sqrt(eval(mean(square(train_set.images - mu))).item());
  train_set.images = (train_set.images - mu) / sd;
  test_set.images = (test_set.images - mu) / sd;
  comm::run_local(ranks, [&](T& t) {
    if (stage == 1) train<parallel::Zero1>(t, train_set, test_set, epochs, replicas, path);
    if (stage == 2) train<parallel::Zero2>(t, train_set, test_set, epochs, replicas, path);
    if (stage == 3) train<parallel::Zero3>(t, train_set, test_set, epochs, replicas, path);
  });
  return 0;
}
