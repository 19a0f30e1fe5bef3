// concat(axis, xs...): operands joined along an axis (torch.cat). Rank up to 4.
// A materialisation point: each operand's region is evaluated once, straight
// into its block of the output (no copy after), and in backward each
// operand's region is seeded by its block of the output's adjoint, read in
// place through strides.
//   forward   y[..., off_i : off_i + n_i, ...] = x_i
//   backward  dx_i = dy[..., off_i : off_i + n_i, ...]
// Its inverse, split / chunk (expr/view.hpp), is a view.
#pragma once

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include "node.hpp"

namespace weft {

template <class... As>
struct Concat : ExprTag {
  using A0 = std::tuple_element_t<0, std::tuple<As...>>;
  using value_type = typename A0::value_type;
  using device_type = typename A0::device_type;
  using T = value_type;
  using Buf = TensorView<T, device_type>;
  static constexpr std::size_t N = sizeof...(As);
  static constexpr int static_rank = -1;
  static constexpr int param_occurrences = (param_occurrences_of<As>() + ...);
  static_assert((std::is_same_v<typename As::value_type, value_type> && ...),
                "concat: all operands must have the same element type (convert with weft::cast<T>(x))");
  static_assert((std::is_same_v<typename As::device_type, device_type> && ...),
                "an expression cannot mix tensors of different devices: copy one operand first");

  std::tuple<As...> parts;
  int axis;
  Shape out;
  index_t off[N + 1];  // where each operand starts along the axis

  Concat(int ax, As... xs) : parts(xs...) {
    const Shape s0 = std::get<0>(parts).shape();
    if (s0.rank == 0) throw_error<ShapeError>("concat: rank-0 operands have no axis to join along");
    axis = normalize_axis("concat", ax, s0.rank);
    out = s0;
    out[axis] = 0;
    std::size_t i = 0;
    std::apply([&](const auto&... p) {
      ((off[i] = out[axis], check(ax, i, s0, p.shape()), out[axis] += p.shape()[axis], ++i), ...);
    }, parts);
    off[N] = out[axis];
  }
  void check(int ax, std::size_t i, const Shape& s0, const Shape& s) const {
    bool ok = s.rank == s0.rank;
    for (int d = 0; ok && d < s.rank; ++d) ok = d == axis || s[d] == s0[d];
    if (!ok)
      throw_error<ShapeError>("concat: operand ", i, " of shape ", s, " does not match operand 0 of shape ", s0,
                              " outside axis ", ax);
  }
  Shape shape() const { return out; }

  struct State {
    std::tuple<typename As::State...> st;
    Buf val, adj;
  };

  // Operand i's block of a contiguous buffer of the output's shape.
  Buf block(const Buf& whole, std::size_t i) const {
    Buf b = whole;
    b.data += off[i] * whole.strides[axis];
    b.shape[axis] = off[i + 1] - off[i];
    return b;
  }

  template <class X>
  State forward(const X& ex) const {
    State st{std::apply([&](const auto&... p) { return std::tuple<typename As::State...>{p.forward(ex)...}; }, parts), {}, {}};
    st.val = kernels::alloc<T>(ex, out);
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (([&] {
         const auto& p = std::get<I>(parts);
         NoGrad ng;
         kernels::evaluate(ex, p.bind(std::get<I>(st.st), p.shape(), ng), block(st.val, I));
       }()),
       ...);
    }(std::make_index_sequence<N>{});
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  // Last operand first, so hooks fire in reverse order of use as elsewhere.
  template <class G>
  void backward_children(State& st, G& g) const {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (([&] {
         constexpr std::size_t J = N - 1 - I;
         using AJ = std::tuple_element_t<J, std::tuple<As...>>;
         if constexpr (needs_grad<AJ, G>()) {
           const auto& p = std::get<J>(parts);
           const Shape s = p.shape();
           const Buf d = block(st.adj, J);
           g.run_region(p, std::get<J>(st.st), s, kernels::BufferSeed<T>{d.data, aligned_strides(s, d.strides, s), T(1)});
         }
       }()),
       ...);
    }(std::make_index_sequence<N>{});
  }

  template <class F>
  void for_each_param(F&& f) const {
    std::apply([&](const auto&... p) { (p.for_each_param(f), ...); }, parts);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return (As::template slots_total<I>() + ...);
  }
};

static_assert(Expression<Concat<Leaf<float, cpu>, Leaf<float, cpu>>>);

// concat(axis, x0, x1, ...): the operands joined along axis (negative counts
// from the end); all other extents must agree.
template <Operand... X>
  requires(sizeof...(X) >= 1)
auto concat(int axis, X&&... xs) {
  return Concat<expr_t<X>...>(axis, as_expr(std::forward<X>(xs))...);
}

}  // namespace weft
