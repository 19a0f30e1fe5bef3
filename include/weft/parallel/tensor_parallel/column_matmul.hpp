// column_matmul(x, W, comm): matmul(copy_to(x, comm), W) as one node, so that
// backward overlaps the input-gradient allreduce with the weight's gradient
// (Megatron's async tensor-model-parallel allreduce):
//
//   forward   Y = X W                              X (B, I) replicated, W (I, O/p) this rank's columns
//   backward  dX_r = dY W^T       -> start iallreduce(dX_r)           (B, I)
//             dW  += X^T dY       (parameter final: the hook fires)   (I, O/p)
//             wait; continue into X's region with sum_r dX_r
//
// With overlap = false the allreduce is waited on before dW (the control
// for bench/compare_tensor_parallel.sh's with/without timing).
#pragma once

#include <span>
#include <type_traits>
#include <utility>

#include "../../expr/matmul.hpp"
#include "../../expr/node.hpp"
#include "../../expr/parameter.hpp"

namespace weft::parallel::tensor_parallel {

template <class A, class Comm>
struct ColumnMatMul : ExprTag {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  using T = value_type;
  using View = TensorView<T, device_type>;
  static constexpr int static_rank = 2;
  static constexpr int param_occurrences = param_occurrences_of<A>() + 1;
  static_assert(std::is_same_v<device_type, cpu>, "column_matmul runs on host tensors");

  A a;
  Parameter<T, cpu>* w;
  Comm* comm;
  bool overlap = true;
  Shape out;

  ColumnMatMul(A x, Parameter<T, cpu>& weight, Comm& c, bool ov) : a(x), w(&weight), comm(&c), overlap(ov) {
    const Shape sa = a.shape(), sw = w->shape();
    if (sa.rank != 2 || sw.rank != 2 || sa[1] != sw[0])
      throw_error<ShapeError>("column_matmul: input ", sa, " @ weight shard ", sw, " (", w->name, ") on rank ", c.rank());
    out = Shape{sa[0], sw[1]};
  }
  Shape shape() const { return out; }

  struct State {
    typename A::State a;
    View x, val, adj;
  };

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}, {}};
    st.x = materialise(a, st.a, ex);
    st.val = kernels::alloc<T>(ex, out);
    kernels::gemm(ex, st.x, w->value.view(), st.val, T(1), T(0));
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    const auto& ex = g.exec();
    auto dw = [&] {
      kernels::gemm(ex, st.x.transposed(), st.adj, g.grad_of(*w), T(1), T(1));
      g.param_done(*w);
    };
    if constexpr (needs_grad<A, G>()) {
      const Shape sa = a.shape();
      auto part = kernels::alloc<T>(ex, sa);
      auto dx = kernels::alloc<T>(ex, sa);
      kernels::gemm(ex, st.adj, w->value.view().transposed(), part, T(1), T(0));
      auto req = comm->iallreduce(std::span<const T>(part.data, static_cast<std::size_t>(part.numel())),
                                  std::span<T>(dx.data, static_cast<std::size_t>(dx.numel())));
      if (overlap) {
        dw();
        req.wait();
      } else {
        req.wait();
        dw();
      }
      g.run_region(a, st.a, sa, kernels::BufferSeed<T>{dx.data, aligned_strides(sa, contiguous_strides(sa), sa), T(1)});
    } else {
      dw();
    }
  }

  template <class F>
  void for_each_param(F&& f) const {
    a.for_each_param(f);
    f(*w);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return A::template slots_total<I>();
  }
};

template <Operand X, class T, class Comm>
auto column_matmul(X&& x, Parameter<T, cpu>& weight, Comm& c, bool overlap = true) {
  return ColumnMatMul<expr_t<X>, Comm>(as_expr(std::forward<X>(x)), weight, c, overlap);
}

}  // namespace weft::parallel::tensor_parallel
