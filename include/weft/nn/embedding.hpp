// nn::Embedding: the layer that owns a (num_embeddings, dim) weight, N(0, 1)
// initialised as PyTorch's, and applies weft::embedding (the node and its
// adjoint live in expr/embedding.hpp).
#pragma once

#include <cstdint>

#include "../expr/embedding.hpp"
#include "init.hpp"
#include "rng.hpp"

namespace weft::nn {

// The node, under its old name here.
using weft::EmbeddingNode;

template <class T = float, class Device = cpu>
struct Embedding {
  Parameter<T, Device> weight;  // (E, D): N(0, 1) as PyTorch

  Embedding(index_t num_embeddings, index_t dim, std::uint64_t seed = 0) : weight("weight", Shape{num_embeddings, dim}) {
    Rng rng(seed);
    init_on_host(weight, [&](Parameter<T>& w) {
      for (index_t i = 0; i < w.numel(); ++i) w.value.data()[i] = static_cast<T>(rng.normal_double());
    });
  }

  template <class X>
  auto operator()(const X& indices) {
    auto v = as_expr(indices).v;  // a Leaf's view: indices are data
    return EmbeddingNode<T, typename decltype(v)::value_type>(weight, v);
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("weight", weight);
  }
};

}  // namespace weft::nn
