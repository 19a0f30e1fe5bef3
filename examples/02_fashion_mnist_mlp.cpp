// Story 2: train the Fashion-MNIST MLP the way a PyTorch user would, with
// weft's layers, a parameter registry, Adam and a workspace that makes the
// steady-state step allocation-free.
//
//   build/examples/02_fashion_mnist_mlp [epochs = 5] [batch = 128] [seed = 1]
//
// MLP 784-256-256-10 with ReLU, cross-entropy, Adam lr 1e-3 with cosine decay,
// standardised pixels. Deterministic for
// a seed (initialisation, shuffling; one BLAS thread).
// Dimension legend: B batch, D = 784 pixels, C = 10 classes.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <vector>
#include <weft/io/idx.hpp>
#include <weft/nn/nn.hpp>
#include <weft/weft.hpp>

using namespace weft;

int main(int argc, char** argv) {
  const int epochs = argc > 1 ? std::atoi(argv[1]) : 5;
  const index_t batch = argc > 2 ? std::atoll(argv[2]) : 128;
  const std::uint64_t seed = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1;
  openblas_set_num_threads(1);  // one thread, and bit-for-bit reproducible

  auto train = io::load_fashion_mnist("train");  // images (60000, 784) in [0, 1]; labels (60000,)
  auto test = io::load_fashion_mnist("test");
  const index_t n = train.images.size(0), d = train.images.size(1);
  // Standardise pixels with the training set's mean and standard deviation.
  const float mu = eval(mean(train.images)).item();
  const float sd = std::sqrt(eval(mean(square(train.images - mu))).item());
  train.images = (train.images - mu) / sd;
  test.images = (test.images - mu) / sd;

  nn::Linear<float> l1(d, 256, seed), l2(256, 256, seed + 1), l3(256, 10, seed + 2);
  nn::Registry<float> params;
  params.add("l1", l1).add("l2", l2).add("l3", l3);
  nn::Adam<float> opt(params, {.lr = 1e-3f});
  // Cosine decay of the learning rate over the whole run (to 0 at the end).
  const nn::CosineAnnealing schedule{.lr = 1e-3f, .total_steps = epochs * (n / batch)};
  std::printf("MLP %lld-256-256-10: %lld parameters in %zu tensors; Adam lr 1e-3 (cosine), batch %lld, seed %llu\n",
              static_cast<long long>(d), static_cast<long long>(params.numel()), params.size(),
              static_cast<long long>(batch), static_cast<unsigned long long>(seed));

  Tensor<float> xb({batch, d});             // (B, D) the shuffled mini-batch
  Tensor<std::int32_t> yb({batch});         // (B,)
  auto model = [&](auto x) { return l3(relu(l2(relu(l1(x))))); };
  Workspace<> ws;

  std::vector<index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), index_t(0));
  nn::Rng shuffle_rng(seed);
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    for (index_t i = n - 1; i > 0; --i)  // Fisher-Yates with weft's portable RNG
      std::swap(order[static_cast<std::size_t>(i)], order[shuffle_rng.below(static_cast<std::uint64_t>(i + 1))]);
    auto t0 = std::chrono::steady_clock::now();
    double total = 0;
    index_t steps = 0;
    for (index_t b = 0; b + batch <= n; b += batch, ++steps) {
      io::gather_batch(train, order, b, xb, yb);
      opt.set_lr(schedule(opt.steps()));
      opt.zero_grad();
      total += backward(cross_entropy(model(xb), yb), ws).item();
      opt.step();
      if (steps % 50 == 0) {
        std::printf("\r  epoch %d  [%-30.*s] %3.0f%%  loss %.4f", epoch, static_cast<int>(30 * b / n),
                    "==============================", 100.0 * static_cast<double>(b) / static_cast<double>(n),
                    total / static_cast<double>(steps + 1));
        std::fflush(stdout);
      }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    Tensor<float> logits = eval(model(test.images), ws);  // (N_test, C)
    std::printf("\r\033[Kepoch %d  loss %.4f  test accuracy %.2f%%  %.0f samples/s\n", epoch,
                total / static_cast<double>(steps), 100.0 * nn::accuracy(logits, test.labels),
                static_cast<double>(steps * batch) / secs);
  }
  return 0;
}
