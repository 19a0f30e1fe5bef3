// run_local(n, fn): the embedded default. Runs fn(transport) on n threads, one
// per rank, each with its own ThreadTransport. If any rank throws, every other
// rank's pending and later waits end at once with a PeerFailedError naming the
// origin rank; run_local then joins all threads and rethrows the origin's
// exception. A rank that returns while others still wait for it is reported
// the same way (peer_gone), so a forgotten call cannot hang the process.
#pragma once

#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../core/error.hpp"
#include "transport/thread.hpp"

namespace weft::comm {

struct LocalOptions {
  // Ranks per emulated node for hierarchical algorithms; 0 = read the
  // WEFT_RANKS_PER_NODE environment variable, else one node holds every rank.
  int ranks_per_node = 0;
};

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

  auto body = [&](int r) {
    try {
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
  for (auto& t : threads) t.join();
  if (world.failed_rank.load(std::memory_order_acquire) >= 0) std::rethrow_exception(world.origin);
}

}  // namespace weft::comm
