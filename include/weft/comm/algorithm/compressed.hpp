// Compressed<Codec, Algorithm>: an algorithm policy that compresses f32
// allreduces (sum, avg) with a codec (comm/codec/) and runs the inner
// algorithm on the compressed payloads:
//
//   linear codec (casts, random-k, PowerSGD): each round encodes, allreduces
//     the payload (sum) with the inner algorithm, decodes. Bytes on the wire
//     are the inner algorithm's for the payload size.
//   gather codec (top-k, int8, sign): every rank encodes a fixed-size payload,
//     the inner algorithm allgathers them, and each rank decodes all p and
//     adds them in rank order, so every rank gets bitwise the same result.
//     Each rank receives (p-1) payloads: this wins while payload x p is
//     smaller than the 2 x buffer a ring allreduce moves.
//
// avg divides the decoded sum by p. Everything else passes through the inner
// algorithm uncompressed: other collectives (broadcast, allgather, ... so a
// DataParallel can use this communicator for setup), other dtypes, and
// prod/min/max. Deterministic mode (CommOptions::deterministic) reduces in
// rank order before any policy runs, so a Communicator refuses it with this
// policy (`compresses`) rather than silently sending uncompressed.
//
// Codec state is kept under the name the call gives (the parameter or bucket;
// unnamed calls fall back to the buffer's address), for checkpoints:
//   Communicator<Compressed<TopK, Ring>, T> c{t, {.codec = {.fraction = 0.01}}};
//   c.allreduce(grad, ReduceOp::avg, {.name = "l1.weight"});
//   c.algorithm().states->names();   // {"compressed/l1.weight/residual"}
// The policy is copyable; copies share one state table (the communicator's
// copy and the one the user built it from).
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>

#include "../algorithm.hpp"
#include "../codec/cast.hpp"
#include "../codec/codec.hpp"
#include "../codec/state.hpp"
#include "../tuning/cost_model.hpp"
#include "../detail/blocks.hpp"
#include "ring.hpp"

namespace weft::comm {

template <class C, class A>
struct Compressed;

namespace detail {
template <class A>
inline constexpr bool is_compressed_v = false;
template <class C, class A>
inline constexpr bool is_compressed_v<Compressed<C, A>> = true;

template <class C>
struct codec_state {
  using type = NoState;  // keeps a wrong argument to one error: the static_assert's sentence
};
template <class C>
  requires requires { typename C::State; }
struct codec_state<C> {
  using type = typename C::State;
};

template <class C>
inline constexpr bool linear_with_byte_payload = [] {
  if constexpr (requires { C::linear; typename C::payload_type; })
    return C::linear && !summable_payload_v<typename C::payload_type>;
  else
    return false;
}();

}  // namespace detail

template <class C, class A = Ring>
struct Compressed {
  static_assert(!(Algorithm<C> && !Algorithm<A>),
                "comm::Compressed<Codec, Algorithm> takes the codec first and the algorithm second: write "
                "Compressed<TopK, Ring>, not Compressed<Ring, TopK>");
  static_assert(!detail::is_compressed_v<A>,
                "comm::Compressed inside comm::Compressed would compress twice and its payloads are bytes the "
                "outer codec cannot read: compress once, with Compressed<Codec, Ring> (or another plain algorithm)");
  static_assert(!detail::linear_with_byte_payload<C>,
                "comm::Compressed: this codec says it is linear but its payload_type is not f32, f16 or bf16, so "
                "the inner algorithm cannot sum it; declare it linear = false to send it by allgather instead");
  static_assert(Algorithm<C> || Codec<C>,
                "comm::Compressed<Codec, Algorithm>: the first argument is not a Codec (it needs name, linear, "
                "State, check(), and encode/decode for linear codecs or payload_bytes/encode/decode_add for "
                "gather codecs; see weft/comm/codec/codec.hpp)");
  static_assert(Algorithm<A> || Algorithm<C>,
                "comm::Compressed<Codec, Algorithm>: the second argument is not an algorithm policy (Ring, Tree, "
                "HalvingDoubling, Native, ...)");

  using codec_type = C;
  using state_table = CodecStates<typename detail::codec_state<C>::type>;
  static constexpr const char* name = "compressed";
  static constexpr bool compresses = true;  // Communicator refuses deterministic mode (see above)

  C codec{};
  A inner{};
  std::shared_ptr<state_table> states = std::make_shared<state_table>();

  // The inner algorithm's groups, split when the Communicator is built (Hierarchical).
  template <Transport T, Executor E>
    requires requires(A& a, Context<T, E>& c, Deadline d) { a.prepare(c, d); }
  void prepare(Context<T, E>& ctx, Deadline dl) {
    inner.prepare(ctx, dl);
  }

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    const ReduceOp op = ctx.call.reduce;
    if (ctx.call.type != dtype::f32 || (op != ReduceOp::sum && op != ReduceOp::avg)) {
      run_collective<collectives::Allreduce>(inner, ctx, {in, out, n});
      return;
    }
    const CodecCall k{&ctx.call, ctx.call.seq, ctx.name_of(ctx.rank()), ctx.size(), C::name};
    codec.check(n, k);
    auto& st = ctx.call.name.empty() ? states->at(out, n, k) : states->by_name(ctx.call.name, n, k);
    // The codec runs on the host. Over a device transport (NcclTransport) the
    // input is downloaded, each payload goes up to the device for the inner
    // algorithm and back, and the decoded result goes up into `out`: the
    // wire carries the compressed bytes, PCIe the whole buffer twice.
    constexpr bool host = host_buffers_v<Ctx>;
    using Exec = typename Ctx::executor_type;
    static_assert(host || StagingExecutor<Exec>,
                  "comm::Compressed runs its codec on the host: over a device transport the executor needs "
                  "download() and upload() (CudaExecutor has them; see StagingExecutor in comm/context.hpp)");
    const Exec& ex = ctx.executor();
    const auto* x = static_cast<const float*>(in);
    auto* y = static_cast<float*>(out);
    detail::BasicBuffer<Exec> wire{ex};  // device payloads of this call (never allocated on the host)
    if constexpr (!host) {
      auto* xh = reinterpret_cast<float*>(states->scratch(n * sizeof(float), 1));
      ex.download(xh, in, n * sizeof(float));
      x = xh;
      y = reinterpret_cast<float*>(states->scratch(n * sizeof(float), 2));
    }
    const CallInfo saved = ctx.call;
    try {
      if constexpr (C::linear) {
        using P = typename C::payload_type;
        const int rounds = codec.rounds(st, n);
        for (int round = 0; round < rounds; ++round) {
          const std::size_t pc = codec.payload_count(st, n, round);
          auto* pl = reinterpret_cast<P*>(states->scratch(pc * sizeof(P)));
          codec.encode(st, x, n, pl, round, k);
          void* w = pl;
          if constexpr (!host) ex.upload(w = wire.get(pc * sizeof(P)), pl, pc * sizeof(P));
          ctx.call.type = dtype_v<P>;
          ctx.call.count = pc;
          ctx.call.reduce = ReduceOp::sum;
          run_collective<collectives::Allreduce>(inner, ctx, {w, w, pc});
          ctx.call = saved;
          if constexpr (!host) ex.download(pl, w, pc * sizeof(P));
          codec.decode(st, pl, y, n, round, k);
        }
      } else {
        const std::size_t b = codec.payload_bytes(n), p = static_cast<std::size_t>(ctx.size());
        const std::size_t at = static_cast<std::size_t>(ctx.rank()) * b;
        std::byte* all = states->scratch(b * p);
        codec.encode(st, x, n, all + at, k);
        std::byte* w = all;
        if constexpr (!host) ex.upload((w = wire.get(b * p)) + at, all + at, b);
        ctx.call.type = dtype::u8;
        ctx.call.count = b;
        ctx.call.reduce = ReduceOp::sum;
        run_collective<collectives::Allgather>(inner, ctx, {w + at, w, b});
        ctx.call = saved;
        if constexpr (!host) ex.download(all, w, b * p);
        std::memset(y, 0, n * sizeof(float));
        for (std::size_t r = 0; r < p; ++r) codec.decode_add(all + r * b, y, n, k);
      }
    } catch (...) {
      ctx.call = saved;
      throw;
    }
    if constexpr (!host) ex.upload(out, y, n * sizeof(float));
    if (op == ReduceOp::avg) ctx.divide(out, n, ctx.size());
  }

  // Every other collective: the inner algorithm's, uncompressed.
  template <class D, class Ctx>
  void run(D, Ctx& ctx, const Args& x) const {
    run_collective<D>(inner, ctx, x);
  }

  // Bytes of payload one rank contributes per allreduce of `n` f32 values
  // (all rounds; for gather codecs, the one payload each rank sends to all).
  std::size_t payload_bytes(std::size_t n) const {
    if constexpr (C::linear) {
      typename C::State st{};
      std::size_t total = 0;
      for (int round = 0; round < codec.rounds(st, n); ++round)
        total += codec.payload_count(st, n, round) * sizeof(typename C::payload_type);
      return total;
    } else {
      return codec.payload_bytes(n);
    }
  }

  // Allreduce of `bytes` of f32 costs the inner algorithm's allreduce of the
  // payload (linear) or its allgather of p payloads (gather); other
  // collectives cost what the inner algorithm charges.
  double cost(Collective op, std::size_t bytes, int p, const CostModel& m) const {
    if (op != Collective::allreduce) return inner.cost(op, bytes, p, m);
    const std::size_t n = bytes / sizeof(float);
    if constexpr (C::linear) {
      typename C::State st{};
      double t = 0;
      for (int round = 0; round < codec.rounds(st, n); ++round)
        t += inner.cost(op, codec.payload_count(st, n, round) * sizeof(typename C::payload_type), p, m);
      return t;
    } else {
      return inner.cost(Collective::allgather, codec.payload_bytes(n) * static_cast<std::size_t>(p), p, m) +
             static_cast<double>(p) * static_cast<double>(bytes) * m.gamma;
    }
  }
};

static_assert(Algorithm<Compressed<F16, Ring>>);

}  // namespace weft::comm
