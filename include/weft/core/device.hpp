// Device tags. A tensor's device is part of its type; an expression may only
// mix tensors of one device (checked at compile time).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

#include "config.hpp"

namespace weft {

struct cpu {
  static constexpr const char* name = "cpu";
};
struct cuda {
  static constexpr const char* name = "cuda";
};

// The host's queue is the calling thread: work runs synchronously, in program
// order (core/exec.hpp names it device_queue<cpu>).
struct HostQueue {};

// Allocation per device. Each model provides
//   queue_type                   what stream-ordered work is ordered on
//   allocate(bytes) / deallocate(p) / copy(dst, src, bytes)
//                                synchronous: usable from every queue on return
//   allocate(bytes, q) / deallocate(p, q) / copy(dst, src, bytes, q)
//                                stream-ordered: the memory is valid for work
//                                ordered after the call on q; the free happens
//                                after the work already on q
//   synchronize(q)               wait for the work ordered on q
//   copy_from_host(dst, src, bytes) / copy_to_host(dst, src, bytes)
//                                synchronous, between the host and this device
//                                (layers copy their host-drawn initial values)
// Storage is 64-byte aligned on the host (a cache line; AVX-512 width).
template <class Device>
struct device_memory {
  static_assert(dependent_false<Device>,
                "no allocator for this device: for weft::cuda tensors include <weft/kernels/cuda/memory.cuh> "
                "and compile with nvcc");
};

template <>
struct device_memory<cpu> {
  static constexpr std::size_t alignment = 64;
  // Through the aligned operator new, so a program that replaces or counts
  // operator new (as weft's allocation tests do) sees tensor storage too.
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    return ::operator new(bytes, std::align_val_t(alignment));
  }
  static void deallocate(void* p) noexcept {
    if (p) ::operator delete(p, std::align_val_t(alignment));
  }
  static void copy(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  // Between this device's memory and the host's (the same memory here).
  static void copy_from_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void copy_to_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }

  // The host's queue is the calling thread: the ordered forms are the plain ones.
  using queue_type = HostQueue;
  static void* allocate(std::size_t bytes, HostQueue) { return allocate(bytes); }
  static void deallocate(void* p, HostQueue) noexcept { deallocate(p); }
  static void copy(void* dst, const void* src, std::size_t bytes, HostQueue) { copy(dst, src, bytes); }
  // Wait for the work ordered on the queue (the host's has none pending).
  static void synchronize(HostQueue) {}
};

}  // namespace weft
