// Time bounds for communication. Every wait in weft has an absolute deadline;
// transports report how a wait ended instead of blocking forever.
#pragma once

#include <chrono>
#include <cstdint>

namespace weft::comm {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
using Duration = std::chrono::nanoseconds;

// How a transport wait ended.
enum class WaitStatus : std::uint8_t {
  done,       // the request completed
  timed_out,  // the deadline passed first
  aborted,    // another rank failed (the transport's failure() says which and why)
  peer_gone,  // the peer left (returned or was destroyed) without matching this request
};

inline Deadline deadline_after(Duration d) {
  auto now = Clock::now();
  if (d >= Duration::max() / 2 || d.count() < 0) return Deadline::max();
  return now + d;
}

}  // namespace weft::comm
