// A counting global operator new for tests that prove a steady state (a
// training step, an optimizer step, a collective) allocates nothing.
//
// Including this header replaces operator new and delete (plain, array and
// aligned forms, all malloc/free underneath) for the whole executable, so
// include it in one translation unit of a test executable only, and before
// anything else: GCC's -Wmismatched-new-delete cannot see that both sides
// are malloc/free, and the pragma below must precede the code it inlines.
//
//   CHECK(alloc_counter::on_this_thread([&] { step(); }) == 0);    // this thread's allocations
//   CHECK(alloc_counter::on_every_thread([&] { step(); }) == 0);   // every thread's, while f runs
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace alloc_counter {

inline std::atomic<bool> everywhere{false};  // count on every thread
inline std::atomic<long> everywhere_count{0};
inline thread_local bool here = false;  // count on this thread
inline thread_local long here_count = 0;

inline void note() noexcept {
  if (here) ++here_count;
  if (everywhere.load(std::memory_order_relaxed)) everywhere_count.fetch_add(1, std::memory_order_relaxed);
}

// Heap allocations the calling thread makes while f runs.
template <class F>
long on_this_thread(F&& f) {
  struct Off {
    ~Off() { here = false; }
  } off;
  const long before = here_count;
  here = true;
  f();
  here = false;
  return here_count - before;
}

// Heap allocations any thread makes while f runs.
template <class F>
long on_every_thread(F&& f) {
  struct Off {
    ~Off() { everywhere.store(false); }
  } off;
  const long before = everywhere_count.load();
  everywhere.store(true);
  f();
  everywhere.store(false);
  return everywhere_count.load() - before;
}

inline void* allocate(std::size_t n) {
  note();
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}

inline void* allocate_aligned(std::size_t n, std::align_val_t a) {
  note();
  const auto al = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;  // size a multiple of the alignment
  throw std::bad_alloc();
}

}  // namespace alloc_counter

// Replacement functions may not be inline: hence one translation unit only.
void* operator new(std::size_t n) { return alloc_counter::allocate(n); }
void* operator new[](std::size_t n) { return alloc_counter::allocate(n); }
void* operator new(std::size_t n, std::align_val_t a) { return alloc_counter::allocate_aligned(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return alloc_counter::allocate_aligned(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
