// matmul(a, b): (M, K) x (K, N) -> (M, N) through the device's gemm
// (kernels::gemm: CBLAS sgemm/dgemm on the host), with either operand
// transposed for free (matmul(transpose(a), b) passes a BLAS flag).
// A materialisation point. Opt-in header: needs CBLAS (OpenBLAS) at link time.
//   forward   C = A B
//   backward  dA = dC B^T,  dB = A^T dC   (each one gemm, then the operand's region)
#pragma once

#include "../kernels/cpu/blas.hpp"
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
  static constexpr int param_occurrences = param_occurrences_of<A>() + param_occurrences_of<B>();
  using P = ParamLeaf<value_type, device_type>;
  using View = TensorView<value_type, device_type>;

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
    View av, bv;  // operand values as gemm reads them
    View val, adj;
  };

  // A leaf already in a BLAS layout is read in place; anything else is evaluated once.
  template <class E, class X>
  static View operand(const E& e, typename E::State& st, const X& ex) {
    if constexpr (std::is_same_v<E, P>) {
      return e.p->value.view();
    } else if constexpr (std::is_same_v<typename detail::leaf_storage<E>::type, value_type>) {
      if (kernels::gemm_reads_in_place(e.v)) return e.v;
    }
    return materialise(e, st, ex);
  }

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), b.forward(ex), {}, {}, {}, {}};
    st.av = operand(a, st.a, ex);
    st.bv = operand(b, st.b, ex);
    st.val = kernels::alloc<value_type>(ex, out);
    kernels::gemm(ex, st.av, st.bv, st.val, value_type(1), value_type(0));
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    using kernels::BufferSeed;
    const auto& ex = g.exec();
    Shape sa = a.shape(), sb = b.shape();
    // B first: in x @ W the weight's gradient is final at once, while A's
    // backward may go deep (hooks fire last layer first, as DDP's buckets expect).
    if constexpr (std::is_same_v<B, P>) {
      g.param_gemm(*b.p, st.av.transposed(), st.adj);  // (deferred to W by a split backward)
    } else if constexpr (weft::needs_grad<B, G>()) {  // (no gemm for an operand with nothing to differentiate)
      auto db = kernels::alloc<value_type>(ex, sb);
      kernels::gemm(ex, st.av.transposed(), st.adj, db, value_type(1), value_type(0));
      g.run_region(b, st.b, sb, BufferSeed<value_type>{db.data, aligned_strides(sb, contiguous_strides(sb), sb), value_type(1)});
    }
    if constexpr (std::is_same_v<A, P>) {
      // A parameter operand: accumulate dA straight into its gradient.
      g.param_gemm(*a.p, st.adj, st.bv.transposed());
    } else if constexpr (weft::needs_grad<A, G>()) {
      auto da = kernels::alloc<value_type>(ex, sa);
      kernels::gemm(ex, st.adj, st.bv.transposed(), da, value_type(1), value_type(0));
      g.run_region(a, st.a, sa, BufferSeed<value_type>{da.data, aligned_strides(sa, contiguous_strides(sa), sa), value_type(1)});
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
