// MpiTransport: weft's transport over MPI point-to-point (MPI_Isend/MPI_Irecv
// with tags), built from any MPI_Comm, so weft runs across machines under
// mpirun or Slurm. The communicator is duplicated at construction so weft's
// messages never match the application's, and given MPI_ERRORS_RETURN so an
// MPI error (MPI_ERR_TRUNCATE, ...) becomes a TransportError naming the call
// instead of aborting the job. Construction itself has a deadline (a
// non-blocking barrier first), and waits poll MPI_Test until the deadline,
// so no call can block forever on a missing rank. Native
// collectives (MPI_Iallreduce, ...) are exposed for comm::Native; f16/bf16
// reductions use MPI user ops that combine in f32.
//
// Requirements: MPI initialised; non-blocking weft collectives run on a
// progress thread, which needs MPI_THREAD_SERIALIZED (and MPI_THREAD_MULTIPLE
// if the application calls MPI or weft point-to-point at the same time).
#pragma once

// weft uses MPI's C API only; skip the deprecated C++ bindings (and their warnings).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../../core/dtype.hpp"
#include "../detail/bell.hpp"
#include "../error.hpp"
#include "../reduce_op.hpp"
#include "../transport.hpp"

namespace weft::comm {

namespace detail {

template <class T, ReduceOp Op>
void mpi_user_op(void* in, void* inout, int* len, MPI_Datatype*) {
  // inout = in (op) inout
  combine_loop<T, Op>(static_cast<const T*>(in), static_cast<const T*>(inout), static_cast<T*>(inout),
                      static_cast<std::size_t>(*len));
}

inline void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw_error<TransportError>("MpiTransport: ", what, " failed: ", std::string(msg, static_cast<std::size_t>(len)));
  }
}

struct MpiState {
  MpiState() {
    for (auto& row : user_ops)
      for (MPI_Op& op : row) op = MPI_OP_NULL;
  }
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 0, node = 0, world_rank = 0;
  MPI_Op user_ops[7][4] = {};  // [dtype][sum, prod, min, max], created on first use
  std::vector<std::byte> staging;

  ~MpiState() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (fin) return;
    for (auto& row : user_ops)
      for (MPI_Op& op : row)
        if (op != MPI_OP_NULL) MPI_Op_free(&op);
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  }
};

inline int mpi_int_count(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(INT_MAX))
    throw_error<ValueError>("MpiTransport: ", what, " of ", n, " elements exceeds MPI's int count limit");
  return static_cast<int>(n);
}

}  // namespace detail

class MpiTransport {
 public:
  class Request {
   public:
    Request() = default;
    Request(Request&& o) noexcept : r_(o.r_), peer_(o.peer_), recv_(o.recv_), any_(o.any_) { o.r_ = MPI_REQUEST_NULL; }
    Request& operator=(Request&& o) noexcept {
      if (this != &o) {
        release();
        r_ = o.r_;
        peer_ = o.peer_;
        recv_ = o.recv_;
        any_ = o.any_;
        o.r_ = MPI_REQUEST_NULL;
      }
      return *this;
    }
    Request(const Request&) = delete;
    Request& operator=(const Request&) = delete;
    ~Request() { release(); }
    int peer() const { return peer_; }

   private:
    friend class MpiTransport;
    // A receive that is abandoned is cancelled so MPI never writes a dead
    // buffer; an abandoned send is left to MPI (sends cannot be reliably
    // cancelled) and only happens on a communicator already marked broken.
    void release() {
      if (r_ == MPI_REQUEST_NULL) return;
      int fin = 0;
      MPI_Finalized(&fin);
      if (fin) return;
      int done = 0;
      MPI_Test(&r_, &done, MPI_STATUS_IGNORE);
      if (done) return;
      if (recv_) {
        MPI_Cancel(&r_);
        auto until = Clock::now() + std::chrono::milliseconds(200);
        while (!done && Clock::now() < until) MPI_Test(&r_, &done, MPI_STATUS_IGNORE);
      }
      if (!done) MPI_Request_free(&r_);
      r_ = MPI_REQUEST_NULL;
    }
    MPI_Request r_ = MPI_REQUEST_NULL;
    int peer_ = -1;
    bool recv_ = false;
    bool any_ = false;  // MPI_ANY_SOURCE: peer_ is the sender once complete
  };

  // Collective over `comm` (duplicates it). Nodes: WEFT_RANKS_PER_NODE=k
  // groups consecutive MPI_COMM_WORLD ranks by k; otherwise ranks sharing
  // memory (MPI_COMM_TYPE_SHARED) form a node. Every rank of `comm` must
  // construct one by `deadline`: the blocking setup calls (MPI_Comm_dup,
  // MPI_Comm_split_type, MPI_Allreduce) start only after a non-blocking
  // barrier on `comm` completed within it, else a TimeoutError (the barrier
  // stays pending on `comm`, which is then unusable: end the job).
  explicit MpiTransport(MPI_Comm comm = MPI_COMM_WORLD, Deadline deadline = deadline_after(std::chrono::minutes(5)))
      : s_(std::make_shared<detail::MpiState>()) {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) throw_error<CommError>("MpiTransport: MPI is not initialised (call MPI_Init_thread first)");
    {
      const auto start = Clock::now();
      MPI_Request arrived;
      detail::mpi_check(MPI_Ibarrier(comm, &arrived), "MPI_Ibarrier (construction)");
      if (poll(&arrived, deadline) != WaitStatus::done) {
        int r = 0, p = 0;
        MPI_Comm_rank(comm, &r);
        MPI_Comm_size(comm, &p);
        // A pending non-blocking collective may be neither freed nor cancelled (MPI 3.1, 3.7.3).
        throw_error<TimeoutError>(
            "MpiTransport on rank ", r, " of ", p, ": construction timed out after ", seconds_since(start),
            ": not every rank of the MPI communicator constructed an MpiTransport on it (MPI cannot say which "
            "rank is missing: look for one that failed or took another path first); the communicator now has a "
            "barrier pending and cannot be used");
      }
    }
    detail::mpi_check(MPI_Comm_dup(comm, &s_->comm), "MPI_Comm_dup");
    // Errors on weft's communicator (and the splits that inherit its handler)
    // come back as codes that mpi_check turns into TransportErrors.
    detail::mpi_check(MPI_Comm_set_errhandler(s_->comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    MPI_Comm_rank(s_->comm, &s_->rank);
    MPI_Comm_size(s_->comm, &s_->size);
    MPI_Comm_rank(MPI_COMM_WORLD, &s_->world_rank);
    int rpn = 0;
    if (const char* env = std::getenv("WEFT_RANKS_PER_NODE")) {
      char* end = nullptr;
      long v = std::strtol(env, &end, 10);
      if (end == env || *end != '\0' || v < 1)
        throw_error<ValueError>("MpiTransport: WEFT_RANKS_PER_NODE must be a positive integer, got '", env, "'");
      rpn = static_cast<int>(v);
    }
    if (rpn > 0) {
      s_->node = s_->world_rank / rpn;
    } else {
      MPI_Comm shm;
      detail::mpi_check(MPI_Comm_split_type(s_->comm, MPI_COMM_TYPE_SHARED, s_->rank, MPI_INFO_NULL, &shm),
                        "MPI_Comm_split_type");
      detail::mpi_check(MPI_Allreduce(&s_->world_rank, &s_->node, 1, MPI_INT, MPI_MIN, shm), "MPI_Allreduce(node)");
      MPI_Comm_free(&shm);
    }
  }

  int rank() const { return s_->rank; }
  int size() const { return s_->size; }
  int node() const { return s_->node; }
  MPI_Comm comm() const { return s_->comm; }
  const char* name() const { return "mpi"; }

  // Bytes this rank has sent point-to-point over this transport, its copies
  // and its splits. MPI's own collectives (Native) are opaque and not counted.
  std::uint64_t sent_bytes() const { return sent_->load(std::memory_order_relaxed); }

  Request isend(const void* data, std::size_t bytes, int peer, Tag tag) {
    sent_->fetch_add(bytes, std::memory_order_relaxed);
    Request r;
    r.peer_ = peer;
    detail::mpi_check(MPI_Isend(data, detail::mpi_int_count(bytes, "message"), MPI_BYTE, peer,
                                static_cast<int>(tag), s_->comm, &r.r_),
                      "MPI_Isend");
    return r;
  }
  Request irecv(void* buf, std::size_t bytes, int peer, Tag tag) {
    Request r;
    r.peer_ = peer;
    r.recv_ = true;
    detail::mpi_check(MPI_Irecv(buf, detail::mpi_int_count(bytes, "message"), MPI_BYTE, peer,
                                static_cast<int>(tag), s_->comm, &r.r_),
                      "MPI_Irecv");
    return r;
  }
  // Any source (AnySource): MPI_ANY_SOURCE; r.peer() names the sender once complete.
  Request irecv_any(void* buf, std::size_t bytes, Tag tag) {
    Request r = irecv(buf, bytes, MPI_ANY_SOURCE, tag);
    r.peer_ = -1;
    r.any_ = true;
    return r;
  }
  std::optional<Probe> iprobe(Tag tag) {
    int flag = 0;
    MPI_Status st;
    detail::mpi_check(MPI_Iprobe(MPI_ANY_SOURCE, static_cast<int>(tag), s_->comm, &flag, &st), "MPI_Iprobe");
    if (!flag) return std::nullopt;
    int count = 0;
    detail::mpi_check(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count");
    return Probe{st.MPI_SOURCE, static_cast<std::size_t>(count)};
  }

  bool test(Request& r) {
    if (r.r_ == MPI_REQUEST_NULL) return true;
    int done = 0;
    MPI_Status st;
    detail::mpi_check(MPI_Test(&r.r_, &done, r.any_ ? &st : MPI_STATUS_IGNORE), "MPI_Test");
    if (done && r.any_) r.peer_ = st.MPI_SOURCE;
    return done != 0;
  }
  WaitStatus wait(Request& r, Deadline deadline) {
    if (!r.any_) return poll(&r.r_, deadline);
    if (r.r_ == MPI_REQUEST_NULL) return WaitStatus::done;
    MPI_Status st;
    WaitStatus s = poll(&r.r_, deadline, &st);
    if (s == WaitStatus::done) r.peer_ = st.MPI_SOURCE;
    return s;
  }
  void cancel(Request& r) { r.release(); }
  std::string failure() const { return "no failure notice from MPI (a rank may have exited or hung)"; }

  // Ranks first exchange (color, key) under the deadline, so a missing rank is
  // reported instead of blocking in MPI_Comm_split.
  MpiTransport split(int color, int key, Deadline deadline = deadline_after(std::chrono::minutes(5))) const {
    if (color < 0) throw_error<ValueError>("MpiTransport::split: color must be >= 0, got ", color, " on rank ", rank());
    const int p = size();
    std::vector<int> all(static_cast<std::size_t>(2 * p));
    int mine[2] = {color, key};
    std::vector<Request> reqs(static_cast<std::size_t>(2 * p));
    auto& self = const_cast<MpiTransport&>(*this);
    for (int r = 0; r < p; ++r) {
      if (r == rank()) continue;
      reqs[static_cast<std::size_t>(r)] = self.irecv(&all[static_cast<std::size_t>(2 * r)], 2 * sizeof(int), r, max_tag);
      reqs[static_cast<std::size_t>(p + r)] = self.isend(mine, 2 * sizeof(int), r, max_tag);
    }
    for (int i = 0; i < 2 * p; ++i)
      if (self.wait(reqs[static_cast<std::size_t>(i)], deadline) != WaitStatus::done)
        throw_error<TimeoutError>("MpiTransport::split on rank ", rank(), ": rank ", i % p, " did not arrive");
    MpiTransport sub(*this, 0);
    detail::mpi_check(MPI_Comm_split(s_->comm, color, key, &sub.s_->comm), "MPI_Comm_split");
    MPI_Comm_rank(sub.s_->comm, &sub.s_->rank);
    MPI_Comm_size(sub.s_->comm, &sub.s_->size);
    sub.s_->node = s_->node;
    sub.s_->world_rank = s_->world_rank;
    return sub;
  }

  // ---- native collectives (comm::Native) ----
  WaitStatus native_allreduce(const void* in, void* out, std::size_t n, dtype d, ReduceOp op, Deadline dl) {
    MPI_Request r;
    int c = detail::mpi_int_count(n, "allreduce");
    detail::mpi_check(MPI_Iallreduce(in == out ? MPI_IN_PLACE : in, out, c, mpi_type(d), mpi_op(d, op), s_->comm, &r),
                      "MPI_Iallreduce");
    WaitStatus s = poll(&r, dl);
    if (s == WaitStatus::done && op == ReduceOp::avg) detail::divide_by(d, out, n, size());
    return s;
  }
  WaitStatus native_reduce_scatter(const void* in, void* out, std::size_t n, dtype d, ReduceOp op, Deadline dl) {
    MPI_Request r;
    const std::size_t es = dtype_size(d);
    void* dst = out;
    bool aliased = static_cast<const std::byte*>(in) + static_cast<std::size_t>(rank()) * n * es == out;
    if (aliased) {
      s_->staging.resize(n * es);
      dst = s_->staging.data();
    }
    detail::mpi_check(MPI_Ireduce_scatter_block(in, dst, detail::mpi_int_count(n, "reduce_scatter"), mpi_type(d),
                                                mpi_op(d, op), s_->comm, &r),
                      "MPI_Ireduce_scatter_block");
    WaitStatus s = poll(&r, dl);
    if (s != WaitStatus::done) return s;
    if (aliased) std::memcpy(out, dst, n * es);
    if (op == ReduceOp::avg) detail::divide_by(d, out, n, size());
    return s;
  }
  WaitStatus native_allgather(const void* in, void* out, std::size_t n, dtype d, Deadline dl) {
    MPI_Request r;
    const std::size_t es = dtype_size(d);
    bool inplace = static_cast<const std::byte*>(out) + static_cast<std::size_t>(rank()) * n * es == in;
    int c = detail::mpi_int_count(n, "allgather");
    detail::mpi_check(MPI_Iallgather(inplace ? MPI_IN_PLACE : in, c, mpi_type(d), out, c, mpi_type(d), s_->comm, &r),
                      "MPI_Iallgather");
    return poll(&r, dl);
  }
  WaitStatus native_broadcast(void* buf, std::size_t n, dtype d, int root, Deadline dl) {
    MPI_Request r;
    detail::mpi_check(MPI_Ibcast(buf, detail::mpi_int_count(n, "broadcast"), mpi_type(d), root, s_->comm, &r), "MPI_Ibcast");
    return poll(&r, dl);
  }
  WaitStatus native_reduce(const void* in, void* out, std::size_t n, dtype d, ReduceOp op, int root, Deadline dl) {
    MPI_Request r;
    const void* src = rank() == root && in == out ? MPI_IN_PLACE : in;
    detail::mpi_check(MPI_Ireduce(src, out, detail::mpi_int_count(n, "reduce"), mpi_type(d), mpi_op(d, op), root,
                                  s_->comm, &r),
                      "MPI_Ireduce");
    WaitStatus s = poll(&r, dl);
    if (s == WaitStatus::done && op == ReduceOp::avg && rank() == root) detail::divide_by(d, out, n, size());
    return s;
  }
  WaitStatus native_gather(const void* in, void* out, std::size_t n, dtype d, int root, Deadline dl) {
    MPI_Request r;
    const std::size_t es = dtype_size(d);
    bool inplace = rank() == root && static_cast<const std::byte*>(out) + static_cast<std::size_t>(root) * n * es == in;
    int c = detail::mpi_int_count(n, "gather");
    detail::mpi_check(MPI_Igather(inplace ? MPI_IN_PLACE : in, c, mpi_type(d), out, c, mpi_type(d), root, s_->comm, &r),
                      "MPI_Igather");
    return poll(&r, dl);
  }
  WaitStatus native_scatter(const void* in, void* out, std::size_t n, dtype d, int root, Deadline dl) {
    MPI_Request r;
    const std::size_t es = dtype_size(d);
    bool inplace = rank() == root && static_cast<const std::byte*>(in) + static_cast<std::size_t>(root) * n * es == out;
    int c = detail::mpi_int_count(n, "scatter");
    detail::mpi_check(MPI_Iscatter(in, c, mpi_type(d), inplace ? MPI_IN_PLACE : out, c, mpi_type(d), root, s_->comm, &r),
                      "MPI_Iscatter");
    return poll(&r, dl);
  }
  WaitStatus native_alltoall(const void* in, void* out, std::size_t n, dtype d, Deadline dl) {
    MPI_Request r;
    int c = detail::mpi_int_count(n, "alltoall");
    detail::mpi_check(MPI_Ialltoall(in == out ? MPI_IN_PLACE : in, c, mpi_type(d), out, c, mpi_type(d), s_->comm, &r),
                      "MPI_Ialltoall");
    return poll(&r, dl);
  }
  WaitStatus native_barrier(Deadline dl) {
    MPI_Request r;
    detail::mpi_check(MPI_Ibarrier(s_->comm, &r), "MPI_Ibarrier");
    return poll(&r, dl);
  }

  // ---- weft's types and reduce ops as MPI's (the one mapping: Native and
  // weft-bench's direct MPI peer both use it) ----
  // f16 and bf16 travel as 16-bit words; their reductions are user ops.
  static MPI_Datatype mpi_type(dtype d) {
    switch (d) {
      case dtype::f32: return MPI_FLOAT;
      case dtype::f64: return MPI_DOUBLE;
      case dtype::f16:
      case dtype::bf16: return MPI_UINT16_T;
      case dtype::i32: return MPI_INT32_T;
      case dtype::i64: return MPI_INT64_T;
      case dtype::u8: return MPI_UINT8_T;
    }
    return MPI_BYTE;
  }

  // f16/bf16 have no MPI type: user ops combine them in f32. Integer sum and
  // prod also use weft's own (wrapping) loops: Open MPI 4.1's AVX ops saturate
  // on overflow (open-mpi/ompi#8045), which would make Native disagree with
  // every other algorithm.
  // avg maps to MPI_SUM: the caller divides by size() afterwards.
  MPI_Op mpi_op(dtype d, ReduceOp op) {
    auto& ops = s_->user_ops[static_cast<int>(d)];
    bool wraps = (d == dtype::u8 || d == dtype::i32 || d == dtype::i64) && op != ReduceOp::min && op != ReduceOp::max;
    if (d == dtype::f16 || d == dtype::bf16 || wraps)
      return detail::visit_dtype(d, [&](auto tag) { return user_op<decltype(tag)>(ops, op); });
    switch (op) {
      case ReduceOp::sum:
      case ReduceOp::avg: return MPI_SUM;
      case ReduceOp::prod: return MPI_PROD;
      case ReduceOp::min: return MPI_MIN;
      case ReduceOp::max: return MPI_MAX;
    }
    return MPI_SUM;
  }

 private:
  MpiTransport(const MpiTransport& parent, int) : s_(std::make_shared<detail::MpiState>()), sent_(parent.sent_) {}

  // Polls until done or the deadline: busy at first (MPI progresses inside
  // MPI_Test), then yielding so oversubscribed ranks let each other run. A
  // yield that comes back late means another task wanted this core (a shared
  // machine): from then on the poller sleeps between tests (50 us, then
  // 100 us) instead of staying runnable beside the rank it waits for. A
  // message that lands during a nap waits for its end, so the cap bounds
  // what a wait adds: 100 us (it was 400); a waiting rank then wakes 10^4
  // times a second, a few percent of a core. (On the emulated cluster small
  // collectives take ~340 us or ~680 us with either cap: that step comes
  // from the shaped links, not from these naps.)
  static WaitStatus poll(MPI_Request* r, Deadline deadline, MPI_Status* status = MPI_STATUS_IGNORE) {
    int done = 0;
    std::chrono::microseconds nap{0};
    for (long i = 0;; ++i) {
      detail::mpi_check(MPI_Test(r, &done, status), "MPI_Test");
      if (done) return WaitStatus::done;
      if (i >= 256) {
        if ((i & 15) == 0 && Clock::now() >= deadline) return WaitStatus::timed_out;
        if (nap.count() != 0) {
          std::this_thread::sleep_for(nap);
          nap = std::min(nap * 2, std::chrono::microseconds(100));
        } else {
          const auto before = Clock::now();
          std::this_thread::yield();
          if (Clock::now() - before > std::chrono::microseconds(50)) nap = std::chrono::microseconds(50);
        }
      }
    }
  }

  static std::string seconds_since(Clock::time_point start) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    return std::to_string(ms / 1000) + "." + std::to_string(ms / 100 % 10) + " s";
  }

  template <class T>
  static MPI_Op user_op(MPI_Op (&ops)[4], ReduceOp op) {
    int i = op == ReduceOp::prod ? 1 : op == ReduceOp::min ? 2 : op == ReduceOp::max ? 3 : 0;
    if (ops[i] == MPI_OP_NULL) {
      MPI_User_function* f = i == 0   ? &detail::mpi_user_op<T, ReduceOp::sum>
                             : i == 1 ? &detail::mpi_user_op<T, ReduceOp::prod>
                             : i == 2 ? &detail::mpi_user_op<T, ReduceOp::min>
                                      : &detail::mpi_user_op<T, ReduceOp::max>;
      detail::mpi_check(MPI_Op_create(f, 1, &ops[i]), "MPI_Op_create");
    }
    return ops[i];
  }

  std::shared_ptr<detail::MpiState> s_;
  std::shared_ptr<std::atomic<std::uint64_t>> sent_ = std::make_shared<std::atomic<std::uint64_t>>(0);
};

static_assert(Transport<MpiTransport>);
static_assert(NativeCollectives<MpiTransport>);
static_assert(CountsBytes<MpiTransport>);
static_assert(AnySource<MpiTransport>);

}  // namespace weft::comm
