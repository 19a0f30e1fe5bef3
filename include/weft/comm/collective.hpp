// Each collective described once, as nccl-tests describes its tests: a
// descriptor per collective (collectives::Allreduce, ...) holds its run-time
// tag and name, the elements one rank passes in and gets back, the
// bus-bandwidth factor, where its in-place form puts input and output, how
// to fill exact inputs and count wrong elements of the result, how to call it
// on a Communicator, and how to call an algorithm policy's own schedule for
// it. The communicator, the policies' fallbacks (algorithm.hpp), weft-bench
// and the tests read these instead of each switching over the collectives;
// visit() is the one place a run-time Collective becomes its descriptor.
//
// Counts follow NCCL: n is the per-rank block for reduce_scatter, allgather,
// gather, scatter and alltoall (those move p blocks of n), the whole buffer
// for allreduce, broadcast and reduce.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <tuple>
#include <type_traits>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "reduce_op.hpp"

namespace weft::comm {

// Run-time tags: they label calls in fingerprints, errors and traces, and select cost formulas.
enum class Collective : std::uint8_t {
  allreduce,
  reduce_scatter,
  allgather,
  broadcast,
  reduce,
  gather,
  scatter,
  alltoall,
  barrier,
  send,
  recv,
};

// The buffers and count of one call of a policy's schedule (element type and
// reduce op travel in Context::call). broadcast reads and writes `out`.
struct Args {
  const void* in = nullptr;
  void* out = nullptr;
  std::size_t count = 0;
  int root = -1;
};

// Elements of one rank's input and output buffers for a call of count n.
struct Extent {
  std::size_t in = 0, out = 0;
};

// Where one call's input and output lie (out-of-place or in-place).
struct Placement {
  void* in = nullptr;
  void* out = nullptr;
};

namespace collectives {

// Exact inputs (nccl-tests' habit): small integers chosen so every partial
// result is exactly representable in every dtype (bf16 holds integers up to
// 256) in any combination order, for any rank count, so a check counts wrong
// elements instead of applying a tolerance. Reductions with `op` over p ranks;
// data moved without combining is distinct per (rank, index).
struct Exact {
  ReduceOp op = ReduceOp::sum;
  int p = 1;

  template <class E>
  static E of(std::int64_t v) {
    if constexpr (std::is_same_v<E, half> || std::is_same_v<E, bfloat16>)
      return E(static_cast<float>(v));
    else if constexpr (std::is_integral_v<E>)
      return static_cast<E>(static_cast<std::make_unsigned_t<E>>(static_cast<std::uint64_t>(v)));  // wraps
    else
      return static_cast<E>(v);
  }
  template <class E>
  static bool same(E a, E b) {
    if constexpr (std::is_same_v<E, half> || std::is_same_v<E, bfloat16>)
      return static_cast<float>(a) == static_cast<float>(b);
    else
      return a == b;
  }

  std::int64_t reduce_input(int r, std::size_t i) const {
    const auto ii = static_cast<std::int64_t>(i % 1000003);
    switch (op) {
      case ReduceOp::sum: return (r + ii) % 3;
      case ReduceOp::prod:
        if (r < 8 && (ii + r) % 5 == 0) return 2;
        return (ii + 2 * r) % 3 == 0 ? -1 : 1;
      case ReduceOp::min:
      case ReduceOp::max: return (r * 13 + ii * 7) % 17;
      case ReduceOp::avg: {  // b_i + d_r with sum_r d_r = 0: the average is b_i exactly
        std::int64_t b = ii % 7 + 1;
        if (p % 2 == 1 && r == p - 1) return b;
        return b + (r % 2 == 0 ? 1 : -1);
      }
    }
    return 0;
  }
  std::int64_t reduce_result(std::size_t i) const {
    std::int64_t acc = reduce_input(0, i);
    for (int r = 1; r < p; ++r) {
      std::int64_t x = reduce_input(r, i);
      switch (op) {
        case ReduceOp::sum:
        case ReduceOp::avg: acc += x; break;
        case ReduceOp::prod: acc *= x; break;
        case ReduceOp::min: acc = std::min(acc, x); break;
        case ReduceOp::max: acc = std::max(acc, x); break;
      }
    }
    return op == ReduceOp::avg ? acc / p : acc;
  }
  static std::int64_t move_input(int r, std::size_t i) {
    return static_cast<std::int64_t>((static_cast<std::size_t>(r) * 131 + i) % 251);
  }

  // The three kinds of element a descriptor fills and checks, typed.
  template <class E>
  E reduced(int r, std::size_t i) const { return of<E>(reduce_input(r, i)); }
  template <class E>
  E result(std::size_t i) const { return of<E>(reduce_result(i)); }
  template <class E>
  E moved(int r, std::size_t i) const { return of<E>(move_input(r, i)); }
};

namespace detail {
inline double frac(int p) { return p > 0 ? static_cast<double>(p - 1) / p : 0.0; }
inline std::byte* at(void* base, std::size_t elems, std::size_t es) { return static_cast<std::byte*>(base) + elems * es; }
constexpr std::size_t P(int p) { return static_cast<std::size_t>(p); }

// Counts out[k * n + i] != want(k, i) over k < blocks, i < n.
template <class E, class Want>
std::int64_t wrong_blocks(const void* out, std::size_t blocks, std::size_t n, Want&& want) {
  const E* o = static_cast<const E*>(out);
  std::int64_t w = 0;
  for (std::size_t k = 0; k < blocks; ++k)
    for (std::size_t i = 0; i < n; ++i) w += !Exact::same(o[k * n + i], want(k, i));
  return w;
}
}  // namespace detail

// Each descriptor:
//   op, name, rooted, reduces       tag and what the call takes
//   extent(n, p)                    elements of this rank's input and output
//   needs_in(is_root), needs_out(is_root)   which buffers this rank must pass
//   bus_factor(p)                   busbw = algbw x factor (nccl-tests' PERFORMANCE.md)
//   in_place(buf, n, es, r, root)   NCCL's in-place placement within one buffer
//   fill<E>(x, at, n, r, root)      exact inputs of rank r into `at`
//   wrong<E>(x, at, n, r, root)     wrong elements of rank r's result in `at`
//   call(comm, in, out, n, root, op)  the Communicator's pointer API
//   own(a, ctx, args)               policy a's own schedule (absent: algorithm.hpp's default)

struct Allreduce {
  static constexpr Collective op = Collective::allreduce;
  static constexpr const char* name = "allreduce";
  static constexpr bool rooted = false, reduces = true;
  static constexpr Extent extent(std::size_t n, int) { return {n, n}; }
  static constexpr bool needs_in(bool) { return true; }
  static constexpr bool needs_out(bool) { return true; }
  static double bus_factor(int p) { return 2 * detail::frac(p); }
  static Placement in_place(void* buf, std::size_t, std::size_t, int, int) { return {buf, buf}; }
  template <class E>
  static void fill(const Exact& x, Placement at, std::size_t n, int r, int) {
    for (std::size_t i = 0; i < n; ++i) static_cast<E*>(at.in)[i] = x.reduced<E>(r, i);
  }
  template <class E>
  static std::int64_t wrong(const Exact& x, Placement at, std::size_t n, int, int) {
    return detail::wrong_blocks<E>(at.out, 1, n, [&](std::size_t, std::size_t i) { return x.result<E>(i); });
  }
  template <class C, class E>
  static void call(C& c, const E* in, E* out, std::size_t n, int, ReduceOp op) { c.allreduce(in, out, n, op); }
  template <class A, class Ctx>
  static auto own(const A& a, Ctx& ctx, const Args& x) -> decltype(a.allreduce(ctx, x.in, x.out, x.count)) {
    return a.allreduce(ctx, x.in, x.out, x.count);
  }
};

struct ReduceScatter {
  static constexpr Collective op = Collective::reduce_scatter;
  static constexpr const char* name = "reduce_scatter";
  static constexpr bool rooted = false, reduces = true;
  static constexpr Extent extent(std::size_t n, int p) { return {n * detail::P(p), n}; }
  static constexpr bool needs_in(bool) { return true; }
  static constexpr bool needs_out(bool) { return true; }
  static double bus_factor(int p) { return detail::frac(p); }
  static Placement in_place(void* buf, std::size_t n, std::size_t es, int r, int) {
    return {buf, detail::at(buf, detail::P(r) * n, es)};
  }
  template <class E>
  static void fill(const Exact& x, Placement at, std::size_t n, int r, int) {
    for (std::size_t i = 0; i < n * detail::P(x.p); ++i) static_cast<E*>(at.in)[i] = x.reduced<E>(r, i);
  }
  template <class E>
  static std::int64_t wrong(const Exact& x, Placement at, std::size_t n, int r, int) {
    return detail::wrong_blocks<E>(at.out, 1, n,
                                   [&](std::size_t, std::size_t i) { return x.result<E>(detail::P(r) * n + i); });
  }
  template <class C, class E>
  static void call(C& c, const E* in, E* out, std::size_t n, int, ReduceOp op) { c.reduce_scatter(in, out, n, op); }
  template <class A, class Ctx>
  static auto own(const A& a, Ctx& ctx, const Args& x) -> decltype(a.reduce_scatter(ctx, x.in, x.out, x.count)) {
    return a.reduce_scatter(ctx, x.in, x.out, x.count);
  }
};

struct Allgather {
  static constexpr Collective op = Collective::allgather;
  static constexpr const char* name = "allgather";
  static constexpr bool rooted = false, reduces = false;
  static constexpr Extent extent(std::size_t n, int p) { return {n, n * detail::P(p)}; }
  static constexpr bool needs_in(bool) { return true; }
  static constexpr bool needs_out(bool) { return true; }
  static double bus_factor(int p) { return detail::frac(p); }
  static Placement in_place(void* buf, std::size_t n, std::size_t es, int r, int) {
    return {detail::at(buf, detail::P(r) * n, es), buf};
  }
  template <class E>
  static void fill(const Exact& x, Placement at, std::size_t n, int r, int) {
    for (std::size_t i = 0; i < n; ++i) static_cast<E*>(at.in)[i] = x.moved<E>(r, i);
  }
  template <class E>
  static std::int64_t wrong(const Exact& x, Placement at, std::size_t n, int, int) {
    return detail::wrong_blocks<E>(at.out, detail::P(x.p), n,
                                   [&](std::size_t k, std::size_t i) { return x.moved<E>(static_cast<int>(k), i); });
  }
  template <class C, class E>
  static void call(C& c, const E* in, E* out, std::size_t n, int, ReduceOp) { c.allgather(in, out, n); }
  template <class A, class Ctx>
  static auto own(const A& a, Ctx& ctx, const Args& x) -> decltype(a.allgather(ctx, x.in, x.out, x.count)) {
    return a.allgather(ctx, x.in, x.out, x.count);
  }
};

struct Broadcast {
  static constexpr Collective op = Collective::broadcast;
  static constexpr const char* name = "broadcast";
  static constexpr bool rooted = true, reduces = false;
  static constexpr Extent extent(std::size_t n, int) { return {n, n}; }  // one buffer, read on the root
  static constexpr bool needs_in(bool) { return false; }
  static constexpr bool needs_out(bool) { return true; }
  static double bus_factor(int) { return 1; }
  static Placement in_place(void* buf, std::size_t, std::size_t, int, int) { return {buf, buf}; }
  template <class E>
  static void fill(const Exact& x, Placement at, std::size_t n, int r, int root) {
    for (std::size_t i = 0; i < n; ++i) static_cast<E*>(at.out)[i] = r == root ? x.moved<E>(root, i) : Exact::of<E>(0);
  }
  template <class E>
  static std::int64_t wrong(const Exact& x, Placement at, std::size_t n, int, int root) {
    return detail::wrong_blocks<E>(at.out, 1, n, [&](std::size_t, std::size_t i) { return x.moved<E>(root, i); });
  }
  template <class C, class E>
  static void call(C& c, const E*, E* out, std::size_t n, int root, ReduceOp) { c.broadcast(out, n, root); }
  template <class A, class Ctx>
  static auto own(const A& a, Ctx& ctx, const Args& x) -> decltype(a.broadcast(ctx, x.out, x.count, x.root)) {
    return a.broadcast(ctx, x.out, x.count, x.root);
  }
};

struct Reduce {
  static constexpr Collective op = Collective::reduce;
  static constexpr const char* name = "reduce";
  static constexpr bool rooted = true, reduces = true;
  static constexpr Extent extent(std::size_t n, int) { return {n, n}; }
  static constexpr bool needs_in(bool) { return true; }
  static constexpr bool needs_out(bool is_root) { return is_root; }
  static double bus_factor(int) { return 1; }
  static Placement in_place(void* buf, std::size_t, std::size_t, int, int) { return {buf, buf}; }
  template <class E>
  static void fill(const Exact& x, Placement at, std::size_t n, int r, int root) {
    Allreduce::fill<E>(x, at, n, r, root);
  }
  template <class E>
  static std::int64_t wrong(const Exact& x, Placement at, std::size_t n, int r, int root) {
    return r == root ? Allreduce::wrong<E>(x, at, n, r, root) : 0;
  }
  template <class C, class E>
  static void call(C& c, const E* in, E* out, std::size_t n, int root, ReduceOp op) { c.reduce(in, out, n, root, op); }
  template <class A, class Ctx>
  static auto own(const A& a, Ctx& ctx, const Args& x) -> decltype(a.reduce(ctx, x.in, x.out, x.count, x.root)) {
    return a.reduce(ctx, x.in, x.out, x.count, x.root);
  }
};

struct Gather {
  static constexpr Collective op = Collective::gather;
  static constexpr const char* name = "gather";
  static constexpr bool rooted = true, reduces = false;
  static constexpr Extent extent(std::size_t n, int p) { return {n, n * detail::P(p)}; }
  static constexpr bool needs_in(bool) { return true; }
  static constexpr bool needs_out(bool is_root) { return is_root; }
  static double bus_factor(int p) { return detail::frac(p); }
  static Placement in_place(void* buf, std::size_t n, std::size_t es, int r, int root) {
    return {r == root ? detail::at(buf, detail::P(root) * n, es) : buf, buf};
  }
  template <class E>
  static void fill(const Exact& x, Placement at, std::size_t n, int r, int root) {
    Allgather::fill<E>(x, at, n, r, root);
  }
  template <class E>
  static std::int64_t wrong(const Exact& x, Placement at, std::size_t n, int r, int root) {
    return r == root ? Allgather::wrong<E>(x, at, n, r, root) : 0;
  }
  template <class C, class E>
  static void call(C& c, const E* in, E* out, std::size_t n, int root, ReduceOp) { c.gather(in, out, n, root); }
  template <class A, class Ctx>
  static auto own(const A& a, Ctx& ctx, const Args& x) -> decltype(a.gather(ctx, x.in, x.out, x.count, x.root)) {
    return a.gather(ctx, x.in, x.out, x.count, x.root);
  }
};

struct Scatter {
  static constexpr Collective op = Collective::scatter;
  static constexpr const char* name = "scatter";
  static constexpr bool rooted = true, reduces = false;
  static constexpr Extent extent(std::size_t n, int p) { return {n * detail::P(p), n}; }
  static constexpr bool needs_in(bool is_root) { return is_root; }
  static constexpr bool needs_out(bool) { return true; }
  static double bus_factor(int p) { return detail::frac(p); }
  static Placement in_place(void* buf, std::size_t n, std::size_t es, int r, int root) {
    return {buf, r == root ? detail::at(buf, detail::P(root) * n, es) : buf};
  }
  template <class E>
  static void fill(const Exact& x, Placement at, std::size_t n, int r, int root) {
    if (r == root)
      for (std::size_t i = 0; i < n * detail::P(x.p); ++i) static_cast<E*>(at.in)[i] = x.moved<E>(root, i);
  }
  template <class E>
  static std::int64_t wrong(const Exact& x, Placement at, std::size_t n, int r, int root) {
    return detail::wrong_blocks<E>(at.out, 1, n,
                                   [&](std::size_t, std::size_t i) { return x.moved<E>(root, detail::P(r) * n + i); });
  }
  template <class C, class E>
  static void call(C& c, const E* in, E* out, std::size_t n, int root, ReduceOp) { c.scatter(in, out, n, root); }
  template <class A, class Ctx>
  static auto own(const A& a, Ctx& ctx, const Args& x) -> decltype(a.scatter(ctx, x.in, x.out, x.count, x.root)) {
    return a.scatter(ctx, x.in, x.out, x.count, x.root);
  }
};

struct Alltoall {
  static constexpr Collective op = Collective::alltoall;
  static constexpr const char* name = "alltoall";
  static constexpr bool rooted = false, reduces = false;
  static constexpr Extent extent(std::size_t n, int p) { return {n * detail::P(p), n * detail::P(p)}; }
  static constexpr bool needs_in(bool) { return true; }
  static constexpr bool needs_out(bool) { return true; }
  static double bus_factor(int p) { return detail::frac(p); }
  static Placement in_place(void* buf, std::size_t, std::size_t, int, int) { return {buf, buf}; }
  template <class E>
  static void fill(const Exact& x, Placement at, std::size_t n, int r, int) {
    for (std::size_t i = 0; i < n * detail::P(x.p); ++i) static_cast<E*>(at.in)[i] = x.moved<E>(r, i);
  }
  template <class E>
  static std::int64_t wrong(const Exact& x, Placement at, std::size_t n, int r, int) {
    return detail::wrong_blocks<E>(at.out, detail::P(x.p), n, [&](std::size_t k, std::size_t i) {
      return x.moved<E>(static_cast<int>(k), detail::P(r) * n + i);
    });
  }
  template <class C, class E>
  static void call(C& c, const E* in, E* out, std::size_t n, int, ReduceOp) { c.alltoall(in, out, n); }
  template <class A, class Ctx>
  static auto own(const A& a, Ctx& ctx, const Args& x) -> decltype(a.alltoall(ctx, x.in, x.out, x.count)) {
    return a.alltoall(ctx, x.in, x.out, x.count);
  }
};

struct Barrier {
  static constexpr Collective op = Collective::barrier;
  static constexpr const char* name = "barrier";
  static constexpr bool rooted = false, reduces = false;
  static constexpr Extent extent(std::size_t, int) { return {0, 0}; }
  static constexpr bool needs_in(bool) { return false; }
  static constexpr bool needs_out(bool) { return false; }
  static double bus_factor(int) { return 1; }
  static Placement in_place(void* buf, std::size_t, std::size_t, int, int) { return {buf, buf}; }
  template <class E>
  static void fill(const Exact&, Placement, std::size_t, int, int) {}
  template <class E>
  static std::int64_t wrong(const Exact&, Placement, std::size_t, int, int) { return 0; }
  template <class C, class E>
  static void call(C& c, const E*, E*, std::size_t, int, ReduceOp) { c.barrier(); }
  template <class A, class Ctx>
  static auto own(const A& a, Ctx& ctx, const Args&) -> decltype(a.barrier(ctx)) {
    return a.barrier(ctx);
  }
};

// Every collective, in the order of the Collective tags.
using All = std::tuple<Allreduce, ReduceScatter, Allgather, Broadcast, Reduce, Gather, Scatter, Alltoall, Barrier>;

// f(D{}) for each descriptor D, in order.
template <class F>
constexpr void for_each(F&& f) {
  std::apply([&](auto... d) { (f(d), ...); }, All{});
}

// f(D{}) for the descriptor of a run-time tag (send and recv are point-to-point, not collectives).
template <class F>
decltype(auto) visit(Collective c, F&& f) {
  switch (c) {
    case Collective::allreduce: return f(Allreduce{});
    case Collective::reduce_scatter: return f(ReduceScatter{});
    case Collective::allgather: return f(Allgather{});
    case Collective::broadcast: return f(Broadcast{});
    case Collective::reduce: return f(Reduce{});
    case Collective::gather: return f(Gather{});
    case Collective::scatter: return f(Scatter{});
    case Collective::alltoall: return f(Alltoall{});
    case Collective::barrier: return f(Barrier{});
    case Collective::send:
    case Collective::recv: break;
  }
  throw_error<ValueError>("comm: ", static_cast<int>(c), " is not a collective (send and recv are point-to-point)");
}

// Is (in, out) rank r's in-place placement of a call of count n (the
// Placement D::in_place gives for one buffer)? Every rank answers alike when
// every rank calls in place. Rooted ops answer false: only the root's
// buffers may coincide there, so ranks would disagree. Alltoall too: the
// Communicator stages an in-place input, so the schedules see two buffers.
// In-run Auto keeps its decisions per placement by this (tuning/in_run.hpp).
template <class D>
bool is_in_place(const void* in, const void* out, std::size_t n, std::size_t es, int r) {
  if constexpr (D::rooted || D::op == Collective::alltoall || D::op == Collective::barrier) {
    return false;
  } else {
    if (in == nullptr || out == nullptr) return false;
    for (const void* base : {in, out}) {
      const Placement q = D::in_place(const_cast<void*>(base), n, es, r, -1);
      if (q.in == in && q.out == out) return true;
    }
    return false;
  }
}

// The size nccl-tests reports for a call of count n: the larger of one rank's buffers.
constexpr std::size_t reported_bytes(Extent e, std::size_t es) { return std::max(e.in, e.out) * es; }

}  // namespace collectives

// The tag's name, and whether it takes a root / combines values, read from its descriptor.
constexpr const char* collective_name(Collective c) {
  if (c == Collective::send) return "send";
  if (c == Collective::recv) return "recv";
  const char* name = "?";
  collectives::for_each([&](auto d) {
    if (d.op == c) name = d.name;
  });
  return name;
}
constexpr bool has_root(Collective c) {
  bool r = false;
  collectives::for_each([&](auto d) { r = r || (d.op == c && d.rooted); });
  return r;
}
constexpr bool is_reduction(Collective c) {
  bool r = false;
  collectives::for_each([&](auto d) { r = r || (d.op == c && d.reduces); });
  return r;
}

static_assert(collective_name(Collective::reduce_scatter)[0] == 'r' && has_root(Collective::scatter) &&
              !has_root(Collective::alltoall) && is_reduction(Collective::reduce) && !is_reduction(Collective::gather));

}  // namespace weft::comm
