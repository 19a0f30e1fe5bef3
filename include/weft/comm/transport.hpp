// The Transport concept: point-to-point moves between the ranks of a group,
// shaped like NCCL/MPI (non-blocking, tagged, waitable with a deadline), plus
// split() for sub-groups and node() so hierarchical algorithms know the
// machine layout. Optional capabilities are separate concepts that algorithms
// detect with `if constexpr`:
//   RecvReduce         the receiver combines straight from the sender's buffer
//                      (shared memory: no staging copy)
//   NativeCollectives  the transport has its own collectives (MPI's, NCCL's)
//   AnySource          receive from whichever rank sends first, and probe for
//                      a waiting message (parameter servers, work queues)
//   TracksArrival      the transport sees every rank enter a collective
//                      (shared memory), so a timeout names exactly the ranks
//                      that never entered it
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "../core/dtype.hpp"
#include "collective.hpp"
#include "deadline.hpp"
#include "reduce_op.hpp"

namespace weft::comm {

// Tags are 15 bits so they fit every MPI (MPI_TAG_UB >= 32767).
using Tag = std::uint32_t;
inline constexpr Tag max_tag = 0x7fff;

template <class T>
concept Transport = std::copyable<T> && requires(T& t, const T& ct, typename T::Request& req, const void* src,
                                                 void* dst, std::size_t bytes, int peer, Tag tag, Deadline dl) {
  typename T::Request;
  requires std::movable<typename T::Request>;
  { ct.rank() } -> std::same_as<int>;
  { ct.size() } -> std::same_as<int>;
  { ct.node() } -> std::same_as<int>;  // id of this rank's node; equal ids share memory
  { t.isend(src, bytes, peer, tag) } -> std::same_as<typename T::Request>;
  { t.irecv(dst, bytes, peer, tag) } -> std::same_as<typename T::Request>;
  { t.test(req) } -> std::same_as<bool>;
  { t.wait(req, dl) } -> std::same_as<WaitStatus>;
  { t.cancel(req) } -> std::same_as<void>;
  { ct.failure() } -> std::same_as<std::string>;  // why waits report aborted / peer_gone
  { ct.split(peer, peer, dl) } -> std::same_as<T>;  // split(color, key, deadline): collective
  { ct.name() } -> std::same_as<const char*>;
};

// Optional: receive `count` elements from `peer` and store local (op) received
// into out (local may alias out), reading the sender's buffer directly.
template <class T>
concept RecvReduce = Transport<T> && requires(T& t, const void* local, void* out, std::size_t count, dtype d,
                                              ReduceOp op, int peer, Tag tag) {
  { t.irecv_reduce(local, out, count, d, op, peer, tag) } -> std::same_as<typename T::Request>;
};

// Optional: the transport counts the bytes it moves between ranks (shared by
// its copies and splits), so benchmarks report bytes on the wire.
template <class T>
concept CountsBytes = Transport<T> && requires(const T& t) {
  { t.sent_bytes() } -> std::same_as<std::uint64_t>;
};

// A message waiting to be received: who sent it and how many bytes.
struct Probe {
  int peer = -1;
  std::size_t bytes = 0;
};

// Optional: messages from any rank. irecv_any receives the first message with
// `tag` from whichever rank sends it (the request's peer() names the sender
// once it completes; -1 before); iprobe reports such a message without
// receiving it (nullopt when none is waiting). Messages from one sender still
// arrive in the order they were sent.
template <class T>
concept AnySource = Transport<T> && requires(T& t, typename T::Request& req, void* dst, std::size_t bytes, Tag tag) {
  { t.irecv_any(dst, bytes, tag) } -> std::same_as<typename T::Request>;
  { t.iprobe(tag) } -> std::same_as<std::optional<Probe>>;
};

// Optional: which ranks entered which collective. arrive() counts this rank's
// collectives on the transport and returns the number of the one it enters
// (1, 2, ...); arrived(peer, k) says whether `peer` has entered its k-th. A
// message-based check cannot tell a rank that never came from one that came
// and gave up (its messages withdrawn) or one stuck behind another peer; a
// shared counter can. Collectives issued concurrently by several
// communicators over one transport count in the order each rank entered them.
template <class T>
concept TracksArrival = Transport<T> && requires(T& t, const T& ct, int peer, std::uint64_t k) {
  { t.arrive() } -> std::same_as<std::uint64_t>;
  { ct.arrived(peer, k) } -> std::same_as<bool>;
};

// Optional: the transport's own collectives, bounded by a deadline.
template <class T>
concept NativeCollectives = Transport<T> && requires(T& t, const void* in, void* out, std::size_t n, dtype d,
                                                     ReduceOp op, int root, Deadline dl) {
  { t.native_allreduce(in, out, n, d, op, dl) } -> std::same_as<WaitStatus>;
  { t.native_reduce_scatter(in, out, n, d, op, dl) } -> std::same_as<WaitStatus>;
  { t.native_allgather(in, out, n, d, dl) } -> std::same_as<WaitStatus>;
  { t.native_broadcast(out, n, d, root, dl) } -> std::same_as<WaitStatus>;
  { t.native_reduce(in, out, n, d, op, root, dl) } -> std::same_as<WaitStatus>;
  { t.native_gather(in, out, n, d, root, dl) } -> std::same_as<WaitStatus>;
  { t.native_scatter(in, out, n, d, root, dl) } -> std::same_as<WaitStatus>;
  { t.native_alltoall(in, out, n, d, dl) } -> std::same_as<WaitStatus>;
  { t.native_barrier(dl) } -> std::same_as<WaitStatus>;
};

}  // namespace weft::comm
