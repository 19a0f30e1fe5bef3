// matmul(a, b): (M, K) x (K, N) -> (M, N) through the device's gemm
// (kernels::gemm: CBLAS sgemm/dgemm on the host), with either operand
// transposed for free (matmul(transpose(a), b) passes a BLAS flag).
// A materialisation point. Opt-in header: needs CBLAS (OpenBLAS) at link time.
//   forward   C = A B
//   backward  dA = dC B^T,  dB = A^T dC   (each one gemm, then the operand's region)
//
// Batched: operands of rank 3 or 4 are stacks of matrices over their leading
// (batch) axes, which broadcast as in NumPy: (B, H, T, D) @ (B, H, D, S),
// (B, T, C) @ (C, N), (H, T, D) @ (B, 1, D, S). Output: (broadcast batch, M, N).
// Each operand may be transposed on its last two axes (transpose(x, -2, -1))
// or any other view whose matrices BLAS can read in place (else it is
// evaluated once). The product runs as one gemm per matrix
// (kernels::gemm_batched), or as one gemm when only the left operand has batch
// axes and they fold into its rows (x @ W of a linear layer). The adjoint of
// an operand broadcast over a batch axis is summed over that axis (the
// batched gemm accumulates into one matrix, in batch order).
#pragma once

#include "../kernels/cpu/blas.hpp"
#include "node.hpp"
#include "parameter.hpp"
#include "transpose.hpp"
#include "view.hpp"

namespace weft {

namespace detail {
template <class E>
struct leaf_storage {
  using type = void;
};
template <class T, class D>
struct leaf_storage<Leaf<T, D>> {
  using type = T;
};
template <std::size_t I, class T, class D>
struct leaf_storage<Arg<I, T, D>> {
  using type = T;
};
}  // namespace detail

// Batch geometry of a matmul over rank-3/4 operands (see the top of this file).
namespace detail {

// Rank-4 view of v for gemm_batched: v's batch axes (all but the last two)
// right-aligned to the output's batch shape bo (at most 2 axes), stride 0
// where v is broadcast, then v's matrix axes.
template <class V>
V batch4(const V& v, const Shape& bo) {
  V r = v;
  r.shape.rank = 4;
  const int vb = v.shape.rank - 2;
  for (int i = 0; i < 2; ++i) {
    const int j = i - (2 - bo.rank);  // axis of bo
    const int dv = j - (bo.rank - vb);  // axis of v
    r.shape[i] = j >= 0 ? bo[j] : 1;
    r.strides[i] = (j >= 0 && dv >= 0 && v.shape[dv] != 1) ? v.strides[dv] : 0;
  }
  r.shape[2] = v.shape[v.shape.rank - 2];
  r.shape[3] = v.shape[v.shape.rank - 1];
  r.strides[2] = v.strides[v.shape.rank - 2];
  r.strides[3] = v.strides[v.shape.rank - 1];
  return r;
}

// The last two axes of v as a matrix (its first batch element).
template <class V>
V matrix_of(const V& v) {
  V r = v;
  r.shape = Shape{v.shape[v.shape.rank - 2], v.shape[v.shape.rank - 1]};
  r.strides = Strides{{v.strides[v.shape.rank - 2], v.strides[v.shape.rank - 1]}};
  return r;
}

// v (..., M, K) with its leading axes folded into rows, (R, K), when the
// strides allow it and gemm can read the result in place.
template <class V>
bool fold_rows(const V& v, V& out) {
  const Shape to{v.numel() / std::max<index_t>(v.shape.back(), 1), v.shape.back()};
  Strides st;
  if (v.shape.back() == 0 || !reshape_strides(v.shape, v.strides, to, st)) return false;
  out = v;
  out.shape = to;
  out.strides = st;
  return kernels::gemm_reads_in_place(out);
}

}  // namespace detail

template <class A, class B>
struct MatMul : ExprTag {
  using value_type = std::common_type_t<typename A::value_type, typename B::value_type>;
  using device_type = typename A::device_type;
  static constexpr int static_rank =
      (A::static_rank < 0 || B::static_rank < 0) ? -1 : (A::static_rank > B::static_rank ? A::static_rank : B::static_rank);
  static_assert(A::static_rank == -1 || A::static_rank >= 2,
                "matmul: the left operand's rank is known from its type and is below 2 (is it a full reduction?)");
  static_assert(B::static_rank == -1 || B::static_rank >= 2,
                "matmul: the right operand's rank is known from its type and is below 2 (is it a full reduction?)");
  static_assert(std::is_same_v<typename A::value_type, typename B::value_type>,
                "matmul: both operands must have the same element type (convert one with weft::cast<T>(x))");
  static_assert(std::is_same_v<value_type, float> || std::is_same_v<value_type, double>,
                "matmul computes in float or double (f16/bf16 tensors are read as float)");
  static constexpr int param_occurrences = param_occurrences_of<A>() + param_occurrences_of<B>();
  using P = ParamLeaf<value_type, device_type>;
  using View = TensorView<value_type, device_type>;

  // Its value is State::val (contiguous, its shape) and, in backward, its
  // adjoint State::adj, bound by bind_materialised: let() and views read the
  // value where it lies and hand the let's adjoint buffer over as State::adj.
  static constexpr bool value_in_state = true;

  A a;
  B b;
  Shape out;
  Shape batch;  // the output's batch axes (rank 0 for a plain matrix product)

  MatMul(A lhs, B rhs) : a(lhs), b(rhs) {
    Shape sa = a.shape(), sb = b.shape();
    if (sa.rank < 2 || sb.rank < 2)
      throw_error<ShapeError>("matmul: operands must be matrices or stacks of matrices (rank 2 to 4), got ", sa, " @ ", sb);
    if (sa.back() != sb.back(2)) throw_error<ShapeError>("matmul: inner dimensions differ: ", sa, " @ ", sb);
    Shape ba, bb;
    ba.rank = sa.rank - 2;
    bb.rank = sb.rank - 2;
    for (int i = 0; i < ba.rank; ++i) ba[i] = sa[i];
    for (int i = 0; i < bb.rank; ++i) bb[i] = sb[i];
    if (!broadcast_shapes(ba, bb, batch))
      throw_error<ShapeError>("matmul: the batch dimensions of ", sa, " @ ", sb,
                              " do not broadcast (each must be equal or 1, as in NumPy)");
    out = batch;
    out.rank = batch.rank + 2;
    out[batch.rank] = sa.back(2);
    out[batch.rank + 1] = sb.back();
  }
  Shape shape() const { return out; }

  struct State {
    typename A::State a;
    typename B::State b;
    View av, bv;  // operand values as gemm reads them
    View val, adj;
    bool folded = false;  // (..., M, K) @ (K, N) run as one (R, K) @ (K, N)
  };

  // A leaf (or view) already in a BLAS layout is read in place, per matrix;
  // anything else is evaluated once.
  template <class E, class X>
  static View operand(const E& e, typename E::State& st, const X& ex) {
    if constexpr (std::is_same_v<E, P>) {
      return e.p->value.view();
    } else if constexpr (std::is_same_v<typename detail::leaf_storage<E>::type, value_type>) {
      if (kernels::gemm_reads_in_place(detail::matrix_of(e.v))) return e.v;
    } else if constexpr (detail::is_view_node<E>::value || requires { requires E::value_in_state; }) {
      if (kernels::gemm_reads_in_place(detail::matrix_of(st.val))) return st.val;
    }
    return materialise(e, st, ex);
  }

  // Whether operand() always evaluates e into new memory (an elementwise
  // region, a materialising node): then that memory holds e's value, and e's
  // backward reads it there instead of recomputing its root op.
  template <class E>
  static constexpr bool evaluated_operand() {
    return !std::is_same_v<E, P> && std::is_void_v<typename detail::leaf_storage<E>::type> && !detail::is_view_node<E>::value &&
           !requires { requires E::value_in_state; };
  }

  // When e is the differentiated input itself, read once, contiguously, in
  // its gradient buffer's shape: its gradient is the product, written there
  // by prod(buffer) (beta 0) with no scratch buffer and no pass copying it
  // (GradContext::sole_input_grad). Returns whether it did.
  template <class G, class E, class Prod>
  static bool product_into_input_grad(G& g, const E& e, Prod&& prod) {
    if constexpr (detail::is_arg<E>::value && requires { g.sole_input_grad(E::slot); }) {
      if (!e.v.is_contiguous()) return false;
      const View gx = g.sole_input_grad(E::slot);
      if (!gx.data || gx.shape != e.v.shape || !gx.is_contiguous()) return false;
      prod(gx);
      g.sole_input_grad_done(E::slot);
      return true;
    } else {
      (void)g, (void)e, (void)prod;
      return false;
    }
  }

  bool plain() const { return a.shape().rank == 2 && b.shape().rank == 2; }

  // c = alpha * x @ y + beta * c over the output's batch (x, y, c: views of
  // the operands' shapes, or of the output's for c; batch axes of c that x
  // and y broadcast over are summed into it).
  template <class X>
  void product(const X& ex, const State& st, const View& x, const View& y, const View& c, value_type beta) const {
    if (x.shape.rank == 2 && y.shape.rank == 2)
      kernels::gemm(ex, x, y, c, value_type(1), beta);
    else
      kernels::gemm_batched(ex, detail::batch4(x, batch), detail::batch4(y, batch), detail::batch4(c, batch), value_type(1),
                            beta);
    (void)st;
  }

  template <class X>
  State forward(const X& ex) const {
    return forward_onto(ex, View{});
  }
  // The product added onto `init` broadcast to the output's shape (a bias
  // (N,): expr/affine.hpp): init is written first and the gemm accumulates
  // onto it (beta 1), which costs what beta 0 does (the gemm's own pass over
  // its output). No init (data null): the plain product.
  template <class X>
  State forward_onto(const X& ex, const View& init) const {
    State st{a.forward(ex), b.forward(ex), {}, {}, {}, {}, false};
    st.av = operand(a, st.a, ex);
    st.bv = operand(b, st.b, ex);
    st.val = kernels::alloc<value_type>(ex, out);
    View af;
    if (!plain() && b.shape().rank == 2 && detail::fold_rows(st.av, af)) {
      st.folded = true;
      st.av = af;
    }
    value_type beta(0);
    if (init.data) {
      kernels::evaluate(ex, BoundTensor<value_type>{init.data, aligned_strides(init.shape, init.strides, out), init.shape, init.strides},
                        st.val);
      beta = value_type(1);
    }
    product(ex, st, st.av, st.bv, rows(st, st.val), beta);
    return st;
  }
  // A buffer of the output's (or A's) shape as gemm sees it: folded into rows when the product is.
  static View rows(const State& st, View v) {
    if (st.folded) {
      v.shape = Shape{v.numel() / std::max<index_t>(v.shape.back(), 1), v.shape.back()};
      v.strides = contiguous_strides(v.shape);
    }
    return v;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    // B first: in x @ W the weight's gradient is final at once, while A's
    // backward may go deep (hooks fire last layer first, as DDP's buckets expect).
    backward_b(st, g);
    backward_a(st, g);
  }
  // dB from the adjoint (accumulated straight into B's gradient where B is a parameter).
  template <class G>
  void backward_b(State& st, G& g) const {
    const auto& ex = g.exec();
    const Shape sb = b.shape();
    const View dc = rows(st, st.adj);
    if constexpr (std::is_same_v<B, P>) {
      // A plain (K, M) @ (M, N) product may be deferred to W by a split
      // backward (autodiff/split.hpp); a batched one runs here.
      const View x = st.av.transposed();
      if (x.shape.rank == 2 && dc.shape.rank == 2) {
        g.param_gemm(*b.p, x, dc);
      } else {
        product(ex, st, x, dc, g.grad_of(*b.p), value_type(1));
        g.param_done(*b.p);
      }
    } else if constexpr (weft::needs_grad<B, G>()) {  // (no gemm for an operand with nothing to differentiate)
      if (product_into_input_grad(g, b, [&](const View& gx) { product(ex, st, st.av.transposed(), dc, gx, value_type(0)); }))
        return;
      auto db = kernels::alloc<value_type>(ex, sb);
      product(ex, st, st.av.transposed(), dc, db, value_type(0));
      if constexpr (evaluated_operand<B>())
        detail::backward_into(g, b, st.b, db, st.bv.data);
      else
        detail::backward_into(g, b, st.b, db);
    }
  }
  // dA from the adjoint, then A's own backward (affine's fused dW + db path
  // calls this half alone: expr/affine.hpp).
  template <class G>
  void backward_a(State& st, G& g) const {
    const auto& ex = g.exec();
    const Shape sa = a.shape();
    const View dc = rows(st, st.adj);
    if constexpr (std::is_same_v<A, P>) {
      // A parameter operand: accumulate dA straight into its gradient.
      const View y = st.bv.transposed();
      if (!st.folded && dc.shape.rank == 2 && y.shape.rank == 2) {
        g.param_gemm(*a.p, dc, y);
      } else {
        product(ex, st, dc, y, rows(st, g.grad_of(*a.p)), value_type(1));
        g.param_done(*a.p);
      }
    } else if constexpr (weft::needs_grad<A, G>()) {
      if (product_into_input_grad(g, a, [&](const View& gx) { product(ex, st, dc, st.bv.transposed(), rows(st, gx), value_type(0)); }))
        return;
      auto da = kernels::alloc<value_type>(ex, sa);
      product(ex, st, dc, st.bv.transposed(), rows(st, da), value_type(0));
      if constexpr (evaluated_operand<A>())
        detail::backward_into(g, a, st.a, da, st.av.data);
      else
        detail::backward_into(g, a, st.a, da);
    }
  }

  template <class F>
  void for_each_param(F&& f) const {
    a.for_each_param(f);
    b.for_each_param(f);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return A::template slots_total<I>() + B::template slots_total<I>();
  }
};

static_assert(Expression<MatMul<Leaf<float, cpu>, Leaf<float, cpu>>>);

template <Operand X, Operand Y>
auto matmul(X&& x, Y&& y) {
  return MatMul<expr_t<X>, expr_t<Y>>(as_expr(std::forward<X>(x)), as_expr(std::forward<Y>(y)));
}

}  // namespace weft
