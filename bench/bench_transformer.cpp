// One training step (forward, backward, AdamW) of a pre-LN transformer block
// stack, one thread: the weft side of bench/compare_transformer.sh.
//   bench_transformer [steps = 20]   time `steps` steps, print the median
//   bench_transformer --serve        answer "steps K" lines on stdin with
//                                    "ms t1 .. tK loss" (transformer_peers.py
//                                    interleaves it with its peers); "quit" ends
// Model and initial values: see bench/transformer_peers.py (the same formula).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>
#include <weft/nn/nn.hpp>
#include <weft/nn/transformer.hpp>
#include <weft/weft.hpp>

using namespace weft;

namespace {

constexpr index_t B = 32, T = 64, C = 128, H = 4;

bool ends_with(const std::string& s, const char* suffix) {
  const std::size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// The initial value formula of transformer_peers.py, parameter p in registration order.
void init_like_peers(nn::Registry<float>& reg) {
  for (std::size_t p = 0; p < reg.size(); ++p) {
    Parameter<float>& w = reg[p];
    const std::string& name = w.name;
    const bool ln = name.find(".ln") != std::string::npos || name.rfind("ln", 0) == 0;
    float* v = w.value.data();
    for (index_t i = 0; i < w.numel(); ++i) {
      const double di = static_cast<double>(i);
      if (ln)
        v[i] = ends_with(name, "weight") ? 1.0f : 0.0f;
      else if (ends_with(name, "weight"))
        v[i] = static_cast<float>(std::sin(0.37 * di + 1.1 * static_cast<double>(p)) /
                                  std::sqrt(static_cast<double>(w.shape()[0])));
      else
        v[i] = static_cast<float>(0.01 * std::sin(0.11 * di + static_cast<double>(p)));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  openblas_set_num_threads(1);
  const bool serve = argc > 1 && std::strcmp(argv[1], "--serve") == 0;
  const int steps = !serve && argc > 1 ? std::atoi(argv[1]) : 20;

  const nn::BlockConfig cfg{.dim = C, .heads = H, .mlp = 4 * C, .causal = true};
  nn::TransformerBlock<float> b1(cfg, 1), b2(cfg, 2);
  nn::Registry<float> reg;
  reg.add("block1", b1).add("block2", b2);
  init_like_peers(reg);
  nn::AdamW<float> opt(reg, {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f});

  Tensor<float> x({B, T, C}), y({B, T, C});
  for (index_t i = 0; i < x.numel(); ++i) {
    x.data()[i] = static_cast<float>(std::sin(0.013 * static_cast<double>(i)));
    y.data()[i] = static_cast<float>(std::cos(0.017 * static_cast<double>(i)));
  }
  Workspace<> ws;
  auto step = [&] {
    opt.zero_grad();
    const float loss = backward(mean(square(b2(b1(x)) - y)), ws).item();
    opt.step();
    return loss;
  };
  auto now = [] { return std::chrono::steady_clock::now(); };

  if (serve) {
    std::string cmd;
    int k = 0;
    while (std::cin >> cmd) {
      if (cmd == "quit") break;
      if (cmd != "steps" || !(std::cin >> k) || k <= 0) {
        std::fprintf(stderr, "bench_transformer --serve: expected 'steps K' or 'quit', got '%s'\n", cmd.c_str());
        return 2;
      }
      std::string line = "ms";
      float loss = 0;
      for (int i = 0; i < k; ++i) {
        const auto t0 = now();
        loss = step();
        char buf[32];
        std::snprintf(buf, sizeof buf, " %.4f", std::chrono::duration<double, std::milli>(now() - t0).count());
        line += buf;
      }
      std::printf("%s %.9g\n", line.c_str(), double(loss));
      std::fflush(stdout);
    }
    return 0;
  }
  std::printf("config: B=%ld T=%ld C=%ld heads=%ld blocks=2 MLP=%ld causal, float32, AdamW, one thread; %ld parameters\n",
              long(B), long(T), long(C), long(H), long(4 * C), long(reg.numel()));
  std::vector<double> ts;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = now();
    const float loss = step();
    ts.push_back(std::chrono::duration<double, std::milli>(now() - t0).count());
    if (i < 3) std::printf("step %d loss %.6f\n", i + 1, double(loss));
  }
  std::sort(ts.begin(), ts.end());
  std::printf("weft_step_ms: %.3f (min %.3f)\n", ts[ts.size() / 2], ts[0]);
  return 0;
}
