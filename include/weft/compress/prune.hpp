// Magnitude pruning of trained weights, with masks the optimizer keeps.
//
//   Pruner::global(s)   unstructured, global: the round(s * total) weights of
//                       smallest |w| over every pruned parameter together are
//                       zeroed (ties broken by position, so the count is exact).
//   Pruner::n_m(2, 4)   N:M structured along the reduction axis: of every 4
//                       consecutive inputs of one output (a column's rows i..i+3
//                       of Linear's (I, O) weight), the 2 of largest |w| stay,
//                       the pattern NVIDIA's sparse tensor cores run.
//   GradualSparsity     Zhu & Gupta (2017), "To prune, or not to prune":
//                       s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3,
//                       pruning every dt steps from t0 to t0 + n dt, training between.
//
// Masks are tensors of 0 and 1 shaped like their parameter; attach(opt) hands
// them to the optimizer's fused step (nn/optim.hpp set_mask), which zeroes the
// masked gradients and values in the same pass, so pruned weights stay exactly
// zero through fine-tuning. A weight once pruned stays pruned: it is zero, so
// later rounds of global() rank it first.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../expr/parameter.hpp"
#include "../tensor/tensor.hpp"

namespace weft::compress {

// Zhu & Gupta's cubic schedule. Steps before `begin` have `initial`
// sparsity, after begin + frequency * rounds `final`.
struct GradualSparsity {
  double initial = 0.0;
  double final = 0.9;
  std::int64_t begin = 0;      // t0
  std::int64_t frequency = 1;  // dt, steps between pruning rounds
  std::int64_t rounds = 10;    // n

  void check() const {
    if (!(initial >= 0.0 && initial <= final && final < 1.0) || begin < 0 || frequency <= 0 || rounds <= 0)
      throw_error<ValueError>("GradualSparsity: need 0 <= initial (", initial, ") <= final (", final,
                              ") < 1, begin >= 0 (", begin, "), frequency > 0 (", frequency, "), rounds > 0 (", rounds, ")");
  }
  // The target sparsity at step t.
  double at(std::int64_t t) const {
    check();
    if (t <= begin) return initial;
    const double x = std::min(1.0, static_cast<double>(t - begin) / static_cast<double>(frequency * rounds));
    const double r = 1.0 - x;
    return final + (initial - final) * r * r * r;
  }
  // Whether step t is a pruning round (t0, t0 + dt, ..., t0 + n dt).
  bool prunes_at(std::int64_t t) const {
    check();
    return t >= begin && t <= begin + frequency * rounds && (t - begin) % frequency == 0;
  }
};

template <class T = float>
class Pruner {
 public:
  // The parameters to prune (weights; biases are usually left dense).
  explicit Pruner(std::vector<Parameter<T>*> params) : params_(std::move(params)) {
    if (params_.empty()) throw_error<ValueError>("Pruner: no parameters to prune");
    masks_.reserve(params_.size());
    for (Parameter<T>* p : params_) masks_.emplace_back(p->shape(), T(1));
  }

  std::size_t size() const { return params_.size(); }
  Parameter<T>& parameter(std::size_t k) const { return *params_.at(k); }
  const Tensor<T>& mask(std::size_t k) const { return masks_.at(k); }

  // Unstructured global magnitude pruning to `sparsity` of all pruned
  // elements (exactly round(sparsity * total) of them zero).
  void global(double sparsity) {
    if (!(sparsity >= 0.0 && sparsity < 1.0)) throw_error<ValueError>("Pruner::global: sparsity ", sparsity, " must lie in [0, 1)");
    check_shapes("global");
    struct Ref {
      T mag;
      std::uint32_t param;
      index_t at;
    };
    std::vector<Ref> all;
    all.reserve(static_cast<std::size_t>(total()));
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const T* w = params_[k]->value.data();
      const T* m = masks_[k].data();
      for (index_t i = 0; i < params_[k]->numel(); ++i)
        all.push_back({m[i] == T(0) ? T(0) : std::fabs(w[i]), static_cast<std::uint32_t>(k), i});
    }
    const std::size_t prune = static_cast<std::size_t>(std::llround(sparsity * static_cast<double>(all.size())));
    auto less = [](const Ref& a, const Ref& b) {
      return a.mag < b.mag || (a.mag == b.mag && (a.param < b.param || (a.param == b.param && a.at < b.at)));
    };
    if (prune > 0 && prune < all.size())
      std::nth_element(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(prune), all.end(), less);
    for (std::size_t k = 0; k < masks_.size(); ++k) masks_[k].fill(T(1));
    for (std::size_t r = 0; r < prune; ++r) masks_[all[r].param].data()[all[r].at] = T(0);
    apply();
  }

  // N:M structured pruning of rank-2 (I, O) weights along I: in each group of
  // m consecutive rows of one column the n largest |w| stay (ties: lower row).
  void n_m(int n = 2, int m = 4) {
    if (n <= 0 || m <= 0 || n > m || m > 64) throw_error<ValueError>("Pruner::n_m: need 0 < n <= m <= 64, got ", n, ":", m);
    check_shapes("n_m");
    for (std::size_t k = 0; k < params_.size(); ++k) {
      Parameter<T>& p = *params_[k];
      if (p.shape().rank != 2 || p.shape()[0] % m != 0)
        throw_error<ShapeError>("Pruner::n_m(", n, ", ", m, "): parameter '", p.name, "' has shape ", p.shape(),
                                "; needs rank 2 with the input axis (", p.shape().rank ? p.shape()[0] : 0, ") a multiple of ", m);
      const index_t rows = p.shape()[0], cols = p.shape()[1];
      T* mk = masks_[k].data();
      const T* w = p.value.data();
      int order[64];
      for (index_t g = 0; g < rows; g += m)
        for (index_t c = 0; c < cols; ++c) {
          std::iota(order, order + m, 0);
          // keep masks from earlier rounds: a pruned element ranks lowest
          auto mag = [&](int r) { return mk[(g + r) * cols + c] == T(0) ? T(-1) : std::fabs(w[(g + r) * cols + c]); };
          std::stable_sort(order, order + m, [&](int a, int b) { return mag(a) > mag(b); });
          for (int r = 0; r < m; ++r) mk[(g + order[r]) * cols + c] = r < n ? T(1) : T(0);
        }
    }
    apply();
  }

  // value *= mask for every pruned parameter.
  void apply() {
    for (std::size_t k = 0; k < params_.size(); ++k) {
      T* w = params_[k]->value.data();
      const T* m = masks_[k].data();
      for (index_t i = 0; i < params_[k]->numel(); ++i) w[i] *= m[i];
    }
  }

  // Hands the masks to an optimizer that holds these parameters (SGD, Adam, AdamW).
  template <class Optimizer>
  void attach(Optimizer& opt) const {
    for (std::size_t k = 0; k < params_.size(); ++k) opt.set_mask(*params_[k], masks_[k].data());
  }

  index_t total() const {
    index_t n = 0;
    for (const Parameter<T>* p : params_) n += p->numel();
    return n;
  }
  // Fraction of pruned elements whose value is exactly zero (masked or not).
  double sparsity() const {
    index_t zeros = 0;
    for (const Parameter<T>* p : params_)
      for (index_t i = 0; i < p->numel(); ++i) zeros += p->value.data()[i] == T(0);
    return static_cast<double>(zeros) / static_cast<double>(total());
  }
  index_t masked() const {
    index_t z = 0;
    for (const Tensor<T>& m : masks_)
      for (index_t i = 0; i < m.numel(); ++i) z += m.data()[i] == T(0);
    return z;
  }

 private:
  void check_shapes(const char* op) const {
    for (std::size_t k = 0; k < params_.size(); ++k)
      if (params_[k]->shape() != masks_[k].shape())
        throw_error<ShapeError>("Pruner::", op, ": parameter '", params_[k]->name, "' has shape ", params_[k]->shape(),
                                " but its mask ", masks_[k].shape(), " (resized after the pruner was built?)");
  }

  std::vector<Parameter<T>*> params_;
  std::vector<Tensor<T>> masks_;
};

}  // namespace weft::compress
