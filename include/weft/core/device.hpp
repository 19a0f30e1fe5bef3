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

// Allocation per device. Storage is 64-byte aligned (a cache line; AVX-512 width).
template <class Device>
struct device_memory {
  static_assert(dependent_false<Device>,
                "no allocator for this device: for weft::cuda tensors include <weft/kernels/cuda/memory.cuh> "
                "and compile with nvcc");
};

template <>
struct device_memory<cpu> {
  static constexpr std::size_t alignment = 64;
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    void* p = std::aligned_alloc(alignment, rounded);
    if (!p) throw std::bad_alloc();
    return p;
  }
  static void deallocate(void* p) noexcept { std::free(p); }
  static void copy(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
};

}  // namespace weft
