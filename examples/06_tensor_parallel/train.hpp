// Story 6, shared by the two launchers (threads.cpp: ranks as threads, one
// process; mpi.cpp: one rank per MPI process). The Fashion-MNIST MLP
// 784-256-256-10 split across t ranks, Megatron-style, each layer on the
// communicator the user picked for it:
//
//   l1  ColumnParallelLinear(784 -> 256)  on `ring`  (Ring): its backward allreduce
//   l2  RowParallelLinear(256 -> 256)     on `bf16`  (Compressed<BF16, Ring>): its
//                                         forward allreduce sends bfloat16
//   l3  ColumnParallelLinear(256 -> 10)   on `ring`: class logits split over ranks,
//       vocab_parallel_cross_entropy      never gathers them in training;
//                                         gather_from only for test accuracy
//
// Every rank sees the whole batch (tensor parallelism splits the model, not
// the data); the weights are slices of the unsharded layers' with the same
// seeds, so t = 1 is the plain single-rank MLP.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/io/idx.hpp>
#include <weft/io/sampler.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/tensor_parallel/cross_entropy.hpp>
#include <weft/parallel/tensor_parallel/layers.hpp>
#include <weft/weft.hpp>

namespace story6 {

using namespace weft;
namespace tp = weft::parallel::tensor_parallel;

inline void standardise(io::Dataset& train, io::Dataset& test) {
  const float mu = eval(mean(train.images)).item();
  const float sd = std::sqrt(eval(mean(square(train.images - mu))).item());
  train.images = (train.images - mu) / sd;
  test.images = (test.images - mu) / sd;
}

struct Options {
  int epochs = 3;
  index_t batch = 128;
  std::uint64_t seed = 1;
  bool quiet = false;
};

// Returns the final test accuracy (%, the same on every rank).
template <class Transport>
double train(Transport& t, const io::Dataset& train, const io::Dataset& test, const Options& o) {
  using namespace weft::comm;
  const int rank = t.rank(), size = t.size();
  const index_t d = train.images.size(1), n = train.images.size(0), batch = o.batch;

  // One communicator per policy, each on its own split of the transport.
  Communicator<Ring, Transport> ring{t.split(0, rank)};
  Communicator<Compressed<BF16, Ring>, Transport> bf16{t.split(0, rank)};

  tp::ColumnParallelLinear<decltype(ring)> l1(ring, d, 256, o.seed, "l1");
  tp::RowParallelLinear<decltype(bf16)> l2(bf16, 256, 256, o.seed + 1, "l2");
  tp::ColumnParallelLinear<decltype(ring)> l3(ring, 256, 10, o.seed + 2, "l3");
  nn::Registry<float> params;
  params.add("l1", l1).add("l2", l2).add("l3", l3);
  nn::Adam<float> opt(params, {.lr = 1e-3f});
  io::DistributedSampler sampler(n, 0, 1, o.seed, io::Remainder::drop);  // every rank the same batches
  const index_t steps_per_epoch = sampler.shard_size() / batch;
  const nn::CosineAnnealing schedule{.lr = 1e-3f, .total_steps = o.epochs * steps_per_epoch};

  Tensor<float> xb({batch, d});
  Tensor<std::int32_t> yb({batch});
  auto logits = [&](auto x) { return l3(relu(l2(relu(l1(x))))); };  // (B, 10 / t) this rank's classes
  Workspace<> ws;
  if (rank == 0 && !o.quiet)
    std::printf("tensor parallel t = %d: MLP %lld-256-256-10, batch %lld, Adam (cosine); l1, l3 via Ring, l2's reduction "
                "via Compressed<BF16, Ring>\n",
                size, static_cast<long long>(d), static_cast<long long>(batch));
  double accuracy = 0;
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    auto idx = sampler.indices(static_cast<std::uint64_t>(epoch));
    auto t0 = std::chrono::steady_clock::now();
    double total = 0;
    for (index_t s = 0; s < steps_per_epoch; ++s) {
      io::gather_batch(train, idx, s * batch, xb, yb);
      opt.set_lr(schedule(opt.steps()));
      opt.zero_grad();
      total += weft::backward(tp::vocab_parallel_cross_entropy(logits(xb), yb, ring), ws).data[0];
      opt.step();  // each rank updates its own shards (and the replicated l2 bias, identically)
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Tensor<float> all = eval(tp::gather_from(logits(test.images), ring, 1), ws);  // (10000, 10) for argmax
    accuracy = 100.0 * nn::accuracy(all, test.labels);
    if (rank == 0 && !o.quiet)
      std::printf("epoch %d  loss %.4f  test accuracy %.2f%%  %.0f samples/s\n", epoch, total / static_cast<double>(steps_per_epoch),
                  accuracy, static_cast<double>(steps_per_epoch * batch) / secs);
  }
  return accuracy;
}

}  // namespace story6
