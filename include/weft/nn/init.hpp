// Parameter initialisers, deterministic given a seed (nn::Rng, portable).
//
// Fan convention: weft's Linear stores its weight as (in_features, out_features)
// and computes x @ W + b, so a rank-2 shape (a, b) has fan_in = a, fan_out = b
// (the transpose of PyTorch's (out, in) layout; the numbers drawn from the same
// formulas are statistically the same). Other ranks need explicit fans.
//
// Formulas (gain g; U(-b, b) uniform, N(0, s^2) normal):
//   kaiming_uniform  b = g * sqrt(3 / fan)            He et al. 2015, "Delving Deep
//   kaiming_normal   s = g / sqrt(fan)                into Rectifiers", eq. 10; fan =
//                                                     fan_in (default) or fan_out;
//                                                     g = sqrt(2) for ReLU (default)
//   xavier_uniform   b = g * sqrt(6 / (fan_in + fan_out))   Glorot & Bengio 2010,
//   xavier_normal    s = g * sqrt(2 / (fan_in + fan_out))   eq. 16; g = 1 by default
// These are torch.nn.init's formulas for the same fans and gain.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <type_traits>

#include "../core/error.hpp"
#include "../expr/parameter.hpp"
#include "../tensor/tensor.hpp"
#include "rng.hpp"

namespace weft::nn {

// fan_in / fan_out; 0 means "deduce from a rank-2 (fan_in, fan_out) shape".
struct Fans {
  index_t fan_in = 0;
  index_t fan_out = 0;
};

enum class FanMode { fan_in, fan_out };

struct KaimingOptions {
  double gain = std::numbers::sqrt2;  // ReLU
  FanMode mode = FanMode::fan_in;
  Fans fans = {};
};

struct XavierOptions {
  double gain = 1.0;
  Fans fans = {};
};

namespace detail {

// `what` names the tensor or parameter in errors ("parameter l1.weight").
inline Fans resolve_fans(const char* init, const std::string& what, const Shape& s, Fans f) {
  if (f.fan_in < 0 || f.fan_out < 0)
    throw_error<ValueError>(init, ": negative fan (fan_in ", f.fan_in, ", fan_out ", f.fan_out, ") for ", what);
  if (f.fan_in == 0 || f.fan_out == 0) {
    if (s.rank != 2)
      throw_error<ValueError>(init, ": cannot deduce fan_in/fan_out of ", what, " with shape ", s,
                              " (only a rank-2 (fan_in, fan_out) shape is deduced): pass .fans = {fan_in, fan_out}");
    if (f.fan_in == 0) f.fan_in = s[0];
    if (f.fan_out == 0) f.fan_out = s[1];
  }
  if (f.fan_in == 0 || f.fan_out == 0) throw_error<ValueError>(init, ": zero fan for ", what, " with shape ", s);
  return f;
}

template <class T>
void fill_uniform(Tensor<T>& t, Rng& rng, double bound) {
  T* p = t.data();
  for (index_t i = 0, n = t.numel(); i < n; ++i) p[i] = static_cast<T>(rng.uniform(-bound, bound));
}

template <class T>
void fill_normal(Tensor<T>& t, Rng& rng, double stddev) {
  T* p = t.data();
  for (index_t i = 0, n = t.numel(); i < n; ++i) p[i] = static_cast<T>(stddev * rng.normal_double());
}

inline double kaiming_fan(const char* init, const std::string& what, const Shape& s, const KaimingOptions& o) {
  Fans f = resolve_fans(init, what, s, o.fans);
  return static_cast<double>(o.mode == FanMode::fan_in ? f.fan_in : f.fan_out);
}

template <class T>
std::string param_name(const Parameter<T>& p) {
  return "parameter " + (p.name.empty() ? std::string("(unnamed)") : p.name);
}

}  // namespace detail

// ---- Kaiming (He et al. 2015) ----------------------------------------------

template <class T>
void kaiming_uniform(Tensor<T>& t, Rng& rng, const KaimingOptions& o = {}, const std::string& what = "tensor") {
  const double fan = detail::kaiming_fan("kaiming_uniform", what, t.shape(), o);
  detail::fill_uniform(t, rng, o.gain * std::sqrt(3.0 / fan));
}
template <class T>
void kaiming_normal(Tensor<T>& t, Rng& rng, const KaimingOptions& o = {}, const std::string& what = "tensor") {
  const double fan = detail::kaiming_fan("kaiming_normal", what, t.shape(), o);
  detail::fill_normal(t, rng, o.gain / std::sqrt(fan));
}

// ---- Xavier / Glorot (Glorot & Bengio 2010) --------------------------------

template <class T>
void xavier_uniform(Tensor<T>& t, Rng& rng, const XavierOptions& o = {}, const std::string& what = "tensor") {
  const Fans f = detail::resolve_fans("xavier_uniform", what, t.shape(), o.fans);
  detail::fill_uniform(t, rng, o.gain * std::sqrt(6.0 / static_cast<double>(f.fan_in + f.fan_out)));
}
template <class T>
void xavier_normal(Tensor<T>& t, Rng& rng, const XavierOptions& o = {}, const std::string& what = "tensor") {
  const Fans f = detail::resolve_fans("xavier_normal", what, t.shape(), o.fans);
  detail::fill_normal(t, rng, o.gain * std::sqrt(2.0 / static_cast<double>(f.fan_in + f.fan_out)));
}

// ---- Constants ---------------------------------------------------------------

template <class T>
void constant(Tensor<T>& t, std::type_identity_t<T> v) {
  t.fill(v);
}
template <class T>
void zeros(Tensor<T>& t) {
  t.fill(T(0));
}

// ---- Seed overloads: a fresh Rng(seed) per call ------------------------------

template <class T>
void kaiming_uniform(Tensor<T>& t, std::uint64_t seed, const KaimingOptions& o = {}) {
  Rng rng(seed);
  kaiming_uniform(t, rng, o);
}
template <class T>
void kaiming_normal(Tensor<T>& t, std::uint64_t seed, const KaimingOptions& o = {}) {
  Rng rng(seed);
  kaiming_normal(t, rng, o);
}
template <class T>
void xavier_uniform(Tensor<T>& t, std::uint64_t seed, const XavierOptions& o = {}) {
  Rng rng(seed);
  xavier_uniform(t, rng, o);
}
template <class T>
void xavier_normal(Tensor<T>& t, std::uint64_t seed, const XavierOptions& o = {}) {
  Rng rng(seed);
  xavier_normal(t, rng, o);
}

// ---- Parameter overloads: fill the value; errors name the parameter ----------

template <class T>
void kaiming_uniform(Parameter<T>& p, Rng& rng, const KaimingOptions& o = {}) {
  kaiming_uniform(p.value, rng, o, detail::param_name(p));
}
template <class T>
void kaiming_normal(Parameter<T>& p, Rng& rng, const KaimingOptions& o = {}) {
  kaiming_normal(p.value, rng, o, detail::param_name(p));
}
template <class T>
void xavier_uniform(Parameter<T>& p, Rng& rng, const XavierOptions& o = {}) {
  xavier_uniform(p.value, rng, o, detail::param_name(p));
}
template <class T>
void xavier_normal(Parameter<T>& p, Rng& rng, const XavierOptions& o = {}) {
  xavier_normal(p.value, rng, o, detail::param_name(p));
}
template <class T>
void kaiming_uniform(Parameter<T>& p, std::uint64_t seed, const KaimingOptions& o = {}) {
  Rng rng(seed);
  kaiming_uniform(p, rng, o);
}
template <class T>
void kaiming_normal(Parameter<T>& p, std::uint64_t seed, const KaimingOptions& o = {}) {
  Rng rng(seed);
  kaiming_normal(p, rng, o);
}
template <class T>
void xavier_uniform(Parameter<T>& p, std::uint64_t seed, const XavierOptions& o = {}) {
  Rng rng(seed);
  xavier_uniform(p, rng, o);
}
template <class T>
void xavier_normal(Parameter<T>& p, std::uint64_t seed, const XavierOptions& o = {}) {
  Rng rng(seed);
  xavier_normal(p, rng, o);
}
template <class T>
void constant(Parameter<T>& p, std::type_identity_t<T> v) {
  p.value.fill(v);
}
template <class T>
void zeros(Parameter<T>& p) {
  p.value.fill(T(0));
}

// ---- Parameters on a device: drawn on the host, copied once -------------------
// A layer on a device (nn::Linear<float, true, weft::cuda>) draws its initial
// values on the host with the generator and order of its host twin, so both
// start from the same bits, as a PyTorch module does before .to(device); the
// gradient starts at zero. init(Parameter<T>&) fills the host values.
template <class T, class Device, class Init>
void init_on_host(Parameter<T, Device>& p, Init&& init) {
  if constexpr (std::is_same_v<Device, cpu>) {
    init(p);
  } else {
    Parameter<T> h(p.name, p.shape());
    init(h);
    if (h.numel() == 0) return;
    device_memory<Device>::copy_from_host(p.value.data(), h.value.data(), h.value.bytes());
    device_memory<Device>::copy_from_host(p.grad.data(), h.grad.data(), h.grad.bytes());
  }
}

}  // namespace weft::nn
