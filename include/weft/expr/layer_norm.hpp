// layer_norm(x, gamma, beta, eps) over the last axis:
//   y = (x - mean) / sqrt(var + eps) * gamma + beta   (biased variance, as PyTorch)
// A materialisation point with its own adjoint (kernels' layer_norm_rows and
// layer_norm_rows_backward hold the arithmetic), fused per row: each row is
// read once from memory and worked on in cache (forward: mean, variance, y;
// backward: two row sums, then dx, dgamma and dbeta in one loop). An operand
// already in memory (a tensor, an input, a parameter, a view) is read in
// place; a computed one is evaluated once.
//   xhat = (x - mean) * rstd,  g = dy * gamma
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dgamma += sum over rows of dy * xhat,  dbeta += sum over rows of dy
// Dimension legend: R rows (all leading axes), D normalised features.
// nn::LayerNorm (nn/layer_norm.hpp) is the layer that owns gamma and beta.
#pragma once

#include <type_traits>

#include "node.hpp"
#include "parameter.hpp"
#include "view.hpp"

namespace weft {

template <class A>
struct LayerNormNode : OneChildNode<LayerNormNode<A>, A> {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  using T = value_type;
  using P = Parameter<T, device_type>;
  static constexpr int static_rank = A::static_rank;
  static constexpr int param_occurrences = param_occurrences_of<A>() + 2;  // the child's, gamma, beta
  static_assert(std::is_floating_point_v<T>, "layer_norm needs a float or double operand");

  // Its value is State::val (contiguous, its shape) and, in backward, its
  // adjoint State::adj, bound by bind_materialised: let() and views read the
  // value where it lies and hand the let's adjoint buffer over as State::adj.
  static constexpr bool value_in_state = true;

  A a;
  P* gamma;
  P* beta;
  T eps;

  LayerNormNode(A x, P& g, P& b, T e) : a(x), gamma(&g), beta(&b), eps(e) {
    Shape s = a.shape();
    if (s.rank == 0 || s.back() != g.numel())
      throw_error<ShapeError>("layer_norm: input ", s, " does not end in the ", g.numel(), " normalised features");
  }
  Shape shape() const { return a.shape(); }

  struct State {
    typename A::State a;
    TensorView<T, device_type> x, val, adj, rstd, mean;  // x, val: (R, D); rstd, mean: (R,)
  };

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}, {}, {}, {}};
    Shape s = a.shape();
    const index_t d = s.back(), rows = d ? s.numel() / d : 0;
    // An operand already in memory, contiguous, is read in place (no copy).
    st.x = detail::value_in_place(a, st.a);  // (value_in_state nodes included)
    if (!st.x.data || !st.x.is_contiguous()) st.x = materialise(a, st.a, ex);
    st.val = kernels::alloc<T>(ex, s);
    st.rstd = kernels::alloc<T>(ex, Shape{rows});
    st.mean = kernels::alloc<T>(ex, Shape{rows});
    kernels::layer_norm_rows(ex, st.x.data, static_cast<const T*>(gamma->value.data()), static_cast<const T*>(beta->value.data()),
                             eps, st.val.data, st.mean.data, st.rstd.data, rows, d);
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, a.shape(), o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    Shape s = a.shape();
    const index_t d = s.back(), rows = d ? s.numel() / d : 0;
    auto dx = kernels::alloc<T>(g.exec(), s);
    kernels::layer_norm_rows_backward(g.exec(), static_cast<const T*>(st.x.data), static_cast<const T*>(st.adj.data),
                                      static_cast<const T*>(gamma->value.data()), static_cast<const T*>(st.mean.data),
                                      static_cast<const T*>(st.rstd.data), dx.data, g.grad_of(*gamma).data,
                                      g.grad_of(*beta).data, rows, d);
    g.param_done(*gamma);
    g.param_done(*beta);
    detail::backward_into(g, a, st.a, dx);
  }

  template <class F>
  void for_each_param(F&& f) const {
    a.for_each_param(f);
    f(*gamma);
    f(*beta);
  }
};

static_assert(Expression<LayerNormNode<Leaf<float, cpu>>>);

template <Operand X, class T, class D>
auto layer_norm(X&& x, Parameter<T, D>& gamma, Parameter<T, D>& beta, T eps) {
  return LayerNormNode<expr_t<X>>(as_expr(std::forward<X>(x)), gamma, beta, eps);
}

}  // namespace weft
