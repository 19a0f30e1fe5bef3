// Workspace: scratch memory for the values an evaluation materialises
// (reductions, matmuls, softmax) and for the adjoints of backward. A bump
// arena over a list of blocks: reset() at the start of each evaluation; once
// one step has run, repeating it allocates nothing.
// Blocks are allocated synchronously, or (Workspace(queue)) stream-ordered on
// the queue the evaluations run on: for CUDA from the device's memory pool,
// freed on that stream when the workspace dies (kernels/cuda/memory.cuh).
#pragma once

#include <cstddef>
#include <cstring>
#include <vector>

#include "tensor.hpp"

namespace weft {

template <class Device = cpu>
class Workspace {
 public:
  using queue_type = typename device_memory<Device>::queue_type;

  Workspace() = default;
  // Stream-ordered blocks on q: pass the executor's queue (Exec(ws, q)), so
  // that a block is allocated before, and freed after, the work that uses it.
  explicit Workspace(queue_type q) : queue_(q), ordered_(true) {}
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() { release(); }

  // Start a new evaluation. The same sequence of requests lands in the same
  // blocks as last time, so a repeated step allocates nothing from step 2 on.
  void reset() {
    for (auto& b : blocks_) b.used = 0;
    current_ = 0;
  }

  // Replace several blocks by one of their total size (better locality; one
  // allocation now instead of none later). Call between steps, if ever.
  void consolidate() {
    if (blocks_.size() <= 1) return;
    std::size_t total = 0;
    for (auto& b : blocks_) total += b.size;
    release();
    add_block(total);
    current_ = 0;
  }

  template <class T>
  TensorView<T, Device> alloc(const Shape& shape) {
    std::size_t bytes = static_cast<std::size_t>(shape.numel()) * sizeof(T);
    return TensorView<T, Device>(static_cast<T*>(alloc_bytes(bytes)), shape);
  }
  template <class T>
  TensorView<T, Device> zeros(const Shape& shape) {
    auto v = alloc<T>(shape);
    static_assert(std::is_same_v<Device, cpu>, "Workspace::zeros is host-only");
    if (v.numel() > 0) std::memset(static_cast<void*>(v.data), 0, static_cast<std::size_t>(v.numel()) * sizeof(T));
    return v;
  }

  std::size_t capacity() const {
    std::size_t c = 0;
    for (auto& b : blocks_) c += b.size;
    return c;
  }
  // Bytes handed out since the last reset(): after one evaluation, its peak
  // scratch (the arena never frees within one).
  std::size_t used() const {
    std::size_t u = 0;
    for (auto& b : blocks_) u += b.used;
    return u;
  }
  // Number of blocks ever allocated (tests use it to show the steady state allocates nothing).
  std::size_t allocations() const { return allocations_; }
  bool stream_ordered() const { return ordered_; }
  queue_type queue() const { return queue_; }

 private:
  struct Block {
    char* base;
    std::size_t size;
    std::size_t used;
  };
  static constexpr std::size_t align = device_memory<Device>::alignment;

  void* alloc_bytes(std::size_t bytes) {
    bytes = (bytes + align - 1) / align * align;
    if (bytes == 0) bytes = align;
    while (current_ < blocks_.size()) {
      Block& b = blocks_[current_];
      if (b.used + bytes <= b.size) {
        void* p = b.base + b.used;
        b.used += bytes;
        return p;
      }
      ++current_;
    }
    std::size_t size = bytes;
    if (!blocks_.empty() && size < blocks_.back().size * 2) size = blocks_.back().size * 2;
    add_block(size);
    current_ = blocks_.size() - 1;
    Block& b = blocks_.back();
    b.used = bytes;
    return b.base;
  }
  void add_block(std::size_t size) {
    void* p = ordered_ ? device_memory<Device>::allocate(size, queue_) : device_memory<Device>::allocate(size);
    blocks_.push_back(Block{static_cast<char*>(p), size, 0});
    ++allocations_;
  }
  void release() {
    for (auto& b : blocks_) {
      if (ordered_) device_memory<Device>::deallocate(b.base, queue_);
      else device_memory<Device>::deallocate(b.base);
    }
    blocks_.clear();
  }

  std::vector<Block> blocks_;
  queue_type queue_{};
  bool ordered_ = false;
  std::size_t current_ = 0;
  std::size_t allocations_ = 0;
};

}  // namespace weft
