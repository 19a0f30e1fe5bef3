// weft-bench's use of the shared collective descriptions
// (weft/comm/collective.hpp): for a run-time (op, dtype) it places the
// buffers, fills exact inputs, calls the communicator, counts wrong elements
// and gives the busbw factor, each through the op's descriptor; no switch
// over the collectives here.
//
// Sizes follow nccl-tests: S bytes is the per-rank buffer for allreduce,
// broadcast and reduce, and the p-block buffer for reduce_scatter, allgather,
// gather, scatter and alltoall (the larger of a rank's input and output).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <weft/comm/collective.hpp>
#include <weft/comm/reduce_op.hpp>
#include <weft/core/dtype.hpp>

#include "options.hpp"

namespace weft_bench {

// One call's buffers: where input and output live for out-of-place or in-place.
using Layout = wc::Placement;

// f(D{}, E{}) for the descriptor of op and the element type of t.
template <class F>
decltype(auto) with_op(Collective op, dtype t, F&& f) {
  return wc::detail::visit_dtype(t, [&](auto e) { return wc::collectives::visit(op, [&](auto d) { return f(d, e); }); });
}

// Buffer elements per rank the op needs (the larger of its send and receive side).
inline std::size_t total_elems(Collective op, std::size_t n, int p) {
  return wc::collectives::visit(op, [&](auto d) {
    const wc::Extent e = d.extent(n, p);
    return std::max(e.in, e.out);
  });
}

inline Layout layout(Collective op, bool in_place, std::byte* send, std::byte* recv, std::size_t n, std::size_t es,
                     int r, int root) {
  if (!in_place) return {send, recv};
  return wc::collectives::visit(op, [&](auto d) { return d.in_place(recv, n, es, r, root); });
}

// Fill the input of one call (rank r of p).
inline void fill(Collective op, dtype t, ReduceOp redop, const Layout& L, std::size_t n, int r, int p, int root) {
  with_op(op, t, [&](auto d, auto e) { d.template fill<decltype(e)>(wc::collectives::Exact{redop, p}, L, n, r, root); });
}

// Wrong elements in this rank's output of one call.
inline std::int64_t count_wrong(Collective op, dtype t, ReduceOp redop, const Layout& L, std::size_t n, int r, int p,
                                int root) {
  return with_op(op, t, [&](auto d, auto e) {
    return d.template wrong<decltype(e)>(wc::collectives::Exact{redop, p}, L, n, r, root);
  });
}

template <class Comm>
void invoke(Comm& comm, Collective op, dtype t, ReduceOp redop, const Layout& L, std::size_t n, int root) {
  with_op(op, t, [&](auto d, auto e) {
    using E = decltype(e);
    d.call(comm, static_cast<const E*>(L.in), static_cast<E*>(L.out), n, root, redop);
  });
}

inline double bus_factor(Collective op, int p) {
  return wc::collectives::visit(op, [&](auto d) { return d.bus_factor(p); });
}

}  // namespace weft_bench
