// Pipeline stages from one nn::Sequential: cut<3, 5>(model) gives the stages
// [0, 3), [3, 5) and [5, n) of its layers, each a StageRange that applies its
// layers in order and names its parameters as the Sequential does ("3.weight"),
// so checkpoints and registries see the same names on every cut.
// Stages can also be given directly: std::tie(layer_a, layer_b) (any callables
// expression -> expression).
#pragma once

#include <cstddef>
#include <string>
#include <tuple>
#include <utility>

namespace weft::parallel::pipeline {

template <class Seq, std::size_t Begin, std::size_t End>
struct StageRange {
  static_assert(Begin < End, "a pipeline stage needs at least one layer: cut points must increase and stay below the layer count");
  Seq* seq;

  template <class X>
  auto operator()(X&& x) {
    return apply<Begin>(std::forward<X>(x));
  }

  // f(name, parameter) for this stage's parameters, named as in the Sequential.
  template <class F>
  void for_each_parameter(F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (seq->template get<Begin + I>().for_each_parameter([&](const std::string& local, auto& p) {
         f(std::to_string(Begin + I) + "." + local, p);
       }),
       ...);
    }(std::make_index_sequence<End - Begin>{});
  }

 private:
  template <std::size_t I, class X>
  auto apply(X&& x) {
    if constexpr (I == End)
      return std::forward<X>(x);
    else
      return apply<I + 1>(seq->template get<I>()(std::forward<X>(x)));
  }
};

namespace detail {
template <class Seq>
struct layer_count;
template <template <class...> class S, class... Layers>
struct layer_count<S<Layers...>> : std::integral_constant<std::size_t, sizeof...(Layers)> {};

template <class Seq, std::size_t... Cuts>
constexpr bool cuts_increase() {
  constexpr std::size_t n = layer_count<Seq>::value;
  constexpr std::size_t c[] = {0, Cuts..., n};
  for (std::size_t i = 0; i + 1 < sizeof(c) / sizeof(c[0]); ++i)
    if (c[i] >= c[i + 1]) return false;
  return true;
}
}  // namespace detail

// The stages of `model` cut before layers Cuts... (increasing, each in (0, n)).
template <std::size_t... Cuts, class Seq>
auto cut(Seq& model) {
  static_assert(detail::cuts_increase<Seq, Cuts...>(),
                "cut<...>(model): cut points must increase strictly and lie strictly between 0 and the number of layers");
  constexpr std::size_t n = detail::layer_count<Seq>::value;
  constexpr std::size_t b[] = {0, Cuts...};
  constexpr std::size_t e[] = {Cuts..., n};
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple<StageRange<Seq, b[I], e[I]>...>{StageRange<Seq, b[I], e[I]>{&model}...};
  }(std::make_index_sequence<sizeof...(Cuts) + 1>{});
}

}  // namespace weft::parallel::pipeline
