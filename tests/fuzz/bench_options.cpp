// libFuzzer target for weft-bench's command line (bench/weft_bench/options.cpp,
// compiled into this target by tests/meson.build): the input, split at
// newlines, is argv after the program name. Any input must end in options
// whose sweep is non-empty and bounded, or in weft_bench::UsageError; never a
// crash, undefined behaviour (UBSan aborts the run), another exception, an
// exit or output. Tokens to start from: bench_options.dict.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "../../bench/weft_bench/options.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args{"weft-bench"};
  std::string cur;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == '\n') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += static_cast<char>(data[i]);
    }
  }
  if (size > 0) args.push_back(cur);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  try {
    const weft_bench::Options o = weft_bench::parse(static_cast<int>(args.size()), argv.data());
    if (o.help) return 0;
    if (!std::isfinite(o.factor) || o.factor <= 1 || o.max_bytes == 0 || o.min_bytes > o.max_bytes) std::abort();
    const std::vector<std::size_t> s = weft_bench::sizes(o);
    if (s.empty() || s.size() > weft_bench::max_sweep_sizes || s.front() < 1 || s.back() > o.max_bytes) std::abort();
    for (std::size_t k = 1; k < s.size(); ++k)
      if (s[k] <= s[k - 1]) std::abort();  // a sweep only grows
  } catch (const weft_bench::UsageError&) {
  }
  return 0;
}
