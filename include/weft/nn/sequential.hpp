// Sequential<Layers...>: applies its layers in order; the composition is a
// type, so the whole model's forward is one expression and its backward is
// derived from it. Parameters are named by position: "0.weight", "2.bias", ...
// Arbitrary compositions are ordinary lambdas calling layers.
#pragma once

#include <string>
#include <tuple>
#include <utility>

namespace weft::nn {

template <class... Layers>
struct Sequential {
  std::tuple<Layers...> layers;

  explicit Sequential(Layers... ls) : layers(std::move(ls)...) {}

  template <class X>
  auto operator()(X&& x) {
    return apply<0>(std::forward<X>(x));
  }

  template <std::size_t I>
  auto& get() {
    return std::get<I>(layers);
  }

  template <class F>
  void for_each_parameter(F&& f) {
    visit_layers<0>(f);
  }

 private:
  // Layer by layer (recursion, not a pack expanded inside a lambda, which
  // nvcc's front end rejects).
  template <std::size_t I, class F>
  void visit_layers(F& f) {
    if constexpr (I < sizeof...(Layers)) {
      std::get<I>(layers).for_each_parameter([&](const std::string& local, auto& p) { f(std::to_string(I) + "." + local, p); });
      visit_layers<I + 1>(f);
    }
  }

  template <std::size_t I, class X>
  auto apply(X&& x) {
    if constexpr (I == sizeof...(Layers))
      return std::forward<X>(x);
    else
      return apply<I + 1>(std::get<I>(layers)(std::forward<X>(x)));
  }
};

}  // namespace weft::nn
