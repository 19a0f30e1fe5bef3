// column_matmul(x, W, comm): matmul(copy_to(x, comm), W) as one node, so that
// backward overlaps the input-gradient allreduce with the weight's gradient
// (Megatron's async tensor-model-parallel allreduce):
//
//   forward   Y = X W                              X (R, I) replicated, W (I, O/p) this rank's columns
//   backward  dX_r = dY W^T       -> start iallreduce(dX_r)           (R, I)
//             dW  += X^T dY       (parameter final: the hook fires)   (I, O/p)
//             wait; continue into X's region with sum_r dX_r
//
// gathered_matmul(x, W, comm, axis): its sequence-parallel twin,
// matmul(all_gather(x, comm, axis), W) as one node (Korthikanti et al. 2022,
// section 4.2.2: the reduce-scatter of the input's gradient runs under the
// weight-gradient gemm):
//
//   forward   X = all_gather(X_r) along axis;  Y = X W    X_r (.., T/p, .., I) this rank's tokens
//   backward  dX = dY W^T         -> start ireduce_scatter(dX) along axis
//             dW  += X^T dY
//             wait; continue into X_r's region with this rank's slice of sum_r dX
//
// Why these are fused nodes and not a property of the collective nodes of
// collectives.hpp: the backward sweep is depth first, and a collective
// node's child region is the first consumer of the collective's result, so
// the only work that does not depend on it is what the consumer above it
// still has to do: the weight gradient of this very product (docs/architecture.md,
// "Overlap of backward collectives").
//
// X may have any rank >= 2: its leading axes are rows, (.., I) -> (R, I).
// With overlap = false the collective is waited on before dW (the control
// for bench/compare_tensor_parallel.sh's with/without timing).
#pragma once

#include <span>
#include <type_traits>
#include <utility>

#include "../../expr/matmul.hpp"
#include "../../expr/node.hpp"
#include "../../expr/parameter.hpp"
#include "collectives.hpp"

namespace weft::parallel::tensor_parallel {

// Gather = false: copy_to's allreduce (column_matmul); true: all_gather's
// reduce-scatter (gathered_matmul).
template <class A, class Comm, bool Gather = false>
struct ColumnMatMul : ExprTag {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  using T = value_type;
  using View = TensorView<T, device_type>;
  static constexpr int static_rank = A::static_rank;
  static constexpr int param_occurrences = param_occurrences_of<A>() + 1;
  static_assert(std::is_same_v<device_type, cpu>, "column_matmul runs on host tensors");

  A a;
  Parameter<T, cpu>* w;
  Comm* comm;
  bool overlap = true;
  int axis = 0;  // Gather: the sharded (sequence) axis of x
  Shape in;      // x's shape after the gather (Gather) or x's shape
  Shape out;

  ColumnMatMul(A x, Parameter<T, cpu>& weight, Comm& c, bool ov, int ax = 0) : a(x), w(&weight), comm(&c), overlap(ov), axis(ax) {
    const Shape sa = a.shape(), sw = w->shape();
    const char* op = Gather ? "gathered_matmul" : "column_matmul";
    if (sa.rank < 2 || sw.rank != 2 || sa[sa.rank - 1] != sw[0])
      throw_error<ShapeError>(op, ": input ", sa, " @ weight shard ", sw, " (", w->name, ") on rank ", c.rank());
    in = sa;
    if constexpr (Gather) {
      if (axis < 0 || axis >= sa.rank - 1)
        throw_error<ShapeError>(op, ": the gathered axis ", axis, " of input ", sa, " must be one of its row axes (rank ", c.rank(), ")");
      in[axis] = sa[axis] * c.size();
    }
    out = in;
    out[out.rank - 1] = sw[1];
  }
  Shape shape() const { return out; }

  // A contiguous tensor of shape s seen as rows (R, s[-1]).
  static View rows(const View& v) {
    const index_t cols = v.shape[v.shape.rank - 1];
    return View(v.data, Shape{v.numel() / cols, cols});
  }

  struct State {
    typename A::State a;
    View x, val, adj;  // x: the (gathered) input, contiguous
  };

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}, {}};
    View xr = materialise(a, st.a, ex);
    if constexpr (Gather) {
      st.x = kernels::alloc<T>(ex, in);
      detail::gather_axis(*comm, ex, xr, st.x, detail::axis_view(a.shape(), axis));
    } else {
      st.x = xr;
    }
    st.val = kernels::alloc<T>(ex, out);
    kernels::gemm(ex, rows(st.x), w->value.view(), rows(st.val), T(1), T(0));
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
      kernels::gemm(ex, rows(st.x).transposed(), rows(st.adj), g.grad_of(*w), T(1), T(1));
      g.param_done(*w);
    };
    if constexpr (needs_grad<A, G>()) {
      const Shape sa = a.shape();
      auto part = kernels::alloc<T>(ex, in);  // this rank's dY W^T over the whole (gathered) input
      auto dx = kernels::alloc<T>(ex, sa);
      kernels::gemm(ex, rows(st.adj), w->value.view().transposed(), rows(part), T(1), T(0));
      auto req = [&] {
        if constexpr (Gather) {
          const detail::AxisView v = detail::axis_view(sa, axis);
          View src = part;
          if (v.outer != 1) {  // the ranks' slices as contiguous blocks, rank-major
            src = kernels::alloc<T>(ex, in);
            detail::to_rank_major(part.data, src.data, v, comm->size());
          }
          return comm->ireduce_scatter(detail::cspan(src), detail::mspan(dx));
        } else {
          return comm->iallreduce(detail::cspan(part), detail::mspan(dx));
        }
      }();
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
  return ColumnMatMul<expr_t<X>, Comm, false>(as_expr(std::forward<X>(x)), weight, c, overlap);
}

// x: this rank's slice along `axis` (a row axis) -> (.., gathered, .., O/p).
template <Operand X, class T, class Comm>
auto gathered_matmul(X&& x, Parameter<T, cpu>& weight, Comm& c, int axis, bool overlap = true) {
  return ColumnMatMul<expr_t<X>, Comm, true>(as_expr(std::forward<X>(x)), weight, c, overlap, axis);
}

}  // namespace weft::parallel::tensor_parallel
