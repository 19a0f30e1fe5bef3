// Knowledge distillation (Hinton, Vinyals & Dean 2015) as an expression.
//
//   distillation_loss(s, t, T) = T^2 / B * sum_b KL(softmax(t_b / T) || softmax(s_b / T))
//                              = T^2 / B * sum_{b,c} p_bc (log p_bc - log_softmax(s / T)_bc),  p = softmax(t / T)
//
// PyTorch's kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean") * T * T.
// The T^2 keeps the soft term's gradient (which scales as 1 / T^2) comparable
// to the hard-label cross-entropy it is usually mixed with:
//   loss = alpha * distillation_loss(s, t, T) + (1 - alpha) * cross_entropy(s, y).
// The teacher's logits are a tensor (evaluated beforehand, no gradient); the
// student's are any expression. Dimension legend: B batch, C classes.
#pragma once

#include <utility>

#include "../expr/elementwise.hpp"
#include "../expr/reduce.hpp"
#include "../expr/softmax.hpp"
#include "../tensor/tensor.hpp"

namespace weft::compress {

// student (B, C) expression, teacher (B, C) tensor (kept alive by the caller:
// the expression reads it by reference), temperature > 0.
template <Operand S, class T>
auto distillation_loss(S&& student, const Tensor<T>& teacher, double temperature) {
  if (!(temperature > 0.0)) throw_error<ValueError>("distillation_loss: temperature ", temperature, " must be > 0");
  const Shape ss = as_expr(student).shape();
  if (ss.rank != 2 || teacher.shape() != ss)
    throw_error<ShapeError>("distillation_loss: student logits ", ss, " and teacher logits ", teacher.shape(),
                            " must both be (B, C)");
  const T inv_t = static_cast<T>(1.0 / temperature);
  const T factor = static_cast<T>(temperature * temperature / static_cast<double>(ss[0]));
  return sum(softmax(teacher * inv_t) * (log_softmax(teacher * inv_t) - log_softmax(std::forward<S>(student) * inv_t))) * factor;
}

}  // namespace weft::compress
