// affine(x, W, b) = matmul(x, W) + b, with the bias inside the matmul node:
//   forward   C = b (broadcast over the output's rows), then C += x W (one gemm, beta 1)
//             (a device that fuses the bias into the gemm's epilogue, CUDA's
//             cuBLASLt, does both in one call: kernels::gemm_bias)
//   backward  db += column sums of dC (kernels::bias_grad: on the host sum_rows,
//             16-row blocks as a cascade; on CUDA one gemm by a ones vector),
//             dW, dx as matmul's (expr/matmul.hpp)
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
    State st{m.a.forward(ex), m.b.forward(ex), {}, {}, {}, {}, false};
    st.av = M::operand(m.a, st.a, ex);
    st.bv = M::operand(m.b, st.b, ex);
    st.val = kernels::alloc<T>(ex, m.out);
    typename M::View af;
    if (!m.plain() && m.b.shape().rank == 2 && detail::fold_rows(st.av, af)) {
      st.folded = true;
      st.av = af;
    }
    const auto bv = bias->value.view();
    if (st.av.shape.rank == 2 && st.bv.shape.rank == 2) {
      kernels::gemm_bias(ex, st.av, st.bv, static_cast<const T*>(bv.data), M::rows(st, st.val));  // (R, N)
    } else {
      kernels::evaluate(ex, BoundTensor<T>{bv.data, aligned_strides(bv.shape, bv.strides, m.out), bv.shape, bv.strides},
                        st.val);
      m.product(ex, st, st.av, st.bv, M::rows(st, st.val), T(1));
    }
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return m.bind(st, o, g);
  }

  // The bias first (final at once, like the weight's gradient), then the product's operands.
  template <class G>
  void backward_children(State& st, G& g) const {
    const Shape s = m.shape();
    const index_t n = s.back(), r = n ? s.numel() / n : 0;
    kernels::bias_grad(g.exec(), static_cast<const T*>(st.adj.data), r, n, g.grad_of(*bias).data);  // (R, N) -> (N,)
    g.param_done(*bias);
    m.backward_children(st, g);
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
