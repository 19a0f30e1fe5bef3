// LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * gamma + beta
// (biased variance, as PyTorch). A materialisation point with its own adjoint:
//   xhat = (x - mean) * rstd,  g = dy * gamma
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dgamma += sum over rows of dy * xhat,  dbeta += sum over rows of dy
// Dimension legend: R rows (all leading axes), D normalised features.
#pragma once

#include "../core/math.hpp"
#include "../expr/node.hpp"
#include "../expr/parameter.hpp"
#include "../kernels/cpu/loops.hpp"

namespace weft::nn {

template <class A>
struct LayerNormNode : OneChildNode<LayerNormNode<A>, A> {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  using T = value_type;
  static constexpr int static_rank = A::static_rank;
  static_assert(std::is_floating_point_v<T>, "layer_norm needs a float or double operand");

  A a;
  Parameter<T>* gamma;
  Parameter<T>* beta;
  T eps;

  LayerNormNode(A x, Parameter<T>& g, Parameter<T>& b, T e) : a(x), gamma(&g), beta(&b), eps(e) {
    Shape s = a.shape();
    if (s.rank == 0 || s.back() != g.numel())
      throw_error<ShapeError>("layer_norm: input ", s, " does not end in the ", g.numel(), " normalised features");
  }
  Shape shape() const { return a.shape(); }

  struct State {
    typename A::State a;
    TensorView<T> x, val, adj, rstd, mean;  // x, val: (R, D); rstd, mean: (R,)
  };

  template <class W>
  State forward(W& ws) const {
    State st{a.forward(ws), {}, {}, {}, {}, {}};
    Shape s = a.shape();
    const index_t d = s.back(), rows = d ? s.numel() / d : 0;
    st.x = kernels::cpu::materialise(a, st.a, ws);
    st.val = ws.template alloc<T>(s);
    st.rstd = ws.template alloc<T>(Shape{rows});
    st.mean = ws.template alloc<T>(Shape{rows});
    const T* g = gamma->value.data();
    const T* b = beta->value.data();
    for (index_t r = 0; r < rows; ++r) {
      const T* x = st.x.data + r * d;
      T* y = st.val.data + r * d;
      T mu = 0, var = 0;
      for (index_t j = 0; j < d; ++j) mu += x[j];
      mu /= static_cast<T>(d);
      for (index_t j = 0; j < d; ++j) var += (x[j] - mu) * (x[j] - mu);
      T rs = T(1) / math::sqrt(var / static_cast<T>(d) + eps);
      for (index_t j = 0; j < d; ++j) y[j] = (x[j] - mu) * rs * g[j] + b[j];
      st.mean.data[r] = mu;
      st.rstd.data[r] = rs;
    }
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
    auto dx = g.ws->template alloc<T>(s);
    const T* gm = gamma->value.data();
    T* dg = gamma->grad.data();
    T* db = beta->grad.data();
    for (index_t r = 0; r < rows; ++r) {
      const T* x = st.x.data + r * d;
      const T* dy = st.adj.data + r * d;
      T* out = dx.data + r * d;
      const T mu = st.mean.data[r], rs = st.rstd.data[r];
      T mg = 0, mgx = 0;
      for (index_t j = 0; j < d; ++j) {
        T xhat = (x[j] - mu) * rs;
        T gj = dy[j] * gm[j];
        mg += gj;
        mgx += gj * xhat;
        dg[j] += dy[j] * xhat;
        db[j] += dy[j];
      }
      mg /= static_cast<T>(d);
      mgx /= static_cast<T>(d);
      for (index_t j = 0; j < d; ++j) out[j] = rs * (dy[j] * gm[j] - mg - (x[j] - mu) * rs * mgx);
    }
    g.param_done(*gamma);
    g.param_done(*beta);
    g.run_region(a, st.a, s, kernels::cpu::BufferSeed<T>{dx.data, aligned_strides(s, contiguous_strides(s), s), T(1)});
  }

  template <class F>
  void for_each_param(F&& f) const {
    a.for_each_param(f);
    f(*gamma);
    f(*beta);
  }
};

}  // namespace weft::nn

namespace weft {
template <class A>
struct contains_param<nn::LayerNormNode<A>> : std::true_type {};
}  // namespace weft

namespace weft::nn {

static_assert(Expression<LayerNormNode<Leaf<float, cpu>>>);

template <class T = float>
struct LayerNorm {
  Parameter<T> gamma;  // (D,), ones
  Parameter<T> beta;   // (D,), zeros
  T eps;

  explicit LayerNorm(index_t features, T epsilon = T(1e-5))
      : gamma("weight", Shape{features}), beta("bias", Shape{features}), eps(epsilon) {
    gamma.value.fill(T(1));
  }

  template <Operand X>
  auto operator()(X&& x) {
    using E = expr_t<X>;
    return LayerNormNode<E>(as_expr(std::forward<X>(x)), gamma, beta, eps);
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("weight", gamma);
    f("bias", beta);
  }
};

}  // namespace weft::nn
