// The Codec concept: how a compressed communicator (comm::Compressed) turns a
// rank's f32 gradient into a smaller payload and back. Two families, told
// apart at compile time by `C::linear`:
//
//   linear   payloads of different ranks can be summed element by element, so
//            the inner algorithm reduces them while compressed (casts, random-k
//            with a shared seed, PowerSGD's factors). A linear codec may need
//            several rounds (PowerSGD: P, then Q); each round is encode, an
//            allreduce (sum) of the payload, decode.
//   gather   payloads cannot be summed (top-k picks different indices on each
//            rank, int8 and sign have per-rank scales): every rank's payload
//            is allgathered and each rank decodes all p payloads and adds them
//            in rank order (identical results on every rank).
//
// A codec is a plain aggregate of settings (`TopK{.fraction = 0.01}`). What it
// remembers between steps (error-feedback residuals, PowerSGD's factors)
// lives in its `State`, one per buffer, owned by the Compressed policy (see
// codec/state.hpp); `State::visit(f)` lists the arrays a checkpoint must keep.
//
// Codecs never throw because of the *values* they see (a NaN on one rank
// must not leave the others waiting): non-finite inputs give non-finite
// outputs, as an uncompressed allreduce would. They throw ValueError for
// settings that do not fit the buffer (same on every rank), naming the call,
// the rank and the sizes.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/error.hpp"
#include "../context.hpp"

namespace weft::comm {

// What a codec knows about the call it serves: the label for messages, the
// sequence number (equal on every rank: seeds shared by all ranks derive from
// it) and this rank (seeds that must differ per rank derive from it).
struct CodecCall {
  const CallInfo* call = nullptr;  // null when a codec is used on its own (tests)
  std::uint64_t seq = 0;
  int rank = 0;
  int size = 1;
  const char* codec = "";

  template <class... A>
  [[noreturn]] void fail(const A&... a) const {
    throw_error<ValueError>(call ? call->label() : std::string("encode"), " on rank ", rank, " (", codec,
                            " codec): ", a...);
  }
};

namespace detail {

// splitmix64 (Steele, Lea, Flood 2014): a counter-based generator, so a value
// depends only on (seed, counter) and every rank can draw the same numbers.
inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline std::uint64_t mix64(std::uint64_t a, std::uint64_t b) { return mix64(a ^ mix64(b)); }

// Uniform in [0, 1) from the top 24 bits (exactly representable in f32).
inline float uniform01(std::uint64_t bits) { return static_cast<float>(bits >> 40) * 0x1p-24f; }

// Standard normal by Box-Muller from two counter draws.
inline float gaussian(std::uint64_t seed, std::uint64_t i) {
  const double u1 = (static_cast<double>(mix64(seed, 2 * i) >> 11) + 1.0) * 0x1p-53;  // (0, 1]
  const double u2 = static_cast<double>(mix64(seed, 2 * i + 1) >> 11) * 0x1p-53;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

// A state array sized for an n-element buffer: empty means fresh (zeros); any
// other size means it was restored for a different buffer.
inline void fit_state(std::vector<float>& v, std::size_t n, const char* what, const CodecCall& k) {
  if (v.size() == n) return;
  if (!v.empty())
    k.fail("its ", what, " holds ", v.size(), " values but this buffer needs ", n,
           " (was it restored from a checkpoint of a different model?)");
  v.assign(n, 0.0f);
}

// The error-feedback input m = x + e (e: the residual, zeros when fresh), or
// m = x without error feedback: what top-k, scaled sign and PowerSGD compress.
inline void feedback_input(std::vector<float>& m, std::vector<float>& residual, const float* x, std::size_t n,
                           bool error_feedback, const CodecCall& k) {
  m.resize(n);
  if (!error_feedback) {
    std::copy(x, x + n, m.begin());
    return;
  }
  fit_state(residual, n, "residual", k);
  for (std::size_t i = 0; i < n; ++i) m[i] = x[i] + residual[i];
}

// Number of kept elements for "fraction of n, or an exact count".
inline std::size_t keep_count(std::size_t count, double fraction, std::size_t n, const CodecCall& k) {
  if (count == 0) {
    if (!(fraction > 0.0 && fraction <= 1.0)) k.fail("fraction ", fraction, " is not in (0, 1]");
    double want = std::round(fraction * static_cast<double>(n));
    return want < 1.0 ? 1 : static_cast<std::size_t>(want);
  }
  if (count > n) k.fail("k = ", count, " is more than the buffer's ", n, " elements");
  return count;
}

// keep_count for codecs that send u32 indices (top-k, random-k): also
// refuses buffers those indices cannot address.
inline std::size_t indexed_keep_count(std::size_t count, double fraction, std::size_t n, const CodecCall& k) {
  const std::size_t kk = keep_count(count, fraction, n, k);
  if (n > 0xffffffffu) k.fail("buffers of more than 2^32 elements are not supported (", n, ")");
  return kk;
}

// What a state's visit() is called with in the concept below (a named type:
// nvcc's front end rejects a lambda inside a requires-expression).
struct StateVisitorProbe {
  void operator()(const char*, std::vector<float>&) const {}
};

template <class State>
concept VisitableState = std::default_initializable<State> && requires(State& s, StateVisitorProbe f) { s.visit(f); };

template <class P>
inline constexpr bool summable_payload_v =
    std::is_same_v<P, float> || std::is_same_v<P, half> || std::is_same_v<P, bfloat16>;

// A State for codecs that remember nothing.
struct NoState {
  template <class F>
  void visit(F&&) {}
};

}  // namespace detail

template <class C>
concept CodecBase = std::copyable<C> && detail::VisitableState<typename C::State> &&
                    requires(const C& c, std::size_t n, const CodecCall& k) {
                      { C::name } -> std::convertible_to<const char*>;
                      { C::linear } -> std::convertible_to<bool>;
                      { c.check(n, k) } -> std::same_as<void>;
                    };

// Linear: rounds of encode -> allreduce(sum) of the payload -> decode.
template <class C>
concept LinearCodec =
    CodecBase<C> && C::linear &&
    requires(const C& c, typename C::State& s, const float* x, float* y, typename C::payload_type* pl,
             const typename C::payload_type* cpl, std::size_t n, int round, const CodecCall& k) {
      { c.rounds(s, n) } -> std::same_as<int>;
      { c.payload_count(s, n, round) } -> std::same_as<std::size_t>;
      { c.encode(s, x, n, pl, round, k) } -> std::same_as<void>;
      { c.decode(s, cpl, y, n, round, k) } -> std::same_as<void>;
    };

// Gather: encode to a fixed number of bytes, allgather, every rank adds every
// rank's decoded payload.
template <class C>
concept GatherCodec = CodecBase<C> && !C::linear &&
                      requires(const C& c, typename C::State& s, const float* x, float* y, std::byte* b,
                               const std::byte* cb, std::size_t n, const CodecCall& k) {
                        { c.payload_bytes(n) } -> std::same_as<std::size_t>;
                        { c.encode(s, x, n, b, k) } -> std::same_as<void>;
                        { c.decode_add(cb, y, n, k) } -> std::same_as<void>;
                      };

template <class C>
concept Codec = LinearCodec<C> || GatherCodec<C>;

// The compile-time trait: can this codec's payloads be summed while compressed?
template <Codec C>
inline constexpr bool is_linear_v = C::linear;

}  // namespace weft::comm
