// Resume across processes (resume.sh): one process trains the first steps
// and saves, another loads and finishes; resume.sh compares the result with
// a process that trains straight through. Thread ranks, deterministic mode.
//   resume_tool straight P SHARD       prints the parameters' bits, rank 0
//   resume_tool first P SHARD DIR      kFirst steps, checkpoint in DIR
//   resume_tool rest P SHARD DIR       loads DIR, the remaining steps, prints the bits
// The CHECKs inside resume_suite.hpp need doctest's runtime: this runs as a
// doctest program whose one test case reads its arguments from the environment.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>
#include <weft/comm/run_local.hpp>

#include "resume_suite.hpp"

namespace {
std::string g_cmd, g_dir;
int g_p = 1;
bool g_shard = false;
}  // namespace

TEST_CASE("resume_tool") {
  const dp_suite::Data data;
  std::vector<float> out;
  std::mutex mu;
  weft::comm::run_local(g_p, [&](weft::comm::ThreadTransport& t) {
    std::vector<float> v;
    if (g_cmd == "straight") v = ckpt_suite::straight(t, data, g_shard);
    else if (g_cmd == "first") ckpt_suite::first_part(t, data, g_shard, g_dir);
    else if (g_cmd == "rest") v = ckpt_suite::second_part(t, data, g_shard, g_dir);
    std::lock_guard lock(mu);
    if (t.rank() == 0) out = v;
  });
  for (float x : out) {
    std::uint32_t b;
    std::memcpy(&b, &x, 4);
    std::printf("%08x\n", b);
  }
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: resume_tool straight|first|rest P SHARD [DIR]\n");
    return 2;
  }
  g_cmd = argv[1];
  g_p = std::atoi(argv[2]);
  g_shard = std::atoi(argv[3]) != 0;
  if (argc > 4) g_dir = argv[4];
  doctest::Context ctx;
  ctx.setOption("no-version", true);
  ctx.setOption("minimal", true);
  return ctx.run();
}
