// Communicator<Algorithm, Transport>: what user code holds. Every call is
// labelled (op, sequence number), bounded by a deadline (the communicator's
// default or a per-call override), fingerprinted (in every build, unless
// turned off) so mismatched calls fail on every rank naming who called what
// instead of returning wrong data, and on any communication failure the
// communicator is marked broken so later calls fail at once.
// Deterministic mode computes every reduction in rank order (bitwise equal
// across algorithms, chunk sizes and runs for a given rank count): it routes
// reductions through Ordered's schedules (algorithm/ordered.hpp), which a
// Communicator<Ordered<Inner>, T> uses always.
//
//   weft::comm::run_local(4, [](auto& t) {
//     weft::comm::Communicator<weft::comm::Ring, std::decay_t<decltype(t)>> comm{t};
//     std::vector<float> g(1 << 20, 1.0f);
//     comm.allreduce(g);                       // in place, sum
//     auto req = comm.iallreduce(g, weft::comm::ReduceOp::avg);
//     /* ... compute ... */ req.wait();
//   });
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "algorithm.hpp"
#include "algorithm/ordered.hpp"
#include "collective.hpp"
#include "context.hpp"
#include "deadline.hpp"
#include "detail/blocks.hpp"
#include "error.hpp"
#include "fingerprint.hpp"
#include "reduce_op.hpp"
#include "transport.hpp"

namespace weft::comm {

struct CommOptions {
  // Default deadline of every call; positive (Duration::max() for none).
  Duration timeout = std::chrono::seconds(300);
  // Ranks exchange what they are calling before moving data, so a call that
  // differs in op, dtype, count, root, reduce op or algorithm fails with a
  // MismatchError naming both calls and ranks instead of returning wrong data
  // (a max meeting a sum, an i32 meeting an f32 of the same size, two roots).
  // On in every build: it costs one small message to every other rank per
  // call (docs/collectives.md gives the measured figure). Turn it off only
  // where every rank is known to make the same calls. Zero-element calls
  // exchange fingerprints even when off: they move no data that could
  // otherwise reveal a mismatch.
  bool fingerprints = true;
  bool deterministic = false;
};

// Per-call settings; a zero timeout means the communicator's default, a
// negative one is an error.
struct CallOptions {
  Duration timeout = Duration::zero();
  // What the call reduces (a parameter or bucket name): Compressed keeps the
  // codec state under it (codec/state.hpp). Must outlive the call.
  std::string_view name{};
};

namespace detail {
template <class E>
inline constexpr bool is_element_v =
    std::is_same_v<E, float> || std::is_same_v<E, double> || std::is_same_v<E, half> ||
    std::is_same_v<E, bfloat16> || std::is_same_v<E, std::int32_t> || std::is_same_v<E, std::int64_t> ||
    std::is_same_v<E, std::uint8_t>;
}  // namespace detail

// A contiguous range of a type collectives can move (f32, f64, f16, bf16, i32, i64, u8).
template <class R>
concept CommBuffer = std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
                     detail::is_element_v<std::remove_cv_t<std::ranges::range_value_t<R>>>;

template <class Algo, Transport T>
  requires AlgorithmFor<Algo, T>
class Communicator {
  struct Job {
    Collective op = Collective::barrier;
    const void* in = nullptr;
    void* out = nullptr;
    std::size_t count = 0;
    dtype type = dtype::u8;
    ReduceOp reduce = ReduceOp::sum;
    int root = -1;
    std::uint64_t seq = 0;
    std::string_view name{};
    Deadline deadline{};
    Clock::time_point start{};
  };

 public:
  // The executor of its local work (scratch, copies, combines): HostExecutor
  // for host transports, the transport's own (NcclTransport: CudaExecutor on
  // its stream). Its device_type says where the buffers given to the
  // collectives must live, its queue() what their work is ordered on.
  using executor_type = executor_of_t<T>;
  executor_type executor() const { return ctx_.executor(); }

  using transport_type = T;
  using algorithm_type = Algo;

  // A pending non-blocking operation. wait() rethrows its error; it must not
  // outlive the communicator. A collective request destroyed (or assigned
  // over) before wait() - an exception unwinding past it, say - waits for its
  // call to finish first, since the call reads and writes the caller's
  // buffers on the progress thread; its error is dropped (the communicator
  // is broken by it). During unwinding it also breaks the communicator, so
  // calls queued behind it are skipped rather than started.
  class Request {
   public:
    Request() = default;
    Request(Request&& o) noexcept { *this = std::move(o); }
    ~Request() { abandon(); }
    Request& operator=(Request&& o) noexcept {
      if (this != &o) {
        abandon();
        c_ = std::exchange(o.c_, nullptr);  // a moved-from request is complete
        ticket_ = o.ticket_;
        deadline_ = o.deadline_;
        p2p_ = o.p2p_;
        op_ = o.op_;
        peer_ = o.peer_;
        tag_ = o.tag_;
        req_ = std::move(o.req_);
      }
      return *this;
    }

    void wait() {
      if (!c_) return;
      if (p2p_) {
        c_->wait_p2p(*this);
        if (peer_ < 0) peer_ = req_.peer();  // any-source receive: the sender
      } else {
        c_->wait_ticket(ticket_, deadline_);
      }
      c_ = nullptr;
    }
    bool test() {
      if (!c_) return true;
      bool done = p2p_ ? c_->ctx_.transport().test(req_) : c_->ticket_done(ticket_);
      if (done) wait();
      return done;
    }

    // Point-to-point: the peer; for an any-source receive, the sender once
    // complete (-1 before).
    int source() const { return peer_; }

   private:
    friend class Communicator;
    void abandon() noexcept {
      if (c_ && !p2p_) c_->abandon_ticket(ticket_, op_);  // point-to-point: T::Request withdraws itself
      c_ = nullptr;
    }
    Communicator* c_ = nullptr;
    std::uint64_t ticket_ = 0;
    Deadline deadline_{};
    bool p2p_ = false;
    Collective op_ = Collective::send;
    int peer_ = -1;
    int tag_ = 0;
    typename T::Request req_{};
  };

  explicit Communicator(T transport, Algo algo = {}, CommOptions opts = {})
      : ctx_(make_context(std::move(transport))), algo_(algo), opts_(opts), a2a_(ctx_.executor()) {
    check_timeout("Communicator", opts.timeout);
    check_deterministic(opts.deterministic);
    // A policy that runs on sub-groups (Hierarchical) splits them now, once, not inside a collective.
    if constexpr (requires { algo_.prepare(ctx_, Deadline{}); }) algo_.prepare(ctx_, deadline_after(opts_.timeout));
  }
  Communicator(T transport, CommOptions opts) : Communicator(std::move(transport), Algo{}, opts) {}

  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  ~Communicator() { stop_worker(); }

  int rank() const { return ctx_.rank(); }
  int size() const { return ctx_.size(); }
  T& transport() { return ctx_.transport(); }
  // Bytes this rank's transport has moved between ranks (all communicators
  // on it together; take differences around the calls you measure).
  std::uint64_t sent_bytes() const
    requires CountsBytes<T>
  {
    return ctx_.transport().sent_bytes();
  }
  const Algo& algorithm() const { return algo_; }
  Algo& algorithm() { return algo_; }

  Duration timeout() const { return opts_.timeout; }
  void set_timeout(Duration d) {
    check_timeout("set_timeout", d);
    opts_.timeout = d;
  }
  bool fingerprints() const { return opts_.fingerprints; }
  void set_fingerprints(bool on) { opts_.fingerprints = on; }
  // Reductions in rank order (CommOptions::deterministic, or an Ordered policy).
  bool deterministic() const { return opts_.deterministic || detail::is_ordered_v<Algo>; }
  void set_deterministic(bool on) {
    check_deterministic(on);
    opts_.deterministic = on;
  }
  // Must be the same on every rank; change it only between calls, with no request pending.

  bool broken() const { return broken_.load(std::memory_order_acquire); }
  std::string broken_reason() const { return broken() ? reason_ : std::string(); }
  std::uint64_t sequence() const { return next_seq_ - 1; }  // number of collectives issued

  // ---- blocking collectives: pointer + count --------------------------------------
  template <class E>
  void allreduce(const E* in, E* out, std::size_t n, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    run(make(Collective::allreduce, in, out, n, dtype_v<E>, op, -1, o));
  }
  template <class E>
  void reduce_scatter(const E* in, E* out, std::size_t n_per_rank, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    run(make(Collective::reduce_scatter, in, out, n_per_rank, dtype_v<E>, op, -1, o));
  }
  template <class E>
  void allgather(const E* in, E* out, std::size_t n_per_rank, CallOptions o = {}) {
    run(make(Collective::allgather, in, out, n_per_rank, dtype_v<E>, ReduceOp::sum, -1, o));
  }
  template <class E>
  void broadcast(E* buf, std::size_t n, int root, CallOptions o = {}) {
    run(make(Collective::broadcast, buf, buf, n, dtype_v<E>, ReduceOp::sum, root, o));
  }
  template <class E>
  void reduce(const E* in, E* out, std::size_t n, int root, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    run(make(Collective::reduce, in, out, n, dtype_v<E>, op, root, o));
  }
  template <class E>
  void gather(const E* in, E* out, std::size_t n_per_rank, int root, CallOptions o = {}) {
    run(make(Collective::gather, in, out, n_per_rank, dtype_v<E>, ReduceOp::sum, root, o));
  }
  template <class E>
  void scatter(const E* in, E* out, std::size_t n_per_rank, int root, CallOptions o = {}) {
    run(make(Collective::scatter, in, out, n_per_rank, dtype_v<E>, ReduceOp::sum, root, o));
  }
  template <class E>
  void alltoall(const E* in, E* out, std::size_t n_per_rank, CallOptions o = {}) {
    run(make(Collective::alltoall, in, out, n_per_rank, dtype_v<E>, ReduceOp::sum, -1, o));
  }
  void barrier(CallOptions o = {}) {
    run(make(Collective::barrier, nullptr, nullptr, 0, dtype::u8, ReduceOp::sum, -1, o));
  }

  // ---- blocking collectives: ranges (std::vector, std::span, std::array) --------
  // The count comes from the buffers, checked against the collective's extent
  // (collective.hpp): `out` of reduce and gather, and `in` of scatter, are only
  // read on the root (they may be empty elsewhere).
  template <CommBuffer In, CommBuffer Out>
  void allreduce(const In& in, Out&& out, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    run(ranged<collectives::Allreduce>("", in, out, -1, op, o));
  }
  template <CommBuffer IO>
  void allreduce(IO&& inout, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    run(ranged<collectives::Allreduce>("", inout, inout, -1, op, o));
  }
  template <CommBuffer In, CommBuffer Out>
  void reduce_scatter(const In& in, Out&& out, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    run(ranged<collectives::ReduceScatter>("", in, out, -1, op, o));
  }
  template <CommBuffer In, CommBuffer Out>
  void allgather(const In& in, Out&& out, CallOptions o = {}) {
    run(ranged<collectives::Allgather>("", in, out, -1, ReduceOp::sum, o));
  }
  template <CommBuffer IO>
  void broadcast(IO&& buf, int root, CallOptions o = {}) {
    run(ranged<collectives::Broadcast>("", buf, buf, root, ReduceOp::sum, o));
  }
  template <CommBuffer In, CommBuffer Out>
  void reduce(const In& in, Out&& out, int root, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    run(ranged<collectives::Reduce>("", in, out, root, op, o));
  }
  template <CommBuffer In, CommBuffer Out>
  void gather(const In& in, Out&& out, int root, CallOptions o = {}) {
    run(ranged<collectives::Gather>("", in, out, root, ReduceOp::sum, o));
  }
  template <CommBuffer In, CommBuffer Out>
  void scatter(const In& in, Out&& out, int root, CallOptions o = {}) {
    run(ranged<collectives::Scatter>("", in, out, root, ReduceOp::sum, o));
  }
  template <CommBuffer In, CommBuffer Out>
  void alltoall(const In& in, Out&& out, CallOptions o = {}) {
    run(ranged<collectives::Alltoall>("", in, out, -1, ReduceOp::sum, o));
  }

  // ---- non-blocking collectives: return a Request; the call runs on this
  // communicator's progress thread (started on first use) in issue order.
  template <CommBuffer In, CommBuffer Out>
  [[nodiscard]] Request iallreduce(const In& in, Out&& out, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    return submit(ranged<collectives::Allreduce>("i", in, out, -1, op, o));
  }
  template <CommBuffer IO>
  [[nodiscard]] Request iallreduce(IO&& inout, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    return submit(ranged<collectives::Allreduce>("i", inout, inout, -1, op, o));
  }
  template <CommBuffer In, CommBuffer Out>
  [[nodiscard]] Request ireduce_scatter(const In& in, Out&& out, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    return submit(ranged<collectives::ReduceScatter>("i", in, out, -1, op, o));
  }
  template <CommBuffer In, CommBuffer Out>
  [[nodiscard]] Request iallgather(const In& in, Out&& out, CallOptions o = {}) {
    return submit(ranged<collectives::Allgather>("i", in, out, -1, ReduceOp::sum, o));
  }
  template <CommBuffer IO>
  [[nodiscard]] Request ibroadcast(IO&& buf, int root, CallOptions o = {}) {
    return submit(ranged<collectives::Broadcast>("i", buf, buf, root, ReduceOp::sum, o));
  }
  template <CommBuffer In, CommBuffer Out>
  [[nodiscard]] Request ireduce(const In& in, Out&& out, int root, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    return submit(ranged<collectives::Reduce>("i", in, out, root, op, o));
  }
  template <CommBuffer In, CommBuffer Out>
  [[nodiscard]] Request igather(const In& in, Out&& out, int root, CallOptions o = {}) {
    return submit(ranged<collectives::Gather>("i", in, out, root, ReduceOp::sum, o));
  }
  template <CommBuffer In, CommBuffer Out>
  [[nodiscard]] Request iscatter(const In& in, Out&& out, int root, CallOptions o = {}) {
    return submit(ranged<collectives::Scatter>("i", in, out, root, ReduceOp::sum, o));
  }
  template <CommBuffer In, CommBuffer Out>
  [[nodiscard]] Request ialltoall(const In& in, Out&& out, CallOptions o = {}) {
    return submit(ranged<collectives::Alltoall>("i", in, out, -1, ReduceOp::sum, o));
  }
  [[nodiscard]] Request ibarrier(CallOptions o = {}) {
    return submit(make(Collective::barrier, nullptr, nullptr, 0, dtype::u8, ReduceOp::sum, -1, o));
  }

  // ---- point-to-point (tags 0..8191; no sequence number, no fingerprint) -----------
  template <CommBuffer In>
  void send(const In& buf, int peer, int tag = 0, CallOptions o = {}) {
    isend(buf, peer, tag, o).wait();
  }
  template <CommBuffer Out>
  void recv(Out&& buf, int peer, int tag = 0, CallOptions o = {}) {
    irecv(buf, peer, tag, o).wait();
  }
  template <CommBuffer In>
  [[nodiscard]] Request isend(const In& buf, int peer, int tag = 0, CallOptions o = {}) {
    Request r = p2p_request(Collective::send, peer, tag, o);
    r.req_ = ctx_.transport().isend(std::ranges::data(buf), std::ranges::size(buf) * sizeof(*std::ranges::data(buf)),
                                    peer, user_tag_base | static_cast<Tag>(tag));
    return r;
  }
  template <CommBuffer Out>
  [[nodiscard]] Request irecv(Out&& buf, int peer, int tag = 0, CallOptions o = {}) {
    Request r = p2p_request(Collective::recv, peer, tag, o);
    r.req_ = ctx_.transport().irecv(std::ranges::data(buf), std::ranges::size(buf) * sizeof(*std::ranges::data(buf)),
                                    peer, user_tag_base | static_cast<Tag>(tag));
    return r;
  }

  // ---- receive from any rank (transports modelling AnySource: threads, MPI) -------
  // The first message with `tag` from whichever rank sends it; wait() then
  // source() name the sender. probe() reports a waiting message (sender and
  // size) without receiving it. Sends are the ordinary send/isend.
  template <CommBuffer Out>
  [[nodiscard]] Request irecv_any(Out&& buf, int tag = 0, CallOptions o = {}) {
    require_any_source();
    Request r = p2p_request(Collective::recv, -1, tag, o);
    if constexpr (AnySource<T>)
      r.req_ = ctx_.transport().irecv_any(std::ranges::data(buf), std::ranges::size(buf) * sizeof(*std::ranges::data(buf)),
                                          user_tag_base | static_cast<Tag>(tag));
    return r;
  }
  // Blocking: returns the sender.
  template <CommBuffer Out>
  int recv_any(Out&& buf, int tag = 0, CallOptions o = {}) {
    Request r = irecv_any(buf, tag, o);
    r.wait();
    return r.source();
  }
  std::optional<Probe> probe(int tag = 0) {
    require_any_source();
    check_tag(Collective::recv, tag);
    if constexpr (AnySource<T>)
      return ctx_.transport().iprobe(user_tag_base | static_cast<Tag>(tag));
    else
      return std::nullopt;
  }

 private:
  template <class U = T>
  static void require_any_source() {
    static_assert(AnySource<U>,
                  "comm: receiving from any rank needs a transport modelling AnySource (ThreadTransport, "
                  "MpiTransport); with this transport receive from a known peer: recv(buf, peer, tag)");
  }

  // A negative timeout used to mean "no deadline" by accident (and waited
  // forever); a deadline is positive, and Duration::max() asks for none.
  void check_timeout(const char* what, Duration d) const {
    if (d.count() < 0)
      throw_error<ValueError>(what, " on rank ", rank(), ": timeout ", detail::seconds(d),
                              " is negative; give a positive timeout (Duration::max() for no deadline)");
  }

  void check_tag(Collective op, int tag) const {
    if (tag < 0 || tag > static_cast<int>(max_user_tag))
      throw_error<ValueError>(collective_name(op), " on rank ", rank(), ": tag ", tag, " is outside 0..", max_user_tag);
  }

  template <class R>
  static constexpr dtype elem() {
    return dtype_v<std::remove_cv_t<std::ranges::range_value_t<R>>>;
  }

  // A call on ranges: the count from the buffer this rank must pass (the
  // input where it needs one), both sizes checked against D's extent.
  template <class D, class In, class Out>
  Job ranged(const char* prefix, const In& in, Out&& out, int root, ReduceOp op, CallOptions o) {
    static_assert(std::is_same_v<std::remove_cv_t<std::ranges::range_value_t<In>>,
                                 std::remove_cv_t<std::ranges::range_value_t<Out>>>,
                  "comm: a collective's input and output hold the same element type");
    const std::size_t ni = std::ranges::size(in), no = std::ranges::size(out);
    const bool is_root = rank() == root, by_in = D::needs_in(is_root);
    const Extent unit = D::extent(1, size());
    const std::size_t per = by_in ? unit.in : unit.out, have = by_in ? ni : no;
    if (have % per)
      throw_error<ValueError>(prefix, D::name, " on rank ", rank(), ": ", by_in ? "input" : "output", " of ", have,
                              " elements does not split into ", size(), " equal blocks");
    const std::size_t n = have / per;
    const Extent e = D::extent(n, size());
    if ((D::needs_in(is_root) && ni != e.in) || (D::needs_out(is_root) && no != e.out))
      throw_error<ValueError>(prefix, D::name, " on rank ", rank(), ": input has ", ni, " elements and output ", no,
                              ", but ", D::name, " of ", n, " on ", size(), " ranks takes ", e.in, " and ", e.out);
    return make(D::op, std::ranges::data(in), std::ranges::data(out), n, elem<In>(), op, root, o);
  }

  Job make(Collective op, const void* in, void* out, std::size_t n, dtype t, ReduceOp r, int root, CallOptions o) {
    if (has_root(op) && (root < 0 || root >= size()))
      throw_error<ValueError>(collective_name(op), " on rank ", rank(), ": root ", root, " is not a rank of this ",
                              size(), "-rank communicator");
    if (o.timeout.count() < 0) check_timeout(collective_name(op), o.timeout);
    // The bytes one rank's buffers span must fit in size_t (a wrong count
    // would otherwise wrap, and the call read and write past its buffers).
    const std::size_t blocks = op == Collective::reduce_scatter || op == Collective::allgather ||
                                       op == Collective::gather || op == Collective::scatter ||
                                       op == Collective::alltoall
                                   ? static_cast<std::size_t>(size())
                                   : 1;
    if (n > SIZE_MAX / dtype_size(t) / blocks)
      throw_error<ValueError>(collective_name(op), " on rank ", rank(), ": ", n, " elements of ", dtype_name(t),
                              blocks > 1 ? " per rank" : "", " is more than ", SIZE_MAX,
                              " bytes (the size_t limit) can hold; the count is wrong");
    if (n && op != Collective::barrier) {
      const bool is_root = rank() == root;
      const bool missing = collectives::visit(op, [&](auto d) {
        return (d.needs_in(is_root) && !in) || (d.needs_out(is_root) && !out);
      });
      if (missing)
        throw_error<ValueError>(collective_name(op), " on rank ", rank(), ": null buffer for ", n, " elements");
    }
    Job j;
    j.op = op;
    j.in = in;
    j.out = out;
    j.count = n;
    j.type = t;
    j.reduce = r;
    j.root = root;
    j.name = o.name;
    j.start = Clock::now();
    j.deadline = deadline_after(o.timeout.count() > 0 ? o.timeout : opts_.timeout);
    return j;
  }

  void check_broken(const Job& j) const { check_broken(j.op); }
  void check_broken(Collective op) const {
    if (broken())
      throw BrokenError(std::string(collective_name(op)) + " on rank " + std::to_string(rank()) +
                        ": the communicator is broken by an earlier failure: " + reason_);
  }

  // The first reason wins; the progress thread and an abandoned request may race to set it.
  void mark_broken(const std::string& what) {
    bool expected = false;
    if (breaking_.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) {
      reason_ = what;
      broken_.store(true, std::memory_order_release);
    }
  }

  // Blocking path: earlier non-blocking calls complete first (collectives are ordered).
  void run(Job j) {
    check_broken(j);
    drain(j.deadline);
    j.seq = next_seq_++;
    execute(j);
  }

  // Deterministic mode reduces in rank order before any policy runs: a policy
  // that changes what is sent (Compressed) would be skipped without a word.
  void check_deterministic(bool on) const {
    if constexpr (requires { Algo::compresses; })
      if (on)
        throw_error<ValueError>(
            "Communicator on rank ", rank(),
            ": deterministic mode reduces uncompressed, in rank order, so this compressed policy would be "
            "bypassed; use a plain algorithm for deterministic runs (the gather codecs, top-k, int8 and sign, "
            "already give bitwise the same result on every rank)");
  }

  void execute(const Job& j) {
    check_broken(j);
    CallInfo& c = ctx_.call;
    c.op = j.op;
    c.seq = j.seq;
    c.type = j.type;
    c.count = j.count;
    c.root = j.root;
    c.reduce = j.reduce;
    c.deadline = j.deadline;
    c.start = j.start;
    c.algorithm = Algo::name;
    c.name = j.name;
    try {
      ctx_.arrive();
      // A zero-element call moves nothing, so without this exchange a rank
      // calling with 0 and one calling with 128 would part silently (or meet
      // only at the deadline): it always agrees first.
      const bool empty = j.count == 0 && j.op != Collective::barrier;
      if ((opts_.fingerprints || empty) && size() > 1) {
        Fingerprint f{j.seq, j.count, j.root, j.op, j.type, j.reduce, static_cast<std::uint8_t>(deterministic())};
        const bool in_place = j.op != Collective::barrier && collectives::visit(j.op, [&](auto d) {
          return collectives::is_in_place<decltype(d)>(j.in, j.out, j.count, dtype_size(j.type), rank());
        });
        f.set_algorithm(
            detail::algorithm_of_call(algo_, j.op, j.type, j.count, size(), ctx_.transport().name(), in_place));
        ctx_.check_fingerprints(f);
      }
      dispatch(j);
    } catch (const TransportError& e) {
      // The transport's own words (an MPI error code): put the call in front.
      TransportError named(ctx_.call.label() + " on rank " + std::to_string(rank()) + " (" + Algo::name + ", " +
                           ctx_.transport().name() + "): " + e.what());
      mark_broken(named.what());
      throw named;
    } catch (const CommError& e) {
      mark_broken(e.what());
      throw;
    }
  }

  void dispatch(const Job& j) {
    if (j.count == 0 && j.op != Collective::barrier) return;
    const int p = size();
    collectives::visit(j.op, [&](auto d) {
      using D = decltype(d);
      Args x{j.in, j.out, j.count, j.root};
      // Deterministic mode: reductions by Ordered's schedules (an Ordered policy is always deterministic).
      if constexpr (D::reduces && !requires { Algo::compresses; })
        if (opts_.deterministic && Ordered<>::in_rank_order(d, ctx_, x)) return;
      if constexpr (std::is_same_v<D, collectives::Alltoall>) {
        if (j.in == j.out && p > 1) {
          // In place: the schedules read this rank's input while other ranks'
          // blocks land in the output, so the input is staged first.
          const std::size_t bytes = j.count * static_cast<std::size_t>(p) * dtype_size(j.type);
          void* staged = a2a_.get(bytes);
          ctx_.copy(staged, j.in, bytes);
          x.in = staged;
        }
      }
      run_collective<D>(algo_, ctx_, x);
    });
  }

  // ---- point-to-point requests ----
  // peer -1: any source (irecv_any).
  Request p2p_request(Collective op, int peer, int tag, CallOptions o) {
    check_tag(op, tag);
    if ((peer < 0 && !(peer == -1 && op == Collective::recv)) || peer >= size() || peer == rank())
      throw_error<ValueError>(collective_name(op), " on rank ", rank(), ": peer ", peer,
                              " is not another rank of this ", size(), "-rank communicator");
    check_broken(op);
    Request r;
    r.c_ = this;
    r.p2p_ = true;
    r.op_ = op;
    r.peer_ = peer;
    r.tag_ = tag;
    r.deadline_ = deadline_after(o.timeout.count() > 0 ? o.timeout : opts_.timeout);
    return r;
  }

  void wait_p2p(Request& r) {
    const std::string who = r.peer_ < 0 ? std::string("any rank") : "rank " + std::to_string(r.peer_);
    auto what = [&] {
      return std::string(collective_name(r.op_)) + (r.op_ == Collective::send ? " to " : " from ") + who + " (tag " +
             std::to_string(r.tag_) + ") on rank " + std::to_string(rank());
    };
    WaitStatus s;
    try {
      s = ctx_.transport().wait(r.req_, r.deadline_);
    } catch (const TransportError& e) {
      throw TransportError(what() + ": " + e.what());
    }
    if (s == WaitStatus::done) return;
    ctx_.transport().cancel(r.req_);
    if (s == WaitStatus::timed_out)
      throw TimeoutError(what() + " timed out: " + (r.peer_ < 0 ? std::string("no rank sent") : who + " did not arrive"));
    throw PeerFailedError(what() + " abandoned: " + ctx_.transport().failure());
  }

  // ---- progress thread for non-blocking collectives ----
  static constexpr std::size_t queue_slots = 64;

  struct Worker {
    std::mutex m;
    std::condition_variable work, done;
    Job jobs[queue_slots];
    std::exception_ptr errors[queue_slots];
    std::uint64_t submitted = 0, completed = 0;
    bool stop = false;
    std::thread thread;
  };

  Request submit(Job j) {
    check_broken(j);
    if (!worker_) {
      worker_ = std::make_unique<Worker>();
      worker_->thread = std::thread([this] { worker_loop(); });
    }
    Worker& w = *worker_;
    std::unique_lock lock(w.m);
    if (!w.done.wait_until(lock, j.deadline, [&] { return w.submitted - w.completed < queue_slots; }))
      throw TimeoutError(std::string(collective_name(j.op)) + " on rank " + std::to_string(rank()) +
                         ": 64 non-blocking calls are still pending; wait on some first");
    j.seq = next_seq_++;
    std::uint64_t ticket = w.submitted++;
    w.jobs[ticket % queue_slots] = j;
    w.errors[ticket % queue_slots] = nullptr;
    w.work.notify_one();
    Request r;
    r.c_ = this;
    r.ticket_ = ticket;
    r.deadline_ = j.deadline;
    r.op_ = j.op;
    return r;
  }

  void worker_loop() {
    Worker& w = *worker_;
    std::unique_lock lock(w.m);
    for (;;) {
      w.work.wait(lock, [&] { return w.stop || w.completed < w.submitted; });
      if (w.completed == w.submitted) return;  // stop requested and nothing pending
      Job j = w.jobs[w.completed % queue_slots];
      lock.unlock();
      std::exception_ptr err;
      try {
        execute(j);
      } catch (...) {
        err = std::current_exception();
      }
      lock.lock();
      w.errors[w.completed % queue_slots] = err;
      ++w.completed;
      w.done.notify_all();
    }
  }

  bool ticket_done(std::uint64_t ticket) {
    std::lock_guard lock(worker_->m);
    return worker_->completed > ticket;
  }

  void wait_ticket(std::uint64_t ticket, Deadline deadline) {
    Worker& w = *worker_;
    std::unique_lock lock(w.m);
    // The job itself is bounded by its deadline; allow a grace period past it
    // for the worker to report instead of racing it.
    Deadline limit = deadline == Deadline::max() ? deadline : deadline + std::chrono::seconds(5);
    if (!w.done.wait_until(lock, limit, [&] { return w.completed > ticket; }))
      throw TimeoutError("non-blocking call on rank " + std::to_string(rank()) + " did not complete by its deadline");
    if (auto e = w.errors[ticket % queue_slots]) {
      w.errors[ticket % queue_slots] = nullptr;
      std::rethrow_exception(e);
    }
  }

  // A collective request given up before wait(): its call may be running on
  // the progress thread over buffers the caller is about to free, so wait
  // for it to finish (its own deadline bounds it). When an exception is
  // unwinding, break the communicator first: calls queued behind it, whose
  // buffers go too, are then skipped instead of started.
  void abandon_ticket(std::uint64_t ticket, Collective op) noexcept {
    Worker& w = *worker_;
    std::unique_lock lock(w.m);
    if (w.completed <= ticket && std::uncaught_exceptions() > 0) {
      lock.unlock();
      try {
        mark_broken("a non-blocking " + std::string(collective_name(op)) + " on rank " + std::to_string(rank()) +
                    " was abandoned by an exception before wait()");
      } catch (...) {  // no memory for the reason: the calls still run, and are still waited for
      }
      lock.lock();
    }
    w.done.wait(lock, [&] { return w.completed > ticket; });
    if (w.submitted <= ticket + queue_slots) w.errors[ticket % queue_slots] = nullptr;  // not yet a later call's slot
  }

  void drain(Deadline deadline) {
    if (!worker_) return;
    Worker& w = *worker_;
    std::unique_lock lock(w.m);
    w.done.wait_until(lock, deadline, [&] { return w.completed == w.submitted; });
    if (w.completed != w.submitted)
      throw TimeoutError("rank " + std::to_string(rank()) +
                         ": earlier non-blocking calls did not complete before this call's deadline");
  }

  void stop_worker() {
    if (!worker_) return;
    {
      std::lock_guard lock(worker_->m);
      worker_->stop = true;
      worker_->work.notify_one();
    }
    worker_->thread.join();
    worker_.reset();
  }

  // Local work (scratch, copies, combines) on the transport's executor:
  // host loops for host transports, the device for NcclTransport.
  using Exec = executor_of_t<T>;
  static Context<T, Exec> make_context(T t) {
    Exec e = executor_of<T>::make(t);
    return Context<T, Exec>(std::move(t), std::move(e));
  }

  Context<T, Exec> ctx_;
  Algo algo_;
  CommOptions opts_;
  std::uint64_t next_seq_ = 1;
  std::atomic<bool> broken_{false};
  std::atomic<bool> breaking_{false};  // claimed by the first mark_broken
  std::string reason_;
  detail::BasicBuffer<Exec> a2a_;  // staged input of in-place alltoall
  std::unique_ptr<Worker> worker_;
};

}  // namespace weft::comm
