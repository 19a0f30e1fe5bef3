// ThreadTransport: ranks are threads of one process sharing memory. A send
// posts (pointer, size, tag) into a per-pair mailbox; the receiver copies, or
// combines (RecvReduce), straight out of the sender's buffer, so a message is
// touched once and no staging buffer exists. The sender's request completes
// when the receiver has consumed its buffer.
//
// The World (shared by the threads of one run_local) records the first failure
// and which ranks have returned, so a wait on a failed or departed peer ends at
// once with a message naming it instead of hanging.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../../core/dtype.hpp"
#include "../detail/bell.hpp"
#include "../detail/blocks.hpp"
#include "../error.hpp"
#include "../reduce_op.hpp"
#include "../transport.hpp"

namespace weft::comm {

namespace detail {

// State shared by all ranks of one run_local.
struct World {
  int size = 0;
  int ranks_per_node = 0;
  SpinPolicy spin;
  Contention contention;
  std::unique_ptr<Bell[]> bells;
  std::unique_ptr<std::atomic<bool>[]> exited;
  std::unique_ptr<std::atomic<std::uint64_t>[]> sent;  // bytes each world rank moved to or from a peer
  std::atomic<int> failure_claim{-1};
  std::atomic<int> failed_rank{-1};  // release-published after failure text is written
  std::string failure_text;
  std::exception_ptr origin;

  World(int n, int rpn)
      : size(n), ranks_per_node(rpn), bells(new Bell[n]), exited(new std::atomic<bool>[n]),
        sent(new std::atomic<std::uint64_t>[n]) {
    for (int i = 0; i < n; ++i) {
      exited[i].store(false, std::memory_order_relaxed);
      sent[i].store(0, std::memory_order_relaxed);
    }
    unsigned hc = std::thread::hardware_concurrency();
    if (hc != 0 && static_cast<unsigned>(n) > hc) {  // oversubscribed: spinning steals the peer's core
      spin.spins = 0;
      spin.yield_ns = 0;
    }
  }

  void ring_all() {
    for (int i = 0; i < size; ++i) bells[i].ring();
  }

  // First failure wins; later ones are consequences of it.
  void fail(int rank, std::exception_ptr e, std::string text) {
    int expected = -1;
    if (failure_claim.compare_exchange_strong(expected, rank, std::memory_order_acq_rel)) {
      failure_text = std::move(text);
      origin = std::move(e);
      failed_rank.store(rank, std::memory_order_release);
    }
    ring_all();
  }

  void mark_exited(int rank) {
    exited[rank].store(true, std::memory_order_release);
    ring_all();
  }
};

inline constexpr std::uint64_t slot_free = 0, slot_posted = 1, slot_claimed = 2;
inline constexpr std::uint64_t mailbox_slots = 64;

// One message in flight. `word` packs (ticket << 2 | state): a slot free for
// ticket t holds (t, free); the receiver frees a consumed ticket t as (t + 64, free).
struct Slot {
  std::atomic<std::uint64_t> word{0};
  std::atomic<Tag> tag{0};
  std::atomic<const void*> data{nullptr};
  std::atomic<std::size_t> bytes{0};
};

// Messages from one rank to another, in posting order (tickets).
struct Channel {
  alignas(64) std::atomic<std::uint64_t> next{0};   // next ticket the sender hands out
  alignas(64) std::atomic<std::uint64_t> floor{0};  // every ticket below is consumed
  Slot slots[mailbox_slots];
  Channel() {
    for (std::uint64_t i = 0; i < mailbox_slots; ++i) slots[i].word.store(i << 2, std::memory_order_relaxed);
  }
};

// One rank's entry on its group's board for native (shared-memory)
// collectives: the buffers it takes part with, published by bumping epoch.
// A peer pins the entry (readers) while it reads or writes those buffers; a
// rank that gives up on a call (deadline, failure) sets withdrawn and waits
// for the pins to go before its buffers can be freed, so a late peer finds
// the entry withdrawn instead of reading freed memory.
struct alignas(64) NativeSlot {
  std::atomic<std::uint64_t> epoch{0};
  std::atomic<std::uint32_t> readers{0};
  std::atomic<bool> withdrawn{false};
  const void* in = nullptr;
  void* out = nullptr;
};

// A set of ranks that talk to each other (the run_local world or a split of it).
struct Group {
  World* world = nullptr;
  int size = 0;
  std::vector<int> world_ranks;  // group rank -> world rank
  std::unique_ptr<Channel[]> channels;  // [src * size + dst]
  std::unique_ptr<NativeSlot[]> board;  // [rank]
  // [rank]: collectives the rank has entered (TracksArrival). One cache line
  // each: every rank writes its own on every call, and packed counters made
  // the ranks' lines ping-pong between cores.
  struct alignas(64) Entered {
    std::atomic<std::uint64_t> n{0};
  };
  std::unique_ptr<Entered[]> entered;

  // split rendezvous
  std::mutex split_mutex;
  int split_arrived = 0;
  std::atomic<std::uint64_t> split_generation{0};
  std::vector<std::pair<int, int>> split_request;  // (color, key) per rank
  std::vector<std::pair<std::shared_ptr<Group>, int>> split_result;

  Group(World* w, std::vector<int> ranks)
      : world(w), size(static_cast<int>(ranks.size())), world_ranks(std::move(ranks)),
        channels(new Channel[static_cast<std::size_t>(size) * static_cast<std::size_t>(size)]),
        board(new NativeSlot[static_cast<std::size_t>(size)]),
        entered(new Entered[static_cast<std::size_t>(size)]),
        split_request(static_cast<std::size_t>(size)), split_result(static_cast<std::size_t>(size)) {}

  Channel& channel(int src, int dst) { return channels[static_cast<std::size_t>(src) * size + dst]; }
};

}  // namespace detail

class ThreadTransport {
 public:
  // Every rank is a thread of one process: a buffer's address means the same
  // on every rank (parallel::Pipeline sends addresses instead of copies).
  static constexpr bool shares_address_space = true;

  class Request {
   public:
    Request() = default;
    Request(Request&& o) noexcept { *this = std::move(o); }
    Request& operator=(Request&& o) noexcept {
      if (this != &o) {
        release();
        kind_ = o.kind_;
        done_ = o.done_;
        reduce_ = o.reduce_;
        dtype_ = o.dtype_;
        op_ = o.op_;
        peer_ = o.peer_;
        tag_ = o.tag_;
        channel_ = o.channel_;
        slot_ = o.slot_;
        ticket_ = o.ticket_;
        buf_ = o.buf_;
        local_ = o.local_;
        bytes_ = o.bytes_;
        received_ = o.received_;
        o.kind_ = Kind::none;
      }
      return *this;
    }
    Request(const Request&) = delete;
    Request& operator=(const Request&) = delete;
    ~Request() { release(); }

    bool active() const { return kind_ != Kind::none && !done_; }
    int peer() const { return peer_; }
    std::size_t received_bytes() const { return received_; }

   private:
    friend class ThreadTransport;
    enum class Kind : std::uint8_t { none, send, recv };

    // A send whose owner gives up (error, scope exit) is withdrawn so the peer
    // can never read a dead buffer.
    void release() {
      if (kind_ == Kind::send && !done_) {
        for (;;) {
          std::uint64_t want = (ticket_ << 2) | detail::slot_posted;
          if (slot_->word.compare_exchange_strong(want, ((ticket_ + detail::mailbox_slots) << 2) | detail::slot_free,
                                                  std::memory_order_acq_rel))
            break;
          if ((want >> 2) != ticket_) break;  // consumed meanwhile
          detail::cpu_relax();                 // the receiver is copying: wait for it to finish
        }
        done_ = true;
      }
      kind_ = Kind::none;
    }

    Kind kind_ = Kind::none;
    bool done_ = false;
    bool reduce_ = false;
    dtype dtype_ = dtype::f32;
    ReduceOp op_ = ReduceOp::sum;
    int peer_ = -1;
    Tag tag_ = 0;
    detail::Channel* channel_ = nullptr;
    detail::Slot* slot_ = nullptr;
    std::uint64_t ticket_ = 0;
    void* buf_ = nullptr;
    const void* local_ = nullptr;
    std::size_t bytes_ = 0;
    std::size_t received_ = 0;
  };

  ThreadTransport() = default;
  ThreadTransport(std::shared_ptr<detail::Group> group, int rank) : group_(std::move(group)), rank_(rank) {}

  int rank() const { return rank_; }
  int size() const { return group_ ? group_->size : 0; }
  int world_rank() const { return group_->world_ranks[static_cast<std::size_t>(rank_)]; }
  const char* name() const { return "threads"; }

  // Ranks per node come from run_local (WEFT_RANKS_PER_NODE emulates nodes).
  int node() const {
    int rpn = group_->world->ranks_per_node;
    return rpn > 0 ? world_rank() / rpn : 0;
  }

  // Bytes this rank has moved between ranks since run_local started, over this
  // transport, its copies and its splits: payloads it sent, and for native
  // collectives the bytes it copied from or into another rank's buffer (each
  // byte that crosses between ranks is counted once, by the rank that moves it).
  std::uint64_t sent_bytes() const { return counter().load(std::memory_order_relaxed); }

  Request isend(const void* data, std::size_t bytes, int peer, Tag tag) {
    check_peer(peer, "isend");
    moved(bytes);
    detail::Channel& ch = group_->channel(rank_, peer);
    std::uint64_t t = ch.next.fetch_add(1, std::memory_order_relaxed);
    detail::Slot& s = ch.slots[t % detail::mailbox_slots];
    std::uint64_t want = (t << 2) | detail::slot_free;
    if (s.word.load(std::memory_order_acquire) != want) {
      // Mailbox full: 64 messages to this peer are unconsumed. Give the receiver a moment.
      auto until = Clock::now() + std::chrono::seconds(1);
      while (s.word.load(std::memory_order_acquire) != want) {
        if (Clock::now() > until)
          throw_error<CommError>("ThreadTransport: rank ", rank_, " has 64 unconsumed sends to rank ", peer,
                                 " (tag ", tag, "); wait on send requests before posting more");
        std::this_thread::yield();
      }
    }
    s.tag.store(tag, std::memory_order_relaxed);
    s.data.store(data, std::memory_order_relaxed);
    s.bytes.store(bytes, std::memory_order_relaxed);
    s.word.store((t << 2) | detail::slot_posted, std::memory_order_release);
    bell(peer).ring();
    Request r;
    r.kind_ = Request::Kind::send;
    r.peer_ = peer;
    r.tag_ = tag;
    r.channel_ = &ch;
    r.slot_ = &s;
    r.ticket_ = t;
    r.bytes_ = bytes;
    return r;
  }

  Request irecv(void* buf, std::size_t bytes, int peer, Tag tag) {
    check_peer(peer, "irecv");
    Request r;
    r.kind_ = Request::Kind::recv;
    r.peer_ = peer;
    r.tag_ = tag;
    r.channel_ = &group_->channel(peer, rank_);
    r.buf_ = buf;
    r.bytes_ = bytes;
    return r;
  }

  // Receive count elements and store local (op) received into out, reading the
  // sender's buffer in place.
  Request irecv_reduce(const void* local, void* out, std::size_t count, dtype d, ReduceOp op, int peer, Tag tag) {
    Request r = irecv(out, count * dtype_size(d), peer, tag);
    r.reduce_ = true;
    r.local_ = local;
    r.dtype_ = d;
    r.op_ = op;
    return r;
  }

  // Any source (AnySource): the first message with `tag` from whichever rank
  // posts one; r.peer() names the sender once it completes.
  Request irecv_any(void* buf, std::size_t bytes, Tag tag) {
    Request r;
    r.kind_ = Request::Kind::recv;
    r.peer_ = -1;
    r.tag_ = tag;
    r.buf_ = buf;
    r.bytes_ = bytes;
    return r;
  }

  // A posted, unclaimed message with `tag` from any rank (lowest rank after
  // this one first, as irecv_any would take it), without receiving it.
  std::optional<Probe> iprobe(Tag tag) {
    const int p = size();
    for (int k = 1; k < p; ++k) {
      const int q = (rank_ + k) % p;
      detail::Channel& ch = group_->channel(q, rank_);
      std::uint64_t end = ch.next.load(std::memory_order_acquire);
      for (std::uint64_t t = ch.floor.load(std::memory_order_acquire); t < end; ++t) {
        detail::Slot& s = ch.slots[t % detail::mailbox_slots];
        const std::uint64_t w = s.word.load(std::memory_order_acquire);
        if (w != ((t << 2) | detail::slot_posted) || s.tag.load(std::memory_order_relaxed) != tag) continue;
        const std::size_t n = s.bytes.load(std::memory_order_relaxed);
        if (s.word.load(std::memory_order_acquire) == w) return Probe{q, n};  // still posted: tag and size belong to it
      }
    }
    return std::nullopt;
  }

  bool test(Request& r) { return progress(r); }

  WaitStatus wait(Request& r, Deadline deadline) {
    if (r.kind_ == Request::Kind::none || r.done_) return WaitStatus::done;
    detail::World& w = *group_->world;
    // The peer is gone when it returned; for an any-source receive, when every other rank did.
    auto gone = [&] {
      for (int q = 0; q < size(); ++q) {
        if (q == rank_ || (r.peer_ >= 0 && q != r.peer_)) continue;
        if (!w.exited[group_->world_ranks[static_cast<std::size_t>(q)]].load(std::memory_order_acquire)) return false;
      }
      return true;
    };
    return detail::wait_until(
        bell(rank_), w.spin, w.contention, deadline, [&] { return progress(r); },
        [&] {
          if (w.failed_rank.load(std::memory_order_acquire) >= 0) return WaitStatus::aborted;
          if (gone() && !progress(r)) return WaitStatus::peer_gone;
          return WaitStatus::done;
        });
  }

  void cancel(Request& r) { r.release(); }

  // TracksArrival: this rank enters its next collective on the group.
  std::uint64_t arrive() {
    return group_->entered[static_cast<std::size_t>(rank_)].n.fetch_add(1, std::memory_order_acq_rel) + 1;
  }
  bool arrived(int peer, std::uint64_t k) const {
    return group_->entered[static_cast<std::size_t>(peer)].n.load(std::memory_order_acquire) >= k;
  }

  std::string failure() const {
    detail::World& w = *group_->world;
    int f = w.failed_rank.load(std::memory_order_acquire);
    if (f >= 0) return "rank " + std::to_string(f) + " (thread rank) failed: " + w.failure_text;
    std::string gone;
    for (int i = 0; i < group_->size; ++i) {
      int wr = group_->world_ranks[static_cast<std::size_t>(i)];
      if (w.exited[wr].load(std::memory_order_acquire)) {
        if (!gone.empty()) gone += ',';
        gone += std::to_string(i);
      }
    }
    if (!gone.empty()) return "rank(s) " + gone + " returned from the run_local function without taking part";
    return laggards_;
  }

  // ---- native collectives: every rank reads its peers' buffers directly ----
  // Each call publishes (in, out) on the group board and meets the others at
  // epochs: after the first, peers' buffers are visible; after the last, no
  // peer touches ours any more. Reductions fold the p inputs in rank order
  // through a small on-stack block, so results are identical to deterministic
  // mode and in-place calls are safe.

  WaitStatus native_allreduce(const void* in, void* out, std::size_t n, dtype d, ReduceOp op, Deadline dl) {
    const int p = size(), r = rank_;
    detail::Segments seg{n, p};
    const std::size_t es = dtype_size(d);
    if (WaitStatus s = publish(in, out, dl); s != WaitStatus::done) return s;
    if (!pin(-1)) return withdraw(WaitStatus::peer_gone);
    fold(d, op, [&](int k) { return detail::at(board(k).in, seg.off(r), es); }, detail::at(out, seg.off(r), es),
         seg.len(r), p);
    unpin(-1);
    moved((static_cast<std::size_t>(p - 1) * seg.len(r) + n - seg.len(r)) * es);
    if (WaitStatus s = meet(1, dl); s != WaitStatus::done) return s;
    if (!pin(-1)) return withdraw(WaitStatus::peer_gone);
    for (int k = 0; k < p; ++k)
      if (k != r && seg.len(k))
        std::memcpy(detail::at(out, seg.off(k), es), detail::at(board(k).out, seg.off(k), es), seg.len(k) * es);
    unpin(-1);
    return meet(2, dl);
  }
  WaitStatus native_reduce_scatter(const void* in, void* out, std::size_t n, dtype d, ReduceOp op, Deadline dl) {
    const std::size_t es = dtype_size(d), off = static_cast<std::size_t>(rank_) * n;
    if (WaitStatus s = publish(in, out, dl); s != WaitStatus::done) return s;
    if (!pin(-1)) return withdraw(WaitStatus::peer_gone);
    fold(d, op, [&](int k) { return detail::at(board(k).in, off, es); }, out, n, size());
    unpin(-1);
    moved(static_cast<std::size_t>(size() - 1) * n * es);
    return meet(1, dl);
  }
  WaitStatus native_allgather(const void* in, void* out, std::size_t n, dtype d, Deadline dl) {
    const std::size_t es = dtype_size(d);
    if (WaitStatus s = publish(in, out, dl); s != WaitStatus::done) return s;
    if (!pin(-1)) return withdraw(WaitStatus::peer_gone);
    for (int k = 0; k < size(); ++k) {
      void* dst = detail::at(out, static_cast<std::size_t>(k) * n, es);
      if (dst != board(k).in && n) std::memcpy(dst, board(k).in, n * es);
    }
    unpin(-1);
    moved(static_cast<std::size_t>(size() - 1) * n * es);
    return meet(1, dl);
  }
  WaitStatus native_broadcast(void* buf, std::size_t n, dtype d, int root, Deadline dl) {
    if (WaitStatus s = publish(buf, buf, dl); s != WaitStatus::done) return s;
    if (!pin(root)) return withdraw(WaitStatus::peer_gone);
    if (rank_ != root && n) std::memcpy(buf, board(root).in, n * dtype_size(d));
    unpin(root);
    if (rank_ != root) moved(n * dtype_size(d));
    return meet(1, dl);
  }
  WaitStatus native_reduce(const void* in, void* out, std::size_t n, dtype d, ReduceOp op, int root, Deadline dl) {
    const int p = size(), r = rank_;
    detail::Segments seg{n, p};
    const std::size_t es = dtype_size(d);
    if (WaitStatus s = publish(in, out, dl); s != WaitStatus::done) return s;
    // every rank reduces one segment straight into the root's output
    if (!pin(-1)) return withdraw(WaitStatus::peer_gone);
    fold(d, op, [&](int k) { return detail::at(board(k).in, seg.off(r), es); },
         detail::at(board(root).out, seg.off(r), es), seg.len(r), p);
    unpin(-1);
    moved(static_cast<std::size_t>(r == root ? p - 1 : p) * seg.len(r) * es);
    return meet(1, dl);
  }
  WaitStatus native_gather(const void* in, void* out, std::size_t n, dtype d, int root, Deadline dl) {
    const std::size_t es = dtype_size(d);
    if (WaitStatus s = publish(in, out, dl); s != WaitStatus::done) return s;
    if (!pin(root)) return withdraw(WaitStatus::peer_gone);
    void* dst = detail::at(board(root).out, static_cast<std::size_t>(rank_) * n, es);
    if (dst != in && n) std::memcpy(dst, in, n * es);
    unpin(root);
    if (rank_ != root) moved(n * es);
    return meet(1, dl);
  }
  WaitStatus native_scatter(const void* in, void* out, std::size_t n, dtype d, int root, Deadline dl) {
    const std::size_t es = dtype_size(d);
    if (WaitStatus s = publish(in, out, dl); s != WaitStatus::done) return s;
    if (!pin(root)) return withdraw(WaitStatus::peer_gone);
    const void* src = detail::at(board(root).in, static_cast<std::size_t>(rank_) * n, es);
    if (src != out && n) std::memcpy(out, src, n * es);
    unpin(root);
    if (rank_ != root) moved(n * es);
    return meet(1, dl);
  }
  WaitStatus native_alltoall(const void* in, void* out, std::size_t n, dtype d, Deadline dl) {
    const std::size_t es = dtype_size(d), total = n * static_cast<std::size_t>(size()) * es;
    if (in == out && total) {  // peers read our input while we write our output: stage it
      if (stage_.size() < total) stage_.resize(total);
      std::memcpy(stage_.data(), in, total);
      in = stage_.data();
    }
    if (WaitStatus s = publish(in, out, dl); s != WaitStatus::done) return s;
    if (!pin(-1)) return withdraw(WaitStatus::peer_gone);
    for (int k = 0; k < size(); ++k)
      if (n)
        std::memcpy(detail::at(out, static_cast<std::size_t>(k) * n, es),
                    detail::at(board(k).in, static_cast<std::size_t>(rank_) * n, es), n * es);
    unpin(-1);
    moved(static_cast<std::size_t>(size() - 1) * n * es);
    return meet(1, dl);
  }
  WaitStatus native_barrier(Deadline dl) { return publish(nullptr, nullptr, dl); }

 private:
  detail::NativeSlot& board(int k) const { return group_->board[static_cast<std::size_t>(k)]; }
  std::atomic<std::uint64_t>& counter() const { return group_->world->sent[world_rank()]; }
  void moved(std::size_t bytes) { counter().fetch_add(bytes, std::memory_order_relaxed); }

  // Publishes this rank's buffers and waits until every rank has published.
  WaitStatus publish(const void* in, void* out, Deadline dl) {
    detail::NativeSlot& me = board(rank_);
    base_ = me.epoch.load(std::memory_order_relaxed);
    me.in = in;
    me.out = out;
    me.withdrawn.store(false, std::memory_order_relaxed);  // published by the epoch's release store
    return meet(0, dl);
  }

  // Pins the board entry of `k` (-1: of every peer) before touching its
  // buffers. False, with nothing pinned, when one of them has withdrawn: it
  // gave up on this call (its deadline passed, or it failed) before this rank
  // got there, and its buffers may be gone. seq_cst pairs with withdraw():
  // either it sees the pin, or the pin sees the withdrawal.
  bool pin(int k) {
    const int lo = k < 0 ? 0 : k, hi = k < 0 ? size() : k + 1;
    for (int q = lo; q < hi; ++q)
      if (q != rank_) board(q).readers.fetch_add(1, std::memory_order_seq_cst);
    std::vector<int> gone;
    for (int q = lo; q < hi; ++q)
      if (q != rank_ && board(q).withdrawn.load(std::memory_order_seq_cst)) gone.push_back(q);
    if (gone.empty()) return true;
    unpin(k);
    laggards_ = (gone.size() == 1 ? "rank " : "ranks ") + detail_list(gone) +
                " gave up on this native call (deadline or failure) before rank " + std::to_string(rank_) +
                " could use its buffers";
    return false;
  }
  void unpin(int k) {
    const int lo = k < 0 ? 0 : k, hi = k < 0 ? size() : k + 1;
    for (int q = lo; q < hi; ++q)
      if (q != rank_) board(q).readers.fetch_sub(1, std::memory_order_seq_cst);
  }

  // This rank leaves a native call without finishing it: peers may no longer
  // touch its buffers, and the ones touching them now finish first.
  WaitStatus withdraw(WaitStatus s) {
    detail::NativeSlot& me = board(rank_);
    me.withdrawn.store(true, std::memory_order_seq_cst);
    while (me.readers.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
    return s;
  }

  // Advances this rank to epoch base_ + 1 + phase and waits for every rank to get there.
  WaitStatus meet(int phase, Deadline dl) {
    const std::uint64_t target = base_ + 1 + static_cast<std::uint64_t>(phase);
    board(rank_).epoch.store(target, std::memory_order_release);
    for (int k = 0; k < size(); ++k)
      if (k != rank_) bell(k).ring();
    detail::World& w = *group_->world;
    auto all_here = [&] {
      for (int k = 0; k < size(); ++k)
        if (board(k).epoch.load(std::memory_order_acquire) < target) return false;
      return true;
    };
    WaitStatus s = detail::wait_until(bell(rank_), w.spin, w.contention, dl, all_here, [&] {
      if (w.failed_rank.load(std::memory_order_acquire) >= 0) return WaitStatus::aborted;
      for (int wr : group_->world_ranks)
        if (w.exited[wr].load(std::memory_order_acquire)) return WaitStatus::peer_gone;
      return WaitStatus::done;
    });
    if (s != WaitStatus::done) withdraw(s);
    if (s == WaitStatus::timed_out) {
      std::vector<int> late, here;
      for (int k = 0; k < size(); ++k)
        (board(k).epoch.load(std::memory_order_acquire) < target ? late : here).push_back(k);
      laggards_ = (late.size() == 1 ? "rank " : "ranks ") + detail_list(late) + " did not arrive (" +
                  (here.size() == 1 ? "rank " : "ranks ") + detail_list(here) + " did)";
    }
    return s;
  }

  static std::string detail_list(const std::vector<int>& v) {
    std::string s;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i) s += ',';
      s += std::to_string(v[i]);
    }
    return s;
  }

  // dst[0..n) = ((src(0) op src(1)) op src(2)) ... in blocks that stay in L1;
  // every input block is read before dst is written (in-place safe).
  template <class Src>
  static void fold(dtype d, ReduceOp op, Src&& src, void* dst, std::size_t n, int p) {
    alignas(64) std::byte acc[8192];
    const std::size_t es = dtype_size(d), block = sizeof(acc) / es;
    for (std::size_t i = 0; i < n; i += block) {
      const std::size_t m = std::min(block, n - i);
      std::memcpy(acc, detail::at(src(0), i, es), m * es);
      for (int k = 1; k < p; ++k) detail::combine(d, op, acc, detail::at(src(k), i, es), acc, m);
      if (op == ReduceOp::avg) detail::divide_by(d, acc, m, p);
      std::memcpy(detail::at(dst, i, es), acc, m * es);
    }
  }

 public:

  // Collective over this group: ranks with equal color form a new group, ordered by (key, rank).
  ThreadTransport split(int color, int key, Deadline deadline = deadline_after(std::chrono::minutes(5))) const {
    if (color < 0) throw_error<ValueError>("ThreadTransport::split: color must be >= 0, got ", color, " on rank ", rank_);
    detail::Group& g = *group_;
    std::uint64_t gen;
    {
      std::lock_guard lock(g.split_mutex);
      gen = g.split_generation.load(std::memory_order_relaxed);
      g.split_request[static_cast<std::size_t>(rank_)] = {color, key};
      if (++g.split_arrived == g.size) {
        std::vector<int> order(static_cast<std::size_t>(g.size));
        for (int i = 0; i < g.size; ++i) order[static_cast<std::size_t>(i)] = i;
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
          return g.split_request[static_cast<std::size_t>(a)] < g.split_request[static_cast<std::size_t>(b)];
        });
        std::size_t i = 0;
        while (i < order.size()) {
          std::size_t j = i;
          int c = g.split_request[static_cast<std::size_t>(order[i])].first;
          std::vector<int> members;
          while (j < order.size() && g.split_request[static_cast<std::size_t>(order[j])].first == c)
            members.push_back(g.world_ranks[static_cast<std::size_t>(order[j++])]);
          auto sub = std::make_shared<detail::Group>(g.world, members);
          for (std::size_t k = i; k < j; ++k)
            g.split_result[static_cast<std::size_t>(order[k])] = {sub, static_cast<int>(k - i)};
          i = j;
        }
        g.split_arrived = 0;
        g.split_generation.store(gen + 1, std::memory_order_release);
        g.world->ring_all();
      }
    }
    detail::World& w = *g.world;
    WaitStatus st = detail::wait_until(
        bell(rank_), w.spin, w.contention, deadline,
        [&] { return g.split_generation.load(std::memory_order_acquire) != gen; },
        [&] {
          if (w.failed_rank.load(std::memory_order_acquire) >= 0) return WaitStatus::aborted;
          for (int wr : g.world_ranks)
            if (w.exited[wr].load(std::memory_order_acquire)) return WaitStatus::peer_gone;
          return WaitStatus::done;
        });
    if (st != WaitStatus::done)
      throw_error<CommError>("ThreadTransport::split on rank ", rank_, ": ",
                             st == WaitStatus::timed_out ? "timed out waiting for the other ranks" : failure());
    std::lock_guard lock(g.split_mutex);
    auto [sub, r] = g.split_result[static_cast<std::size_t>(rank_)];
    return ThreadTransport(std::move(sub), r);
  }

 private:
  detail::Bell& bell(int group_rank) const {
    return group_->world->bells[group_->world_ranks[static_cast<std::size_t>(group_rank)]];
  }

  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= size() || peer == rank_)
      throw_error<ValueError>("ThreadTransport::", what, ": peer ", peer, " is not another rank of this group of ",
                              size(), " (rank ", rank_, ")");
  }

  // Completes r if its peer has done its part; true when complete.
  bool progress(Request& r) {
    if (r.kind_ == Request::Kind::none || r.done_) return true;
    if (r.kind_ == Request::Kind::send) {
      std::uint64_t w = r.slot_->word.load(std::memory_order_acquire);
      if ((w >> 2) != r.ticket_) r.done_ = true;
      return r.done_;
    }
    if (r.peer_ >= 0) return match(r, *r.channel_, r.peer_);
    const int p = size();
    for (int k = 1; k < p; ++k) {  // any source: the ranks after this one first, so none is starved
      const int q = (rank_ + k) % p;
      if (match(r, group_->channel(q, rank_), q)) return true;
    }
    return false;
  }

  // Takes the first posted message with r's tag from channel ch (sender `from`) into r.
  bool match(Request& r, detail::Channel& ch, int from) {
    std::uint64_t end = ch.next.load(std::memory_order_acquire);
    std::uint64_t floor = ch.floor.load(std::memory_order_acquire);
    bool at_floor = true;
    for (std::uint64_t t = floor; t < end; ++t) {
      detail::Slot& s = ch.slots[t % detail::mailbox_slots];
      std::uint64_t w = s.word.load(std::memory_order_acquire);
      if ((w >> 2) > t) {  // consumed
        if (at_floor) advance_floor(ch, t + 1);
        continue;
      }
      at_floor = false;
      if (w != ((t << 2) | detail::slot_posted) || s.tag.load(std::memory_order_relaxed) != r.tag_) continue;
      if (!s.word.compare_exchange_strong(w, (t << 2) | detail::slot_claimed, std::memory_order_acq_rel)) continue;
      if (s.tag.load(std::memory_order_relaxed) != r.tag_) {  // read a stale tag before the claim
        s.word.store(w, std::memory_order_release);
        continue;
      }
      r.peer_ = from;
      r.channel_ = &ch;
      consume(r, s, t);
      return true;
    }
    return false;
  }

  static void advance_floor(detail::Channel& ch, std::uint64_t to) {
    std::uint64_t cur = ch.floor.load(std::memory_order_relaxed);
    while (cur < to && !ch.floor.compare_exchange_weak(cur, to, std::memory_order_acq_rel)) {
    }
  }

  void consume(Request& r, detail::Slot& s, std::uint64_t t) {
    const void* src = s.data.load(std::memory_order_relaxed);
    std::size_t n = s.bytes.load(std::memory_order_relaxed);
    bool fits = r.reduce_ ? n == r.bytes_ : n <= r.bytes_;
    if (fits) {
      if (r.reduce_)
        detail::combine(r.dtype_, r.op_, r.local_, src, r.buf_, n / dtype_size(r.dtype_));
      else if (n)
        std::memcpy(r.buf_, src, n);
    }
    s.word.store(((t + detail::mailbox_slots) << 2) | detail::slot_free, std::memory_order_release);
    bell(r.peer_).ring();
    r.done_ = true;
    r.received_ = n;
    if (!fits)
      throw_error<TransportError>("ThreadTransport: rank ", rank_, " expected ", r.reduce_ ? "exactly " : "at most ",
                             r.bytes_, " bytes from rank ", r.peer_, " (tag ", r.tag_, "), got ", n);
  }

  std::shared_ptr<detail::Group> group_;
  int rank_ = 0;
  std::uint64_t base_ = 0;        // this rank's board epoch at the start of the current native call
  std::string laggards_;          // who was missing when a native call timed out
  std::vector<std::byte> stage_;  // in-place alltoall input copy
};

static_assert(Transport<ThreadTransport>);
static_assert(RecvReduce<ThreadTransport>);
static_assert(NativeCollectives<ThreadTransport>);
static_assert(CountsBytes<ThreadTransport>);
static_assert(AnySource<ThreadTransport>);
static_assert(TracksArrival<ThreadTransport>);

}  // namespace weft::comm
