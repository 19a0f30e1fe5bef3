// What every CUDA test shares: EXPECT(cond, printf-style message), which
// counts the checks and the failures (atomics: thread ranks share them) and
// prints each failure with its place. A test prints "passed" or "FAILED" at
// the end and returns 1 on any failure; without a GPU it returns 77 (skipped).
#pragma once

#include <atomic>
#include <cstdio>

namespace cudatest {
inline std::atomic<int> failures{0};
inline std::atomic<long> checks{0};
}  // namespace cudatest

#define EXPECT(cond, ...)                                           \
  do {                                                              \
    ++cudatest::checks;                                             \
    if (!(cond)) {                                                  \
      ++cudatest::failures;                                         \
      std::printf("FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                     \
      std::printf("\n");                                            \
    }                                                               \
  } while (0)
