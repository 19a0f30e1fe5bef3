// Learning-rate schedules: small value types, lr = schedule(step), step counted
// from 0 (the lr of the first optimizer step). Use with any optimizer:
//   nn::CosineAnnealing sched{.lr = 1e-3f, .total_steps = 5000, .warmup_steps = 200};
//   opt.set_lr(sched(opt.steps()));  opt.step();
//
// Formulas (t = step, lr = base learning rate):
//   ConstantLR      lr
//   LinearWarmup    lr * (s + (1 - s) * min(t, W) / W)         s = start_factor, W = warmup_steps
//                   = torch.optim.lr_scheduler.LinearLR(start_factor = s, end_factor = 1,
//                     total_iters = W) in closed form
//   CosineAnnealing warm-up as LinearWarmup for t < W, then with u = t - W, U = total_steps - W:
//                   min_lr + (lr - min_lr) * (1 + cos(pi * min(u, U) / U)) / 2
//                   = torch's CosineAnnealingLR closed form (SGDR, Loshchilov & Hutter 2017,
//                     eq. 5, without restarts; eta_max = lr, eta_min = min_lr, T_max = U,
//                     T_cur = u) for u <= U. Past U torch's cosine rises again; this
//                     schedule holds min_lr.
// Each operator() checks its fields, so a bad schedule fails on first use with
// a sentence (they are aggregates: no constructor to check them earlier).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "../core/error.hpp"

namespace weft::nn {

struct ConstantLR {
  float lr = 1e-3f;
  float operator()(std::int64_t step) const {
    if (step < 0) throw_error<ValueError>("ConstantLR: negative step ", step);
    return lr;
  }
};

namespace detail {

inline double warmup_factor(const char* who, std::int64_t step, std::int64_t warmup_steps, float start_factor) {
  if (step < 0) throw_error<ValueError>(who, ": negative step ", step);
  if (warmup_steps < 0) throw_error<ValueError>(who, ": negative warmup_steps ", warmup_steps);
  if (!(start_factor >= 0.0f && start_factor <= 1.0f))
    throw_error<ValueError>(who, ": start_factor ", start_factor, " must lie in [0, 1]");
  if (warmup_steps == 0 || step >= warmup_steps) return 1.0;
  const double s = start_factor;
  return s + (1.0 - s) * static_cast<double>(step) / static_cast<double>(warmup_steps);
}

}  // namespace detail

struct LinearWarmup {
  float lr = 1e-3f;
  std::int64_t warmup_steps = 0;
  float start_factor = 0.0f;  // lr at step 0 = start_factor * lr

  float operator()(std::int64_t step) const {
    return static_cast<float>(static_cast<double>(lr) * detail::warmup_factor("LinearWarmup", step, warmup_steps, start_factor));
  }
};

struct CosineAnnealing {
  float lr = 1e-3f;                // eta_max
  std::int64_t total_steps = 0;    // warm-up included; the cosine spans total_steps - warmup_steps
  float min_lr = 0.0f;             // eta_min
  std::int64_t warmup_steps = 0;
  float warmup_start_factor = 0.0f;

  float operator()(std::int64_t step) const {
    if (total_steps <= warmup_steps)
      throw_error<ValueError>("CosineAnnealing: total_steps (", total_steps, ") must exceed warmup_steps (", warmup_steps, ")");
    if (!(min_lr >= 0.0f && min_lr <= lr))
      throw_error<ValueError>("CosineAnnealing: min_lr ", min_lr, " must lie in [0, lr = ", lr, "]");
    if (step < warmup_steps)
      return static_cast<float>(static_cast<double>(lr) *
                                detail::warmup_factor("CosineAnnealing", step, warmup_steps, warmup_start_factor));
    const double span = static_cast<double>(total_steps - warmup_steps);
    const double u = static_cast<double>(std::min(step - warmup_steps, total_steps - warmup_steps));
    const double lo = min_lr, hi = lr;
    return static_cast<float>(lo + (hi - lo) * 0.5 * (1.0 + std::cos(std::numbers::pi * u / span)));
  }
};

}  // namespace weft::nn
