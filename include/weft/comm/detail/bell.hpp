// Spin-then-block waiting for the in-process transport: a waiter spins briefly
// (microsecond latency when every rank has a core), then yields, then sleeps on
// its rank's doorbell (a futex on Linux) until a peer rings it or a short
// timeout passes, so deadlines and failures are always re-checked. While any
// rank of the run has lately spent a share of its time queued behind other
// tasks (the machine is shared with other work), waiters skip the spinning and
// yielding and sleep at once.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <thread>

#include "../deadline.hpp"

#if defined(__linux__)
#include <linux/futex.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#endif

namespace weft::comm::detail {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// One per rank. Peers ring it after any change the rank may be waiting for.
struct alignas(64) Bell {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> sleepers{0};

  void ring() {
    seq.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) != 0) wake();
  }

  void wake() {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&seq), FUTEX_WAKE_PRIVATE, 0x7fffffff, nullptr, nullptr, 0);
#endif
  }

  // Sleeps until rung or `max_ns` passes; returns early if `ready()` already holds.
  template <class Ready>
  void sleep(Ready&& ready, std::int64_t max_ns) {
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    std::uint32_t s = seq.load(std::memory_order_seq_cst);
    if (!ready()) {
#if defined(__linux__)
      timespec ts{static_cast<time_t>(max_ns / 1000000000), static_cast<long>(max_ns % 1000000000)};
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&seq), FUTEX_WAIT_PRIVATE, s, &ts, nullptr, 0);
#else
      (void)s;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
#endif
    }
    sleepers.fetch_sub(1, std::memory_order_seq_cst);
  }
};

struct SpinPolicy {
  int spins = 2000;  // busy iterations before yielding (0 when ranks outnumber cores)
  int yields = 64;   // sched_yield rounds before sleeping on the bell
  int contended_yield_us = 50;  // a yield longer than this means another task ran: sleep at once
};

// Whether the machine is shared right now, learnt from the ranks' own threads:
// a thread that spent more than `delayed_share` of the last window runnable
// but not running (queued behind another task: Linux's run_delay in
// /proc/thread-self/schedstat) marks the whole run contended for `hold_ns`.
// While it is, a waiter neither spins nor yields: a rank that keeps its core
// busy while the peer it waits for sits queued behind another job on the
// other core keeps that peer from moving to its core (measured on 2 cores
// with a busy process on one: DataParallel on 2 thread ranks 17k samples/s
// spinning, 27-34k sleeping at once; on a quiet machine spinning is the
// faster). A quiet machine's own housekeeping delays a thread by ~0.1% of its
// time, a competing busy process by 10-50%.
struct Contention {
  static constexpr std::int64_t window_ns = 10'000'000;  // a thread reads its own delay at most this often
  static constexpr double delayed_share = 0.05;
  static constexpr std::int64_t hold_ns = 100'000'000;
  std::atomic<std::int64_t> until_ns{0};

  static std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
  }
  // This thread's total time spent runnable but not running, in ns; -1 where unknown.
  static std::int64_t run_delay_ns() {
#if defined(__linux__)
    const int fd = ::open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[96];
    const ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char* end = nullptr;
    std::strtoll(buf, &end, 10);  // time on the CPU; the delay is the second field
    return end == buf ? -1 : std::strtoll(end, nullptr, 10);
#else
    return -1;
#endif
  }
  // Called by a waiter that found nothing ready: once per window, records how
  // much of it this thread spent queued, and says whether the run is contended.
  bool contended() {
    const std::int64_t now = now_ns();
    thread_local std::int64_t window_start = 0, delay_at_start = -1;
    if (now - window_start >= window_ns) {
      const std::int64_t d = run_delay_ns();
      if (delay_at_start >= 0 && d >= 0 &&
          static_cast<double>(d - delay_at_start) > delayed_share * static_cast<double>(now - window_start))
        until_ns.store(now + hold_ns, std::memory_order_relaxed);
      window_start = now;
      delay_at_start = d;
    }
    return now < until_ns.load(std::memory_order_relaxed);
  }
};

// Waits until ready() holds, stop() returns a status other than done, or the
// deadline passes. ready() must be cheap and side-effect free unless it
// completes the wait (it may make progress, e.g. consume a message).
template <class Ready, class Stop>
WaitStatus wait_until(Bell& bell, const SpinPolicy& sp, Contention& contention, Deadline deadline, Ready&& ready,
                      Stop&& stop) {
  if (ready()) return WaitStatus::done;
  const bool shared = contention.contended();
  for (int i = shared ? sp.spins : 0; i < sp.spins; ++i) {
    if (ready()) return WaitStatus::done;
    cpu_relax();
  }
  for (int i = shared ? sp.yields : 0;; ++i) {
    if (ready()) return WaitStatus::done;
    if (WaitStatus s = stop(); s != WaitStatus::done) {
      // A peer's failure does not cancel what was already sent: messages
      // posted before it (or being posted by a rank that has not seen it
      // yet) are still taken, for a short grace period, so every rank
      // reports the same root cause (e.g. a fingerprint mismatch).
      auto grace = Clock::now() + std::chrono::milliseconds(50);
      do {
        if (ready()) return WaitStatus::done;
        std::this_thread::yield();
      } while (Clock::now() < grace);
      return s;
    }
    auto now = Clock::now();
    if (now >= deadline) return ready() ? WaitStatus::done : WaitStatus::timed_out;
    if (i < sp.yields) {
      // A yield that comes back late gave the core to someone else: the
      // machine is shared (a build, another job), and every further yield
      // keeps this rank runnable beside the peer it waits for, taking half of
      // that peer's core. Sleep on the bell from now on instead.
      const auto before = Clock::now();
      std::this_thread::yield();
      if (Clock::now() - before > std::chrono::microseconds(sp.contended_yield_us)) i = sp.yields;
    } else {
      auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
      bell.sleep(ready, left < 20'000'000 ? left : 20'000'000);
    }
  }
}

}  // namespace weft::comm::detail
