// Linear: y = x @ W + b with W (in, out) and b (out,), parameters named
// "weight" and "bias" (Bias = false: y = x @ W). Calling the layer on an
// expression returns an expression: one affine node (expr/affine.hpp: the
// bias written into the product's output, its gradient a column sum of the
// output's adjoint), then whatever elementwise work follows fused over one
// contiguous buffer; differentiated like any other node.
// Device: where the parameters live (weft::cuda with <weft/kernels/cuda/...>);
// they are drawn on the host either way (nn/init.hpp init_on_host).
// Dimension legend: B batch, I in_features, O out_features.
#pragma once

#include <cmath>
#include <cstdint>

#include "../expr/affine.hpp"
#include "../expr/elementwise.hpp"
#include "../expr/matmul.hpp"
#include "../expr/parameter.hpp"
#include "init.hpp"

namespace weft::nn {

template <class T = float, bool Bias = true, class Device = cpu>
struct Linear {
  // PyTorch's default initialisation, deterministic for the seed: weight
  // Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(I), 1/sqrt(I)), and the
  // bias U(-1/sqrt(I), 1/sqrt(I)).
  Parameter<T, Device> weight;  // (I, O)
  Parameter<T, Device> bias;    // (O,); empty when Bias is false

  Linear(index_t in_features, index_t out_features, std::uint64_t seed = 0)
      : weight("weight", Shape{in_features, out_features}), bias("bias", Bias ? Shape{out_features} : Shape{0}) {
    if (in_features <= 0 || out_features <= 0)
      throw_error<ValueError>("Linear: features must be positive, got (", in_features, ", ", out_features, ")");
    Rng rng(seed);
    init_on_host(weight, [&](Parameter<T>& w) { kaiming_uniform(w, rng, KaimingOptions{.gain = std::sqrt(1.0 / 3.0)}); });
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    init_on_host(bias, [&](Parameter<T>& b) {
      for (index_t i = 0; i < b.numel(); ++i) b.value.data()[i] = static_cast<T>(rng.uniform(-bound, bound));
    });
  }

  index_t in_features() const { return weight.shape()[0]; }
  index_t out_features() const { return weight.shape()[1]; }

  // x: (B, I) -> (B, O)
  template <Operand X>
  auto operator()(X&& x) {
    if constexpr (Bias)
      return affine(std::forward<X>(x), weight, bias);
    else
      return matmul(std::forward<X>(x), weight);
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("weight", weight);
    if constexpr (Bias) f("bias", bias);
  }
};

}  // namespace weft::nn
