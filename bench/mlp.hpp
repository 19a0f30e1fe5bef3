// What weft's training benches share (bench_training.cpp, dp_common.hpp; their
// PyTorch peers share bench/torch_mlp.py): the Fashion-MNIST-shaped MLP
// 784-256-256-10 with ReLU and cross-entropy, random data, and the batches
// cycled through it.
#pragma once

#include <cstdint>
#include <utility>
#include <weft/nn/nn.hpp>
#include <weft/weft.hpp>

namespace benchmlp {

using namespace weft;

// The model, its parameters registered as l1, l2, l3 (seeds 1, 2, 3).
struct Mlp {
  nn::Linear<float> l1{784, 256, 1}, l2{256, 256, 2}, l3{256, 10, 3};
  nn::Registry<float> params;
  Mlp() { params.add("l1", l1).add("l2", l2).add("l3", l3); }
  Mlp(const Mlp&) = delete;  // params points at the layers
  Mlp& operator=(const Mlp&) = delete;
  template <class X, class Y>
  auto loss(X&& x, Y&& y) {  // (B, 784), (B,) -> scalar; the caller's x and y outlive the expression
    return cross_entropy(l3(relu(l2(relu(l1(std::forward<X>(x)))))), std::forward<Y>(y));
  }
};

// n images of 784 uniform pixels and their labels 0..9, drawn from rng.
struct RandomData {
  Tensor<float> images;        // (n, 784)
  Tensor<std::int32_t> labels;  // (n,)
  RandomData(index_t n, nn::Rng rng) : images({n, 784}), labels({n}) {
    for (index_t i = 0; i < images.numel(); ++i) images.data()[i] = rng.uniform();
    for (index_t i = 0; i < n; ++i) labels.data()[i] = static_cast<std::int32_t>(rng.below(10));
  }
};

// `batch` rows at a time in order, starting over when the next batch would run past the end.
struct Batches {
  const RandomData* data;
  index_t batch, pos = 0;
  TensorView<float> x;          // (batch, 784)
  TensorView<std::int32_t> y;  // (batch,)
  Batches(const RandomData& d, index_t b) : data(&d), batch(b) {}
  void next() {
    if (pos + batch > data->labels.numel()) pos = 0;
    x = data->images.slice(pos, pos + batch);
    y = data->labels.slice(pos, pos + batch);
    pos += batch;
  }
};

}  // namespace benchmlp
