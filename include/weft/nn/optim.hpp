// Optimizers over an nn::Registry: SGD (momentum, dampening, Nesterov, L2
// weight decay), Adam (L2 weight decay) and AdamW (decoupled weight decay),
// with PyTorch's update rules (torch.optim.SGD / Adam / AdamW documentation
// pseudo-code, maximize = False, amsgrad = False).
//
// Each step() is one fused pass per parameter: a plain loop over i that reads
// grad[i], updates the state and value in registers and writes them back once.
// Scalar factors (bias corrections, the first-step momentum rule, the Nesterov
// choice) are hoisted into loop-invariant coefficients, so the loops have no
// branches and GCC/Clang vectorise them. State tensors are allocated when the
// optimizer is built: step() never allocates.
//
// The optimizer holds the parameters registered at construction; parameters
// added to the registry later are not optimised. step(parts) updates only
// some elements of some parameters (one step for all of them): a sharded
// data-parallel update (parallel::DataParallel's shard_update) has each rank
// step its own 1/p of every parameter and then gathers the values. Hyperparameters are float;
// arithmetic runs in T (float or double), scalar factors are formed in double.
// visit_state(v) hands the step count, lr and state tensors to a checkpoint
// (nn/state.hpp).
// set_mask(param, mask) keeps a pruned parameter's zeros (weft::compress): the
// same fused pass reads the mask (1 keep, 0 pruned), zeroes the masked
// gradient before the state update and multiplies the new value by it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/config.hpp"
#include "../core/denormals.hpp"
#include "../core/error.hpp"
#include "../core/math.hpp"
#include "../expr/parameter.hpp"
#include "../tensor/tensor.hpp"
#include "registry.hpp"

namespace weft::nn {

struct SGDOptions {
  float lr = 1e-3f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  bool nesterov = false;
  float weight_decay = 0.0f;  // L2: added to the gradient (coupled)
};

struct AdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // L2: added to the gradient (coupled)
};

struct AdamWOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 1e-2f;  // decoupled: value *= 1 - lr * weight_decay before the Adam update
};

// Elements [begin, end) of the optimizer's parameter number `param` (the order
// of the registry it was built from).
struct ParamRange {
  std::size_t param;
  index_t begin;
  index_t end;
  friend bool operator==(const ParamRange&, const ParamRange&) = default;
};

namespace detail {

// What every optimizer shares: the parameters with their state tensors (one
// per state key, shaped like the parameter, zero-filled), step count, lr,
// checkpoint access to the state by name.
template <class T>
class OptimizerBase {
 public:
  float lr() const { return lr_; }
  void set_lr(float lr) {
    check_lr(name_, lr);
    lr_ = lr;
  }
  // Steps taken (torch's per-parameter `step`, shared: all parameters step together).
  std::int64_t steps() const { return steps_; }
  // Restoring a checkpoint: the bias corrections of Adam depend on it.
  void set_steps(std::int64_t n) {
    if (n < 0) throw_error<ValueError>(name_, ": set_steps(", n, "): the step count cannot be negative");
    steps_ = n;
  }

  void zero_grad() {
    for (Slot& s : slots_) s.param->zero_grad();
  }

  std::size_t size() const { return slots_.size(); }

  // Masks parameter `p`'s updates from now on (mask: p.numel() values, each 0
  // or 1, kept alive by the caller; nullptr removes it). Masked elements stay
  // exactly zero once the value is zero there (compress::Pruner zeroes them).
  void set_mask(const Parameter<T>& p, const T* mask) {
    for (Slot& s : slots_)
      if (s.param == &p) {
        s.mask = mask;
        return;
      }
    throw_error<ValueError>(name_, ": set_mask: parameter '", p.name, "' is not one this optimizer updates");
  }
  Parameter<T>& parameter(std::size_t k) const { return *slots_.at(k).param; }

  // State tensor `key` of the parameter named `param_name` (checkpoints).
  Tensor<T>& state(const std::string& param_name, const std::string& key) {
    for (std::size_t k = 0; k < keys_.size(); ++k) {
      if (keys_[k] != key) continue;
      for (Slot& s : slots_)
        if (s.param->name == param_name) return s.state[k];
      throw_error<ValueError>(name_, ": no parameter named '", param_name, "' (state '", key, "' requested)");
    }
    std::string known;
    for (const std::string& k : keys_) known += (known.empty() ? "" : ", ") + k;
    throw_error<ValueError>(name_, ": unknown state '", key, "' for parameter '", param_name, "' (this optimizer keeps: ",
                            known.empty() ? std::string("no state") : known, ")");
  }
  const Tensor<T>& state(const std::string& param_name, const std::string& key) const {
    return const_cast<OptimizerBase*>(this)->state(param_name, key);
  }

  // Checkpoints (nn/state.hpp): "step" (std::int64_t), "lr" (float), then
  // each parameter's state tensors as "<parameter>.<key>" (SGD with momentum:
  // momentum_buffer; Adam, AdamW: exp_avg, exp_avg_sq), in registry order.
  // Restored step counts and learning rates are checked as set_steps and
  // set_lr check them. A sharded update (parallel::DataParallel) keeps state
  // only on this rank's shard: the rest stays zero and is visited as such.
  template <class V>
  void visit_state(V& v) {
    std::int64_t steps = steps_;
    v(std::string_view("step"), steps);
    set_steps(steps);
    float lr = lr_;
    v(std::string_view("lr"), lr);
    set_lr(lr);
    std::string name;
    for (Slot& s : slots_)
      for (std::size_t k = 0; k < keys_.size(); ++k) {
        name.assign(s.param->name).append(1, '.').append(keys_[k]);
        v(std::string_view(name), s.state[k].view());
      }
  }

 protected:
  struct Slot {
    Parameter<T>* param;
    Tensor<T> state[2];
    const T* mask = nullptr;  // (numel,) of 0 and 1, owned by the caller; nullptr: unmasked
  };

  OptimizerBase(const char* name, Registry<T>& reg, float lr, std::vector<std::string> keys)
      : name_(name), keys_(std::move(keys)), lr_(lr) {
    check_lr(name_, lr);
    slots_.reserve(reg.size());
    for (Parameter<T>* p : reg) {
      Slot s{p, {}, nullptr};
      for (std::size_t k = 0; k < keys_.size(); ++k) s.state[k] = Tensor<T>(p->shape(), T(0));
      slots_.push_back(std::move(s));
    }
  }

  // Shapes may not change under the optimizer: its state was sized at construction.
  void check(const Slot& s) const {
    const Parameter<T>& p = *s.param;
    if (p.grad.shape() != p.value.shape())
      throw_error<ShapeError>(name_, ": parameter '", p.name, "' has value shape ", p.value.shape(), " but gradient shape ",
                              p.grad.shape());
    for (std::size_t k = 0; k < keys_.size(); ++k)
      if (s.state[k].shape() != p.value.shape())
        throw_error<ShapeError>(name_, ": parameter '", p.name, "' has shape ", p.value.shape(), " but its ", keys_[k],
                                " was built for shape ", s.state[k].shape(), " (resized after the optimizer was built?)");
  }

  // f(slot, first element, count) for every parameter (parts == nullptr) or
  // for each part, checked against the parameter it names.
  template <class F>
  void for_each_part(const std::vector<ParamRange>* parts, F&& f) {
    const ScopedFlushDenormals flush;  // see flush_subnormal and core/denormals.hpp
    if (!parts) {
      for (Slot& s : slots_) {
        check(s);
        f(s, index_t{0}, s.param->numel());
      }
      return;
    }
    for (const ParamRange& r : *parts) {
      if (r.param >= slots_.size())
        throw_error<ValueError>(name_, ".step(parts): part names parameter ", r.param, " but the optimizer holds ",
                                slots_.size());
      Slot& s = slots_[r.param];
      if (r.begin < 0 || r.begin > r.end || r.end > s.param->numel())
        throw_error<ValueError>(name_, ".step(parts): elements [", r.begin, ", ", r.end, ") of parameter '", s.param->name,
                                "' (", s.param->numel(), " elements)");
      check(s);
      f(s, r.begin, r.end - r.begin);
    }
  }

  static void check_lr(const char* name, float lr) {
    if (!(lr >= 0.0f) || !std::isfinite(lr)) throw_error<ValueError>(name, ": invalid learning rate ", lr);
  }

  const char* name_;
  std::vector<std::string> keys_;
  std::vector<Slot> slots_;
  float lr_;
  std::int64_t steps_ = 0;
};

inline void check_unit_interval(const char* opt, const char* what, float v) {
  if (!(v >= 0.0f && v < 1.0f)) throw_error<ValueError>(opt, ": ", what, " = ", v, " must lie in [0, 1)");
}
inline void check_nonnegative(const char* opt, const char* what, float v) {
  if (!(v >= 0.0f) || !std::isfinite(v)) throw_error<ValueError>(opt, ": ", what, " = ", v, " must be finite and >= 0");
}

}  // namespace detail

namespace detail {

// Optimizer state that decays without fresh gradient (Adam's m and v, SGD's
// momentum buffer under a dead ReLU unit: m = 0.9 m every step) sinks into
// the subnormal range after a few hundred steps, and x86 cores take a
// microcode assist of ~100 cycles on every subnormal result: on the MLP with
// random labels 93% of l1's exp_avg was subnormal and the Adam pass ran 5x
// slower (0.5 -> 2.7 ms). State below the smallest normal is stored as zero
// instead, on every target; on x86 the pass also runs with FTZ/DAZ
// (ScopedFlushDenormals), since the intermediates (0.1 (g - m) near the
// bottom of the range, g * g of a tiny gradient) still took assists: 3x
// slower over hundreds of steps without it. The update that such a value would have made is below
// lr * 1.2e-38 / eps, under one ulp of any normal parameter; torch keeps the
// subnormals (and the slowdown).
template <class T>
WEFT_HD WEFT_INLINE T flush_subnormal(T x) {
  // A multiply by 0 or 1, not a branch or select: GCC if-converts neither here,
  // and the loop must stay vectorised. NaN stays NaN (NaN * 0 = NaN).
#if WEFT_IN_DEVICE_CODE
  return x * static_cast<T>(::fabs(x) >= std::numeric_limits<T>::min());
#else
  return x * static_cast<T>(std::fabs(x) >= std::numeric_limits<T>::min());
#endif
}

// One element of each update, shared by the CPU passes below and the CUDA
// multi-tensor kernel (nn/optim_cuda.cuh), so the CPU tests check the device's
// arithmetic too. g is the gradient (already masked); p and the state are
// read and written in place; masking of the new value is the caller's.
// Always inlined: where the pass was itself inlined into a large caller (a
// training loop), GCC ran out of inlining budget and kept the element update
// an out-of-line call, so the pass ran scalar: Adam over 269k parameters took
// 2.5 ms instead of 0.3 (examples/09's DataParallel loop, perf).
template <class T>
WEFT_HD WEFT_INLINE void sgd_update(T& p, T g, T lr, T wd) {
  const T gi = g + wd * p;
  p = p - lr * gi;
}

// SGD with momentum: b = cb * b + cg * g, p -= lr * (kg * g + kb * b) (see SGD).
template <class T>
struct SGDMomentumCoeffs {
  T lr, wd, cb, cg, kg, kb;
};
template <class T>
WEFT_HD WEFT_INLINE void sgd_momentum_update(T& p, T g, T& b, const SGDMomentumCoeffs<T>& c) {
  const T gi = g + c.wd * p;
  const T bi = flush_subnormal(c.cb * b + c.cg * gi);
  b = bi;
  p = p - c.lr * (c.kg * gi + c.kb * bi);
}

// Adam's per-step scalars (see AdamBase::adam_step), formed on the host.
template <class T>
struct AdamCoeffs {
  T decay, wd, beta2, one_minus_beta1, one_minus_beta2, step_size, bc2_sqrt, eps;
};
template <class T>
WEFT_HD WEFT_INLINE void adam_update(T& p, T g, T& m, T& v, const AdamCoeffs<T>& c) {
  const T pi = p * c.decay;
  const T gi = g + c.wd * pi;
  const T mi = flush_subnormal(m + c.one_minus_beta1 * (gi - m));
  const T vi = flush_subnormal(c.beta2 * v + c.one_minus_beta2 * gi * gi);
  m = mi;
  v = vi;
  p = pi - c.step_size * mi / (math::sqrt(vi) / c.bc2_sqrt + c.eps);
}

// restrict on the parameters (value, grad and state never overlap: distinct
// tensors) spares the compilers a runtime alias check before the vector loop.
// Masked: mk[i] (0 or 1) multiplies the gradient and the new value; the
// unmasked instantiation never reads mk.
template <class T, bool Masked = false>
void sgd_pass(T* WEFT_RESTRICT p, const T* WEFT_RESTRICT gr, index_t n, T lr, T wd, const T* WEFT_RESTRICT mk = nullptr) {
  for (index_t i = 0; i < n; ++i) {
    T pi = p[i];
    sgd_update(pi, Masked ? gr[i] * mk[i] : gr[i], lr, wd);
    p[i] = Masked ? pi * mk[i] : pi;
  }
}

template <class T, bool Masked = false>
void sgd_momentum_pass(T* WEFT_RESTRICT p, const T* WEFT_RESTRICT gr, T* WEFT_RESTRICT b, index_t n, T lr, T wd, T cb, T cg,
                       T kg, T kb, const T* WEFT_RESTRICT mk = nullptr) {
  const SGDMomentumCoeffs<T> c{lr, wd, cb, cg, kg, kb};
  for (index_t i = 0; i < n; ++i) {
    T pi = p[i], bi = b[i];
    sgd_momentum_update(pi, Masked ? gr[i] * mk[i] : gr[i], bi, c);
    b[i] = bi;
    p[i] = Masked ? pi * mk[i] : pi;
  }
}

// Step t's scalars for SGD (see SGD below); without momentum only lr and wd are read.
template <class T>
SGDMomentumCoeffs<T> sgd_coeffs(std::int64_t t, float lr, const SGDOptions& o) {
  const T mu = static_cast<T>(o.momentum);
  SGDMomentumCoeffs<T> c;
  c.lr = static_cast<T>(lr);
  c.wd = static_cast<T>(o.weight_decay);
  // b = cb * b + cg * g
  c.cb = t == 1 ? T(0) : mu;
  c.cg = t == 1 ? T(1) : static_cast<T>(1.0 - static_cast<double>(o.dampening));
  // direction = kg * g + kb * b
  c.kg = o.nesterov ? T(1) : T(0);
  c.kb = o.nesterov ? mu : T(1);
  return c;
}

}  // namespace detail

// ---- SGD ----------------------------------------------------------------------
// torch.optim.SGD, for t = 1, 2, ...:
//   g = grad + wd * p                              (if wd != 0)
//   if momentum != 0:
//     b = g                          at t = 1
//     b = momentum * b + (1 - dampening) * g     for t > 1
//     g = nesterov ? g + momentum * b : b
//   p = p - lr * g
// The t = 1 rule is the general one with coefficients (0, 1) on a zero buffer,
// and Nesterov picks (kg, kb) in g' = kg * g + kb * b: no branch in the loop.
template <class T = float>
class SGD : public detail::OptimizerBase<T> {
  using Base = detail::OptimizerBase<T>;

 public:
  SGD(Registry<T>& reg, const SGDOptions& o = {})
      : Base("SGD", reg, o.lr, o.momentum != 0.0f ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{}),
        o_(o) {
    detail::check_nonnegative("SGD", "momentum", o.momentum);
    detail::check_nonnegative("SGD", "dampening", o.dampening);
    detail::check_nonnegative("SGD", "weight_decay", o.weight_decay);
    if (o.nesterov && (o.momentum <= 0.0f || o.dampening != 0.0f))
      throw_error<ValueError>("SGD: Nesterov momentum requires momentum > 0 and dampening = 0 (got momentum ", o.momentum,
                              ", dampening ", o.dampening, ")");
  }

  const SGDOptions& options() const { return o_; }

  void step() { update(nullptr); }
  void step(const std::vector<ParamRange>& parts) { update(&parts); }

 private:
  void update(const std::vector<ParamRange>* parts) {
    const detail::SGDMomentumCoeffs<T> c = detail::sgd_coeffs<T>(++this->steps_, this->lr_, o_);
    const T lr = c.lr, wd = c.wd, cb = c.cb, cg = c.cg, kg = c.kg, kb = c.kb;
    this->for_each_part(parts, [&](auto& s, index_t at, index_t n) {
      T* p = s.param->value.data() + at;
      const T* g = s.param->grad.data() + at;
      if (o_.momentum == 0.0f) {
        if (s.mask) detail::sgd_pass<T, true>(p, g, n, lr, wd, s.mask + at);
        else detail::sgd_pass<T>(p, g, n, lr, wd);
      } else {
        if (s.mask) detail::sgd_momentum_pass<T, true>(p, g, s.state[0].data() + at, n, lr, wd, cb, cg, kg, kb, s.mask + at);
        else detail::sgd_momentum_pass<T>(p, g, s.state[0].data() + at, n, lr, wd, cb, cg, kg, kb);
      }
    });
  }

  SGDOptions o_;
};

namespace detail {

// The Adam update shared by Adam (coupled L2 `wd`, `decay` = 1) and AdamW
// (wd = 0, `decay` = 1 - lr * weight_decay). torch.optim.Adam, step t:
//   g = grad + wd * p
//   m = beta1 * m + (1 - beta1) * g          (torch: m.lerp_(g, 1 - beta1))
//   v = beta2 * v + (1 - beta2) * g * g
//   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// math::sqrt(float) keeps this loop vectorisable: it is correctly rounded and
// has no errno branch (GCC's std::sqrt keeps a scalar libm call for errno
// under the default -fmath-errno). math::sqrt(double) is libm's, vectorised
// only under -fno-math-errno; double parameters serve tests and gradient checks.
template <class T, bool Masked = false>
void adam_pass(T* WEFT_RESTRICT p, const T* WEFT_RESTRICT gr, T* WEFT_RESTRICT m, T* WEFT_RESTRICT v, index_t n, T decay,
               T wd, T beta2, T one_minus_beta1, T one_minus_beta2, T step_size, T bc2_sqrt, T eps,
               const T* WEFT_RESTRICT mk = nullptr) {
  const AdamCoeffs<T> c{decay, wd, beta2, one_minus_beta1, one_minus_beta2, step_size, bc2_sqrt, eps};
  for (index_t i = 0; i < n; ++i) {
    T pi = p[i], mi = m[i], vi = v[i];
    adam_update(pi, Masked ? gr[i] * mk[i] : gr[i], mi, vi, c);
    m[i] = mi;
    v[i] = vi;
    p[i] = Masked ? pi * mk[i] : pi;
  }
}

// Step t's scalars, formed in double and rounded to T once (the CPU passes
// and the CUDA kernel take the same values).
template <class T>
AdamCoeffs<T> adam_coeffs(std::int64_t t, float lr_f, float beta1, float beta2, float eps, float coupled_wd,
                          float decoupled_wd) {
  const double lr = lr_f;
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t));
  AdamCoeffs<T> c;
  c.decay = static_cast<T>(1.0 - lr * static_cast<double>(decoupled_wd));
  c.wd = static_cast<T>(coupled_wd);
  c.beta2 = static_cast<T>(beta2);
  c.one_minus_beta1 = static_cast<T>(1.0 - static_cast<double>(beta1));
  c.one_minus_beta2 = static_cast<T>(1.0 - static_cast<double>(beta2));
  c.step_size = static_cast<T>(lr / bc1);
  c.bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  c.eps = static_cast<T>(eps);
  return c;
}

template <class T>
class AdamBase : public OptimizerBase<T> {
  using Base = OptimizerBase<T>;

 protected:
  AdamBase(const char* name, Registry<T>& reg, float lr, float beta1, float beta2, float eps, float wd)
      : Base(name, reg, lr, {"exp_avg", "exp_avg_sq"}) {
    check_unit_interval(name, "beta1", beta1);
    check_unit_interval(name, "beta2", beta2);
    check_nonnegative(name, "eps", eps);
    check_nonnegative(name, "weight_decay", wd);
  }

  void adam_step(const std::vector<ParamRange>* parts, float beta1, float beta2, float eps, float coupled_wd,
                 float decoupled_wd) {
    const AdamCoeffs<T> c = adam_coeffs<T>(++this->steps_, this->lr_, beta1, beta2, eps, coupled_wd, decoupled_wd);
    this->for_each_part(parts, [&](auto& s, index_t at, index_t n) {
      if (s.mask)
        adam_pass<T, true>(s.param->value.data() + at, s.param->grad.data() + at, s.state[0].data() + at,
                           s.state[1].data() + at, n, c.decay, c.wd, c.beta2, c.one_minus_beta1, c.one_minus_beta2,
                           c.step_size, c.bc2_sqrt, c.eps, s.mask + at);
      else
        adam_pass<T>(s.param->value.data() + at, s.param->grad.data() + at, s.state[0].data() + at, s.state[1].data() + at, n,
                     c.decay, c.wd, c.beta2, c.one_minus_beta1, c.one_minus_beta2, c.step_size, c.bc2_sqrt, c.eps);
    });
  }
};

}  // namespace detail

// ---- Adam (Kingma & Ba 2015), torch.optim.Adam --------------------------------
template <class T = float>
class Adam : public detail::AdamBase<T> {
 public:
  Adam(Registry<T>& reg, const AdamOptions& o = {})
      : detail::AdamBase<T>("Adam", reg, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay), o_(o) {}
  const AdamOptions& options() const { return o_; }
  void step() { this->adam_step(nullptr, o_.beta1, o_.beta2, o_.eps, o_.weight_decay, 0.0f); }
  void step(const std::vector<ParamRange>& parts) { this->adam_step(&parts, o_.beta1, o_.beta2, o_.eps, o_.weight_decay, 0.0f); }

 private:
  AdamOptions o_;
};

// ---- AdamW (Loshchilov & Hutter 2019), torch.optim.AdamW ------------------------
// p = p * (1 - lr * weight_decay), then the Adam update without L2.
template <class T = float>
class AdamW : public detail::AdamBase<T> {
 public:
  AdamW(Registry<T>& reg, const AdamWOptions& o = {})
      : detail::AdamBase<T>("AdamW", reg, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay), o_(o) {}
  const AdamWOptions& options() const { return o_; }
  void step() { this->adam_step(nullptr, o_.beta1, o_.beta2, o_.eps, 0.0f, o_.weight_decay); }
  void step(const std::vector<ParamRange>& parts) { this->adam_step(&parts, o_.beta1, o_.beta2, o_.eps, 0.0f, o_.weight_decay); }

 private:
  AdamWOptions o_;
};

}  // namespace weft::nn
