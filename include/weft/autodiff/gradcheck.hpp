// Gradient checking for users, as torch.autograd.gradcheck does it: central
// differences in double precision against value_and_grad / vjp, with
// |analytic - numeric| <= atol + rtol * |numeric| per Jacobian entry.
//   full mode: every entry of the Jacobian (one vjp per output element, two
//              evaluations per input element): for small tensors.
//   fast mode: one random direction each side, v^T J u, as torch's fast_mode.
// f must be generic (auto parameters): it is called with double leaves.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "value_and_grad.hpp"

namespace weft {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-5;
  double rtol = 1e-3;
  bool fast = false;
  std::uint64_t seed = 0;  // fast mode's random directions
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  std::string message;  // the worst entry: input, element, analytic vs numeric
  explicit operator bool() const { return ok; }
};

namespace detail {

template <class X>
Tensor<double> to_double(const X& x) {
  auto v = input_view(x);
  Tensor<double> out(v.shape);
  out = cast<double>(v);
  return out;
}

// f evaluated at double inputs, flattened (tensors made inside f kept alive
// until it is evaluated, as in value_and_grad).
template <class F, class... Ds>
Tensor<double> eval_at(F& f, std::tuple<Ds...>& xs) {
  return std::apply([&](auto&... x) {
    std::array<TensorView<double>, sizeof...(Ds)> views{x.view()...};
    DeferredFrees keep;
    auto e = call_with_args<double, cpu>("gradcheck", f, views, keep);
    return eval(e);
  }, xs);
}

inline std::string index_str(const Shape& s, index_t flat) {
  std::ostringstream os;
  os << '(';
  index_t idx[max_rank] = {};
  for (int d = s.rank - 1; d >= 0; --d) {
    idx[d] = s[d] ? flat % s[d] : 0;
    flat = s[d] ? flat / s[d] : 0;
  }
  for (int d = 0; d < s.rank; ++d) os << (d ? ", " : "") << idx[d];
  return os.str() + ")";
}

struct Worst {
  double excess = -1;
  double err = 0;
  std::string where;
  double analytic = 0, numeric = 0;
};

inline void compare(Worst& w, GradcheckResult& r, const GradcheckOptions& o, double a, double n, const std::string& where) {
  double err = std::abs(a - n);
  double excess = err - (o.atol + o.rtol * std::abs(n));
  if (!(excess <= 0) || std::isnan(a) || std::isnan(n)) r.ok = false;
  r.max_abs_error = std::max(r.max_abs_error, err);
  if (excess > w.excess || std::isnan(excess)) w = Worst{excess, err, where, a, n};
}

}  // namespace detail

template <class F, class... Xs>
GradcheckResult gradcheck(F&& f, const GradcheckOptions& opt, const Xs&... xs) {
  constexpr std::size_t K = sizeof...(Xs);
  auto dx = std::make_tuple(detail::to_double(xs)...);
  GradcheckResult res;
  detail::Worst worst;
  Tensor<double> y = detail::eval_at(f, dx);
  const index_t m = y.numel();

  auto vjp_at = [&](const Tensor<double>& seed) {
    return std::apply([&](auto&... x) { return vjp(f, seed, x...); }, dx);
  };

  if (!opt.fast) {
    // Analytic Jacobian, one row (output element) at a time.
    std::vector<std::array<Tensor<double>, K>> rows;
    rows.reserve(static_cast<std::size_t>(m));
    Tensor<double> seed(y.shape(), 0.0);
    for (index_t j = 0; j < m; ++j) {
      seed.data()[j] = 1.0;
      rows.push_back(vjp_at(seed));
      seed.data()[j] = 0.0;
    }
    // Numerical Jacobian, one column (input element) at a time.
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (([&] {
         Tensor<double>& x = std::get<I>(dx);
         for (index_t e = 0; e < x.numel(); ++e) {
           double orig = x.data()[e];
           x.data()[e] = orig + opt.eps;
           Tensor<double> yp = detail::eval_at(f, dx);
           x.data()[e] = orig - opt.eps;
           Tensor<double> ym = detail::eval_at(f, dx);
           x.data()[e] = orig;
           for (index_t j = 0; j < m; ++j) {
             double num = (yp.data()[j] - ym.data()[j]) / (2 * opt.eps);
             double ana = rows[static_cast<std::size_t>(j)][I].data()[e];
             detail::compare(worst, res, opt, ana, num,
                             detail::concat("input ", I, " element ", detail::index_str(x.shape(), e), ", output element ",
                                            detail::index_str(y.shape(), j)));
           }
         }
       }()),
       ...);
    }(std::make_index_sequence<K>{});
  } else {
    std::mt19937_64 rng(opt.seed);
    std::normal_distribution<double> nd;
    Tensor<double> v(y.shape());
    for (index_t j = 0; j < m; ++j) v.data()[j] = nd(rng);
    std::array<Tensor<double>, K> u;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((u[I] = Tensor<double>(std::get<I>(dx).shape())), ...);
    }(std::make_index_sequence<K>{});
    for (auto& t : u)
      for (index_t e = 0; e < t.numel(); ++e) t.data()[e] = nd(rng);
    auto g = vjp_at(v);
    double ana = 0;
    for (std::size_t k = 0; k < K; ++k)
      for (index_t e = 0; e < u[k].numel(); ++e) ana += g[k].data()[e] * u[k].data()[e];
    auto shift = [&](double s) {
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        (([&] {
           Tensor<double>& x = std::get<I>(dx);
           for (index_t e = 0; e < x.numel(); ++e) x.data()[e] += s * u[I].data()[e];
         }()),
         ...);
      }(std::make_index_sequence<K>{});
    };
    auto base = dx;
    shift(opt.eps);
    Tensor<double> yp = detail::eval_at(f, dx);
    dx = base;
    shift(-opt.eps);
    Tensor<double> ym = detail::eval_at(f, dx);
    dx = base;
    double num = 0;
    for (index_t j = 0; j < m; ++j) num += v.data()[j] * (yp.data()[j] - ym.data()[j]) / (2 * opt.eps);
    detail::compare(worst, res, opt, ana, num, "v^T J u (fast mode)");
  }
  if (!res.ok)
    res.message = detail::concat("gradcheck failed at ", worst.where, ": analytic ", worst.analytic, " vs numeric ",
                                 worst.numeric, " (|diff| ", worst.err, " > atol ", opt.atol, " + rtol ", opt.rtol,
                                 " * |numeric|)");
  return res;
}

template <class F, class... Xs>
GradcheckResult gradcheck(F&& f, const Xs&... xs) {
  return gradcheck(std::forward<F>(f), GradcheckOptions{}, xs...);
}

}  // namespace weft
