// Context<T>: what an algorithm policy runs against. It wraps a transport with
// the current call's label (op, sequence number, dtype, deadline), turns every
// failed wait into an error naming the call and the peer, owns the workspace
// (grown once, reused: no allocation in steady state), and provides the
// chunk-pipelined exchange steps all algorithms are built from. A Context
// over a sub-transport (Hierarchical's node and rail groups, split when its
// communicator is built) names ranks as the communicator does. Scratch memory,
// copies, combines and divisions go through an executor (HostExecutor: host
// memory and loops), the seam a device executor will fill.
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/device.hpp"
#include "../core/dtype.hpp"
#include "collective.hpp"
#include "deadline.hpp"
#include "error.hpp"
#include "fingerprint.hpp"
#include "reduce_op.hpp"
#include "transport.hpp"

namespace weft::comm {

// The label of the call being executed.
struct CallInfo {
  Collective op = Collective::barrier;
  std::uint64_t seq = 0;
  dtype type = dtype::u8;
  std::size_t count = 0;
  int root = -1;
  ReduceOp reduce = ReduceOp::sum;
  Deadline deadline = Deadline::max();
  Clock::time_point start{};
  const char* algorithm = "";
  std::string_view name{};  // CallOptions::name: what is reduced (Compressed keeps codec state under it)

  std::string label() const {
    Fingerprint f{seq, count, root, op, type, reduce, 0};
    return f.describe(is_reduction(op));
  }
};

// What a collective does locally besides moving messages: scratch memory,
// copies, combines and the division that ends avg. Context routes all of them
// through one executor object, so a device executor can later provide device
// memory and a stream (copies and combines queued on it) without touching the
// schedules. Sizes in bytes; combine and divide count elements of `d`.
template <class E>
concept Executor = std::copyable<E> && requires(const E& e, std::byte* p, void* dst, const void* src, std::size_t n,
                                                dtype d, ReduceOp op, int k) {
  { e.allocate(n) } -> std::same_as<std::byte*>;  // 64-byte aligned, n a multiple of 64
  { e.deallocate(p) } -> std::same_as<void>;
  { e.copy(dst, src, n) } -> std::same_as<void>;  // disjoint
  { e.move(dst, src, n) } -> std::same_as<void>;  // may overlap
  { e.combine(d, op, src, src, dst, n) } -> std::same_as<void>;  // out = a (op) b; out may alias a or b
  { e.divide(d, dst, n, k) } -> std::same_as<void>;             // buf[i] /= k
};

// Optional: an executor of device memory that can stage buffers through the
// host, for work that runs there (comm::Compressed's codecs): download copies
// device -> host, upload host -> device, each complete when it returns (after
// the work queued before it).
template <class E>
concept StagingExecutor = Executor<E> && requires(const E& e, void* dst, const void* src, std::size_t n) {
  { e.download(dst, src, n) } -> std::same_as<void>;
  { e.upload(dst, src, n) } -> std::same_as<void>;
};

// Host memory and the host loops of reduce_op.hpp.
struct HostExecutor {
  using device_type = weft::cpu;  // where the buffers it is given live
  HostQueue queue() const { return {}; }

  std::byte* allocate(std::size_t bytes) const {
    auto* p = static_cast<std::byte*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    return p;
  }
  void deallocate(std::byte* p) const noexcept { std::free(p); }
  void copy(void* dst, const void* src, std::size_t bytes) const { std::memcpy(dst, src, bytes); }
  void move(void* dst, const void* src, std::size_t bytes) const { std::memmove(dst, src, bytes); }
  void combine(dtype d, ReduceOp op, const void* a, const void* b, void* out, std::size_t n) const {
    detail::combine(d, op, a, b, out, n);
  }
  void divide(dtype d, void* buf, std::size_t n, int k) const { detail::divide_by(d, buf, n, k); }
};
static_assert(Executor<HostExecutor>);

// The executor a communicator over transport T runs its local work on. Host
// transports have none of their own and get HostExecutor; a transport whose
// buffers live elsewhere names its executor (`using executor_type = ...;`)
// and hands out one bound to its queue (`executor_type executor() const`:
// NcclTransport's CudaExecutor on its stream).
template <class T>
struct executor_of {
  using type = HostExecutor;
  static HostExecutor make(const T&) { return {}; }
};
template <class T>
  requires requires { typename T::executor_type; }
struct executor_of<T> {
  using type = typename T::executor_type;
  static type make(const T& t) { return t.executor(); }
};
template <class T>
using executor_of_t = typename executor_of<T>::type;

// Whether a context's (or executor's) buffers are host memory, which policies
// may read and write directly (codecs); false for a device executor's.
template <class X>
inline constexpr bool host_buffers_v =
    std::is_same_v<typename X::executor_type::device_type, weft::cpu>;

namespace detail {
// A grow-only, 64-byte aligned buffer from an executor's memory.
template <Executor Exec>
class BasicBuffer {
 public:
  BasicBuffer() = default;
  explicit BasicBuffer(Exec e) : exec_(std::move(e)) {}
  BasicBuffer(BasicBuffer&& o) noexcept
      : exec_(o.exec_), data_(std::exchange(o.data_, nullptr)), cap_(std::exchange(o.cap_, 0)) {}
  BasicBuffer& operator=(BasicBuffer&& o) noexcept {
    if (this != &o) {
      release();
      exec_ = o.exec_;
      data_ = std::exchange(o.data_, nullptr);
      cap_ = std::exchange(o.cap_, 0);
    }
    return *this;
  }
  ~BasicBuffer() { release(); }

  std::byte* get(std::size_t bytes) {
    if (bytes > cap_) {
      std::size_t n = (bytes + 63) / 64 * 64;
      std::byte* p = exec_.allocate(n);
      release();
      data_ = p;
      cap_ = n;
    }
    return data_;
  }

 private:
  void release() noexcept {
    if (data_) exec_.deallocate(data_);
    data_ = nullptr;
    cap_ = 0;
  }
  Exec exec_{};
  std::byte* data_ = nullptr;
  std::size_t cap_ = 0;
};
using Buffer = BasicBuffer<HostExecutor>;

inline std::string seconds(Duration d) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << std::chrono::duration<double>(d).count() << " s";
  return os.str();
}
}  // namespace detail

// Tag layout (15 bits): data of call #seq, fingerprints of call #seq, user
// point-to-point, and a few fixed tags for one-time setup exchanges.
inline constexpr Tag data_tag_base = 0x0000, fingerprint_tag_base = 0x2000, user_tag_base = 0x4000;
inline constexpr Tag max_user_tag = 0x1fff;
inline constexpr Tag setup_tag_names = 0x7ffd, setup_tag_nodes = 0x7ffe;  // 0x7fff: MpiTransport::split
// A timed-out call's reachability probe (Context::unanswered) and in-run
// Auto's agreement on timings (algorithm/auto_tuning.hpp).
inline constexpr Tag probe_tag = 0x7ffc, tuning_tag = 0x7ffb;

template <Transport T, Executor Exec = HostExecutor>
class Context {
 public:
  using Request = typename T::Request;
  using executor_type = Exec;

  explicit Context(T t, Exec e = {}) : Context(std::move(t), std::vector<int>{}, std::move(e)) {
    names_ = identity(t_.size());
  }
  Context(T t, std::vector<int> names, Exec e = {})
      : t_(std::move(t)), names_(std::move(names)), exec_(std::move(e)),
        scratch_{detail::BasicBuffer<Exec>(exec_), detail::BasicBuffer<Exec>(exec_)}, staging_(exec_) {}

  T& transport() { return t_; }
  const T& transport() const { return t_; }
  int rank() const { return t_.rank(); }
  int size() const { return t_.size(); }

  CallInfo call;

  Tag tag() const { return data_tag_base | static_cast<Tag>(call.seq & 0x1fff); }

  // The caller's number for a rank of this context (sub-contexts map back to
  // the communicator's ranks so errors name the ranks a user knows).
  int name_of(int r) const { return names_[static_cast<std::size_t>(r)]; }

  // Algorithm scratch (at least `bytes`, 64-byte aligned; contents not kept
  // between calls). Two independent slots, so a block that needs its own
  // scratch (slot 1) can run inside one that holds slot 0.
  std::byte* workspace(std::size_t bytes, int slot = 0) { return scratch_[slot & 1].get(bytes); }

  // Local work through the executor (schedules call these, never memcpy or
  // the combine loops): copy (disjoint) and move (may overlap) bytes, combine
  // and divide elements of this call's type with its reduce op.
  Exec& executor() { return exec_; }
  const Exec& executor() const { return exec_; }
  void copy(void* dst, const void* src, std::size_t bytes) { exec_.copy(dst, src, bytes); }
  void move(void* dst, const void* src, std::size_t bytes) { exec_.move(dst, src, bytes); }
  void combine(const void* a, const void* b, void* out, std::size_t n) {
    if (n) exec_.combine(call.type, call.reduce, a, b, out, n);
  }
  void divide(void* buf, std::size_t n, int k) {
    if (n && k != 1) exec_.divide(call.type, buf, n, k);
  }

  // n reusable request slots (grown once; a later call reuses them).
  std::span<Request> requests(std::size_t n) {
    if (pool_.size() < n) pool_.resize(n);
    return std::span<Request>(pool_.data(), n);
  }

  Request isend(const void* p, std::size_t bytes, int peer) { return t_.isend(p, bytes, peer, tag()); }
  Request irecv(void* p, std::size_t bytes, int peer) { return t_.irecv(p, bytes, peer, tag()); }

  void wait(Request& r) {
    int peer = r.peer();
    WaitStatus s = t_.wait(r, call.deadline);
    if (s != WaitStatus::done) fail(s, peer);
  }

  // This rank enters a collective (the communicator calls it once per call,
  // before anything is sent): on transports that see arrivals (TracksArrival)
  // a timeout then names exactly the ranks that never entered the call.
  void arrive() {
    if constexpr (TracksArrival<T>) arrival_ = t_.arrive();
  }

  // The ranks (communicator names) that have and have not entered the current
  // call; false when the transport cannot tell (or this context never arrived:
  // a sub-context of Hierarchical, whose communicator counts on the whole group).
  bool arrivals(std::vector<int>& missing, std::vector<int>& here) const {
    if constexpr (TracksArrival<T>) {
      if (arrival_ == 0) return false;
      missing.clear();
      here.clear();
      for (int r = 0; r < size(); ++r)
        (r == rank() || t_.arrived(r, arrival_) ? here : missing).push_back(name_of(r));
      std::sort(missing.begin(), missing.end());
      std::sort(here.begin(), here.end());
      return true;
    } else {
      (void)missing;
      (void)here;
      return false;
    }
  }

  [[noreturn]] void fail(WaitStatus s, int peer) {
    std::ostringstream os;
    os << call.label() << " on rank " << name_of(rank());
    if (call.algorithm[0]) os << " (" << call.algorithm << ", " << t_.name() << ")";
    if (s == WaitStatus::timed_out) {
      os << " timed out after " << detail::seconds(Clock::now() - call.start);
      std::vector<int> missing, here;
      if (arrivals(missing, here) && !missing.empty()) {
        // Not the peer this rank happened to wait on (a ring neighbour that
        // is itself waiting): the ranks that never entered the call.
        os << ": " << detail::did_not_arrive(missing, here);
        throw TimeoutError(os.str());
      }
      os << " waiting for ";
      if (peer >= 0) {
        os << "rank " << name_of(peer);
      } else {
        std::string why = t_.failure();
        os << "the other ranks" << (why.empty() ? "" : ": ") << why;
      }
      // The peer waited on may itself be waiting (a ring neighbour on the
      // same host as this rank): ask every rank instead, and name those that
      // do not answer (a host whose link went down, a rank that hung).
      if constexpr (!TracksArrival<T>) os << unanswered();
      throw TimeoutError(os.str());
    }
    if (s == WaitStatus::aborted) {
      os << " abandoned: " << t_.failure();
      throw PeerFailedError(os.str());
    }
    if (peer >= 0) os << ": rank " << name_of(peer) << " left without taking part (" << t_.failure() << ")";
    else os << ": " << t_.failure();
    throw PeerFailedError(os.str());
  }

  // After this rank timed out in a call, on a transport that cannot see
  // arrivals (MPI): every rank of the context that times out in the same call
  // sends every other one a byte on probe_tag, then waits for theirs for a
  // grace period (a quarter of the call's timeout, 0.5 to 5 s: the ranks
  // entered the call at slightly different times). Ranks whose byte did not
  // come are unreachable, or stuck in another call; they are named.
  // Messages to ranks that never answer are abandoned: the communicator is
  // broken after this, so no later call meets them.
  std::string unanswered() {
    const int p = size(), me = rank();
    if (p < 2) return {};
    static const std::byte ping{1};
    std::vector<std::byte> got(static_cast<std::size_t>(p));
    std::vector<Request> rq(static_cast<std::size_t>(2 * p));
    for (int r = 0; r < p; ++r) {
      if (r == me) continue;
      rq[static_cast<std::size_t>(r)] = t_.irecv(&got[static_cast<std::size_t>(r)], 1, r, probe_tag);
      rq[static_cast<std::size_t>(p + r)] = t_.isend(&ping, 1, r, probe_tag);
    }
    const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(call.deadline - call.start);
    const auto grace = std::clamp(timeout / 4, std::chrono::milliseconds(500), std::chrono::milliseconds(5000));
    const Deadline until = Clock::now() + grace;
    std::vector<int> silent, answered{name_of(me)};
    for (int r = 0; r < p; ++r) {
      if (r == me) continue;
      bool ok = false;
      try {
        ok = t_.wait(rq[static_cast<std::size_t>(r)], until) == WaitStatus::done;
      } catch (const std::exception&) {  // the transport's own error: this rank is not reachable either
      }
      (ok ? answered : silent).push_back(name_of(r));
    }
    for (auto& q : rq) t_.cancel(q);
    if (silent.empty()) return "; every rank answered a reachability probe afterwards";
    std::sort(silent.begin(), silent.end());
    std::sort(answered.begin(), answered.end());
    return "; unreachable: rank" + std::string(silent.size() == 1 ? " " : "s ") + detail::rank_list(silent) +
           " (no answer to a reachability probe within " + detail::seconds(grace) + "; rank" +
           (answered.size() == 1 ? " " : "s ") + detail::rank_list(answered) + " answered)";
  }

  // One step of most algorithms: send `sbytes` to `to` while receiving `rbytes`
  // from `from` (either may be -1), in chunks of `chunk` bytes with two chunks
  // in flight each way. Zero-byte messages still synchronise the pair.
  void exchange(const void* send, std::size_t sbytes, int to, void* recv, std::size_t rbytes, int from,
                std::size_t chunk) {
    auto* s = static_cast<const std::byte*>(send);
    auto* d = static_cast<std::byte*>(recv);
    std::size_t ns = to >= 0 ? chunks(sbytes, chunk) : 0, nr = from >= 0 ? chunks(rbytes, chunk) : 0;
    std::size_t n = std::max(ns, nr);
    Request sr[2], rr[2];
    auto post = [&](std::size_t c) {
      if (c < ns) sr[c % 2] = isend(s + c * chunk, piece(sbytes, c, chunk), to);
      if (c < nr) rr[c % 2] = irecv(d + c * chunk, piece(rbytes, c, chunk), from);
    };
    post(0);
    if (n > 1) post(1);
    for (std::size_t c = 0; c < n; ++c) {
      if (c < nr) wait(rr[c % 2]);
      if (c < ns) wait(sr[c % 2]);
      if (c + 2 < n) post(c + 2);
    }
  }

  // Send `scount` elements to `to`; receive `rcount` from `from` and store
  // local (op) received into out (local may alias out). Uses the transport's
  // RecvReduce when it has one (no staging copy), else stages chunks in a
  // two-chunk buffer and combines each while the next is in flight.
  void exchange_reduce(const void* send, std::size_t scount, int to, const void* local, void* out,
                       std::size_t rcount, int from, std::size_t chunk_bytes) {
    const std::size_t es = dtype_size(call.type);
    // Chunk size in bytes, a whole number of elements; 0 = one message. With
    // RecvReduce the combine *is* the transfer, so there is nothing to overlap:
    // one message per step (both sides of a step call this, so they agree).
    if constexpr (RecvReduce<T>) chunk_bytes = 0;
    const std::size_t cb = chunk_bytes ? std::max<std::size_t>(1, chunk_bytes / es) * es : 0;
    auto* s = static_cast<const std::byte*>(send);
    auto* l = static_cast<const std::byte*>(local);
    auto* o = static_cast<std::byte*>(out);
    std::size_t ns = to >= 0 ? chunks(scount * es, cb) : 0, nr = from >= 0 ? chunks(rcount * es, cb) : 0;
    std::size_t n = std::max(ns, nr);
    std::byte* stage = nullptr;
    const std::size_t stage_len = cb ? std::min(cb, rcount * es) : rcount * es;
    if constexpr (!RecvReduce<T>) {
      if (nr) stage = staging_.get(2 * stage_len + 1);
    }
    Request sr[2], rr[2];
    auto post = [&](std::size_t c) {
      if (c < ns) sr[c % 2] = isend(s + c * cb, piece(scount * es, c, cb), to);
      if (c < nr) {
        std::size_t b = piece(rcount * es, c, cb);
        if constexpr (RecvReduce<T>)
          rr[c % 2] = t_.irecv_reduce(l + c * cb, o + c * cb, b / es, call.type, call.reduce, from, tag());
        else
          rr[c % 2] = irecv(stage + (c % 2) * stage_len, b, from);
      }
    };
    post(0);
    if (n > 1) post(1);
    for (std::size_t c = 0; c < n; ++c) {
      if (c < nr) {
        wait(rr[c % 2]);
        if constexpr (!RecvReduce<T>) {
          std::size_t b = piece(rcount * es, c, cb);
          combine(l + c * cb, stage + (c % 2) * stage_len, o + c * cb, b / es);
        }
      }
      if (c < ns) wait(sr[c % 2]);
      if (c + 2 < n) post(c + 2);
    }
  }

  // Exchanges fingerprints with every rank; throws on absence or mismatch.
  void check_fingerprints(const Fingerprint& mine) {
    const int p = size(), me = rank();
    fps_.resize(static_cast<std::size_t>(p));
    reqs_.resize(static_cast<std::size_t>(2 * p));
    fps_[static_cast<std::size_t>(me)] = mine;
    Tag tag = fingerprint_tag_base | static_cast<Tag>(call.seq & 0x1fff);
    for (int r = 0; r < p; ++r) {
      if (r == me) continue;
      reqs_[static_cast<std::size_t>(r)] = t_.irecv(&fps_[static_cast<std::size_t>(r)], sizeof(Fingerprint), r, tag);
      reqs_[static_cast<std::size_t>(p + r)] = t_.isend(&fps_[static_cast<std::size_t>(me)], sizeof(Fingerprint), r, tag);
    }
    WaitStatus worst = WaitStatus::done;
    for (int r = 0; r < p && worst == WaitStatus::done; ++r)
      if (r != me) worst = t_.wait(reqs_[static_cast<std::size_t>(r)], call.deadline);
    if (worst == WaitStatus::done) {
      for (int r = 0; r < p && worst == WaitStatus::done; ++r)
        if (r != me) worst = t_.wait(reqs_[static_cast<std::size_t>(p + r)], call.deadline);
    }
    if (worst != WaitStatus::done) {
      // Who is missing: where the transport sees arrivals, the ranks that
      // never entered this call (a rank that came and gave up first, its
      // fingerprint withdrawn, did arrive); else the ranks whose fingerprint
      // did not reach this one.
      std::vector<int> missing, here, quiet;
      for (int r = 0; r < p; ++r)
        if (r != me && !t_.test(reqs_[static_cast<std::size_t>(r)])) quiet.push_back(name_of(r));
      if (!arrivals(missing, here)) {
        missing = quiet;
        here.assign(1, name_of(me));
        for (int r = 0; r < p; ++r)
          if (r != me && std::find(quiet.begin(), quiet.end(), name_of(r)) == quiet.end()) here.push_back(name_of(r));
        std::sort(missing.begin(), missing.end());
        std::sort(here.begin(), here.end());
      }
      for (auto& q : reqs_) t_.cancel(q);
      std::ostringstream os;
      os << call.label() << " on rank " << name_of(me);
      if (worst == WaitStatus::timed_out) {
        os << " timed out after " << detail::seconds(Clock::now() - call.start) << ": ";
        if (!missing.empty()) {
          os << detail::did_not_arrive(missing, here);
        } else {
          std::sort(quiet.begin(), quiet.end());
          os << "every rank entered this call, but rank" << (quiet.size() == 1 ? " " : "s ") << detail::rank_list(quiet)
             << " sent no fingerprint: they have fingerprints off (CommOptions::fingerprints must be the same on "
                "every rank; zero-element calls exchange them regardless) and call something else";
        }
        // Not seen is not the same as absent: which of them can still be reached?
        if constexpr (!TracksArrival<T>) os << unanswered();
        throw TimeoutError(os.str());
      }
      if (missing.empty()) os << " abandoned: " << t_.failure();
      else os << ": rank" << (missing.size() == 1 ? " " : "s ") << detail::rank_list(missing) << " did not arrive: "
              << t_.failure();
      throw PeerFailedError(os.str());
    }
    bool same = true;
    for (int r = 1; r < p; ++r) same &= fps_[static_cast<std::size_t>(r)] == fps_[0];
    if (same) return;  // the common case allocates nothing
    std::string msg = detail::mismatch_message(fps_.data(), p);
    if (!msg.empty()) {
      if (names_.size() && names_[0] != 0) msg += " (ranks of a sub-group)";
      throw MismatchError("collective mismatch detected on rank " + std::to_string(name_of(me)) + ": " + msg);
    }
  }

  // Copies this call's label into a sub-context before running an algorithm on it.
  Context& with_call(Context& sub, std::size_t count) {
    sub.call = call;
    sub.call.count = count;
    return sub;
  }

 private:
  static std::size_t chunks(std::size_t bytes, std::size_t chunk) {
    if (chunk == 0 || bytes <= chunk) return 1;
    return (bytes + chunk - 1) / chunk;
  }
  static std::size_t piece(std::size_t bytes, std::size_t c, std::size_t chunk) {
    if (chunk == 0) return bytes;
    std::size_t off = c * chunk;
    return off >= bytes ? 0 : std::min(chunk, bytes - off);
  }

  static std::vector<int> identity(int p) {
    std::vector<int> names(static_cast<std::size_t>(p));
    for (int i = 0; i < p; ++i) names[static_cast<std::size_t>(i)] = i;
    return names;
  }

  T t_;
  std::vector<int> names_;
  Exec exec_;
  detail::BasicBuffer<Exec> scratch_[2], staging_;
  std::vector<Fingerprint> fps_;
  std::vector<Request> reqs_, pool_;
  std::uint64_t arrival_ = 0;  // this rank's number for the current call (TracksArrival), 0: unknown
};

}  // namespace weft::comm
