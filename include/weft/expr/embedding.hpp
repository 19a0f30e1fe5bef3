// embedding(weight, indices): rows of a (num_embeddings, dim) weight gathered
// by integer indices (kernels' gather_rows); backward scatters the adjoint rows
// back into the weight's gradient (scatter_add_rows).
// Dimension legend: N indices (any shape S of rank <= 3), E num_embeddings, D dim.
// nn::Embedding (nn/embedding.hpp) is the layer that owns the weight.
#pragma once

#include <type_traits>

#include "node.hpp"
#include "parameter.hpp"

namespace weft {

template <class T, class I, class Device = cpu>
struct EmbeddingNode : ExprTag {
  using value_type = T;
  using device_type = Device;
  static constexpr int static_rank = -1;
  static constexpr int param_occurrences = 1;  // the weight
  static_assert(std::is_integral_v<I>, "embedding: indices must be an integer tensor (int32 or int64)");

  Parameter<T, Device>* weight;
  TensorView<I, Device> idx;  // S
  Shape out;                  // S + (D,)

  EmbeddingNode(Parameter<T, Device>& w, TensorView<I, Device> indices) : weight(&w), idx(indices) {
    if (!idx.is_contiguous()) throw_error<ValueError>("embedding: indices must be contiguous, got a strided view of ", idx.shape);
    if (idx.shape.rank >= max_rank)
      throw_error<ShapeError>("embedding: indices of shape ", idx.shape, " would give a result above rank ", max_rank);
    out = idx.shape;
    out[out.rank++] = w.shape()[1];
  }
  Shape shape() const { return out; }

  struct State {
    TensorView<T, Device> val, adj;
  };

  template <class X>
  State forward(const X& ex) const {
    State st{kernels::alloc<T>(ex, out), {}};
    kernels::gather_rows(ex, static_cast<const T*>(weight->value.data()), weight->shape()[0], static_cast<const I*>(idx.data),
                         idx.numel(), weight->shape()[1], st.val.data, weight->name.c_str());
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    kernels::scatter_add_rows(g.exec(), static_cast<const T*>(st.adj.data), static_cast<const I*>(idx.data), idx.numel(),
                              weight->shape()[1], g.grad_of(*weight).data);
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

static_assert(Expression<EmbeddingNode<float, std::int64_t>>);

template <class T, class D, class I>
EmbeddingNode<T, I, D> embedding(Parameter<T, D>& weight, TensorView<I, D> indices) {
  return EmbeddingNode<T, I, D>(weight, indices);
}

}  // namespace weft
