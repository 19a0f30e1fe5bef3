// The Algorithm concept: a policy (empty tag or constexpr aggregate of tuning
// knobs) implementing every collective over Context<T> for any Transport T,
// plus its alpha-beta cost formula. Data type and reduce op come from
// ctx.call; counts are elements. In-place forms follow NCCL: allreduce and
// broadcast in == out; reduce_scatter out == in + rank*count; allgather
// in == out + rank*count; reduce and gather in == out on the root.
#pragma once

#include <concepts>
#include <cstddef>
#include <string>

#include "collective.hpp"
#include "context.hpp"
#include "tuning/cost_model.hpp"
#include "transport.hpp"

namespace weft::comm {

namespace detail {
// A transport that exists only to check policies against the concept.
struct ArchetypeTransport {
  struct Request {
    int peer() const;
  };
  int rank() const;
  int size() const;
  int node() const;
  Request isend(const void*, std::size_t, int, Tag);
  Request irecv(void*, std::size_t, int, Tag);
  bool test(Request&);
  WaitStatus wait(Request&, Deadline);
  void cancel(Request&);
  std::string failure() const;
  ArchetypeTransport split(int, int, Deadline) const;
  const char* name() const;
};
}  // namespace detail

template <class A, class T>
concept AlgorithmFor = Transport<T> && std::copyable<A> &&
    requires(const A& a, Context<T>& ctx, const void* in, void* out, std::size_t n, int root, Collective op,
             std::size_t bytes, int p, const CostModel& m) {
      { A::name } -> std::convertible_to<const char*>;
      { a.allreduce(ctx, in, out, n) } -> std::same_as<void>;
      { a.reduce_scatter(ctx, in, out, n) } -> std::same_as<void>;
      { a.allgather(ctx, in, out, n) } -> std::same_as<void>;
      { a.broadcast(ctx, out, n, root) } -> std::same_as<void>;
      { a.reduce(ctx, in, out, n, root) } -> std::same_as<void>;
      { a.gather(ctx, in, out, n, root) } -> std::same_as<void>;
      { a.scatter(ctx, in, out, n, root) } -> std::same_as<void>;
      { a.alltoall(ctx, in, out, n) } -> std::same_as<void>;
      { a.barrier(ctx) } -> std::same_as<void>;
      { a.cost(op, bytes, p, m) } -> std::same_as<double>;
    };

// A policy usable over any transport (checked against an archetype).
template <class A>
concept Algorithm = AlgorithmFor<A, detail::ArchetypeTransport>;

}  // namespace weft::comm
