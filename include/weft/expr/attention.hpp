// scaled_dot_product_attention(q, k, v, {.causal, .scale, .dropout, .seed}):
//   out = dropout(softmax(s q k^T + mask)) v,   s = 1/sqrt(D) unless given
// on q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) -> (B, H, Tq, Dv)
// (or rank 3, (N, T, D)). A materialisation point computed by the device's
// fused kernels (kernels::attention_forward/backward; on the host
// kernels/cpu/attention.hpp, FlashAttention-2's tiling): the (Tq, Tk) matrix
// is never stored, forward keeps only the rows' log-sum-exp (B H Tq numbers)
// and backward recomputes the probabilities from it. Opt-in header: the host
// kernels use CBLAS.
//   backward  Dr = rowsum(dout * out),  P = exp(s q k^T - lse)
//             dv = P^T dout,  dS = P * (dout v^T - Dr),  dq = s dS k,  dk = s dS^T q
// Operands that are tensors, views, inputs or parameters whose last axis is
// contiguous are read in place through their strides (a (B, T, H, D) view
// permuted to (B, H, T, D) costs no copy); any other expression is evaluated
// once into workspace memory.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "../kernels/cpu/attention.hpp"
#include "matmul.hpp"  // detail::leaf_storage: which leaves are read in place
#include "node.hpp"
#include "parameter.hpp"

namespace weft {

struct AttentionOptions {
  bool causal = false;                // query i attends to keys j <= i (top-left aligned, as PyTorch's is_causal)
  std::optional<double> scale = {};   // default 1/sqrt(D)
  float dropout = 0;                  // inverted dropout on the probabilities, in [0, 1)
  std::uint64_t seed = 0;             // dropout's mask: hash_uniform(seed, element of (B, H, Tq, Tk))
};

template <class A, class B, class C>
struct Attention : ExprTag {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  using T = value_type;
  using View = TensorView<T, device_type>;
  static constexpr int static_rank = A::static_rank;
  static_assert(A::static_rank == -1 || A::static_rank == 3 || A::static_rank == 4,
                "scaled_dot_product_attention: q's rank is known from its type and is neither 3 (N, T, D) nor 4 "
                "(B, H, T, D)");
  static_assert(B::static_rank == -1 || B::static_rank == 3 || B::static_rank == 4,
                "scaled_dot_product_attention: k's rank is known from its type and is neither 3 nor 4");
  static_assert(C::static_rank == -1 || C::static_rank == 3 || C::static_rank == 4,
                "scaled_dot_product_attention: v's rank is known from its type and is neither 3 nor 4");
  static_assert(std::is_same_v<T, typename B::value_type> && std::is_same_v<T, typename C::value_type>,
                "scaled_dot_product_attention: q, k and v must have one element type (convert with weft::cast<T>(x))");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "scaled_dot_product_attention computes in float or double");
  static constexpr int param_occurrences = param_occurrences_of<A>() + param_occurrences_of<B>() + param_occurrences_of<C>();

  // Its value is State::val (contiguous, its shape) and, in backward, its
  // adjoint State::adj, bound by bind_materialised: let() and views read the
  // value where it lies and hand the let's adjoint buffer over as State::adj.
  static constexpr bool value_in_state = true;

  A q;
  B k;
  C v;
  kernels::AttentionParams prm;
  Shape out;

  Attention(A q_, B k_, C v_, const AttentionOptions& o) : q(q_), k(k_), v(v_) {
    const Shape sq = q.shape(), sk = k.shape(), sv = v.shape();
    const char* op = "scaled_dot_product_attention";
    if (sq.rank < 3 || sq.rank > 4 || sk.rank != sq.rank || sv.rank != sq.rank)
      throw_error<ShapeError>(op, ": q, k, v must all be (B, H, T, D) or all (N, T, D); got q ", sq, ", k ", sk, ", v ", sv);
    for (int d = 0; d < sq.rank - 2; ++d)
      if (sq[d] != sk[d] || sq[d] != sv[d])
        throw_error<ShapeError>(op, ": batch axes differ (axis ", d, "): q ", sq, ", k ", sk, ", v ", sv);
    const int r = sq.rank;
    if (sq[r - 1] != sk[r - 1]) throw_error<ShapeError>(op, ": q and k widths differ: q ", sq, ", k ", sk);
    if (sk[r - 2] != sv[r - 2]) throw_error<ShapeError>(op, ": k and v have different key counts: k ", sk, ", v ", sv);
    if (!(o.dropout >= 0.0f && o.dropout < 1.0f))
      throw_error<ValueError>(op, ": dropout rate ", o.dropout, " is outside [0, 1)");
    if (o.scale && !std::isfinite(*o.scale)) throw_error<ValueError>(op, ": scale ", *o.scale, " is not finite");
    prm.n0 = r == 4 ? sq[0] : 1;
    prm.n1 = r == 4 ? sq[1] : sq[0];
    prm.tq = sq[r - 2];
    prm.tk = sk[r - 2];
    prm.d = sq[r - 1];
    prm.dv = sv[r - 1];
    prm.scale = o.scale ? *o.scale : (prm.d > 0 ? 1.0 / std::sqrt(static_cast<double>(prm.d)) : 1.0);
    prm.causal = o.causal;
    prm.dropout = o.dropout;
    prm.seed = o.seed;
    out = sq;
    out[r - 1] = prm.dv;
  }
  Shape shape() const { return out; }

  struct State {
    typename A::State a;
    typename B::State b;
    typename C::State c;
    View qv, kv, vv;  // operands as the kernels read them
    View val, adj, lse;
  };

  // A leaf whose last axis is contiguous is read where it lies.
  template <class E, class X>
  static View operand(const E& e, typename E::State& st, const X& ex) {
    if constexpr (std::is_same_v<E, ParamLeaf<T, device_type>>) {
      return e.p->value.view();
    } else if constexpr (std::is_same_v<typename detail::leaf_storage<E>::type, T>) {
      const int r = e.v.shape.rank;
      if (e.v.strides[r - 1] == 1 || e.v.shape[r - 1] == 1) return e.v;
    } else if constexpr (detail::is_view_node<E>::value || requires { requires E::value_in_state; }) {
      // A view node (heads of a let() projection) after its forward: its value in place.
      const int r = st.val.shape.rank;
      if (st.val.strides[r - 1] == 1 || st.val.shape[r - 1] == 1) return st.val;
    }
    return materialise(e, st, ex);
  }
  static kernels::AttnOperand<const T> rows(const View& x) {
    const int r = x.shape.rank;
    const index_t st = x.strides[r - 2];
    if (r == 4) return {x.data, x.strides[0], x.strides[1], st};
    return {x.data, 0, x.strides[0], st};
  }

  template <class X>
  State forward(const X& ex) const {
    State st{q.forward(ex), k.forward(ex), v.forward(ex), {}, {}, {}, {}, {}, {}};
    st.qv = operand(q, st.a, ex);
    st.kv = operand(k, st.b, ex);
    st.vv = operand(v, st.c, ex);
    st.val = kernels::alloc<T>(ex, out);
    st.lse = kernels::alloc<T>(ex, Shape{prm.n0, prm.n1, prm.tq});
    kernels::attention_forward(ex, prm, rows(st.qv), rows(st.kv), rows(st.vv), st.val.data, st.lse.data);
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    using kernels::BufferSeed;
    if constexpr (needs_grad<A, G>() || needs_grad<B, G>() || needs_grad<C, G>()) {
      const auto& ex = g.exec();
      const Shape sq = q.shape(), sk = k.shape(), sv = v.shape();
      auto dq = kernels::alloc<T>(ex, sq);
      auto dk = kernels::alloc<T>(ex, sk);
      auto dv = kernels::alloc<T>(ex, sv);
      kernels::attention_backward(ex, prm, rows(st.qv), rows(st.kv), rows(st.vv), st.val.data, st.adj.data, st.lse.data,
                                  dq.data, dk.data, dv.data);
      // v, k, q: the reverse of their order in the expression, as elsewhere.
      if constexpr (needs_grad<C, G>()) detail::backward_into(g, v, st.c, dv);
      if constexpr (needs_grad<B, G>()) detail::backward_into(g, k, st.b, dk);
      if constexpr (needs_grad<A, G>()) detail::backward_into(g, q, st.a, dq);
    }
  }

  template <class F>
  void for_each_param(F&& f) const {
    q.for_each_param(f);
    k.for_each_param(f);
    v.for_each_param(f);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return A::template slots_total<I>() + B::template slots_total<I>() + C::template slots_total<I>();
  }
};

static_assert(Expression<Attention<Leaf<float, cpu>, Leaf<float, cpu>, Leaf<float, cpu>>>);

template <Operand Q, Operand K, Operand V>
auto scaled_dot_product_attention(Q&& q, K&& k, V&& v, const AttentionOptions& o = {}) {
  return Attention<expr_t<Q>, expr_t<K>, expr_t<V>>(as_expr(std::forward<Q>(q)), as_expr(std::forward<K>(k)),
                                                    as_expr(std::forward<V>(v)), o);
}

}  // namespace weft
