// Story 4: data-parallel training with compressed gradients. The Fashion-MNIST
// MLP of story 3 (784-256-256-10, Adam with cosine decay, global batch 128) on
// 4 ranks as threads; each weight matrix's gradient is averaged through its
// own compressed communicator (its own codec settings, e.g. PowerSGD's matrix
// shape), the biases through a plain ring. The codec state (error-feedback
// residual, PowerSGD's Q) is kept under the parameter's name, which
// DataParallel gives each call: "l1/l1.weight/residual", what a checkpoint
// would save (printed at the end).
//   build/examples/04_compressed [codec = none] [epochs = 5] [ranks = 4] [seed = 1]
// codec: none, f16, bf16, int8, topk (1%), sign, randomk (1%), powersgd (rank 4)
// bench/compare_codecs.sh runs several and prints the table in README.md.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/codec/int8.hpp>
#include <weft/comm/codec/powersgd.hpp>
#include <weft/comm/codec/random_k.hpp>
#include <weft/comm/codec/scaled_sign.hpp>
#include <weft/comm/codec/top_k.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>

#include "../03_data_parallel/train.hpp"  // story 3's model, batches and standardise()

using namespace weft;
using namespace weft::comm;

namespace {

// `weights` is the policy for the three weight matrices: Ring (no
// compression) or Compressed<Codec, Ring>; `cols` sets a codec's matrix shape.
template <class Policy>
void train(ThreadTransport& t, const io::Dataset& train, const io::Dataset& test, int epochs, std::uint64_t seed,
           const char* label, Policy weights) {
  const int rank = t.rank(), size = t.size();
  const index_t global_batch = 128, batch = global_batch / size, d = train.images.size(1);
  story::Mlp model(d, seed);

  // One communicator per weight matrix: a layer's codec state is its own.
  auto layer_policy = [&](const char* name, index_t cols) {
    Policy p = weights;
    if constexpr (requires { p.states; }) {
      p.states = std::make_shared<typename Policy::state_table>(name);
      if constexpr (requires { p.codec.cols; }) p.codec.cols = static_cast<std::size_t>(cols);  // (I, O): cols = O
    }
    return p;
  };
  Communicator<Ring, ThreadTransport> ring{t};
  Communicator<Policy, ThreadTransport> c1{t, layer_policy("l1", 256)}, c2{t, layer_policy("l2", 256)},
      c3{t, layer_policy("l3", 10)};
  parallel::DataParallel dp(model.params, ring, c1, c2, c3);
  dp.layer("l1.weight").use(c1);
  dp.layer("l2.weight").use(c2);
  dp.layer("l3.weight").use(c3);
  dp.set_overlap(false);  // ranks are threads on few cores: no progress threads competing for them

  nn::Adam<float> opt(model.params, {.lr = 1e-3f});
  story::Batches data(train, rank, size, batch, epochs, seed, 1e-3f);
  const index_t steps_per_epoch = data.steps_per_epoch;
  Workspace<> ws;
  if (rank == 0) std::printf("compressed data parallel: %d ranks x batch %lld, weights via %s\n", size,
                             static_cast<long long>(batch), label);

  double accuracy = 0, samples_per_s = 0, bytes_per_step = 0;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    data.start_epoch(epoch);
    const std::uint64_t bytes0 = ring.sent_bytes();
    auto t0 = std::chrono::steady_clock::now();
    double total = 0;
    for (index_t s = 0; s < steps_per_epoch; ++s) {
      data.load(train, s);
      opt.set_lr(data.schedule(opt.steps()));
      opt.zero_grad();
      total += dp.backward(cross_entropy(model(data.x), data.y), ws);
      opt.step();
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bytes_per_step = static_cast<double>(ring.sent_bytes() - bytes0) / static_cast<double>(steps_per_epoch);
    double loss = total / static_cast<double>(steps_per_epoch);
    ring.allreduce(std::span<double>(&loss, 1), ReduceOp::avg);
    if (rank == 0) {
      Tensor<float> logits = eval(model(test.images), ws);
      accuracy = 100.0 * nn::accuracy(logits, test.labels);
      samples_per_s = static_cast<double>(steps_per_epoch * global_batch) / secs;
      std::printf("epoch %d  loss %.4f  test accuracy %.2f%%  %.0f samples/s  %.0f bytes/step sent by rank 0\n", epoch,
                  loss, accuracy, samples_per_s, bytes_per_step);
    }
  }
  if (rank == 0)
    std::printf("result codec=%s bytes_per_step=%.0f accuracy=%.2f samples_per_s=%.0f\n", label, bytes_per_step,
                accuracy, samples_per_s);
  if constexpr (requires { weights.states; })
    if (rank == 0)
      for (auto* c : {&c1, &c2, &c3})
        c->algorithm().states->visit([](const std::string& name, std::vector<float>& values) {
          std::printf("codec state %s: %zu values\n", name.c_str(), values.size());
        });
}

}  // namespace

int main(int argc, char** argv) {
  const std::string codec = argc > 1 ? argv[1] : "none";
  const int epochs = argc > 2 ? std::atoi(argv[2]) : 5;
  const int ranks = argc > 3 ? std::atoi(argv[3]) : 4;
  const std::uint64_t seed = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 1;
  if (128 % ranks != 0) {
    std::fprintf(stderr, "error: the global batch 128 does not split evenly over %d ranks\n", ranks);
    return 1;
  }
  openblas_set_num_threads(1);
  auto train_set = io::load_fashion_mnist("train");
  auto test_set = io::load_fashion_mnist("test");
  story::standardise(train_set, test_set);
  auto go = [&](const char* label, auto policy) {
    run_local(ranks, [&](ThreadTransport& t) { train(t, train_set, test_set, epochs, seed, label, policy); });
  };
  if (codec == "none") go("none (ring)", Ring{});
  else if (codec == "f16") go("f16", Compressed<F16, Ring>{});
  else if (codec == "bf16") go("bf16", Compressed<BF16, Ring>{});
  else if (codec == "int8") go("int8", Compressed<Int8, Ring>{});
  else if (codec == "topk") go("top-k 1% + EF", Compressed<TopK, Ring>{.codec = {.fraction = 0.01}});
  else if (codec == "sign") go("sign + EF", Compressed<ScaledSign, Ring>{});
  else if (codec == "randomk") go("random-k 1% + EF", Compressed<RandomK, Ring>{.codec = {.fraction = 0.01}});
  else if (codec == "powersgd") go("PowerSGD rank 4", Compressed<PowerSGD, Ring>{.codec = {.rank = 4}});
  else {
    std::fprintf(stderr, "error: unknown codec \"%s\": use none, f16, bf16, int8, topk, sign, randomk or powersgd\n",
                 codec.c_str());
    return 1;
  }
  return 0;
}
