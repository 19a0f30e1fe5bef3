// affine(x, W, b) = matmul(x, W) + b, with the bias inside the matmul node:
//   forward   C = b (broadcast over the output's rows), then C += x W (one gemm, beta 1)
//             (a device that fuses the bias into the gemm's epilogue, CUDA's
//             cuBLASLt, does both in one call: kernels::gemm_bias)
//   backward  db += column sums of dC (kernels::bias_grad: on the host sum_rows,
//             16-row blocks as a cascade; on CUDA one gemm by a ones vector),
//             dW, dx as matmul's (expr/matmul.hpp)
//             (a device that computes a weight gradient and its bias gradient
//             in one gemm, CUDA's cuBLASLt BGRADA epilogue, does dW and db in
//             one call where W is a parameter and the product is one 2-D gemm:
//             kernels::gemm_bias_grad)
// gelu_tanh(affine(x, W, b)) is its own node, with the GELU in the gemm's
// epilogue on CUDA: expr/affine_gelu.hpp, included at the end of this file.
// Why a node: written as `matmul(x, W) + b` the bias is a leaf broadcast over
// every row of the elementwise region above the product, so backward cannot
// take the contiguous fast path there, and the bias adjoint goes through
// scratch memory of the whole region's shape (zeroed, written, then reduced
// over rows). Here the region above sees one contiguous buffer (the product's
// value and adjoint) and the bias gradient is one reduction of the adjoint the
// product needs anyway. nn::Linear is built on it. Opt-in header (CBLAS).
// Dimension legend: R rows (all leading axes of the output), K inner, N out.
#pragma once

#include "matmul.hpp"
#include "node.hpp"
#include "parameter.hpp"

namespace weft {

template <class A, class B>
struct Affine : ExprTag {
  using M = MatMul<A, B>;
  using value_type = typename M::value_type;
  using device_type = typename M::device_type;
  using T = value_type;
  using P = Parameter<T, device_type>;
  static constexpr int static_rank = M::static_rank;
  static constexpr int param_occurrences = M::param_occurrences + 1;  // the product's and the bias

  static constexpr bool value_in_state = true;  // M::State's val and adj (see MatMul)

  M m;
  P* bias;  // (N,)

  Affine(A x, B w, P& b) : m(x, w), bias(&b) {
    const Shape s = m.shape();
    if (b.value.shape().rank != 1 || b.value.shape()[0] != s.back())
      throw_error<ShapeError>("affine: bias ", b.value.shape(), " is not (", s.back(), ",) for the product ", x.shape(), " @ ",
                              w.shape(), " -> ", s);
  }
  Shape shape() const { return m.shape(); }

  using State = typename M::State;

  template <class X>
  State forward(const X& ex) const {
    if constexpr (kernels::has_gemm_bias<device_of<X>, T>)
      return forward_fused(ex);
    else
      return m.forward_onto(ex, bias->value.view());
  }

  // MatMul::forward_onto's steps, with the bias write and the product as one
  // call where the product is one 2-D gemm (plain, or its rows folded).
  template <class X>
  State forward_fused(const X& ex) const {
    State st = operands(ex);
    if (one_gemm(st))
      kernels::gemm_bias(ex, st.av, st.bv, static_cast<const T*>(bias->value.data()), M::rows(st, st.val));  // (R, N)
    else
      bias_then_product(ex, st);
    return st;
  }

  // The forward's first steps (shared with expr/affine_gelu.hpp): the
  // operands as gemm reads them, the value's buffer (unwritten), the rows
  // folded where x (..., K) @ W (K, N) allows.
  template <class X>
  State operands(const X& ex) const {
    State st{m.a.forward(ex), m.b.forward(ex), {}, {}, {}, {}, false};
    st.av = M::operand(m.a, st.a, ex);
    st.bv = M::operand(m.b, st.b, ex);
    st.val = kernels::alloc<T>(ex, m.out);
    typename M::View af;
    if (!m.plain() && m.b.shape().rank == 2 && detail::fold_rows(st.av, af)) {
      st.folded = true;
      st.av = af;
    }
    return st;
  }
  // Is the product one 2-D gemm (R, K) @ (K, N), the only shape the fused epilogues take?
  static bool one_gemm(const State& st) { return st.av.shape.rank == 2 && st.bv.shape.rank == 2; }
  // A batched product: the bias written into the value, the product accumulated onto it.
  template <class X>
  void bias_then_product(const X& ex, State& st) const {
    const auto bv = bias->value.view();
    kernels::evaluate(ex, BoundTensor<T>{bv.data, aligned_strides(bv.shape, bv.strides, m.out), bv.shape, bv.strides}, st.val);
    m.product(ex, st, st.av, st.bv, M::rows(st, st.val), T(1));
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return m.bind(st, o, g);
  }

  // The bias first (final at once, like the weight's gradient), then the product's operands.
  template <class G>
  void backward_children(State& st, G& g) const {
    if constexpr (kernels::has_gemm_bias_grad<device_type, T> && std::is_same_v<B, typename M::P>) {
      if (fuses_bias_grad(st, g)) {
        backward_fused(st, g);
        return;
      }
    }
    g.param_bias_grad(*bias, st.adj);  // (R, N) -> (N,); a split backward's W half runs it
    m.backward_children(st, g);
  }

  // The weight's and the bias's gradients in one gemm: W a parameter (so dW
  // accumulates into its gradient, beta 1), the product one 2-D gemm, and the
  // weight gemm not deferred by a split backward (autodiff/split.hpp: its W
  // half runs the recorded gemm later, and db is due now).
  template <class G>
  static bool fuses_bias_grad(const State& st, const G& g) {
    if constexpr (requires { g.deferred; })
      if (g.deferred) return false;
    return one_gemm(st) && st.adj.is_contiguous();
  }

  // dW += x^T dC and db += column sums of dC in one call (kernels::gemm_bias_grad
  // adds the epilogue's overwritten bias output to db: see dispatch.hpp), then
  // x's adjoint by MatMul::backward_a. Hooks fire in the
  // unfused order: the bias, the weight, then whatever x holds.
  template <class G>
  void backward_fused(State& st, G& g) const {
    const auto& ex = g.exec();
    const typename M::View dc = M::rows(st, st.adj);  // (R, N)
    kernels::gemm_bias_grad(ex, st.av.transposed(), dc, g.grad_of(*m.b.p), T(1), T(1), g.grad_of(*bias).data);
    g.param_done(*bias);
    g.param_done(*m.b.p);
    m.backward_a(st, g);
  }

  template <class F>
  void for_each_param(F&& f) const {
    m.for_each_param(f);
    f(*bias);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return M::template slots_total<I>();
  }
};

static_assert(Expression<Affine<Leaf<float, cpu>, Leaf<float, cpu>>>);

// affine(x, W, b): matmul(x, W) + b for a bias b of W's column count (see the top of this file).
template <Operand X, Operand W, class T, class D>
auto affine(X&& x, W&& w, Parameter<T, D>& b) {
  return Affine<expr_t<X>, expr_t<W>>(as_expr(std::forward<X>(x)), as_expr(std::forward<W>(w)), b);
}

}  // namespace weft

// The fused gelu_tanh(affine(...)) node and the gelu_tanh overload that builds
// it: included here so every expression that writes gelu_tanh over an affine
// node gets it (expr/affine_gelu.hpp includes this file first).
#include "affine_gelu.hpp"
