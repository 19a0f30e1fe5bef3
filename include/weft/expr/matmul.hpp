// matmul(a, b): (M, K) x (K, N) -> (M, N) through CBLAS sgemm/dgemm, with either
// operand transposed for free (matmul(transpose(a), b) passes a BLAS flag).
// A materialisation point. Opt-in header: needs CBLAS (OpenBLAS) at link time.
//   forward   C = A B
//   backward  dA = dC B^T,  dB = A^T dC   (each one gemm, then the operand's region)
#pragma once

#include "../kernels/cpu/blas.hpp"
#include "../kernels/cpu/loops.hpp"
#include "node.hpp"
#include "parameter.hpp"
#include "transpose.hpp"

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

template <class A, class B>
struct MatMul : ExprTag {
  using value_type = std::common_type_t<typename A::value_type, typename B::value_type>;
  using device_type = typename A::device_type;
  static constexpr int static_rank = 2;
  static_assert(A::static_rank == -1 || A::static_rank == 2,
                "matmul: the left operand's rank is known from its type and is not 2 (is it a full reduction?)");
  static_assert(B::static_rank == -1 || B::static_rank == 2,
                "matmul: the right operand's rank is known from its type and is not 2 (is it a full reduction?)");
  static_assert(std::is_same_v<typename A::value_type, typename B::value_type>,
                "matmul: both operands must have the same element type (convert one with weft::cast<T>(x))");
  static_assert(std::is_same_v<value_type, float> || std::is_same_v<value_type, double>,
                "matmul computes in float or double (f16/bf16 tensors are read as float)");

  A a;
  B b;
  Shape out;

  MatMul(A lhs, B rhs) : a(lhs), b(rhs) {
    Shape sa = a.shape(), sb = b.shape();
    if (sa.rank != 2 || sb.rank != 2)
      throw_error<ShapeError>("matmul: operands must be matrices (rank 2), got ", sa, " @ ", sb);
    if (sa[1] != sb[0]) throw_error<ShapeError>("matmul: inner dimensions differ: ", sa, " @ ", sb);
    out = Shape{sa[0], sb[1]};
  }
  Shape shape() const { return out; }

  struct State {
    typename A::State a;
    typename B::State b;
    TensorView<value_type> av, bv;  // operand values as BLAS reads them
    TensorView<value_type> val, adj;
  };

  // A leaf already in a BLAS layout is read in place; anything else is evaluated once.
  template <class E, class W>
  static TensorView<value_type> operand(const E& e, typename E::State& st, W& ws) {
    if constexpr (std::is_same_v<E, ParamLeaf<value_type>>) {
      return e.p->value.view();
    } else if constexpr (std::is_same_v<typename detail::leaf_storage<E>::type, value_type>) {
      CBLAS_TRANSPOSE t;
      int ld;
      if (kernels::cpu::blas_layout(e.v, t, ld)) return e.v;
    }
    return kernels::cpu::materialise(e, st, ws);
  }

  template <class W>
  State forward(W& ws) const {
    State st{a.forward(ws), b.forward(ws), {}, {}, {}, {}};
    st.av = operand(a, st.a, ws);
    st.bv = operand(b, st.b, ws);
    st.val = ws.template alloc<value_type>(out);
    kernels::cpu::gemm(st.av, st.bv, st.val, value_type(1), value_type(0));
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    using kernels::cpu::BufferSeed;
    Shape sa = a.shape(), sb = b.shape();
    // B first: in x @ W the weight's gradient is final at once, while A's
    // backward may go deep (hooks fire last layer first, as DDP's buckets expect).
    if constexpr (std::is_same_v<B, ParamLeaf<value_type>>) {
      kernels::cpu::gemm(st.av.transposed(), st.adj, b.p->grad.view(), value_type(1), value_type(1));
      g.param_done(*b.p);
    } else if constexpr (needs_grad<B, G>()) {
      auto db = g.ws->template alloc<value_type>(sb);
      kernels::cpu::gemm(st.av.transposed(), st.adj, db, value_type(1), value_type(0));
      g.run_region(b, st.b, sb, BufferSeed<value_type>{db.data, aligned_strides(sb, contiguous_strides(sb), sb), value_type(1)});
    }
    if constexpr (std::is_same_v<A, ParamLeaf<value_type>>) {
      // A parameter operand: accumulate dA straight into its gradient.
      kernels::cpu::gemm(st.adj, st.bv.transposed(), a.p->grad.view(), value_type(1), value_type(1));
      g.param_done(*a.p);
    } else if constexpr (needs_grad<A, G>()) {
      auto da = g.ws->template alloc<value_type>(sa);
      kernels::cpu::gemm(st.adj, st.bv.transposed(), da, value_type(1), value_type(0));
      g.run_region(a, st.a, sa, BufferSeed<value_type>{da.data, aligned_strides(sa, contiguous_strides(sa), sa), value_type(1)});
    }
  }

  // Skip the gemm for an operand that has no differentiated input below it.
  template <class E, class G>
  static constexpr bool needs_grad() {
    return contains_param<E>::value || []<std::size_t... I>(std::index_sequence<I...>) {
      return ((E::template slots_total<I>() > 0) || ...);
    }(std::make_index_sequence<G::slots>{});
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

template <class A, class B>
struct contains_param<MatMul<A, B>> : std::bool_constant<contains_param<A>::value || contains_param<B>::value> {};

static_assert(Expression<MatMul<Leaf<float, cpu>, Leaf<float, cpu>>>);

template <Operand X, Operand Y>
auto matmul(X&& x, Y&& y) {
  return MatMul<expr_t<X>, expr_t<Y>>(as_expr(std::forward<X>(x)), as_expr(std::forward<Y>(y)));
}

}  // namespace weft
