// Embedding: rows of a (num_embeddings, dim) weight gathered by integer
// indices; backward scatters the adjoint rows back into the weight's gradient.
// Dimension legend: N indices (any shape S of rank <= 3), E num_embeddings, D dim.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../expr/node.hpp"
#include "../expr/parameter.hpp"
#include "rng.hpp"

namespace weft::nn {

template <class T, class I>
struct EmbeddingNode : ExprTag {
  using value_type = T;
  using device_type = cpu;
  static constexpr int static_rank = -1;
  static_assert(std::is_integral_v<I>, "embedding: indices must be an integer tensor (int32 or int64)");

  Parameter<T>* weight;
  TensorView<I> idx;  // S
  Shape out;          // S + (D,)

  EmbeddingNode(Parameter<T>& w, TensorView<I> indices) : weight(&w), idx(indices) {
    if (!idx.is_contiguous()) throw_error<ValueError>("embedding: indices must be contiguous, got a strided view of ", idx.shape);
    if (idx.shape.rank >= max_rank)
      throw_error<ShapeError>("embedding: indices of shape ", idx.shape, " would give a result above rank ", max_rank);
    out = idx.shape;
    out[out.rank++] = w.shape()[1];
  }
  Shape shape() const { return out; }

  struct State {
    TensorView<T> val, adj;
  };

  template <class W>
  State forward(W& ws) const {
    State st{ws.template alloc<T>(out), {}};
    const index_t n = idx.numel(), d = weight->shape()[1], rows = weight->shape()[0];
    for (index_t r = 0; r < n; ++r) {
      index_t k = static_cast<index_t>(idx.data[r]);
      if (k < 0 || k >= rows)
        throw_error<ValueError>("embedding ", weight->name, ": index ", k, " at position ", r, " is out of range for ",
                                rows, " embeddings");
      std::memcpy(st.val.data + r * d, weight->value.data() + k * d, static_cast<std::size_t>(d) * sizeof(T));
    }
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    const index_t n = idx.numel(), d = weight->shape()[1];
    T* gw = weight->grad.data();
    for (index_t r = 0; r < n; ++r) {
      T* dst = gw + static_cast<index_t>(idx.data[r]) * d;
      const T* src = st.adj.data + r * d;
      for (index_t j = 0; j < d; ++j) dst[j] += src[j];
    }
    g.param_done(*weight);
  }

  template <class F>
  void for_each_param(F&& f) const {
    f(*weight);
  }
  template <std::size_t J>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t J>
  static constexpr int slots_total() {
    return 0;
  }
};

}  // namespace weft::nn

namespace weft {
template <class T, class I>
struct contains_param<nn::EmbeddingNode<T, I>> : std::true_type {};
}  // namespace weft

namespace weft::nn {

static_assert(Expression<EmbeddingNode<float, std::int64_t>>);

template <class T = float>
struct Embedding {
  Parameter<T> weight;  // (E, D): N(0, 1) as PyTorch

  Embedding(index_t num_embeddings, index_t dim, std::uint64_t seed = 0) : weight("weight", Shape{num_embeddings, dim}) {
    Rng rng(seed);
    for (index_t i = 0; i < weight.numel(); ++i) weight.value.data()[i] = static_cast<T>(rng.normal_double());
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
