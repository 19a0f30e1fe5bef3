// run_local(n, fn): the embedded default. Runs fn(transport) on n threads, one
// per rank, each with its own ThreadTransport. If any rank throws, every other
// rank's pending and later waits end at once with a PeerFailedError naming the
// origin rank; run_local then joins all threads and rethrows the origin's
// exception. A rank that returns while others still wait for it is reported
// the same way (peer_gone), so a forgotten call cannot hang the process.
// With bind_cores, rank r runs pinned to one CPU, as mpirun --bind-to core
// pins processes.
#pragma once

#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include "../core/error.hpp"
#include "transport/thread.hpp"

namespace weft::comm {

struct LocalOptions {
  // Ranks per emulated node for hierarchical algorithms; 0 = read the
  // WEFT_RANKS_PER_NODE environment variable, else one node holds every rank.
  int ranks_per_node = 0;
  // Pin rank r's thread to the (r mod k)-th of the k CPUs this process may
  // run on (Linux; elsewhere ignored). Threads a rank starts later, such as a
  // communicator's progress thread, inherit the pin and so run on their
  // rank's core. Unpinned, the scheduler can put two ranks on one core while
  // another stays idle, and a rank that waits for its peer then waits out the
  // peer's time slice.
  bool bind_cores = false;
};

namespace detail {
inline void bind_to_core(int r) {
#if defined(__linux__)
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  const int k = CPU_COUNT(&allowed);
  if (k <= 0) return;
  int want = r % k;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed) || want-- > 0) continue;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);
    return;
  }
#else
  (void)r;
#endif
}
}  // namespace detail

template <class F>
void run_local(int n, F&& fn, LocalOptions opts = {}) {
  if (n < 1) throw_error<ValueError>("run_local: need at least one rank, got ", n);
  int rpn = opts.ranks_per_node;
  if (rpn == 0) {
    if (const char* env = std::getenv("WEFT_RANKS_PER_NODE")) {
      char* end = nullptr;
      long v = std::strtol(env, &end, 10);
      if (end == env || *end != '\0' || v < 1)
        throw_error<ValueError>("run_local: WEFT_RANKS_PER_NODE must be a positive integer, got '", env, "'");
      rpn = static_cast<int>(v);
    }
  }
  if (rpn < 0) throw_error<ValueError>("run_local: ranks_per_node must be >= 0, got ", rpn);

  detail::World world(n, rpn);
  std::vector<int> ranks(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) ranks[static_cast<std::size_t>(i)] = i;
  auto group = std::make_shared<detail::Group>(&world, std::move(ranks));

  // Rank 0 runs on the caller's thread: its affinity is restored afterwards.
#if defined(__linux__)
  cpu_set_t caller;
  const bool restore = opts.bind_cores && pthread_getaffinity_np(pthread_self(), sizeof caller, &caller) == 0;
#endif
  auto body = [&](int r) {
    try {
      if (opts.bind_cores) detail::bind_to_core(r);
      ThreadTransport t(group, r);
      fn(t);
    } catch (const std::exception& e) {
      world.fail(r, std::current_exception(), e.what());
    } catch (...) {
      world.fail(r, std::current_exception(), "unknown exception");
    }
    world.mark_exited(r);
  };

  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(n - 1));
  try {
    for (int r = 1; r < n; ++r) threads.emplace_back(body, r);
  } catch (...) {
    world.fail(0, std::current_exception(), "run_local: could not start a thread");
    world.mark_exited(0);
    for (auto& t : threads) t.join();
    throw;
  }
  body(0);
#if defined(__linux__)
  if (restore) pthread_setaffinity_np(pthread_self(), sizeof caller, &caller);
#endif
  for (auto& t : threads) t.join();
  if (world.failed_rank.load(std::memory_order_acquire) >= 0) std::rethrow_exception(world.origin);
}

}  // namespace weft::comm
