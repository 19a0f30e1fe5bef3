// Native: delegates every collective to the transport's own implementation
// (MPI_Iallreduce and friends on MpiTransport), still bounded by the call's
// deadline. Using it on a transport without native collectives is a compile
// error that says so.
#pragma once

#include <cstddef>
#include <type_traits>

#include "../algorithm.hpp"
#include "../tuning/cost_model.hpp"
#include "../detail/defaults.hpp"
#include "../transport.hpp"

namespace weft::comm {

struct Native {
  static constexpr const char* name = "native";

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    check(ctx, transport(ctx).native_allreduce(in, out, n, ctx.call.type, ctx.call.reduce, ctx.call.deadline));
  }
  template <class Ctx>
  void reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    check(ctx, transport(ctx).native_reduce_scatter(in, out, n, ctx.call.type, ctx.call.reduce, ctx.call.deadline));
  }
  template <class Ctx>
  void allgather(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    check(ctx, transport(ctx).native_allgather(in, out, n, ctx.call.type, ctx.call.deadline));
  }
  template <class Ctx>
  void broadcast(Ctx& ctx, void* buf, std::size_t n, int root) const {
    check(ctx, transport(ctx).native_broadcast(buf, n, ctx.call.type, root, ctx.call.deadline));
  }
  template <class Ctx>
  void reduce(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    check(ctx, transport(ctx).native_reduce(in, out, n, ctx.call.type, ctx.call.reduce, root, ctx.call.deadline));
  }
  template <class Ctx>
  void gather(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    check(ctx, transport(ctx).native_gather(in, out, n, ctx.call.type, root, ctx.call.deadline));
  }
  template <class Ctx>
  void scatter(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    check(ctx, transport(ctx).native_scatter(in, out, n, ctx.call.type, root, ctx.call.deadline));
  }
  template <class Ctx>
  void alltoall(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    check(ctx, transport(ctx).native_alltoall(in, out, n, ctx.call.type, ctx.call.deadline));
  }
  template <class Ctx>
  void barrier(Ctx& ctx) const {
    check(ctx, transport(ctx).native_barrier(ctx.call.deadline));
  }

  // Unknown internals: modelled as the best of ring / recursive doubling.
  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    const double S = static_cast<double>(bytes), f = detail::frac(p), L = detail::lg(p);
    if (op == Collective::allreduce) {
      double ring = 2 * (p - 1) * m.alpha + 2 * f * S * m.beta + f * S * m.gamma;
      double rd = L * (m.alpha + S * m.beta + S * m.gamma);
      return ring < rd ? ring : rd;
    }
    return detail::default_cost(op, bytes, p, m);
  }

 private:
  template <class Ctx>
  static auto& transport(Ctx& ctx) {
    using T = std::remove_cvref_t<decltype(ctx.transport())>;
    static_assert(NativeCollectives<T>,
                  "comm::Native delegates to the transport's own collectives and this transport has none: "
                  "use Ring, Tree, HalvingDoubling, Hierarchical or Auto (MpiTransport and ThreadTransport have native collectives)");
    return ctx.transport();
  }
  template <class Ctx>
  static void check(Ctx& ctx, WaitStatus s) {
    if (s != WaitStatus::done) ctx.fail(s, -1);
  }
};

static_assert(Algorithm<Native>);

}  // namespace weft::comm
