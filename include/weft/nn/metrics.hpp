// Classification metrics on evaluated tensors (host).
#pragma once

#include <type_traits>

#include "../core/error.hpp"
#include "../tensor/tensor.hpp"

namespace weft::nn {

// Fraction of rows whose largest logit (first one on ties) is the label.
// logits (N, C), labels (N,) integer class indices.
template <class T, class L>
double accuracy(const Tensor<T>& logits, const Tensor<L>& labels) {
  static_assert(std::is_integral_v<L>, "accuracy: labels must be integer class indices");
  const Shape& s = logits.shape();
  if (s.rank != 2 || labels.rank() != 1 || labels.size(0) != s[0])
    throw_error<ShapeError>("accuracy: logits ", s, " need labels of shape (", s.rank ? s[0] : 0, ",), got ", labels.shape());
  const index_t n = s[0], c = s[1];
  if (n == 0) return 0.0;
  index_t correct = 0;
  for (index_t i = 0; i < n; ++i) {
    const T* row = logits.data() + i * c;
    index_t best = 0;
    for (index_t k = 1; k < c; ++k)
      if (row[k] > row[best]) best = k;
    correct += best == static_cast<index_t>(labels.data()[i]);
  }
  return static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace weft::nn
