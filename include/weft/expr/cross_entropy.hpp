// cross_entropy(logits (N, C), labels (N,) integer): mean over the batch of
// -log_softmax(logits)[label], PyTorch's default reduction. Fused: forward
// keeps per row the maximum m and log z = log sum exp(x - m), apart, so that
// nothing rounds at the magnitude of the largest logit; backward seeds the
// logits' region with (softmax - onehot) / N, softmax = exp((x - m) - log z)
// computed on the fly from the recomputed logits.
//
// cross_entropy(logits, labels, {.label_smoothing = eps}): PyTorch's
// CrossEntropyLoss(label_smoothing=eps): the target is (1 - eps) one-hot +
// eps / C, the gradient (softmax - (1 - eps) onehot - eps / C) / N.
#pragma once

#include <type_traits>

#include "../core/math.hpp"
#include "node.hpp"

namespace weft {

struct CrossEntropyOptions {
  double label_smoothing = 0;  // in [0, 1]
};

// The seed of cross-entropy's backward region, outside the node so a
// kernel's argument types never name the expression (whose type may hold a
// host lambda, which nvcc refuses in a kernel's template arguments).
// d loss / d logits[r, c] = adj / N * (softmax[r, c] - (1 - eps) [c == label r] - eps / C)
template <class value_type, class label_type, bool OnDevice>
struct CrossEntropySeed {
  const value_type* row_max;
  const value_type* log_z;
  const label_type* lab;
  index_t lab_stride;
  index_t cols;
  value_type scale;         // adj / N on the host; 1 / N on a device, where
  const value_type* adj;    // the adjoint stays in device memory: read per element there
  double inv_cols;  // 1 / cols
  value_type hit;   // 1 - eps
  value_type flat;  // eps / C
  WEFT_HD WEFT_INLINE value_type at(index_t r, index_t c, value_type v) const {
    value_type p = math::exp((v - row_max[r]) - log_z[r]);
    value_type s = scale;
    if constexpr (OnDevice) s *= adj[0];
    return s * ((p - (static_cast<index_t>(lab[r * lab_stride]) == c ? hit : value_type(0))) - flat);
  }
  // The row of element i without an integer division, for the device's
  // linear kernel: (i + 1/2) / cols lies at least 1/(2 cols) from an
  // integer, more than the product's rounding error while i < 2^50, which
  // any tensor that fits in memory is.
  WEFT_HD WEFT_INLINE value_type operator()(index_t i, value_type v) const {
    const index_t r = static_cast<index_t>((static_cast<double>(i) + 0.5) * inv_cols);
    return at(r, i - r * cols, v);
  }
  WEFT_HD WEFT_INLINE value_type operator()(const Index4& ix, value_type v) const { return at(ix.i[2], ix.i[3], v); }
  // On the CPU the region runs row by row (the general path), where the
  // row's maximum, log z and label stay in registers across the inner loop
  // and it vectorises. Per linear index the row came from a double per
  // element, a gather of row_max, log_z and the label, and GCC left the
  // loop scalar: 64 x 256 logits under a tanh took ~540 us per backward,
  // row by row ~45 us.
  bool linear(const Shape&) const { return OnDevice; }
};

template <class A, class L>
struct CrossEntropy : OneChildNode<CrossEntropy<A, L>, A> {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  using label_type = typename L::value_type;
  static constexpr int static_rank = 0;
  static_assert(std::is_integral_v<label_type>,
                "cross_entropy: labels must be an integer tensor of class indices (int32 or int64), not floating point");
  static_assert(is_floating_v<value_type>, "cross_entropy: logits must be floating point");
  static_assert(A::static_rank == -1 || A::static_rank == 2,
                "cross_entropy: logits must have rank 2 (batch, classes); this operand's rank is known and is not 2");
  static constexpr int param_occurrences = param_occurrences_of<A>();

  A a;
  L labels;  // a Leaf: labels are data, never differentiated
  value_type eps = 0;  // label smoothing

  CrossEntropy(A logits, L lab, CrossEntropyOptions o = {}) : a(logits), labels(lab), eps(static_cast<value_type>(o.label_smoothing)) {
    if (!(o.label_smoothing >= 0 && o.label_smoothing <= 1))
      throw_error<ValueError>("cross_entropy: label_smoothing must lie in [0, 1], got ", o.label_smoothing);
    Shape s = a.shape(), ls = labels.shape();
    if (s.rank != 2) throw_error<ShapeError>("cross_entropy: logits must be (batch, classes), got shape ", s);
    if (ls.rank != 1 || ls[0] != s[0])
      throw_error<ShapeError>("cross_entropy: logits ", s, " need labels of shape (", s[0], ",), got ", ls);
  }
  Shape shape() const { return Shape{}; }

  struct State {
    typename A::State a;
    TensorView<value_type, device_type> val;  // the loss, rank 0
    TensorView<value_type, device_type> adj;
    TensorView<value_type, device_type> row_max;  // (N,)
    TensorView<value_type, device_type> log_z;    // (N,)
  };

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}, {}, {}};
    Shape s = a.shape();
    const index_t rows = s[0], cols = s[1];
    auto logits = materialise(a, st.a, ex);
    st.row_max = kernels::alloc<value_type>(ex, Shape{rows});
    st.log_z = kernels::alloc<value_type>(ex, Shape{rows});
    st.val = kernels::alloc<value_type>(ex, Shape{});
    kernels::cross_entropy_rows(ex, logits.data, labels.v.data, labels.v.shape.rank ? labels.v.strides[0] : index_t(0), rows,
                                cols, eps, st.row_max.data, st.log_z.data, st.val.data);
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, Shape{}, o, g);
  }

  using Seed = CrossEntropySeed<value_type, label_type, !std::is_same_v<device_type, cpu>>;

  template <class G>
  void backward_children(State& st, G& g) const {
    Shape s = a.shape();
    // (On a device the adjoint is not read here: it lies in device memory.)
    value_type scale = s[0] ? value_type(1) / static_cast<value_type>(s[0]) : value_type(0);
    if constexpr (std::is_same_v<device_type, cpu>) scale = s[0] ? st.adj.data[0] / static_cast<value_type>(s[0]) : value_type(0);
    if (s.numel() >= (index_t(1) << 50))
      throw_error<ShapeError>("cross_entropy: logits ", s, " hold 2^50 elements or more; the backward's row arithmetic is exact below that");
    g.run_region(a, st.a, s,
                 Seed{st.row_max.data, st.log_z.data, labels.v.data, labels.v.strides[0], s[1], scale, st.adj.data,
                      s[1] > 0 ? 1.0 / static_cast<double>(s[1]) : 0.0, value_type(1) - eps,
                      s[1] > 0 ? eps / static_cast<value_type>(s[1]) : value_type(0)});
  }

};

static_assert(Expression<CrossEntropy<Leaf<float, cpu>, Leaf<std::int32_t, cpu>>>);

template <Operand X, TensorLike Y>
auto cross_entropy(X&& logits, Y&& labels, CrossEntropyOptions o = {}) {
  using Lab = expr_t<Y>;
  return CrossEntropy<expr_t<X>, Lab>(as_expr(std::forward<X>(logits)), as_expr(std::forward<Y>(labels)), o);
}

}  // namespace weft
