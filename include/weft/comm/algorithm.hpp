// The Algorithm concept: a policy (empty tag or constexpr aggregate of tuning
// knobs) with a name, an alpha-beta cost formula, and its own schedule for
// the collectives it does its own way; every other collective falls back to
// the default schedule (detail/defaults.hpp). run_collective<D>(a, ctx, args)
// is how every caller (the communicator, policies built from other policies)
// runs collective D on policy a, so the choice is made in one place.
//
// A policy's own schedule for D is a member with D's signature
// (collectives::D::own names it: `allreduce(ctx, in, out, n)`,
// `broadcast(ctx, buf, n, root)`, `barrier(ctx)`, ...), else one generic
// member `run(D, ctx, args)` for policies that wrap or forward every
// collective (Auto, Hierarchical, Compressed, Ordered). Data type and reduce op come from ctx.call; counts are
// elements. In-place forms follow NCCL: allreduce and broadcast in == out;
// reduce_scatter out == in + rank*count; allgather in == out + rank*count;
// reduce and gather in == out on the root.
#pragma once

#include <concepts>
#include <cstddef>
#include <string>

#include "collective.hpp"
#include "context.hpp"
#include "detail/defaults.hpp"
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

// Policy A has its own schedule for collective D (descriptor in collective.hpp) over context Ctx.
template <class A, class D, class Ctx>
concept Schedules = requires(const A& a, Ctx& ctx, const Args& x) {
  { a.run(D{}, ctx, x) } -> std::same_as<void>;
} || requires(const A& a, Ctx& ctx, const Args& x) {
  { D::own(a, ctx, x) } -> std::same_as<void>;
};

// Runs collective D on policy a: the policy's own schedule when it has one, else the default.
template <class D, class A, class Ctx>
void run_collective(const A& a, Ctx& ctx, const Args& x) {
  if constexpr (requires { D::own(a, ctx, x); })
    D::own(a, ctx, x);
  else if constexpr (requires { a.run(D{}, ctx, x); })
    a.run(D{}, ctx, x);
  else
    detail::default_schedule(D{}, a, ctx, x);
}

// A policy over transport T: a name, a cost formula, and at least its own
// allreduce (the collective every algorithm exists for); the rest may fall back.
template <class A, class T>
concept AlgorithmFor = Transport<T> && std::copyable<A> && Schedules<A, collectives::Allreduce, Context<T>> &&
    requires(const A& a, Collective op, std::size_t bytes, int p, const CostModel& m) {
      { A::name } -> std::convertible_to<const char*>;
      { a.cost(op, bytes, p, m) } -> std::same_as<double>;
    };

// A policy usable over any transport (checked against an archetype).
template <class A>
concept Algorithm = AlgorithmFor<A, detail::ArchetypeTransport>;

}  // namespace weft::comm
