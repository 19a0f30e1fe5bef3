// QuantizedRing<Codec>: a ring allreduce whose every hop carries a quantized
// payload (Int8 by default): decode-reduce-encode, the way a codec whose
// scales differ per rank (not linear: int8, sign) can still use a ring
// instead of an allgather of p payloads.
//
//   reduce-scatter, step s = 0 .. p-2: send encode(acc[block (r - s) mod p]) to
//     the right; receive block (r - s - 1) mod p from the left, decode and add
//     it into acc (acc starts as this rank's input)
//   then rank r owns block (r + 1) mod p, summed: it encodes it once, keeps
//     decode(encode(block)) as its result, and the allgather forwards that
//     payload unchanged around the ring (every rank decodes the same bytes,
//     so every rank ends with bitwise the same result)
//
// Bytes: each rank sends 2(p-1) payloads of n/p values (Int8 at chunk 256:
// about n/p + 4n/(256p) bytes each, a quarter of the f32 ring's). Error:
// every block is quantized p-1 times in the reduce-scatter and once more in
// the allgather, each adding at most s/2 (round to nearest; s = max |partial
// sum| over the chunk / 127), so |y - sum| <= p * max_chunk |partial| / 254
// (tests/comm/quantized_ring.cpp checks it against a naive sum). Codec state
// (error feedback) is not kept: the codec must be stateless (Int8, F16, BF16).
//
// f32 sum and avg only; every other call (dtypes, reduce ops, collectives)
// runs the Fallback policy uncompressed, like Compressed does.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../algorithm.hpp"
#include "../codec/codec.hpp"
#include "../codec/int8.hpp"
#include "../context.hpp"
#include "../detail/blocks.hpp"
#include "../tuning/cost_model.hpp"
#include "ring.hpp"

namespace weft::comm {

template <class C = Int8, Algorithm Fallback = Ring>
struct QuantizedRing {
  static_assert(std::is_same_v<typename C::State, detail::NoState>,
                "QuantizedRing re-encodes partial sums at every hop, so a codec's per-rank state (error "
                "feedback) has no meaning there: use a stateless codec (Int8), or Compressed<Codec, Ring>");
  static_assert(requires(const C& c, std::size_t n) {
    { c.payload_bytes(n) } -> std::convertible_to<std::size_t>;
  }, "QuantizedRing needs a codec with a byte payload (payload_bytes, encode to bytes, decode_add): Int8");
  static constexpr const char* name = "quantized_ring";
  static constexpr bool compresses = true;  // deterministic mode would bypass it: refused
  C codec{};
  Fallback fallback{};

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    static_assert(host_buffers_v<Ctx>,
                  "QuantizedRing decodes and re-encodes on the host at every hop, so its buffers must be host "
                  "memory: over a device transport (NcclTransport) use Compressed<Int8, Ring>, which stages "
                  "through the host once per call");
    const ReduceOp op = ctx.call.reduce;
    if (ctx.call.type != dtype::f32 || (op != ReduceOp::sum && op != ReduceOp::avg) || ctx.size() == 1) {
      run_collective<collectives::Allreduce>(fallback, ctx, {in, out, n, -1});
      return;
    }
    const int p = ctx.size(), r = ctx.rank();
    const int right = (r + 1) % p, left = (r + p - 1) % p;
    auto* acc = static_cast<float*>(out);
    if (in != out) ctx.copy(acc, in, n * sizeof(float));
    auto lo = [&](int b) { return static_cast<std::size_t>(b) * n / static_cast<std::size_t>(p); };
    auto len = [&](int b) { return lo(b + 1) - lo(b); };
    std::size_t most = 0;
    for (int b = 0; b < p; ++b) most = std::max(most, codec.payload_bytes(len(b)));
    // (2, most) payloads: [0] what this rank sends, [1] what it receives; slot 1 of the workspace.
    std::byte* buf = ctx.workspace(2 * most, 1);
    std::byte *send = buf, *recv = buf + most;
    typename C::State none{};
    CodecCall k{&ctx.call, ctx.call.seq, ctx.name_of(r), p, C::name};
    const std::uint64_t seq0 = ctx.call.seq * 2 * static_cast<std::uint64_t>(p);
    // Reduce-scatter: decode-reduce-encode at every hop.
    for (int s = 0; s < p - 1; ++s) {
      const int sb = ((r - s) % p + p) % p, rb = ((r - s - 1) % p + p) % p;
      k.seq = seq0 + static_cast<std::uint64_t>(s);  // fresh rounding noise per hop (stochastic codecs)
      codec.encode(none, acc + lo(sb), len(sb), send, k);
      ctx.exchange(send, codec.payload_bytes(len(sb)), right, recv, codec.payload_bytes(len(rb)), left, 0);
      codec.decode_add(recv, acc + lo(rb), len(rb), k);
    }
    // The owned block, quantized once more: the payload every rank decodes.
    const int own = (r + 1) % p;
    k.seq = seq0 + static_cast<std::uint64_t>(p);
    codec.encode(none, acc + lo(own), len(own), send, k);
    std::fill(acc + lo(own), acc + lo(own) + len(own), 0.0f);
    codec.decode_add(send, acc + lo(own), len(own), k);
    // Allgather: forward payloads unchanged.
    for (int s = 0; s < p - 1; ++s) {
      const int sb = ((own - s) % p + p) % p, rb = ((own - s - 1) % p + p) % p;
      ctx.exchange(send, codec.payload_bytes(len(sb)), right, recv, codec.payload_bytes(len(rb)), left, 0);
      std::fill(acc + lo(rb), acc + lo(rb) + len(rb), 0.0f);
      codec.decode_add(recv, acc + lo(rb), len(rb), k);
      std::swap(send, recv);
    }
    if (op == ReduceOp::avg) ctx.divide(acc, n, p);
  }

  // Everything else: the fallback, uncompressed.
  template <class D, class Ctx>
  void run(D, Ctx& ctx, const Args& x) const {
    run_collective<D>(fallback, ctx, x);
  }

  // The f32 ring's formula on a payload of payload_bytes(n/4) per 4 bytes (f32 allreduce).
  double cost(Collective op, std::size_t bytes, int p, const CostModel& m) const {
    if (op != Collective::allreduce) return Fallback::cost(op, bytes, p, m);
    const std::size_t n = bytes / sizeof(float);
    return Ring::cost(op, codec.payload_bytes(n), p, m) + static_cast<double>(bytes) * m.gamma;
  }
};

static_assert(Algorithm<QuantizedRing<>>);

}  // namespace weft::comm
