// Compile-time reverse mode. value_and_grad(f, x, y, ...) calls f with leaves
// Arg<0>, Arg<1>, ... so the expression's type says which leaves are
// differentiated and where each occurs. Backward is a fixed sequence of fused
// passes, one per elementwise region, decided by the type: each pass recomputes
// its region's values in registers (the per-node Tape structs) and writes the
// adjoints of all the region's leaves at once. No runtime tape, no allocation
// per node; intermediates live in a Workspace that stops allocating once warm.
//
// A hook, hook(input_index, gradient_view), runs for each input the moment its
// gradient is final, in an order fixed by the expression's type; data-parallel
// training starts communicating a gradient from there while backward goes on.
#pragma once

#include <array>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../expr/assign.hpp"
#include "../expr/node.hpp"
#include "../expr/parameter.hpp"
#include "../expr/reduce.hpp"
#include "../kernels/cpu/loops.hpp"

namespace weft {

struct NoHook {
  template <class T>
  void operator()(std::size_t, TensorView<T>) const {}
  template <class T>
  void operator()(Parameter<T>&) const {}
};

// Binding context while differentiating: where the K inputs' gradients go,
// which have been written, and how many occurrences of each are still to come.
template <class T, std::size_t K, class Hook>
struct GradContext {
  static constexpr bool active = true;
  static constexpr std::size_t slots = K;
  Workspace<cpu>* ws;
  TensorView<T>* grads;
  Hook* hook;
  std::array<bool, K> written{};
  std::array<int, K> remaining{};

  // Backward through one region (e, evaluated at `shape`) given the adjoint
  // entering it, then on through the materialised nodes below it.
  template <class E, class Seed>
  void run_region(const E& e, typename E::State& st, const Shape& shape, const Seed& seed) {
    region<E, false>(e, st, shape, seed);
  }

  template <class E, bool Sum, class Seed>
  T region(const E& e, typename E::State& st, const Shape& shape, const Seed& seed) {
    static_assert(std::is_same_v<typename E::value_type, T>,
                  "value_and_grad: every differentiated expression must compute in the inputs' element type");
    auto b = e.bind(st, shape, *this);
    constexpr std::array<bool, K> active_k = kernels::cpu::active_slots<E, K>();
    kernels::cpu::SlotMem<T, K> sinks;
    bool any_written = false;
    for (std::size_t k = 0; k < K; ++k)
      if (active_k[k]) {
        sinks.g[k] = grads[k].data;
        any_written = any_written || written[k];
      }
    check_no_overlap(b, active_k);
    const bool linear = kernels::cpu::linear_ok(b, shape) && seed.linear(shape);
    const bool assign = linear && !any_written;
    for (std::size_t k = 0; k < K; ++k)
      if (active_k[k]) {
        if (!assign && !written[k]) zero(k);
        written[k] = true;
      }
    T total = kernels::cpu::backward_region<E, Sum, K>(b, shape, seed, sinks, linear, assign);
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((E::template slots_in_region<I>() > 0 ? done(I, E::template slots_in_region<I>()) : void()), ...);
    }(std::make_index_sequence<K>{});
    b.visit([&](const LeafInfo& l) {
      if (l.param) param_done(*static_cast<Parameter<T>*>(l.param));
    });
    e.backward_children(st, *this);
    return total;
  }

  // The fused kernels read leaves and write gradients in one pass: a gradient
  // buffer that overlaps anything the region reads would corrupt it.
  template <class B>
  void check_no_overlap(const B& b, const std::array<bool, K>& active_k) const {
    for (std::size_t k = 0; k < K; ++k) {
      if (!active_k[k]) continue;
      const char* glo = reinterpret_cast<const char*>(grads[k].data);
      const char* ghi = glo + grads[k].numel() * static_cast<index_t>(sizeof(T));
      b.visit([&](const LeafInfo& l) {
        const char *lo, *hi;
        detail::byte_range(l.base, l.shape, l.own_strides, l.elem_size, lo, hi);
        if (lo < ghi && glo < hi && glo != ghi)
          throw_error<ValueError>("value_and_grad: the gradient buffer of input ", k, " (shape ", grads[k].shape,
                                  ") overlaps a tensor the expression reads; give it its own memory");
      });
    }
  }

  void zero(std::size_t k) {
    if (grads[k].numel() > 0) std::memset(static_cast<void*>(grads[k].data), 0, static_cast<std::size_t>(grads[k].numel()) * sizeof(T));
  }
  // One occurrence of parameter p has delivered its adjoint; the last one makes it final.
  void param_done(Parameter<T>& p) {
    if (--p.pending == 0) {
      if constexpr (std::is_invocable_v<Hook&, Parameter<T>&>) (*hook)(p);
    }
  }

  // Before backward: count each parameter's occurrences (known from the type,
  // identities at run time) so param_done knows when its gradient is final.
  template <class E>
  void count_params(const E& e) {
    e.for_each_param([](auto& p) { p.pending = 0; });
    e.for_each_param([](auto& p) { ++p.pending; });
  }

  void done(std::size_t k, int occurrences) {
    remaining[k] -= occurrences;
    if (remaining[k] == 0) (*hook)(k, grads[k]);
  }
};

namespace detail {

template <class X>
auto input_view(const X& x) {
  if constexpr (is_tensor<X>::value)
    return x.view();
  else
    return x;
}

template <class X>
using input_t = typename decltype(input_view(std::declval<const X&>()))::value_type;

}  // namespace detail

namespace detail {

// Forward, then backward from a seed of ones. A sum or mean at the root has a
// constant adjoint, so value and gradient come out of one pass over the region
// below it.
template <class E, class G>
TensorView<typename E::value_type> forward_backward(const E& e, G& g, Workspace<cpu>& ws) {
  using T = typename E::value_type;
  g.count_params(e);
  if constexpr (is_full_sum<E>::value) {
    using A = decltype(e.a);
    auto st = e.a.forward(ws);
    Shape s = e.a.shape();
    T scale = e.count() ? (std::is_same_v<E, Reduce<ReduceKind::mean, A, true>> ? T(1) / static_cast<T>(e.count()) : T(1)) : T(0);
    T total = g.template region<A, true>(e.a, st, s, kernels::cpu::ConstSeed<T>{scale});
    auto out = ws.template alloc<T>(e.shape());
    out.data[0] = total * scale;
    return out;
  } else {
    auto st = e.forward(ws);
    Shape s = e.shape();
    auto out = ws.template alloc<T>(s);
    NoGrad ng;
    kernels::cpu::evaluate(e.bind(st, s, ng), out);
    g.run_region(e, st, s, kernels::cpu::ConstSeed<T>{T(1)});
    return out;
  }
}

}  // namespace detail

// The core: value of f(xs...) (a view into ws, valid until ws is reset) with
// the gradient of sum(f) with respect to each input written into grads[i]
// (preallocated, shapes of the inputs). Inputs must be contiguous.
template <class F, class Hook, class T, class... Xs>
TensorView<T> value_and_grad_into(F&& f, Workspace<cpu>& ws, TensorView<T>* grads, Hook& hook, const Xs&... xs) {
  static_assert(std::is_floating_point_v<T>, "value_and_grad differentiates float or double inputs");
  static_assert((std::is_same_v<detail::input_t<Xs>, T> && ...), "value_and_grad: all inputs must have one element type");
  constexpr std::size_t K = sizeof...(Xs);
  ws.reset();
  std::array<TensorView<T>, K> views{detail::input_view(xs)...};
  for (std::size_t k = 0; k < K; ++k) {
    if (!views[k].is_contiguous())
      throw_error<ValueError>("value_and_grad: input ", k, " (shape ", views[k].shape, ") is a strided view; pass a contiguous tensor");
    if (grads[k].shape != views[k].shape)
      throw_error<ShapeError>("value_and_grad: gradient buffer ", k, " has shape ", grads[k].shape, ", input has ", views[k].shape);
  }
  auto e = [&]<std::size_t... I>(std::index_sequence<I...>) {
    return f(Arg<I, T, cpu>(views[I])...);
  }(std::make_index_sequence<K>{});
  using E = decltype(e);
  static_assert(Expression<E>, "the function given to value_and_grad must return a weft expression built from its arguments");

  GradContext<T, K, Hook> g{&ws, grads, &hook, {}, {}};
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((g.remaining[I] = E::template slots_total<I>()), ...);
  }(std::make_index_sequence<K>{});
  for (std::size_t k = 0; k < K; ++k)
    if (g.remaining[k] == 0) {  // f does not use input k: its gradient is zero, and final now
      g.zero(k);
      g.written[k] = true;
      hook(k, grads[k]);
    }

  return detail::forward_backward(e, g, ws);
}

// Gradients of sum(e) with respect to every Parameter in e, accumulated into
// their .grad (zero them between steps; optimizers' zero_grad() does). Returns
// the value of e (a view into ws, valid until ws is reset). hook(parameter)
// runs for each parameter the moment its gradient is final.
template <Expression E, class Hook = NoHook>
TensorView<typename E::value_type> backward(const E& e, Workspace<cpu>& ws, Hook&& hook = {}) {
  using T = typename E::value_type;
  static_assert(std::is_floating_point_v<T>, "backward needs a float or double expression");
  ws.reset();
  using H = std::remove_reference_t<Hook>;
  GradContext<T, 0, H> g{&ws, nullptr, &hook, {}, {}};
  return detail::forward_backward(e, g, ws);
}

// (value, d value / d x0, d value / d x1, ...) as new tensors. For a non-scalar
// f the gradients are those of sum(f), as a seed of ones in PyTorch's backward.
template <class F, class... Xs>
auto value_and_grad(F&& f, const Xs&... xs) {
  using T = std::common_type_t<detail::input_t<Xs>...>;
  Workspace<cpu> ws;
  std::array<Tensor<T>, sizeof...(Xs)> grads{Tensor<T>(detail::input_view(xs).shape)...};
  std::array<TensorView<T>, sizeof...(Xs)> gv;
  for (std::size_t k = 0; k < sizeof...(Xs); ++k) gv[k] = grads[k].view();
  NoHook hook;
  TensorView<T> v = value_and_grad_into(f, ws, gv.data(), hook, xs...);
  Tensor<T> value;
  value = v;
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple<Tensor<T>, decltype((void)I, Tensor<T>())...>(std::move(value), std::move(grads[I])...);
  }(std::make_index_sequence<sizeof...(Xs)>{});
}

// Vector-Jacobian product: gradients of sum(seed * f(xs...)).
template <class F, class T, class... Xs>
auto vjp(F&& f, const Tensor<T>& seed, const Xs&... xs) {
  Workspace<cpu> ws;
  constexpr std::size_t K = sizeof...(Xs);
  std::array<Tensor<T>, K> grads{Tensor<T>(detail::input_view(xs).shape)...};
  std::array<TensorView<T>, K> views{detail::input_view(xs)...};
  auto e = [&]<std::size_t... I>(std::index_sequence<I...>) {
    return f(Arg<I, T, cpu>(views[I])...);
  }(std::make_index_sequence<K>{});
  using E = decltype(e);
  if (seed.shape() != e.shape())
    throw_error<ShapeError>("vjp: seed of shape ", seed.shape(), " for an output of shape ", e.shape());
  NoHook hook;
  std::array<TensorView<T>, K> gv;
  for (std::size_t k = 0; k < K; ++k) gv[k] = grads[k].view();
  GradContext<T, K, NoHook> g{&ws, gv.data(), &hook, {}, {}};
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((g.remaining[I] = E::template slots_total<I>()), ...);
  }(std::make_index_sequence<K>{});
  for (std::size_t k = 0; k < K; ++k)
    if (g.remaining[k] == 0) {
      g.zero(k);
      g.written[k] = true;
    }
  auto st = e.forward(ws);
  Shape s = e.shape();
  g.run_region(e, st, s, kernels::cpu::BufferSeed<T>{seed.data(), aligned_strides(s, contiguous_strides(s), s), T(1)});
  return grads;
}

}  // namespace weft
