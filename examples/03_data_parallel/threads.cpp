// Story 3 on one machine, no launcher: 4 ranks as threads of this process.
//   build/examples/03_data_parallel [ranks = 4] [epochs = 5] [seed = 1]
//       [--batch 128] [--checkpoint DIR [--fresh]] [--fail R@E]
// With --checkpoint, a checkpoint after every epoch, and the ranks run under
// run_elastic: when a rank fails (--fail R@E: rank R throws halfway through
// epoch E), the survivors restart from the newest checkpoint on one rank
// fewer and training goes on. The restart log is printed at the end.
// --fresh first removes DIR's checkpoints (its step-* directories).
//   build/examples/03_data_parallel 4 5 1 --batch 120 --checkpoint /tmp/ck --fresh --fail 2@3
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>
#include <weft/comm/run_local.hpp>
#include <weft/io/checkpoint/elastic.hpp>

#include "train.hpp"

int main(int argc, char** argv) {
  story::CommandLine cl;
  try {
    cl = story::parse_command_line(argc, argv, true);
  } catch (const weft::ValueError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  story::Options& o = cl.o;
  o.fail = [](int rank, int epoch) {
    throw weft::IoError("rank " + std::to_string(rank) + " lost halfway through epoch " + std::to_string(epoch) + " (--fail)");
  };
  openblas_set_num_threads(1);
  auto train = weft::io::load_fashion_mnist("train");  // loaded once, read by every rank
  auto test = weft::io::load_fashion_mnist("test");
  story::standardise(train, test);
  if (o.checkpoint.empty()) {
    weft::comm::run_local(cl.ranks, [&](weft::comm::ThreadTransport& t) { story::train(t, train, test, o); });
    return 0;
  }

  namespace ck = weft::io::checkpoint;
  if (cl.fresh) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(o.checkpoint, ec))
      if (e.path().filename().string().starts_with("step-")) std::filesystem::remove_all(e.path());
  }
  std::vector<std::string> log;
  double accuracy = 0;
  const int finished = ck::run_elastic(
      cl.ranks, 1,
      [&](weft::comm::ThreadTransport& t, int attempt) {
        story::Options mine = o;
        mine.attempt = attempt;
        const double a = story::train(t, train, test, mine);
        if (t.rank() == 0) accuracy = a;
      },
      {.on_restart = [&](const ck::ElasticEvent& e) {
        std::string line = "attempt " + std::to_string(e.attempt) + " on " + std::to_string(e.ranks) + " ranks: rank " +
                           std::to_string(e.failed_rank) + " failed: " + e.cause + "; ";
        line += e.next_ranks ? "restarting on " + std::to_string(e.next_ranks) + " ranks from the latest checkpoint"
                             : std::string("not restarting");
        std::printf("\nweft elastic: %s\n", line.c_str());
        log.push_back(line);
      }});
  std::printf("restart log (%zu restarts):\n", log.size());
  for (const std::string& l : log) std::printf("  %s\n", l.c_str());
  std::printf("finished on %d ranks: test accuracy %.2f%%\n", finished, accuracy);
  return o.fail_rank >= 0 && o.fail_rank < cl.ranks && log.empty() ? 1 : 0;  // --fail asked for a failure that never came
}
