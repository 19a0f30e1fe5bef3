// Assignment and evaluation: `dst = expr` runs each elementwise region in one
// pass with no temporaries. Reductions, matmul and softmax are materialised
// first (workspace). Aliasing is handled, never silently wrong: a destination
// read at the same element it writes is safe; any other overlap (x =
// transpose(x), a shifted view) evaluates into scratch memory first.
#pragma once

#include <algorithm>
#include <cstring>

#include "node.hpp"

namespace weft {

namespace detail {
// [lo, hi) bytes a strided view touches.
inline void byte_range(const void* base, const Shape& s, const Strides& st, std::size_t elem, const char*& lo,
                       const char*& hi) {
  index_t mn = 0, mx = 0;
  for (int d = 0; d < s.rank; ++d) {
    if (s[d] == 0) {
      lo = hi = static_cast<const char*>(base);
      return;
    }
    index_t span = (s[d] - 1) * st[d];
    (span < 0 ? mn : mx) += span;
  }
  lo = static_cast<const char*>(base) + mn * static_cast<index_t>(elem);
  hi = static_cast<const char*>(base) + (mx + 1) * static_cast<index_t>(elem);
}

// Does evaluating bound tree `b` into `dst` read memory that the loop has
// already overwritten (or will)? Same-element reads are fine.
template <class B, class T, class D>
bool hazardous_alias(const B& b, const TensorView<T, D>& dst) {
  const char *dlo, *dhi;
  byte_range(dst.data, dst.shape, dst.strides, sizeof(T), dlo, dhi);
  if (dlo == dhi) return false;
  Strides dst_al = aligned_strides(dst.shape, dst.strides, dst.shape);
  bool hazard = false;
  b.visit([&](const LeafInfo& l) {
    const char *lo, *hi;
    byte_range(l.base, l.shape, l.own_strides, l.elem_size, lo, hi);
    if (lo >= dhi || hi <= dlo) return;  // disjoint
    bool same = l.base == static_cast<const void*>(dst.data) && l.elem_size == sizeof(T);
    for (int d = 0; d < max_rank && same; ++d)
      same = l.strides[d] == dst_al[d] || padded(dst.shape)[d] == 1;
    hazard = hazard || !same;
  });
  return hazard;
}
}  // namespace detail

// dst = e on the executor's device, its workspace holding materialised
// intermediates (no allocation once warm).
template <class T, class Device, Expression E, Executor X>
  requires std::is_same_v<device_of<X>, Device>
void assign(TensorView<T, Device> dst, const E& e, const X& ex) {
  static_assert(std::is_same_v<typename E::device_type, Device>,
                "assign: the expression's tensors live on another device than the destination: copy them first");
  Shape s = e.shape();
  if (!broadcasts_to(s, dst.shape))
    throw_error<ShapeError>("assign: an expression of shape ", s, " cannot be assigned to a tensor of shape ", dst.shape);
  auto st = e.forward(ex);
  NoGrad ng;
  auto b = e.bind(st, dst.shape, ng);
  if (detail::hazardous_alias(b, dst)) {
    auto tmp = kernels::alloc<T>(ex, dst.shape);
    kernels::evaluate(ex, b, tmp);
    const Strides c = contiguous_strides(dst.shape);
    kernels::evaluate(ex, BoundTensor<T>{tmp.data, aligned_strides(dst.shape, c, dst.shape), dst.shape, c}, dst);
    return;
  }
  kernels::evaluate(ex, b, dst);
}

// dst = e, with `ws` holding materialised intermediates (no allocation once
// warm). The evaluation starts the workspace afresh (reset(), as backward
// does): what an earlier evaluation left in it, such as the loss view that
// backward returns, is overwritten. Without the reset every call took new
// space, so an evaluation loop grew the workspace by its intermediates each
// time (examples/05_vit's test pass reached 6 GB).
template <class T, class Device, Expression E>
void assign(TensorView<T, Device> dst, const E& e, Workspace<Device>& ws) {
  ws.reset();
  assign(dst, e, Exec<Device>(ws));
}

template <class T, class Device, class E>
void assign(TensorView<T, Device> dst, const E& e) {
  if constexpr (TensorLike<E>) {
    assign(dst, as_expr(e));
  } else {
    Workspace<Device> ws;
    assign(dst, e, ws);
  }
}

// Evaluate an expression into a new tensor of its shape and compute type.
template <Expression E>
Tensor<typename E::value_type> eval(const E& e) {
  Tensor<typename E::value_type> t(e.shape());
  assign(t.view(), e);
  return t;
}
template <Expression E, class W>
Tensor<typename E::value_type> eval(const E& e, W& ws) {
  Tensor<typename E::value_type> t(e.shape());
  assign(t.view(), e, ws);
  return t;
}

}  // namespace weft
