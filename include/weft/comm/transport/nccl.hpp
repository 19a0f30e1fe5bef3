// NcclTransport<Boot>: weft's transport over NCCL, one rank per GPU. Device
// buffers move by ncclSend/ncclRecv on the transport's stream; host buffers
// (the communicator's fingerprints, reachability probes, zero-byte
// synchronisation messages) move over Boot, the host transport the NCCL
// communicator was bootstrapped from (ThreadTransport, MpiTransport), so
// weft's checks keep working, with their deadlines, even after NCCL is
// aborted. weft's own schedules (Ring, Tree, ...) run over it with their
// local work on the device (CudaExecutor, cuda_executor.cuh: the transport
// declares it as its executor_type, so Communicator picks it), and
// comm::Native maps every collective to NCCL's own. Hierarchical runs its
// levels on split transports (sharing the stream; rails schedule only),
// Compressed stages its host codecs through CudaExecutor's download/upload.
//
// Messages:
//   - NCCL has no tags: device messages between a pair are matched in the
//     order they are issued (tags are ignored). Two communicators issuing
//     concurrently over one NcclTransport would interleave: give each its
//     own (split) transport.
//   - isend/irecv of device memory only queue the message; the queue is
//     issued as one ncclGroupStart/End group at the first test(), wait() or
//     cancel() of any request (or a native collective, split, synchronize).
//     A schedule step posts its send and its receive before waiting, so each
//     step's pair lands in one group and ring neighbours cannot deadlock on
//     sends issued before receives. A request completes when its group's
//     cudaEvent (recorded after ncclGroupEnd) has.
//   - A message's buffer is device memory (cudaMalloc, cudaMallocAsync,
//     managed) on both ends or host memory on both ends; zero-byte messages
//     go over Boot.
//
// Waits poll the event and ncclCommGetAsyncError: busy for 50 us, then
// yielding up to 2 ms, then sleeping 20 us doubling to 500 us, so a rank
// waiting on a slow peer does not hold a core. When a deadline passes (or NCCL reports an
// asynchronous error) the NCCL communicator is aborted (ncclCommAbort: a
// kernel waiting on a peer that never comes would otherwise run forever),
// the wait reports timed_out (aborted), the Communicator names the op and
// its sequence number, and failure() says why. An aborted transport refuses
// further device messages.
//
// Results follow NCCL's stream semantics: a call returns once its messages
// completed, but a combine, copy or avg division that ends a weft schedule
// may still be queued on the stream. Work queued after the call on the same
// stream sees the result; to read it on the host, synchronize(deadline) or
// cudaStreamSynchronize(stream()) first. Native collectives return complete.
//
// The NCCL communicator is nonblocking (ncclConfig_t::blocking = 0): no NCCL
// call holds the host, not even the connection setup NCCL does with a peer
// on first use (which, on a blocking communicator, waits inside
// ncclGroupEnd for a peer that may never come). A launch that returns
// ncclInProgress is settled by polling ncclCommGetAsyncError before the
// next NCCL call and before its event is recorded, all under the deadline.
//
// Construction (collective over Boot, bounded by a deadline): Boot is split
// into a private channel (every rank must arrive by the deadline), rank 0's
// ncclUniqueId goes to every rank over it, then ncclCommInitRankConfig on
// the rank's device, awaited under the same deadline (on expiry the
// communicator is aborted and a TimeoutError thrown); split likewise.
//
//   auto t = weft::comm::NcclTransport(boot, /*device=*/rank, stream);
//   weft::comm::Communicator<weft::comm::Ring, decltype(t)> comm{t};
//   comm.allreduce(d_grad, d_grad, n);           // device pointers
//
// Opt-in: needs nccl.h and cuda_runtime.h; Communicators over it need
// cuda_executor.cuh (included here when compiled by nvcc).
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/error.hpp"
#include "../deadline.hpp"
#include "../error.hpp"
#include "../reduce_op.hpp"
#include "../transport.hpp"
#include "thread.hpp"

#if NCCL_VERSION_CODE < 21800
#error "weft's NcclTransport needs NCCL 2.18 or newer (ncclCommSplit)"
#endif

namespace weft::comm {

struct CudaExecutor;  // cuda_executor.cuh (device code: compile with nvcc)

namespace detail {

inline std::string nccl_error_text(ncclResult_t rc, ncclComm_t comm) {
  std::string s = ncclGetErrorString(rc);
  if (comm) {
    const char* last = ncclGetLastError(comm);
    if (last && *last) s += std::string(": ") + last;
  }
  return s;
}

inline void nccl_ok(ncclResult_t rc, const char* what, ncclComm_t comm) {
  if (rc != ncclSuccess) throw_error<TransportError>("NcclTransport: ", what, " failed: ", nccl_error_text(rc, comm));
}

inline void cuda_rt_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw_error<TransportError>("NcclTransport: ", what, " failed: ", cudaGetErrorName(err), " (",
                                cudaGetErrorString(err), ")");
}

// Makes the transport's device current for a scope, then restores the caller's.
class NcclDevice {
 public:
  explicit NcclDevice(int device) {
    if (cudaGetDevice(&prev_) != cudaSuccess || prev_ == device) return;
    cuda_rt_ok(cudaSetDevice(device), "cudaSetDevice");
    restore_ = true;
  }
  ~NcclDevice() {
    if (restore_) cudaSetDevice(prev_);
  }
  NcclDevice(const NcclDevice&) = delete;
  NcclDevice& operator=(const NcclDevice&) = delete;

 private:
  int prev_ = -1;
  bool restore_ = false;
};

// Whether `p` points into memory NCCL can move (device or managed).
inline bool on_device(const void* p) {
  if (!p) return false;
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error of an unknown pointer
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

// The stream NCCL work and the executor's work are queued on; destroyed with
// the last transport (splits share it) when the transport created it.
struct NcclStream {
  cudaStream_t stream = nullptr;
  int device = 0;
  bool owned = false;
  NcclStream(cudaStream_t s, int dev) : stream(s), device(dev) {
    if (stream) return;
    NcclDevice on(device);
    cuda_rt_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    owned = true;
  }
  ~NcclStream() {
    if (owned) cudaStreamDestroy(stream);
  }
  NcclStream(const NcclStream&) = delete;
  NcclStream& operator=(const NcclStream&) = delete;
};

// Device messages issued together (one ncclGroupStart/End) and the event
// recorded after them.
struct NcclGroup {
  cudaEvent_t done = nullptr;
  int device = 0;
  std::atomic<bool> issued{false};  // the event is recorded after the group's work
  explicit NcclGroup(int dev) : device(dev) {
    NcclDevice on(device);
    cuda_rt_ok(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  }
  ~NcclGroup() {
    if (!done) return;
    int prev = -1;
    const bool sw = cudaGetDevice(&prev) == cudaSuccess && prev != device && cudaSetDevice(device) == cudaSuccess;
    cudaEventDestroy(done);  // released by CUDA once the recorded work completes
    if (sw) cudaSetDevice(prev);
  }
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;
};

struct NcclOp {
  bool send = false;
  void* buf = nullptr;
  std::size_t bytes = 0;
  int peer = -1;
};

// Backoff of a host thread waiting on the GPU or on NCCL's host side: busy
// for 50 us (most small messages end there), yielding up to 2 ms, then naps
// of 20 us doubling to 500 us, so a rank waiting on a slow peer frees its core.
struct NcclBackoff {
  Clock::time_point start = Clock::now();
  std::chrono::microseconds nap{20};
  bool busy() const { return Clock::now() - start < std::chrono::microseconds(50); }
  void pause() {
    const auto waited = Clock::now() - start;
    if (waited < std::chrono::microseconds(50)) return;
    if (waited < std::chrono::milliseconds(2)) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::microseconds(500));
  }
};

// Waits until a nonblocking NCCL communicator's host-side operation (init,
// split, finalize) is no longer in progress: its result, or ncclInProgress
// when the deadline passed first.
inline ncclResult_t nccl_settle(ncclComm_t comm, Deadline deadline) {
  NcclBackoff b;
  for (;;) {
    ncclResult_t st = ncclInProgress;
    if (ncclResult_t rc = ncclCommGetAsyncError(comm, &st); rc != ncclSuccess) return rc;
    if (st != ncclInProgress) return st;
    if (Clock::now() >= deadline) return ncclInProgress;
    b.pause();
  }
}

struct NcclState {
  ncclComm_t comm = nullptr;
  bool owns_comm = true;
  std::shared_ptr<NcclStream> stream;
  int device = 0, rank = 0, size = 0;
  int* barrier_word = nullptr;  // device: the one element native_barrier reduces

  std::mutex m;  // the queue, the NCCL calls that issue work, and the failure text
  std::vector<NcclOp> pending;
  std::shared_ptr<NcclGroup> open;       // the group `pending` will be issued in
  std::shared_ptr<NcclGroup> unsettled;  // launched, but NCCL still enqueuing it (ncclInProgress)
  std::atomic<bool> aborted{false};
  std::string why;

  NcclState() = default;
  NcclState(const NcclState&) = delete;
  NcclState& operator=(const NcclState&) = delete;
  ~NcclState() {
    int prev = -1;
    const bool sw = cudaGetDevice(&prev) == cudaSuccess && prev != device && cudaSetDevice(device) == cudaSuccess;
    // An aborted communicator is already freed; a borrowed one is its owner's.
    // Nonblocking: finalize, wait for it (bounded: a peer that vanished
    // must not hang a destructor), then destroy; else abort.
    if (comm && owns_comm && !aborted.load()) {
      ncclResult_t rc = ncclCommFinalize(comm);
      if (rc == ncclSuccess || rc == ncclInProgress) rc = nccl_settle(comm, Clock::now() + std::chrono::seconds(30));
      if (rc == ncclSuccess) ncclCommDestroy(comm);
      else ncclCommAbort(comm);
    }
    if (barrier_word) cudaFree(barrier_word);
    if (sw) cudaSetDevice(prev);
  }
};

}  // namespace detail

template <Transport Boot>
class NcclTransport {
 public:
  using executor_type = CudaExecutor;
  using bootstrap_type = Boot;

  // A device message (its group's event) or a host one (Boot's request).
  class Request {
   public:
    Request() = default;
    int peer() const { return peer_; }

   private:
    friend class NcclTransport;
    typename Boot::Request host_{};
    std::shared_ptr<detail::NcclGroup> group_;  // set: a device message
    int peer_ = -1;
  };

  // Collective over `boot`: the NCCL communicator of boot's ranks, rank r on
  // CUDA device `device`. `stream`: where every message, native collective
  // and executor operation is queued (nullptr: a non-blocking stream created
  // on `device` and destroyed with the last copy of this transport).
  NcclTransport(const Boot& boot, int device, cudaStream_t stream = nullptr,
                Deadline deadline = deadline_after(std::chrono::minutes(5)))
      : boot_(private_channel(boot, deadline)), s_(std::make_shared<detail::NcclState>()) {
    s_->device = device;
    s_->rank = boot_.rank();
    s_->size = boot_.size();
    s_->stream = std::make_shared<detail::NcclStream>(stream, device);
    ncclUniqueId id{};
    if (s_->rank == 0) detail::nccl_ok(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr);
    std::vector<typename Boot::Request> reqs(static_cast<std::size_t>(s_->size));
    for (int r = 1; r < s_->size && s_->rank == 0; ++r)
      reqs[static_cast<std::size_t>(r)] = boot_.isend(&id, sizeof id, r, id_tag);
    if (s_->rank != 0) reqs[0] = boot_.irecv(&id, sizeof id, 0, id_tag);
    for (auto& q : reqs)
      if (boot_.wait(q, deadline) != WaitStatus::done)
        throw_error<TimeoutError>("NcclTransport on rank ", s_->rank, " of ", s_->size,
                                  ": construction did not complete by its deadline: rank 0's ncclUniqueId was not "
                                  "exchanged (", boot_.failure(), ")");
    {
      // Nonblocking, so that no NCCL call can hold this thread past a
      // deadline: init, and the connections NCCL sets up on first use of a
      // peer or algorithm, progress while weft polls.
      detail::NcclDevice on(device);
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;
      ncclResult_t rc = ncclCommInitRankConfig(&s_->comm, s_->size, id, s_->rank, &config);
      if (rc != ncclSuccess && rc != ncclInProgress) detail::nccl_ok(rc, "ncclCommInitRankConfig", s_->comm);
      await_comm(*s_, deadline, "ncclCommInitRankConfig (construction)");
    }
    finish_setup();
  }

  // Adopts an existing NCCL communicator (not destroyed here: its owner
  // destroys it after the last copy of this transport is gone). `boot` must
  // hold the same ranks in the same order; `stream` as above. Create it
  // nonblocking (ncclConfig_t::blocking = 0) for the deadlines to hold: a
  // blocking one can hold a call inside NCCL while it connects to a peer
  // that never comes. Nothing else may issue work on it concurrently.
  NcclTransport(const Boot& boot, ncclComm_t comm, cudaStream_t stream = nullptr,
                Deadline deadline = deadline_after(std::chrono::minutes(5)))
      : boot_(private_channel(boot, deadline)), s_(std::make_shared<detail::NcclState>()) {
    s_->comm = comm;
    s_->owns_comm = false;
    detail::nccl_ok(ncclCommCuDevice(comm, &s_->device), "ncclCommCuDevice", comm);
    s_->rank = boot_.rank();
    s_->size = boot_.size();
    s_->stream = std::make_shared<detail::NcclStream>(stream, s_->device);
    finish_setup();
  }

  int rank() const { return s_->rank; }
  int size() const { return s_->size; }
  int node() const { return boot_.node(); }  // the bootstrap's notion: shared memory (MPI) or run_local's emulation
  const char* name() const { return "nccl"; }
  int device() const { return s_->device; }
  cudaStream_t stream() const { return s_->stream->stream; }
  ncclComm_t comm() const { return s_->comm; }
  const Boot& bootstrap() const { return boot_; }
  bool aborted() const { return s_->aborted.load(std::memory_order_acquire); }

  // Local work on this transport's device and stream (Communicator's hook).
  template <class E = CudaExecutor>
  E executor() const {
    return E{stream(), device()};
  }

  Request isend(const void* data, std::size_t bytes, int peer, Tag tag) {
    return post(true, const_cast<void*>(data), bytes, peer, tag);
  }
  Request irecv(void* buf, std::size_t bytes, int peer, Tag tag) { return post(false, buf, bytes, peer, tag); }

  bool test(Request& r) {
    if (!r.group_) return boot_.test(r.host_);
    detail::NcclGroup& g = *r.group_;
    if (!g.issued.load(std::memory_order_acquire)) {
      std::lock_guard lock(s_->m);
      advance_locked(g);
    }
    if (g.issued.load(std::memory_order_acquire)) {
      const cudaError_t q = cudaEventQuery(g.done);
      if (q == cudaSuccess) return true;
      if (q != cudaErrorNotReady) {
        cudaGetLastError();
        abort(std::string("CUDA error while testing a device message: ") + cudaGetErrorString(q));
      }
    }
    if (async_failed()) throw_error<TransportError>(failure());
    return false;
  }

  WaitStatus wait(Request& r, Deadline deadline) {
    if (!r.group_) return boot_.wait(r.host_, deadline);
    return poll(*r.group_, deadline);
  }

  // NCCL cannot withdraw a message: an unfinished device message that is
  // given up aborts the communicator (a later message would otherwise match
  // the peer's copy of this one, and the buffer may be freed under it).
  void cancel(Request& r) {
    if (!r.group_) return boot_.cancel(r.host_);
    if (aborted()) return;
    if (r.group_->issued.load(std::memory_order_acquire) && cudaEventQuery(r.group_->done) == cudaSuccess) return;
    abort("a device message to or from rank " + std::to_string(r.peer_) +
          " was cancelled before it completed (NCCL cannot withdraw one)");
  }

  std::string failure() const {
    {
      std::lock_guard lock(s_->m);
      if (!s_->why.empty()) return s_->why;
    }
    return boot_.failure();
  }

  // Aborts the NCCL communicator (ncclCommAbort): work in flight ends, later
  // device messages and collectives report aborted with `why`. For a rank
  // that gives up on its peers (their transport timed out and aborted).
  void abort(std::string_view why) {
    std::lock_guard lock(s_->m);
    abort_locked(std::string(why));
  }

  // Waits until everything queued on the stream so far (messages, combines,
  // copies) has completed.
  WaitStatus synchronize(Deadline deadline) {
    return collective(deadline, "cudaEventRecord", nullptr);
  }

  // Collective over this transport: ranks with equal color (>= 0) form a new
  // one, ordered by (key, rank). The bootstrap splits first, under the
  // deadline, then ncclCommSplit. The new transport shares the stream.
  NcclTransport split(int color, int key, Deadline deadline = deadline_after(std::chrono::minutes(5))) const {
    if (color < 0)
      throw_error<ValueError>("NcclTransport::split: color must be >= 0, got ", color, " on rank ", rank());
    if (aborted()) throw_error<TransportError>("NcclTransport::split on rank ", rank(), ": ", failure());
    Boot sub_boot = boot_.split(color, key, deadline);
    NcclTransport sub(std::move(sub_boot), s_->stream, s_->device);
    // After the queued messages, once NCCL has nothing in progress (the new
    // communicator inherits the nonblocking configuration).
    auto& self = const_cast<NcclTransport&>(*this);
    const WaitStatus st = self.collective(deadline, "ncclCommSplit", [&](ncclComm_t c, cudaStream_t) {
      return ncclCommSplit(c, color, key, &sub.s_->comm, nullptr);
    });
    if (st != WaitStatus::done)
      throw_error<TimeoutError>("NcclTransport::split on rank ", rank(), ": ", failure());
    if (!sub.s_->comm) throw_error<TransportError>("NcclTransport::split on rank ", rank(), ": ncclCommSplit returned no communicator");
    {
      detail::NcclDevice on(s_->device);
      await_comm(*sub.s_, deadline, "ncclCommSplit");
    }
    sub.finish_setup();
    return sub;
  }

  // ---- native collectives (comm::Native): NCCL's own, device buffers ----
  WaitStatus native_allreduce(const void* in, void* out, std::size_t n, dtype d, ReduceOp op, Deadline dl) {
    need_device("allreduce", in, out);
    return collective(dl, "ncclAllReduce", [&](ncclComm_t c, cudaStream_t s) {
      return ncclAllReduce(in, out, n, nccl_type(d), nccl_op(op), c, s);
    });
  }
  // in: size() blocks of n; out: this rank's block (may be in + rank() * n).
  WaitStatus native_reduce_scatter(const void* in, void* out, std::size_t n, dtype d, ReduceOp op, Deadline dl) {
    need_device("reduce_scatter", in, out);
    return collective(dl, "ncclReduceScatter", [&](ncclComm_t c, cudaStream_t s) {
      return ncclReduceScatter(in, out, n, nccl_type(d), nccl_op(op), c, s);
    });
  }
  // in may be out + rank() * n.
  WaitStatus native_allgather(const void* in, void* out, std::size_t n, dtype d, Deadline dl) {
    need_device("allgather", in, out);
    return collective(dl, "ncclAllGather", [&](ncclComm_t c, cudaStream_t s) {
      return ncclAllGather(in, out, n, nccl_type(d), c, s);
    });
  }
  WaitStatus native_broadcast(void* buf, std::size_t n, dtype d, int root, Deadline dl) {
    need_device("broadcast", buf, buf);
    return collective(dl, "ncclBroadcast", [&](ncclComm_t c, cudaStream_t s) {
      return ncclBroadcast(buf, buf, n, nccl_type(d), root, c, s);
    });
  }
  // out is read only on the root.
  WaitStatus native_reduce(const void* in, void* out, std::size_t n, dtype d, ReduceOp op, int root, Deadline dl) {
    need_device("reduce", in, rank() == root ? out : in);
    return collective(dl, "ncclReduce", [&](ncclComm_t c, cudaStream_t s) {
      return ncclReduce(in, out, n, nccl_type(d), nccl_op(op), root, c, s);
    });
  }
  // NCCL has no gather, scatter or alltoall: grouped ncclSend/ncclRecv, the
  // root's own block a device copy queued before the group.
  WaitStatus native_gather(const void* in, void* out, std::size_t n, dtype d, int root, Deadline dl) {
    need_device("gather", in, rank() == root ? out : in);
    const std::size_t block = n * dtype_size(d);
    return collective(dl, "gather (grouped ncclSend/ncclRecv)", [&](ncclComm_t c, cudaStream_t s) {
      if (rank() != root) return ncclSend(in, n, nccl_type(d), root, c, s);
      auto* o = static_cast<std::byte*>(out);
      copy_block(o + static_cast<std::size_t>(root) * block, in, block, s);
      return grouped([&] {
        for (int r = 0; r < size(); ++r)
          if (r != root)
            if (ncclResult_t rc = ncclRecv(o + static_cast<std::size_t>(r) * block, n, nccl_type(d), r, c, s); rc != ncclSuccess)
              return rc;
        return ncclSuccess;
      });
    });
  }
  WaitStatus native_scatter(const void* in, void* out, std::size_t n, dtype d, int root, Deadline dl) {
    need_device("scatter", rank() == root ? in : out, out);
    const std::size_t block = n * dtype_size(d);
    return collective(dl, "scatter (grouped ncclSend/ncclRecv)", [&](ncclComm_t c, cudaStream_t s) {
      if (rank() != root) return ncclRecv(out, n, nccl_type(d), root, c, s);
      const auto* i = static_cast<const std::byte*>(in);
      copy_block(out, i + static_cast<std::size_t>(root) * block, block, s);
      return grouped([&] {
        for (int r = 0; r < size(); ++r)
          if (r != root)
            if (ncclResult_t rc = ncclSend(i + static_cast<std::size_t>(r) * block, n, nccl_type(d), r, c, s); rc != ncclSuccess)
              return rc;
        return ncclSuccess;
      });
    });
  }
  // in and out must not overlap (Communicator stages an in-place input).
  WaitStatus native_alltoall(const void* in, void* out, std::size_t n, dtype d, Deadline dl) {
    need_device("alltoall", in, out);
    if (in == out && size() > 1)
      throw_error<ValueError>("NcclTransport::native_alltoall on rank ", rank(),
                              ": in and out are the same buffer; stage the input (Communicator does)");
    const std::size_t block = n * dtype_size(d);
    return collective(dl, "alltoall (grouped ncclSend/ncclRecv)", [&](ncclComm_t c, cudaStream_t s) {
      const auto* i = static_cast<const std::byte*>(in);
      auto* o = static_cast<std::byte*>(out);
      const auto me = static_cast<std::size_t>(rank());
      copy_block(o + me * block, i + me * block, block, s);
      return grouped([&] {
        for (int r = 0; r < size(); ++r) {
          if (r == rank()) continue;
          const auto ur = static_cast<std::size_t>(r);
          if (ncclResult_t rc = ncclSend(i + ur * block, n, nccl_type(d), r, c, s); rc != ncclSuccess) return rc;
          if (ncclResult_t rc = ncclRecv(o + ur * block, n, nccl_type(d), r, c, s); rc != ncclSuccess) return rc;
        }
        return ncclSuccess;
      });
    });
  }
  // An allreduce of one int on the device: every rank has entered once it completes.
  WaitStatus native_barrier(Deadline dl) {
    return collective(dl, "ncclAllReduce (barrier)", [&](ncclComm_t c, cudaStream_t s) {
      return ncclAllReduce(s_->barrier_word, s_->barrier_word, 1, ncclInt32, ncclSum, c, s);
    });
  }

  // ---- weft's types and reduce ops as NCCL's (Native and bench/gpu_nccl.cu) ----
  static ncclDataType_t nccl_type(dtype d) {
    switch (d) {
      case dtype::f32: return ncclFloat32;
      case dtype::f64: return ncclFloat64;
      case dtype::f16: return ncclFloat16;
      case dtype::bf16: return ncclBfloat16;
      case dtype::i32: return ncclInt32;
      case dtype::i64: return ncclInt64;
      case dtype::u8: return ncclUint8;
    }
    return ncclUint8;
  }
  // avg: NCCL's ncclAvg (floats scale each input by 1/p before summing, so
  // results may differ from weft's sum-then-divide in the last bits;
  // integers sum, then divide).
  static ncclRedOp_t nccl_op(ReduceOp op) {
    switch (op) {
      case ReduceOp::sum: return ncclSum;
      case ReduceOp::prod: return ncclProd;
      case ReduceOp::min: return ncclMin;
      case ReduceOp::max: return ncclMax;
      case ReduceOp::avg: return ncclAvg;
    }
    return ncclSum;
  }

 private:
  // The private channel's tag for the id exchange (no other message uses it).
  static constexpr Tag id_tag = 0x7ff0;

  // A split's transport before its NCCL communicator exists.
  NcclTransport(Boot boot, std::shared_ptr<detail::NcclStream> stream, int device)
      : boot_(std::move(boot)), s_(std::make_shared<detail::NcclState>()) {
    s_->device = device;
    s_->rank = boot_.rank();
    s_->size = boot_.size();
    s_->stream = std::move(stream);
  }

  // weft's host messages get a channel of their own (Boot split with one
  // color): they never meet the application's own messages on Boot. Every
  // rank of boot must arrive by the deadline.
  static Boot private_channel(const Boot& boot, Deadline deadline) {
    try {
      return boot.split(0, boot.rank(), deadline);
    } catch (const CommError& e) {
      throw_error<TimeoutError>("NcclTransport on rank ", boot.rank(), " of ", boot.size(),
                                ": construction did not complete by its deadline: ", e.what());
    }
  }

  // Checks the communicator matches the bootstrap, and allocates the barrier word.
  void finish_setup() {
    int n = 0, r = 0;
    detail::nccl_ok(ncclCommCount(s_->comm, &n), "ncclCommCount", s_->comm);
    detail::nccl_ok(ncclCommUserRank(s_->comm, &r), "ncclCommUserRank", s_->comm);
    if (n != s_->size || r != s_->rank)
      throw_error<ValueError>("NcclTransport: the NCCL communicator is rank ", r, " of ", n, " but the bootstrap is rank ",
                              s_->rank, " of ", s_->size, "; they must hold the same ranks in the same order");
    detail::NcclDevice on(s_->device);
    detail::cuda_rt_ok(cudaMalloc(&s_->barrier_word, sizeof(int)), "cudaMalloc (barrier word)");
    detail::cuda_rt_ok(cudaMemsetAsync(s_->barrier_word, 0, sizeof(int), stream()), "cudaMemsetAsync (barrier word)");
  }

  Request post(bool send, void* buf, std::size_t bytes, int peer, Tag tag) {
    Request r;
    r.peer_ = peer;
    // Host memory and zero-byte messages (which still synchronise the pair) go over the bootstrap.
    if (bytes == 0 || !detail::on_device(buf)) {
      r.host_ = send ? boot_.isend(buf, bytes, peer, tag) : boot_.irecv(buf, bytes, peer, tag);
      return r;
    }
    // NCCL has no tags: device messages between a pair match in issue order.
    (void)tag;
    if (peer < 0 || peer >= size() || peer == rank())
      throw_error<ValueError>("NcclTransport on rank ", rank(), ": peer ", peer, " is not another rank of ", size());
    std::lock_guard lock(s_->m);
    if (!s_->open) s_->open = std::make_shared<detail::NcclGroup>(s_->device);
    s_->pending.push_back(detail::NcclOp{send, buf, bytes, peer});
    r.group_ = s_->open;
    return r;
  }

  // ---- issuing work (all *_locked: the caller holds s_->m) ----
  // The communicator is nonblocking: a launch may return ncclInProgress
  // before its work is on the stream (NCCL is still connecting to a peer,
  // say), and NCCL must not be called again on it until
  // ncclCommGetAsyncError stops saying so. Such a launch is `unsettled`;
  // its event is recorded once it settles. Nothing here blocks.

  // Records g's event after the work just launched.
  void record_locked(detail::NcclGroup& g) {
    detail::NcclDevice on(s_->device);
    if (cudaError_t e = cudaEventRecord(g.done, stream()); e != cudaSuccess) {
      cudaGetLastError();
      fail_locked(std::string("cudaEventRecord failed: ") + cudaGetErrorString(e));
    }
    g.issued.store(true, std::memory_order_release);
  }

  // A launch's result: recorded now, left unsettled, or a failure (aborts, throws).
  void launched_locked(ncclResult_t rc, const std::shared_ptr<detail::NcclGroup>& g, const char* what) {
    if (rc == ncclInProgress) {
      s_->unsettled = g;
      return;
    }
    if (rc != ncclSuccess) fail_locked(std::string(what) + " failed: " + detail::nccl_error_text(rc, s_->comm));
    record_locked(*g);
  }

  // One look at the unsettled launch; true when nothing is in progress.
  bool settle_locked() {
    if (!s_->unsettled) return true;
    if (s_->aborted.load()) {
      s_->unsettled.reset();
      return true;
    }
    ncclResult_t st = ncclInProgress;
    if (ncclResult_t rc = ncclCommGetAsyncError(s_->comm, &st); rc != ncclSuccess) st = rc;
    if (st == ncclInProgress) return false;
    std::shared_ptr<detail::NcclGroup> g = std::move(s_->unsettled);
    s_->unsettled.reset();
    if (st != ncclSuccess)
      fail_locked("NCCL failed while enqueuing work on rank " + std::to_string(rank()) + ": " +
                  detail::nccl_error_text(st, s_->comm));
    record_locked(*g);
    return true;
  }

  // Issues the queued device messages as one group, once nothing is in
  // progress; false when an earlier launch still is (nothing issued). On an
  // aborted transport the queue is dropped.
  bool flush_locked() {
    if (s_->pending.empty()) return true;
    if (!settle_locked()) return false;
    std::shared_ptr<detail::NcclGroup> g = std::move(s_->open);
    s_->open.reset();
    std::vector<detail::NcclOp> ops;
    ops.swap(s_->pending);
    if (s_->aborted.load()) return true;
    detail::NcclDevice on(s_->device);
    ncclResult_t first = ncclGroupStart();
    if (first == ncclSuccess) {
      for (const auto& op : ops) {
        ncclResult_t rc = op.send ? ncclSend(op.buf, op.bytes, ncclUint8, op.peer, s_->comm, stream())
                                  : ncclRecv(op.buf, op.bytes, ncclUint8, op.peer, s_->comm, stream());
        if (rc != ncclSuccess && first == ncclSuccess) first = rc;
      }
      ncclResult_t end = ncclGroupEnd();
      if (first == ncclSuccess) first = end;
    }
    launched_locked(first, g, "issuing a group of ncclSend/ncclRecv");
    return true;
  }

  // Moves g towards issued (settles, flushes); true once its event is recorded.
  bool advance_locked(detail::NcclGroup& g) {
    if (g.issued.load() || s_->aborted.load()) return g.issued.load();
    if (!settle_locked() || g.issued.load()) return g.issued.load();
    if (!flush_locked()) return false;
    settle_locked();  // small launches usually settle at once
    return g.issued.load();
  }

  // Launches `launch` (a collective, a split; nullptr: nothing) after every
  // earlier launch settled and the queue is issued, records an event after
  // it, and waits for that event under the deadline.
  template <class F>
  WaitStatus collective(Deadline dl, const char* what, F&& launch) {
    std::shared_ptr<detail::NcclGroup> g;
    detail::NcclBackoff b;
    for (;;) {
      {
        std::lock_guard lock(s_->m);
        if (s_->aborted.load()) return WaitStatus::aborted;
        if (flush_locked() && settle_locked()) {
          g = std::make_shared<detail::NcclGroup>(s_->device);
          detail::NcclDevice on(s_->device);
          if constexpr (std::is_null_pointer_v<std::remove_cvref_t<F>>) {
            (void)what;
            record_locked(*g);
          } else {
            launched_locked(launch(s_->comm, stream()), g, what);
          }
          break;
        }
      }
      if (Clock::now() >= dl) return expire(b);
      b.pause();
    }
    return poll(*g, dl);
  }

  template <class F>
  static ncclResult_t grouped(F&& body) {
    ncclResult_t rc = ncclGroupStart();
    if (rc != ncclSuccess) return rc;
    ncclResult_t first = body();
    ncclResult_t end = ncclGroupEnd();
    return first != ncclSuccess ? first : end;
  }

  static void copy_block(void* dst, const void* src, std::size_t bytes, cudaStream_t s) {
    if (bytes && dst != src)
      detail::cuda_rt_ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync (own block)");
  }

  void need_device(const char* op, const void* a, const void* b) const {
    if ((a && !detail::on_device(a)) || (b && !detail::on_device(b)))
      throw_error<TransportError>("NcclTransport::native_", op, " on rank ", rank(),
                                  ": NCCL's collectives need device buffers and this one is host memory; use a host "
                                  "transport (", boot_.name(), ") for host buffers");
  }

  // Waits for a nonblocking communicator's init or split under the deadline;
  // on expiry or error aborts it and throws.
  static void await_comm(detail::NcclState& st, Deadline deadline, const char* what) {
    const ncclResult_t rc = detail::nccl_settle(st.comm, deadline);
    if (rc == ncclSuccess) return;
    std::string text = rc == ncclInProgress ? std::string("did not complete by its deadline (a rank did not take part)")
                                            : "failed: " + detail::nccl_error_text(rc, st.comm);
    ncclCommAbort(st.comm);
    st.aborted.store(true);
    st.why = std::string(what) + " " + text;
    if (rc == ncclInProgress)
      throw_error<TimeoutError>("NcclTransport on rank ", st.rank, " of ", st.size, ": ", st.why);
    throw_error<TransportError>("NcclTransport on rank ", st.rank, " of ", st.size, ": ", st.why);
  }

  // NCCL's asynchronous error (a peer's connection failed, ...): aborts and records why.
  bool async_failed() {
    std::lock_guard lock(s_->m);
    if (s_->aborted.load()) return true;
    ncclResult_t e = ncclSuccess;
    if (ncclCommGetAsyncError(s_->comm, &e) != ncclSuccess) return false;
    if (e == ncclSuccess || e == ncclInProgress) return false;
    abort_locked("NCCL reported an asynchronous error on rank " + std::to_string(rank()) + ": " +
                 detail::nccl_error_text(e, s_->comm) + "; the NCCL communicator was aborted");
    return true;
  }

  // A deadline passed with NCCL work in flight (or still being enqueued).
  WaitStatus expire(const detail::NcclBackoff& b) {
    abort("a wait on rank " + std::to_string(rank()) + " passed its deadline after " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - b.start).count()) +
          " ms with NCCL work in flight (a peer that never issued its side); the NCCL communicator was aborted "
          "(ncclCommAbort) and this transport is unusable");
    return WaitStatus::timed_out;
  }

  // Polls until g's work completed, NCCL failed, or the deadline passed
  // (then aborts the communicator).
  WaitStatus poll(detail::NcclGroup& g, Deadline deadline) {
    detail::NcclBackoff b;
    for (unsigned i = 0;; ++i) {
      if (!g.issued.load(std::memory_order_acquire)) {
        std::lock_guard lock(s_->m);
        advance_locked(g);
      }
      if (g.issued.load(std::memory_order_acquire)) {
        const cudaError_t q = cudaEventQuery(g.done);
        if (q == cudaSuccess) return WaitStatus::done;
        if (q != cudaErrorNotReady) {
          cudaGetLastError();
          abort("CUDA error while waiting on rank " + std::to_string(rank()) + ": " + cudaGetErrorName(q) + " (" +
                cudaGetErrorString(q) + "); the NCCL communicator was aborted");
          return WaitStatus::aborted;
        }
      }
      if ((i & 15) == 15 || !b.busy()) {
        if (async_failed()) return WaitStatus::aborted;
        if (Clock::now() >= deadline) return expire(b);
      }
      b.pause();
    }
  }

  void abort_locked(std::string why) {
    if (s_->aborted.load()) return;
    s_->why = std::move(why);
    s_->pending.clear();
    s_->open.reset();
    s_->unsettled.reset();
    s_->aborted.store(true, std::memory_order_release);
    if (s_->comm) {
      detail::NcclDevice on(s_->device);
      ncclCommAbort(s_->comm);
    }
  }

  // A failure while issuing: the pairs are out of step for good.
  [[noreturn]] void fail_locked(std::string why) {
    const std::string text = "NcclTransport on rank " + std::to_string(rank()) + ": " + why +
                             "; the NCCL communicator was aborted";
    abort_locked(text);
    throw_error<TransportError>(text);
  }

  Boot boot_;
  std::shared_ptr<detail::NcclState> s_;
};

static_assert(Transport<NcclTransport<ThreadTransport>>);
static_assert(NativeCollectives<NcclTransport<ThreadTransport>>);

}  // namespace weft::comm

#if defined(__CUDACC__)
#include "../cuda_executor.cuh"
#endif
