// Spin-then-block waiting for the in-process transport: a waiter spins briefly
// (microsecond latency when every rank has a core), then yields (for 2 ms when
// every rank has a core), then sleeps on its rank's doorbell (a futex on
// Linux) until a peer rings it or a short timeout passes, so deadlines and
// failures are always re-checked. While the machine has lately had more
// runnable threads than CPUs (it is shared with other work), waiters skip the
// spinning and yielding and sleep at once.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "../deadline.hpp"

#if defined(__linux__)
#include <linux/futex.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/sysinfo.h>
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

// Why yield for as long as 2 ms: a sleeping waiter costs every message that
// ends its wait two wake-ups, the sender's futex call and the sleeper's own
// return to a core, and on a 2-vCPU VM each took ~20-30 us (pipeline
// traces, p = 2 thread ranks: a send to a sleeping stage took 20-30 us, to
// a yielding one 1 us). Waits of a few hundred us to ~1 ms are the common
// case there (a stage waits one F or B of its neighbour). A yield hands the
// core to any task queued on it and the late-yield check below then sleeps,
// so this costs only a core nobody else wanted.
struct SpinPolicy {
  int spins = 2000;  // busy iterations before yielding (0 when ranks outnumber cores)
  int yields = 64;   // sched_yield rounds before sleeping on the bell, at least
  std::int64_t yield_ns = 2'000'000;  // ... and yielding until this long into the wait (0 when ranks outnumber cores)
  int contended_yield_us = 50;  // a yield longer than this means another task ran: sleep at once
};

// Whether the machine is shared right now: more threads runnable than it has
// CPUs (Linux's count of runnable tasks in /proc/loadavg, read by a waiting
// thread at most once per window) in two windows running marks the whole run
// contended for `hold_ns`. While it is, a waiter that may run on more than
// one CPU neither spins nor yields: a rank that keeps its core busy while the
// peer it waits for sits queued behind another job on the other core keeps
// that peer from moving to its core (measured on 2 cores with a busy process
// on one: DataParallel on 2 unpinned thread ranks 15-19k samples/s spinning,
// 24-35k sleeping at once; on a quiet machine spinning is the faster). A
// thread pinned to one CPU spins as on a quiet machine: no peer can move to
// its core, and sleeping would only add a wake-up to every message
// (weft-bench, pinned, contended, 32 KiB: 11-52 us spinning, 49-97 us
// sleeping). A count, not a delay: a thread's own time queued would include
// the wake-up latency of its own sleeps, so sleeping would keep the run marked
// contended on a quiet machine.
struct Contention {
  static constexpr std::int64_t window_ns = 10'000'000;  // a thread reads the count at most this often
  static constexpr std::int64_t hold_ns = 100'000'000;
  std::atomic<std::int64_t> until_ns{0};

  static std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
  }
  // Runnable threads on the machine minus its CPUs (> 0: some wait for a core); 0 where unknown.
  static int oversubscription() {
#if defined(__linux__)
    static const int cpus = get_nprocs();
    const int fd = ::open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[128];
    const ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    // "0.52 0.58 0.59 3/467 12345": the fourth field is runnable/total
    const char* p = buf;
    for (int field = 0; field < 3 && p; ++field) {
      p = std::strchr(p, ' ');
      if (p) ++p;
    }
    return p ? static_cast<int>(std::strtol(p, nullptr, 10)) - cpus : 0;
#else
    return 0;
#endif
  }
  // Called by a waiter that found nothing ready: once per window, samples the
  // machine (and this thread's affinity), and says whether this waiter should
  // sleep at once: the run is contended and the thread is not pinned to one CPU.
  bool contended() {
    const std::int64_t now = now_ns();
    thread_local std::int64_t window_start = 0;
    thread_local bool was_over = false, movable = true;
    if (now - window_start >= window_ns) {
      const bool over = oversubscription() > 0;
      if (over && was_over) until_ns.store(now + hold_ns, std::memory_order_relaxed);
      was_over = over;
      window_start = now;
#if defined(__linux__)
      cpu_set_t set;
      movable = sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) > 1;
#endif
    }
    return movable && now < until_ns.load(std::memory_order_relaxed);
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
  const auto yield_until = Clock::now() + std::chrono::nanoseconds(sp.yield_ns);
  for (int i = shared ? sp.spins : 0; i < sp.spins; ++i) {
    if (ready()) return WaitStatus::done;
    cpu_relax();
  }
  bool yielding = !shared;
  for (int i = 0;; ++i) {
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
    // (past the first yields, re-asked now and then: the machine may have
    // become shared during a long wait)
    if (yielding && i >= sp.yields && (now >= yield_until || (i % 64 == 0 && contention.contended()))) yielding = false;
    if (yielding) {
      // A yield that comes back late gave the core to someone else: the
      // machine is shared (a build, another job), and every further yield
      // keeps this rank runnable beside the peer it waits for, taking half of
      // that peer's core. Sleep on the bell from now on instead.
      const auto before = Clock::now();
      std::this_thread::yield();
      if (Clock::now() - before > std::chrono::microseconds(sp.contended_yield_us)) yielding = false;
    } else {
      auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
      bell.sleep(ready, left < 20'000'000 ? left : 20'000'000);
    }
  }
}

}  // namespace weft::comm::detail
