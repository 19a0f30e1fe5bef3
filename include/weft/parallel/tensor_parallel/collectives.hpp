// Collectives as expression nodes: the operators of Megatron-style tensor and
// sequence parallelism. Each node runs a collective on the communicator it is
// given in forward and/or backward, so the backward sweep derives from the
// expression's type where gradients must be reduced; the communicator's type
// (Ring, Tree, Hierarchical, Compressed<..>, Native, ...) decides the
// algorithm, so the user picks one per layer.
//
//   node                   forward                    backward (adjoint of the input)
//   copy_to(x, c)          identity                   allreduce(sum)
//   reduce_from(x, c)      allreduce(sum)             identity
//   gather_from(x, c, k)   all-gather along axis k    this rank's slice along k
//   scatter_to(x, c, k)    this rank's slice along k  all-gather along k
//   all_gather(x, c, k)    all-gather along axis k    reduce-scatter along k
//   reduce_scatter(x,c,k)  reduce-scatter along k     all-gather along k
//
// copy_to / reduce_from and scatter_to / gather_from are conjugate pairs
// (Megatron's f and g): the region between them is computed differently on
// each rank, the region outside is replicated, and the loss is counted once.
// all_gather / reduce_scatter are sequence parallelism's pair (Korthikanti et
// al. 2022): outside them each rank holds a slice along the sequence and its
// own part of the loss, so the gradient of the gathered value is the sum of
// every rank's adjoint, reduced onto the slice each rank owns.
//
// These nodes live above expr/ and comm/ (expr/ never includes comm/): they
// model the expression protocol of expr/node.hpp and call the communicator's
// public API. Each is a materialisation point: its child is evaluated once
// into workspace memory, the collective writes the node's own buffer. In
// backward the collective on the adjoint is started non-blocking and waited
// on just before the child's region needs it (see column_matmul in
// layers.hpp for a node that computes the weight's gradient meanwhile).
// Host memory only: the communicators read and write host buffers.
//
// Dimension legend: p ranks of the communicator, r this rank; a shard along
// axis k has extent n_k, the gathered tensor p * n_k.
#pragma once

#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "../../core/error.hpp"
#include "../../expr/node.hpp"

namespace weft::parallel::tensor_parallel {

enum class CollectiveKind { copy_to, reduce_from, gather_from, scatter_to, all_gather, reduce_scatter };

constexpr const char* kind_name(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::copy_to: return "copy_to";
    case CollectiveKind::reduce_from: return "reduce_from";
    case CollectiveKind::gather_from: return "gather_from";
    case CollectiveKind::scatter_to: return "scatter_to";
    case CollectiveKind::all_gather: return "all_gather";
    case CollectiveKind::reduce_scatter: return "reduce_scatter";
  }
  return "?";
}

namespace detail {

// A tensor of shape s seen as (outer, extent along k, inner): elements of
// the k-th slab are contiguous runs of s[k] * inner.
struct AxisView {
  index_t outer = 1;  // product of the axes before k
  index_t run = 1;    // s[k] * product of the axes after k: one contiguous run per outer index
};
inline AxisView axis_view(const Shape& s, int k) {
  AxisView v;
  for (int d = 0; d < k; ++d) v.outer *= s[d];
  for (int d = k; d < s.rank; ++d) v.run *= s[d];
  return v;
}

// full (outer, p * run) <-> rank-major blocks (p, outer, run), run = one shard's run.
template <class T>
void to_rank_major(const T* full, T* blocks, AxisView v, int p) {
  for (int r = 0; r < p; ++r)
    for (index_t o = 0; o < v.outer; ++o)
      std::memcpy(blocks + (r * v.outer + o) * v.run, full + (o * p + r) * v.run, static_cast<std::size_t>(v.run) * sizeof(T));
}
template <class T>
void from_rank_major(const T* blocks, T* full, AxisView v, int p) {
  for (int r = 0; r < p; ++r)
    for (index_t o = 0; o < v.outer; ++o)
      std::memcpy(full + (o * p + r) * v.run, blocks + (r * v.outer + o) * v.run, static_cast<std::size_t>(v.run) * sizeof(T));
}
// Rank r's slice of full along the axis.
template <class T>
void take_slice(const T* full, T* shard, AxisView v, int p, int r) {
  for (index_t o = 0; o < v.outer; ++o)
    std::memcpy(shard + o * v.run, full + (o * p + r) * v.run, static_cast<std::size_t>(v.run) * sizeof(T));
}

template <class T>
std::span<const T> cspan(const TensorView<T, cpu>& v) {
  return {v.data, static_cast<std::size_t>(v.numel())};
}
template <class T>
std::span<T> mspan(const TensorView<T, cpu>& v) {
  return {v.data, static_cast<std::size_t>(v.numel())};
}

// All-gather of shard -> full along the axis (blocking or started).
template <class T, class Comm, class X>
void gather_axis(Comm& c, const X& ex, const TensorView<T, cpu>& shard, const TensorView<T, cpu>& full, AxisView v) {
  const auto n = static_cast<std::size_t>(shard.numel());
  if (v.outer == 1) {
    c.allgather(shard.data, full.data, n);
    return;
  }
  auto blocks = kernels::alloc<T>(ex, full.shape);
  c.allgather(shard.data, blocks.data, n);
  from_rank_major(blocks.data, full.data, v, c.size());
}

}  // namespace detail

// One node type for the six operators; K says which. A holds the child, Comm
// the communicator (held by pointer: it must outlive every evaluation).
template <CollectiveKind K, class A, class Comm>
struct Collective : OneChildNode<Collective<K, A, Comm>, A> {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  using T = value_type;
  using View = TensorView<T, device_type>;
  static constexpr int static_rank = A::static_rank;
  static constexpr int param_occurrences = param_occurrences_of<A>();
  static constexpr CollectiveKind kind = K;
  static_assert(std::is_same_v<device_type, cpu>,
                "tensor-parallel collectives run on host tensors: the communicators read and write host memory");
  static constexpr bool has_axis = K != CollectiveKind::copy_to && K != CollectiveKind::reduce_from;

  A a;
  Comm* comm;
  int axis = 0;
  Shape out;

  Collective(A child, Comm& c, int k = 0) : a(child), comm(&c), axis(k) {
    const Shape s = a.shape();
    out = s;
    if constexpr (has_axis) {
      const int p = c.size();
      if (k < 0 || k >= s.rank)
        throw_error<ShapeError>(kind_name(K), ": axis ", k, " is out of range for an operand of shape ", s, " on rank ", c.rank());
      if (K == CollectiveKind::gather_from || K == CollectiveKind::all_gather) {
        out[k] = s[k] * p;
      } else {
        if (s[k] % p != 0)
          throw_error<ShapeError>(kind_name(K), ": the operand's extent ", s[k], " along axis ", k, " (shape ", s,
                                  ") is not divisible by the communicator's ", p, " ranks (rank ", c.rank(), ")");
        out[k] = s[k] / p;
      }
    }
  }
  Shape shape() const { return out; }

  struct State {
    typename A::State a;
    View in;   // the child's value
    View val;  // this node's value
    View adj;  // adjoint of this node's value
  };

  // The axis view of one shard (the smaller of in/out).
  detail::AxisView shard_view() const {
    const bool in_is_shard = K == CollectiveKind::gather_from || K == CollectiveKind::all_gather;
    return detail::axis_view(in_is_shard ? a.shape() : out, axis);
  }

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}, {}};
    st.in = materialise(a, st.a, ex);
    Comm& c = *comm;
    const auto n = static_cast<std::size_t>(st.in.numel());
    if constexpr (K == CollectiveKind::copy_to) {
      st.val = st.in;
    } else if constexpr (K == CollectiveKind::reduce_from) {
      st.val = kernels::alloc<T>(ex, out);
      c.allreduce(st.in.data, st.val.data, n);
    } else if constexpr (K == CollectiveKind::gather_from || K == CollectiveKind::all_gather) {
      st.val = kernels::alloc<T>(ex, out);
      detail::gather_axis(c, ex, st.in, st.val, shard_view());
    } else if constexpr (K == CollectiveKind::scatter_to) {
      st.val = kernels::alloc<T>(ex, out);
      detail::take_slice(st.in.data, st.val.data, shard_view(), c.size(), c.rank());
    } else {  // reduce_scatter
      st.val = kernels::alloc<T>(ex, out);
      const detail::AxisView v = shard_view();
      const std::size_t per = static_cast<std::size_t>(st.val.numel());
      if (v.outer == 1) {
        c.reduce_scatter(st.in.data, st.val.data, per);
      } else {
        auto blocks = kernels::alloc<T>(ex, a.shape());
        detail::to_rank_major(st.in.data, blocks.data, v, c.size());
        c.reduce_scatter(blocks.data, st.val.data, per);
      }
      (void)n;
    }
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  // The adjoint of the child, from this node's: the collective is started
  // (non-blocking where it moves data) and waited on just before the child's
  // region reads it.
  template <class G>
  void backward_children(State& st, G& g) const {
    if constexpr (needs_grad<A, G>()) {
      const auto& ex = g.exec();
      Comm& c = *comm;
      const Shape sa = a.shape();
      View da;
      if constexpr (K == CollectiveKind::reduce_from) {
        da = st.adj;  // identity
      } else if constexpr (K == CollectiveKind::copy_to) {
        da = kernels::alloc<T>(ex, sa);
        auto req = c.iallreduce(detail::cspan(st.adj), detail::mspan(da));
        req.wait();
      } else if constexpr (K == CollectiveKind::gather_from) {
        da = kernels::alloc<T>(ex, sa);
        detail::take_slice(st.adj.data, da.data, shard_view(), c.size(), c.rank());
      } else if constexpr (K == CollectiveKind::all_gather) {
        da = kernels::alloc<T>(ex, sa);
        const detail::AxisView v = shard_view();
        if (v.outer == 1) {
          auto req = c.ireduce_scatter(detail::cspan(st.adj), detail::mspan(da));
          req.wait();
        } else {
          auto blocks = kernels::alloc<T>(ex, out);
          detail::to_rank_major(st.adj.data, blocks.data, v, c.size());
          auto req = c.ireduce_scatter(detail::cspan(blocks), detail::mspan(da));
          req.wait();
        }
      } else {  // scatter_to, reduce_scatter: all-gather the adjoint
        da = kernels::alloc<T>(ex, sa);
        const detail::AxisView v = shard_view();
        if (v.outer == 1) {
          auto req = c.iallgather(detail::cspan(st.adj), detail::mspan(da));
          req.wait();
        } else {
          auto blocks = kernels::alloc<T>(ex, sa);
          auto req = c.iallgather(detail::cspan(st.adj), detail::mspan(blocks));
          req.wait();
          detail::from_rank_major(blocks.data, da.data, v, c.size());
        }
      }
      g.run_region(a, st.a, sa, kernels::BufferSeed<T>{da.data, aligned_strides(sa, contiguous_strides(sa), sa), T(1)});
    }
  }
};

// ---- the operators ----------------------------------------------------------

template <Operand X, class Comm>
auto copy_to(X&& x, Comm& c) {
  return Collective<CollectiveKind::copy_to, expr_t<X>, Comm>(as_expr(std::forward<X>(x)), c);
}
template <Operand X, class Comm>
auto reduce_from(X&& x, Comm& c) {
  return Collective<CollectiveKind::reduce_from, expr_t<X>, Comm>(as_expr(std::forward<X>(x)), c);
}
template <Operand X, class Comm>
auto gather_from(X&& x, Comm& c, int axis) {
  return Collective<CollectiveKind::gather_from, expr_t<X>, Comm>(as_expr(std::forward<X>(x)), c, axis);
}
template <Operand X, class Comm>
auto scatter_to(X&& x, Comm& c, int axis) {
  return Collective<CollectiveKind::scatter_to, expr_t<X>, Comm>(as_expr(std::forward<X>(x)), c, axis);
}
template <Operand X, class Comm>
auto all_gather(X&& x, Comm& c, int axis) {
  return Collective<CollectiveKind::all_gather, expr_t<X>, Comm>(as_expr(std::forward<X>(x)), c, axis);
}
template <Operand X, class Comm>
auto reduce_scatter(X&& x, Comm& c, int axis) {
  return Collective<CollectiveKind::reduce_scatter, expr_t<X>, Comm>(as_expr(std::forward<X>(x)), c, axis);
}

}  // namespace weft::parallel::tensor_parallel
