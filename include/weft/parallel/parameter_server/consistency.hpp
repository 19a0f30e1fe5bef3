// Consistency models of the parameter server, as policies
// (parallel::ParameterServer<Consistency, Transport>):
//   BSP     bulk synchronous: every live worker's gradients of step t are
//           summed, averaged and applied once, before anyone reads step t + 1
//           (the same arithmetic as synchronous data parallelism).
//   SSP<s>  stale synchronous parallel (Ho et al., NIPS 2013): each push is
//           applied as it arrives; a worker at clock c reads only once every
//           live worker has reached clock c - s.
//   ASP     asynchronous: pushes applied as they arrive, reads never wait.
// A worker's clock is the number of steps it has finished (ParameterServer::clock()).
#pragma once

#include <concepts>
#include <cstdint>
#include <limits>

namespace weft::parallel {

struct BSP {
  static constexpr const char* name = "BSP";
  static constexpr std::int64_t staleness = 0;
  static constexpr bool aggregate_steps = true;  // one update per step from the mean of the workers' gradients
};

template <int S>
struct SSP {
  static_assert(S >= 0, "SSP<s>: the staleness bound s is the number of clocks a reader may run ahead of the slowest "
                        "worker, so it cannot be negative (SSP<0> reads like BSP but applies each push on arrival)");
  static constexpr const char* name = "SSP";
  static constexpr std::int64_t staleness = S;
  static constexpr bool aggregate_steps = false;
};

struct ASP {
  static constexpr const char* name = "ASP";
  static constexpr std::int64_t staleness = std::numeric_limits<std::int64_t>::max() / 4;
  static constexpr bool aggregate_steps = false;
};

template <class C>
concept Consistency = requires {
  { C::name } -> std::convertible_to<const char*>;
  { C::staleness } -> std::convertible_to<std::int64_t>;
  { C::aggregate_steps } -> std::convertible_to<bool>;
};

static_assert(Consistency<BSP>);
static_assert(Consistency<SSP<1>>);
static_assert(Consistency<ASP>);

}  // namespace weft::parallel
