// State visiting: the one protocol through which a checkpoint reads and
// restores what a training run holds (parameters, optimizer moments and step
// count, RNG state, sampler epoch and position, a strategy's shard layout).
// Every stateful object offers visit_state(v) (a registry and a parameter: the free
// functions nn::visit_state(reg, v) and nn::visit_state(param, v)) and calls
// the visitor once per item:
//
//   v(std::string_view name, TensorView<T> t)   a tensor: read through t to save,
//                                              write through t to restore
//   v(std::string_view name, S& x)              a scalar, S one of std::int64_t,
//                                              std::uint64_t, double, float, bool
//
// Names are stable and say what the item is ("l1.weight",
// "l1.weight.exp_avg", "step"); an object visits the same names in the same
// order every time, so a checkpoint saved from one object restores into a
// fresh one built the same way. Objects check what a visitor wrote where a
// value can be invalid (an all-zero RNG state, a position past the shard, a
// different shard layout) and throw a ValueError naming the item.
// Composites name their parts with prefixed("optimizer", v). Visiting is for
// checkpoints, not the training step: it may allocate (names are built).
// Host tensors only for now (a device strategy will visit device views).
#pragma once

#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "../core/error.hpp"
#include "../tensor/tensor.hpp"
#include "registry.hpp"

namespace weft::nn {

// A visitor that can receive every kind of item a T-valued object visits.
template <class V, class T>
concept StateVisitor =
    std::invocable<V&, std::string_view, TensorView<T>> && std::invocable<V&, std::string_view, std::int64_t&> &&
    std::invocable<V&, std::string_view, std::uint64_t&> && std::invocable<V&, std::string_view, double&> &&
    std::invocable<V&, std::string_view, float&> && std::invocable<V&, std::string_view, bool&>;

// A visitor that ignores everything: the model that concepts (parallel::Strategy) check against.
template <class T>
struct NullStateVisitor {
  void operator()(std::string_view, TensorView<T>) const {}
  template <class S>
    requires std::is_arithmetic_v<S>
  void operator()(std::string_view, S&) const {}
};
static_assert(StateVisitor<NullStateVisitor<float>, float>);

// v, with "prefix." before every name (nests: prefixed("dp", prefixed("run", v))).
template <class V>
class Prefixed {
 public:
  Prefixed(std::string_view prefix, V& v) : prefix_(prefix), v_(&v) {}
  template <class X>
  void operator()(std::string_view name, X&& x) {
    name_.assign(prefix_);
    name_ += '.';
    name_ += name;
    (*v_)(std::string_view(name_), std::forward<X>(x));
  }

 private:
  std::string prefix_, name_;
  V* v_;
};

template <class V>
Prefixed<V> prefixed(std::string_view prefix, V& v) {
  return Prefixed<V>(prefix, v);
}

// An item that restoring may not change (a layout, a configuration): visits a
// copy of `value` and throws, naming `who` and the item, if the visitor wrote
// something else into it.
template <class V, class S>
void visit_fixed(V& v, std::string_view name, S value, std::string_view who) {
  S seen = value;
  v(name, seen);
  if (seen != value)
    throw_error<ValueError>(who, ": restoring '", name, "' = ", seen, " into an object that has ", value,
                            " (built differently: rebuild it with the saved configuration)");
}

// A parameter's value under its name. Its gradient is not state: the next
// backward recomputes it.
template <class T, class V>
void visit_state(Parameter<T>& p, V& v) {
  v(std::string_view(p.name), p.value.view());
}

// The parameters' values, under their registry names, in registration order.
template <class T, class V>
void visit_state(const Registry<T>& reg, V& v) {
  for (Parameter<T>* p : reg) visit_state(*p, v);
}

// A composite's part x (an object with visit_state(v), a registry or a
// parameter) with "prefix." before each of its names:
//   visit_part(v, "model", reg); visit_part(v, "optimizer", opt); visit_part(v, "dp", dp);
template <class V, class X>
void visit_part(V& v, std::string_view prefix, X& x) {
  auto p = prefixed(prefix, v);
  if constexpr (requires { x.visit_state(p); })
    x.visit_state(p);
  else
    visit_state(x, p);
}

}  // namespace weft::nn
