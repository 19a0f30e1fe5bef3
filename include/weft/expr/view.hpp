// View nodes: permute(x, axes...), transpose(x, i, j), reshape(x, shape),
// slice(x, axis, begin, end), split / chunk along an axis. Rank up to 4
// (weft's max_rank).
//
// A view never copies where strides can express it:
//   - of a tensor or TensorView (a constant leaf): permute, transpose and slice
//     return a leaf over the restrided view, read in place by the fused region
//     around it; reshape reads in place whenever the strides allow it (NumPy's
//     no-copy rule: a group of old axes merged or split must be contiguous
//     among themselves), else it copies once into workspace memory.
//   - of a differentiated input (value_and_grad's Arg): permute and transpose
//     return the input itself over permuted strides (its adjoint goes straight
//     to its slot through the same strides); reshape and slice are a View node
//     that reads the input in place and, in backward, hands its adjoint to the
//     input's slot in one pass.
//   - of a Parameter, a let() value or another view: read in place, the view's
//     steps composed (View<View<A>> is a View<A> with one more step).
//   - of a computed expression: a materialisation point (the region below is
//     evaluated once into workspace memory, as for softmax or a reduction)
//     read through the view's strides by the region above; in backward the
//     adjoint seeds the region below through the inverse view's strides (a
//     slice's adjoint is zero outside the slice: one buffer of the child's
//     shape). Evaluating the child's leaves through the view's index map
//     instead would need every bound node to remap indices; the bound protocol
//     (kernels/bound.hpp) maps indices only at leaves, so this is where the
//     region is cut.
//
// Shape errors name the op and the shapes; a rank the type knows is checked
// at compile time (permute's axis count).
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

#include "node.hpp"
#include "parameter.hpp"

namespace weft {

template <class T, class Device, class Src>
struct Shared;  // let.hpp (Src: the shared expression's type, default void)

namespace detail {

// Strides that read a tensor of shape `from` (strides `st`) as shape `to`
// without copying, as NumPy's reshape does when it can: true and `out` set,
// or false when some merged group of axes is not contiguous within itself.
inline bool reshape_strides(const Shape& from, const Strides& st, const Shape& to, Strides& out) {
  if (from.numel() != to.numel()) return false;
  out = contiguous_strides(to);
  if (to.numel() == 0) return true;
  index_t od[max_rank], os[max_rank];
  int on = 0;
  for (int i = 0; i < from.rank; ++i)
    if (from[i] != 1) {
      od[on] = from[i];
      os[on++] = st[i];
    }
  int oi = 0, ni = 0;
  while (oi < on && ni < to.rank) {
    index_t np = to[ni], op = od[oi];
    int nj = ni + 1, oj = oi + 1;
    while (np != op) {
      if (np < op)
        np *= to[nj++];
      else
        op *= od[oj++];
    }
    for (int k = oi; k + 1 < oj; ++k)
      if (os[k] != od[k + 1] * os[k + 1]) return false;
    out[nj - 1] = os[oj - 1];
    for (int k = nj - 1; k > ni; --k) out[k - 1] = out[k] * to[k];
    oi = oj;
    ni = nj;
  }
  return true;
}

inline std::string axes_str(const int* axes, int n) {
  std::string s = "(";
  for (int i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(axes[i]);
  return s + ")";
}

// One step of a view, with the shape it applies to.
struct ViewStep {
  enum Kind : unsigned char { permute, reshape, slice } kind = permute;
  Shape from, to;
  int perm[max_rank] = {};  // permute: output axis j is input axis perm[j]
  int axis = 0;             // slice: [begin, end) along axis
  index_t begin = 0, end = 0;
};

inline ViewStep permute_step(const Shape& s, const int* axes, int n) {
  if (n != s.rank)
    throw_error<ShapeError>("permute: ", n, " axes ", axes_str(axes, n), " for an operand of shape ", s, " (rank ", s.rank,
                            ")");
  ViewStep st;
  st.kind = ViewStep::permute;
  st.from = s;
  st.to.rank = s.rank;
  bool seen[max_rank] = {};
  for (int j = 0; j < n; ++j) {
    int a = axes[j] < 0 ? axes[j] + s.rank : axes[j];
    if (a < 0 || a >= s.rank || seen[a])
      throw_error<ShapeError>("permute: axes ", axes_str(axes, n), " are not a permutation of the axes of shape ", s);
    seen[a] = true;
    st.perm[j] = a;
    st.to[j] = s[a];
  }
  return st;
}

inline ViewStep reshape_step(const Shape& s, const Shape& to) {
  if (s.numel() != to.numel())
    throw_error<ShapeError>("reshape: cannot view shape ", s, " (", s.numel(), " elements) as ", to, " (", to.numel(),
                            " elements)");
  ViewStep st;
  st.kind = ViewStep::reshape;
  st.from = s;
  st.to = to;
  return st;
}

inline ViewStep slice_step(const Shape& s, int axis, index_t begin, index_t end) {
  if (s.rank == 0) throw_error<ShapeError>("slice: a rank-0 operand has no axis to slice");
  if (axis < -s.rank || axis >= s.rank)
    throw_error<ShapeError>("slice: axis ", axis, " is out of range for an operand of shape ", s);
  ViewStep st;
  st.kind = ViewStep::slice;
  st.axis = axis < 0 ? axis + s.rank : axis;
  if (begin < 0 || end > s[st.axis] || begin > end)
    throw_error<ShapeError>("slice: [", begin, ", ", end, ") along axis ", axis, " is out of range for shape ", s);
  st.from = s;
  st.to = s;
  st.to[st.axis] = end - begin;
  st.begin = begin;
  st.end = end;
  return st;
}

// Applies a permute or slice step to a view (always possible), or a reshape
// when the strides allow it (returns false: the caller copies first).
template <class V>
bool apply_step(const ViewStep& s, V& v) {
  switch (s.kind) {
    case ViewStep::permute: {
      V r = v;
      r.shape = s.to;
      for (int j = 0; j < s.to.rank; ++j) r.strides[j] = v.strides[s.perm[j]];
      v = r;
      return true;
    }
    case ViewStep::slice:
      v.data += s.begin * v.strides[s.axis];
      v.shape = s.to;
      return true;
    case ViewStep::reshape: {
      Strides nst;
      if (!reshape_strides(v.shape, v.strides, s.to, nst)) return false;
      v.shape = s.to;
      v.strides = nst;
      return true;
    }
  }
  return false;
}

// The steps of a view, applied in order (steps of stacked views compose).
struct ViewChain {
  static constexpr int capacity = 8;
  ViewStep steps[capacity];
  int n = 0;
  ViewChain then(const ViewStep& s) const {
    if (n == capacity)
      throw_error<ShapeError>("view: more than ", capacity, " reshape/permute/slice steps stacked on one operand (",
                              s.from, " -> ", s.to, "); evaluate the intermediate into a tensor");
    ViewChain c = *this;
    c.steps[c.n++] = s;
    return c;
  }
  Shape shape(const Shape& base) const { return n ? steps[n - 1].to : base; }
};

template <class E>
struct is_const_leaf : std::false_type {};
template <class T, class D>
struct is_const_leaf<Leaf<T, D>> : std::true_type {};
template <class E>
struct is_arg : std::false_type {};
template <std::size_t I, class T, class D>
struct is_arg<Arg<I, T, D>> : std::true_type {};
template <class E>
struct is_param_leaf : std::false_type {};
template <class T, class D>
struct is_param_leaf<ParamLeaf<T, D>> : std::true_type {};
template <class E>
struct is_shared : std::false_type {};
template <class T, class D, class S>
struct is_shared<Shared<T, D, S>> : std::true_type {};

}  // namespace detail

template <class A>
struct View;

namespace detail {
template <class E>
struct is_view_node : std::false_type {};
template <class A>
struct is_view_node<View<A>> : std::true_type {};
}  // namespace detail

// A view of node A's value through a chain of steps (see the top of this file).
template <class A>
struct View : ExprTag {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  using T = value_type;
  using Buf = TensorView<T, device_type>;
  static constexpr int static_rank = -1;
  static constexpr int param_occurrences = param_occurrences_of<A>();

  A a;
  detail::ViewChain chain;
  Shape out;

  View(A child, const detail::ViewChain& c) : a(child), chain(c), out(c.shape(child.shape())) {}
  Shape shape() const { return out; }

  struct State {
    typename A::State a;
    Buf val;  // the view itself: out's shape, strided into the child's value (or a copy)
    Buf adj;  // compact, out's shape
    bool direct = false;  // adjoint added straight into a let() value's buffer (see bind)
  };

  // The child's value where it already lies, or evaluated once (contiguous).
  template <class X>
  Buf base(typename A::State& sa, const X& ex) const {
    if constexpr (detail::is_param_leaf<A>::value) {
      return a.p->value.view();
    } else if constexpr (detail::is_shared<A>::value) {
      return Buf(const_cast<T*>(a.val), a.s);
    } else if constexpr (detail::is_const_leaf<A>::value || detail::is_arg<A>::value) {
      if constexpr (std::is_same_v<typename decltype(a.v)::value_type, T>) return a.v;
      else return materialise(a, sa, ex);
    } else if constexpr (requires { requires A::value_in_state; }) {
      return sa.val;  // a matmul's or attention's value where it lies (expr/matmul.hpp)
    } else {
      return materialise(a, sa, ex);
    }
  }

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}};
    Buf v = base(st.a, ex);
    for (int i = 0; i < chain.n; ++i)
      if (!detail::apply_step(chain.steps[i], v)) {
        // A reshape the strides cannot express: one contiguous copy, then the view.
        Buf c = kernels::alloc<T>(ex, v.shape);
        kernels::evaluate(ex, BoundBuffer<T, false>{v.data, nullptr, aligned_strides(v.shape, v.strides, v.shape), v.shape, v.strides}, c);
        v = c;
        detail::apply_step(chain.steps[i], v);
      }
    st.val = v;
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    const Strides rs = aligned_strides(out, st.val.strides, o);
    if constexpr (G::active) {
      if constexpr (detail::is_shared<A>::value) {
        // A view of a let() value read in place (q, k, v sliced from one
        // projection): its adjoint goes through the same strides straight
        // into the let's buffer, which every occurrence adds into and which
        // is zeroed before any of them runs. No buffer of the view's own, no
        // pass undoing the steps. Only where the region reads the view
        // unbroadcast: a broadcast adjoint is summed through scratch, into a
        // compact target.
        const index_t off = st.val.data - a.val;
        st.direct = a.adj != nullptr && off >= 0 && off < a.s.numel() && o == out;
        if (st.direct) return BoundBuffer<T, true>{st.val.data, a.adj + off, rs, out, st.val.strides, nullptr, rs};
      }
      if constexpr (needs_grad<A, G>()) {
        st.adj = kernels::zeros<T>(g.exec(), out);
        return BoundBuffer<T, true>{st.val.data, st.adj.data, rs, out, st.val.strides, nullptr,
                                    aligned_strides(out, contiguous_strides(out), o)};
      } else {
        return BoundBuffer<T, false>{st.val.data, nullptr, rs, out, st.val.strides};
      }
    } else {
      return BoundBuffer<T, false>{st.val.data, nullptr, rs, out, st.val.strides};
    }
  }

  // The adjoint undoes the steps in reverse: a permute's through inverse
  // strides, a reshape's in place where the strides allow, a slice's into a
  // zeroed buffer of the shape before it.
  template <class G>
  void backward_children(State& st, G& g) const {
    if constexpr (needs_grad<A, G>()) {
      if (st.direct) return;  // already in the let's buffer (bind)
      const auto& ex = g.exec();
      Buf d = st.adj;
      for (int i = chain.n - 1; i >= 0; --i) {
        const detail::ViewStep& s = chain.steps[i];
        switch (s.kind) {
          case detail::ViewStep::permute: {
            Buf r = d;
            r.shape = s.from;
            for (int j = 0; j < s.to.rank; ++j) r.strides[s.perm[j]] = d.strides[j];
            d = r;
            break;
          }
          case detail::ViewStep::reshape: {
            Strides nst;
            if (!detail::reshape_strides(d.shape, d.strides, s.from, nst)) {
              Buf c = kernels::alloc<T>(ex, d.shape);
              kernels::evaluate(ex, BoundBuffer<T, false>{d.data, nullptr, aligned_strides(d.shape, d.strides, d.shape), d.shape, d.strides}, c);
              d = c;
              nst = contiguous_strides(s.from);
            }
            d.shape = s.from;
            d.strides = nst;
            break;
          }
          case detail::ViewStep::slice: {
            Buf z = kernels::zeros<T>(ex, s.from);
            Buf part = z;
            detail::apply_step(s, part);
            kernels::evaluate(ex, BoundBuffer<T, false>{d.data, nullptr, aligned_strides(d.shape, d.strides, d.shape), d.shape, d.strides}, part);
            d = z;
            break;
          }
        }
      }
      const Shape sa = a.shape();
      g.run_region(a, st.a, sa, kernels::BufferSeed<T>{d.data, aligned_strides(sa, d.strides, sa), T(1)});
    }
  }

  template <class F>
  void for_each_param(F&& f) const {
    a.for_each_param(f);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return A::template slots_total<I>();
  }
};

static_assert(Expression<View<Leaf<float, cpu>>>);

namespace detail {

// Backward into child e given its adjoint `d` (contiguous, e's shape, in
// workspace memory): a node whose value and adjoint live in its state takes d
// as its adjoint (no zeroed buffer, no pass copying d into it); anything else
// runs its region seeded with d.
template <class G, class E, class V>
void backward_into(G& g, const E& e, typename E::State& st, const V& d) {
  if constexpr (requires { requires E::value_in_state; }) {
    st.adj = d;
    e.backward_children(st, g);
  } else {
    const Shape s = e.shape();
    g.run_region(e, st, s, kernels::BufferSeed<typename E::value_type>{d.data, aligned_strides(s, contiguous_strides(s), s),
                                                                       typename E::value_type(1)});
  }
}

// backward_into for a region whose value forward evaluated into `value`
// (contiguous, e's shape; a matmul's operand): its pass reads the value there
// rather than recomputing its root op.
template <class G, class E, class V>
void backward_into(G& g, const E& e, typename E::State& st, const V& d, const typename E::value_type* value) {
  static_assert(!requires { requires E::value_in_state; },
                "backward_into with a value: for regions (a node that keeps its value in its state takes d as its adjoint)");
  const Shape s = e.shape();
  g.run_region_valued(e, st, s, kernels::BufferSeed<typename E::value_type>{d.data, aligned_strides(s, contiguous_strides(s), s),
                                                                            typename E::value_type(1)},
                      value);
}

// Node e's value where it already lies in memory (a tensor, an input, a
// parameter, a let() value, a view: after forward), for materialising nodes
// that can read their operand in place; a view with data == nullptr when it
// must be evaluated.
template <class E>
TensorView<typename E::value_type, typename E::device_type> value_in_place(const E& e, const typename E::State& st) {
  using V = TensorView<typename E::value_type, typename E::device_type>;
  if constexpr (is_param_leaf<E>::value) {
    return e.p->value.view();
  } else if constexpr (is_shared<E>::value) {
    return V(const_cast<typename E::value_type*>(e.val), e.s);
  } else if constexpr (is_const_leaf<E>::value || is_arg<E>::value) {
    if constexpr (std::is_same_v<typename decltype(e.v)::value_type, typename E::value_type>) return e.v;
    else return V();
  } else if constexpr (is_view_node<E>::value) {
    return st.val;
  } else if constexpr (requires { requires E::value_in_state; }) {
    return st.val;
  } else {
    return V();
  }
}

}  // namespace detail

namespace detail {

// A step applied to operand x: a restrided leaf where that is free and exact,
// else a View node (composed with x's own steps when x is a view).
template <bool LeafOk, class X, class MakeStep>
auto make_view(X&& x, MakeStep&& make) {
  using E = expr_t<X>;
  auto e = as_expr(std::forward<X>(x));
  const ViewStep s = make(e.shape());
  if constexpr (LeafOk && (is_const_leaf<E>::value || is_arg<E>::value)) {
    auto v = e.v;
    apply_step(s, v);
    e.v = v;
    return e;
  } else if constexpr (is_view_node<E>::value) {
    return E(e.a, e.chain.then(s));
  } else {
    return View<E>(e, ViewChain{}.then(s));
  }
}

template <class E, std::size_t N>
constexpr void check_axis_count() {
  static_assert(E::static_rank < 0 || E::static_rank == static_cast<int>(N),
                "permute: the operand's rank is known from its type and differs from the number of axes given "
                "(give one axis per dimension, e.g. permute(x, 0, 2, 1, 3) for a rank-4 x)");
}

}  // namespace detail

// permute(x, axes...): output axis j is x's axis axes[j] (negative axes count
// from the end), as torch.permute / numpy.transpose(x, axes).
template <Operand X, std::integral... Ax>
  requires(sizeof...(Ax) >= 1 && sizeof...(Ax) <= static_cast<std::size_t>(max_rank) && (!std::is_same_v<Ax, bool> && ...))
auto permute(X&& x, Ax... axes) {
  detail::check_axis_count<expr_t<X>, sizeof...(Ax)>();
  const int ax[] = {static_cast<int>(axes)...};
  return detail::make_view<true>(std::forward<X>(x),
                                 [&](const Shape& s) { return detail::permute_step(s, ax, static_cast<int>(sizeof...(Ax))); });
}

// transpose(x, i, j): swap axes i and j (negative counts from the end).
template <Operand X>
auto transpose(X&& x, int i, int j) {
  return detail::make_view<true>(std::forward<X>(x), [&](const Shape& s) {
    int ax[max_rank];
    for (int k = 0; k < s.rank; ++k) ax[k] = k;
    const int a = i < 0 ? i + s.rank : i, b = j < 0 ? j + s.rank : j;
    if (a < 0 || a >= s.rank || b < 0 || b >= s.rank)
      throw_error<ShapeError>("transpose: axes (", i, ", ", j, ") are out of range for an operand of shape ", s);
    std::swap(ax[a], ax[b]);
    return detail::permute_step(s, ax, s.rank);
  });
}

// reshape(x, shape): same elements in row-major order, as torch.reshape: a
// view when the strides allow it, a copy otherwise (only then).
template <Operand X>
auto reshape(X&& x, const Shape& to) {
  return detail::make_view<false>(std::forward<X>(x), [&](const Shape& s) { return detail::reshape_step(s, to); });
}

// slice(x, axis, begin, end): elements [begin, end) along axis, a view.
template <Operand X>
auto slice(X&& x, int axis, index_t begin, index_t end) {
  using E = expr_t<X>;
  // A slice of a differentiated input is a View node: its adjoint needs an
  // offset into the input's slot, which only a buffer leaf carries.
  constexpr bool leaf_ok = detail::is_const_leaf<E>::value;
  return detail::make_view<leaf_ok>(std::forward<X>(x),
                                    [&](const Shape& s) { return detail::slice_step(s, axis, begin, end); });
}

// split(x, axis, sizes...): consecutive slices of the given sizes along axis,
// which must add up to its extent. Each part reads x where it lies (a
// computed x is evaluated once per part: share it with let()).
template <Operand X, std::integral... S>
  requires(sizeof...(S) >= 1)
auto split(X&& x, int axis, S... sizes) {
  using Part = decltype(slice(std::declval<X>(), 0, 0, 0));
  const index_t sz[] = {static_cast<index_t>(sizes)...};
  const Shape s = as_expr(x).shape();
  const int a = s.rank > 0 ? normalize_axis("split", axis, s.rank) : 0;
  index_t total = 0;
  for (index_t v : sz) total += v;
  if (s.rank == 0 || total != s[a])
    throw_error<ShapeError>("split: sizes adding up to ", total, " along axis ", axis, " of shape ", s,
                            s.rank ? " (they must add up to the axis' extent)" : " (a rank-0 operand has no axis)");
  index_t begin = 0;
  std::size_t k = 0;
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    auto part = [&](std::size_t) {
      index_t b = begin;
      begin += sz[k++];
      return slice(x, a, b, begin);
    };
    return std::array<Part, sizeof...(S)>{part(I)...};
  }(std::make_index_sequence<sizeof...(S)>{});
}

// chunk<N>(x, axis): N equal slices along axis (q, k, v = chunk<3>(qkv, -1)).
template <std::size_t N, Operand X>
auto chunk(X&& x, int axis) {
  static_assert(N >= 1, "chunk: at least one chunk");
  using Part = decltype(slice(std::declval<X>(), 0, 0, 0));
  const Shape s = as_expr(x).shape();
  if (s.rank == 0) throw_error<ShapeError>("chunk: a rank-0 operand has no axis to split");
  const int a = normalize_axis("chunk", axis, s.rank);
  if (s[a] % static_cast<index_t>(N) != 0)
    throw_error<ShapeError>("chunk: axis ", axis, " of shape ", s, " does not split into ", N, " equal parts");
  const index_t w = s[a] / static_cast<index_t>(N);
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::array<Part, N>{slice(x, a, static_cast<index_t>(I) * w, static_cast<index_t>(I + 1) * w)...};
  }(std::make_index_sequence<N>{});
}

}  // namespace weft
