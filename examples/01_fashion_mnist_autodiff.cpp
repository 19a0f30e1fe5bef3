// Story 1: fit a small MLP to Fashion-MNIST with nothing but tensors,
// expressions and value_and_grad. The loss is an ordinary C++ lambda; its
// gradient with respect to the parameters comes from the expression's type.
//
//   build/examples/01_fashion_mnist_autodiff [epochs = 3] [batch = 128] [lr = 0.1]
//
// Dimension legend: B batch, D = 784 pixels, H hidden units, C = 10 classes.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <weft/expr/matmul.hpp>
#include <weft/io/idx.hpp>
#include <weft/nn/metrics.hpp>
#include <weft/weft.hpp>

using namespace weft;

// Kaiming-uniform weights (ReLU gain), deterministic for a seed.
static Tensor<float> kaiming(index_t fan_in, index_t fan_out, std::mt19937& rng) {
  float bound = std::sqrt(6.0f / static_cast<float>(fan_in));
  std::uniform_real_distribution<float> u(-bound, bound);
  Tensor<float> w({fan_in, fan_out});
  for (index_t i = 0; i < w.numel(); ++i) w.data()[i] = u(rng);
  return w;
}

int main(int argc, char** argv) {
  const int epochs = argc > 1 ? std::atoi(argv[1]) : 3;
  const index_t batch = argc > 2 ? std::atoll(argv[2]) : 128;
  const float lr = argc > 3 ? static_cast<float>(std::atof(argv[3])) : 0.1f;
  const index_t hidden = 256;

  auto train = io::load_fashion_mnist("train");  // images (60000, 784) in [0, 1], labels (60000,)
  auto test = io::load_fashion_mnist("test");
  const index_t n = train.images.size(0), d = train.images.size(1);
  std::printf("Fashion-MNIST: %lld train, %lld test images; MLP %lld-%lld-10, batch %lld, SGD lr %g\n",
              static_cast<long long>(n), static_cast<long long>(test.images.size(0)), static_cast<long long>(d),
              static_cast<long long>(hidden), static_cast<long long>(batch), static_cast<double>(lr));

  std::mt19937 rng(1234);
  Tensor<float> w1 = kaiming(d, hidden, rng), b1({hidden}, 0.0f);  // (D, H), (H,)
  Tensor<float> w2 = kaiming(hidden, 10, rng), b2({10}, 0.0f);    // (H, C), (C,)
  Tensor<float> g1(w1.shape()), gb1(b1.shape()), g2(w2.shape()), gb2(b2.shape());
  TensorView<float> grads[] = {g1.view(), gb1.view(), g2.view(), gb2.view()};

  // The current mini-batch, captured by the loss (data, not differentiated).
  TensorView<float> xb;                // (B, D)
  TensorView<std::int32_t> yb;         // (B,)
  auto loss = [&](auto W1, auto B1, auto W2, auto B2) {
    return cross_entropy(matmul(relu(matmul(xb, W1) + B1), W2) + B2, yb);
  };

  Workspace<> ws;  // reused every step: no allocation once warm
  NoHook no_hook;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    auto t0 = std::chrono::steady_clock::now();
    double total = 0;
    index_t steps = 0;
    for (index_t b = 0; b + batch <= n; b += batch, ++steps) {
      xb = train.images.slice(b, b + batch);
      yb = train.labels.slice(b, b + batch);
      total += value_and_grad_into(loss, ws, grads, no_hook, w1, b1, w2, b2).item();
      // SGD: each update is one fused pass over a parameter and its gradient.
      w1 = w1 - lr * g1;
      b1 = b1 - lr * gb1;
      w2 = w2 - lr * g2;
      b2 = b2 - lr * gb2;
      if (steps % 100 == 0) {
        std::printf("\r  epoch %d  %5.1f%%  loss %.4f", epoch, 100.0 * static_cast<double>(b) / static_cast<double>(n),
                    total / static_cast<double>(steps + 1));
        std::fflush(stdout);
      }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    Tensor<float> logits = eval(matmul(relu(matmul(test.images, w1) + b1), w2) + b2);  // (N_test, C)
    std::printf("\repoch %d  loss %.4f  test accuracy %.2f%%  %.0f samples/s\n", epoch, total / static_cast<double>(steps),
                100.0 * nn::accuracy(logits, test.labels),
                static_cast<double>(steps * batch) / secs);
  }
  return 0;
}
