// A device transport emulated on the host, so the CPU suite runs the code
// paths weft's policies take over NcclTransport (a transport that names its
// own executor, buffers the host must not compute on). "Device memory" is
// host memory whose every byte is stored XOR 0x5a: the transport moves bytes
// untouched (as NCCL moves device bytes), the executor decodes for its
// combines and divides and re-encodes, and download/upload decode and encode.
// A policy that reads or writes a device buffer as numbers on the host (a
// host loop, a codec) computes on scrambled bytes, and the results differ
// from the same policy over plain host buffers, which the tests compare
// bit for bit. The executor counts its operations.
#pragma once

#include <weft/comm/context.hpp>
#include <weft/comm/reduce_op.hpp>
#include <weft/comm/transport.hpp>
#include <weft/comm/transport/thread.hpp>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace emulated {

struct device {};  // the device_type tag: not weft::cpu

inline constexpr unsigned char mask = 0x5a;

inline void scramble(void* dst, const void* src, std::size_t bytes) {
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  for (std::size_t i = 0; i < bytes; ++i) d[i] = static_cast<unsigned char>(s[i] ^ mask);
}

struct Counts {
  std::atomic<long> allocate{0}, combine{0}, divide{0}, download{0}, upload{0};
};

struct Executor {
  using device_type = device;
  std::shared_ptr<Counts> counts = std::make_shared<Counts>();

  weft::HostQueue queue() const { return {}; }
  std::byte* allocate(std::size_t bytes) const {
    ++counts->allocate;
    auto* p = static_cast<std::byte*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (!p) throw std::bad_alloc();
    return p;
  }
  void deallocate(std::byte* p) const noexcept { std::free(p); }
  void copy(void* dst, const void* src, std::size_t bytes) const { std::memcpy(dst, src, bytes); }
  void move(void* dst, const void* src, std::size_t bytes) const { std::memmove(dst, src, bytes); }
  void combine(weft::dtype d, weft::comm::ReduceOp op, const void* a, const void* b, void* out, std::size_t n) const {
    ++counts->combine;
    const std::size_t bytes = n * weft::dtype_size(d);
    std::vector<std::byte> x(bytes), y(bytes), z(bytes);
    scramble(x.data(), a, bytes);
    scramble(y.data(), b, bytes);
    weft::comm::detail::combine(d, op, x.data(), y.data(), z.data(), n);
    scramble(out, z.data(), bytes);
  }
  void divide(weft::dtype d, void* buf, std::size_t n, int k) const {
    ++counts->divide;
    const std::size_t bytes = n * weft::dtype_size(d);
    std::vector<std::byte> x(bytes);
    scramble(x.data(), buf, bytes);
    weft::comm::detail::divide_by(d, x.data(), n, k);
    scramble(buf, x.data(), bytes);
  }
  void download(void* host, const void* dev, std::size_t bytes) const {
    ++counts->download;
    scramble(host, dev, bytes);
  }
  void upload(void* dev, const void* host, std::size_t bytes) const {
    ++counts->upload;
    scramble(dev, host, bytes);
  }
};
static_assert(weft::comm::StagingExecutor<Executor>);

// A Base transport whose buffers are emulated device memory. Only the
// required Transport operations are forwarded: a receive that combines on
// the host (RecvReduce) is what a device transport does not have.
template <weft::comm::Transport Base = weft::comm::ThreadTransport>
class Transport {
 public:
  using Request = typename Base::Request;
  using executor_type = Executor;

  explicit Transport(Base b, Executor e = {}) : b_(std::move(b)), e_(std::move(e)) {}
  Executor executor() const { return e_; }
  Base& base() { return b_; }

  int rank() const { return b_.rank(); }
  int size() const { return b_.size(); }
  int node() const { return b_.node(); }
  Request isend(const void* p, std::size_t bytes, int peer, weft::comm::Tag tag) { return b_.isend(p, bytes, peer, tag); }
  Request irecv(void* p, std::size_t bytes, int peer, weft::comm::Tag tag) { return b_.irecv(p, bytes, peer, tag); }
  bool test(Request& r) { return b_.test(r); }
  weft::comm::WaitStatus wait(Request& r, weft::comm::Deadline dl) { return b_.wait(r, dl); }
  void cancel(Request& r) { b_.cancel(r); }
  std::string failure() const { return b_.failure(); }
  Transport split(int color, int key, weft::comm::Deadline dl) const { return Transport(b_.split(color, key, dl), e_); }
  const char* name() const { return "emulated-device"; }

 private:
  Base b_;
  Executor e_;
};
static_assert(weft::comm::Transport<Transport<>>);

// A device buffer of n elements of E, filled from / read back to the host.
template <class E>
class Buffer {
 public:
  Buffer(const Executor& e, std::size_t n) : e_(e), n_(n), p_(e.allocate(n * sizeof(E) + 1)) {}
  Buffer(const Executor& e, const std::vector<E>& h) : Buffer(e, h.size()) { put(h); }
  ~Buffer() { e_.deallocate(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  E* data() { return reinterpret_cast<E*>(p_); }
  std::size_t size() const { return n_; }
  void put(const std::vector<E>& h) { scramble(p_, h.data(), n_ * sizeof(E)); }
  std::vector<E> get() const {
    std::vector<E> h(n_);
    scramble(h.data(), p_, n_ * sizeof(E));
    return h;
  }

 private:
  Executor e_;
  std::size_t n_;
  std::byte* p_;
};

}  // namespace emulated
