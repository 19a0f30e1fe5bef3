// The MPI training program weft_run.sh drives through scripts/weft-run:
// data-parallel training (resume_suite's DpRun: sharded update, deterministic
// mode, a global batch of 12 that 2, 3 and 4 ranks split evenly) for STEPS
// steps, a checkpoint every 2 steps under DIR, resuming from the newest one
// with this run's rank count (resharded if it changed).
// With VICTIM and KILL_AT, in the first attempt (WEFT_RUN_ATTEMPT=0) rank
// VICTIM stops before step KILL_AT, writes its pid to DIR/victim.pid and waits
// to be killed (weft_run.sh sends kill -9); it gives up after 120 s, so a
// broken test cannot hang. Rank 0 prints "resumed P S" (ranks, start step)
// and every parameter as "value %.9g".
//   usage: mpirun -np P elastic_tool DIR STEPS [VICTIM KILL_AT]
#define DOCTEST_CONFIG_IMPLEMENT  // resume_suite.hpp holds CHECKs; this program runs none
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <weft/comm/transport/mpi.hpp>

#include "resume_suite.hpp"

namespace {

namespace ck = weft::io::checkpoint;

int run(int argc, char** argv) {
  if (argc != 3 && argc != 5) {
    std::fprintf(stderr, "usage: elastic_tool DIR STEPS [VICTIM KILL_AT]\n");
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  const int steps = std::atoi(argv[2]);
  const int victim = argc == 5 ? std::atoi(argv[3]) : -1, kill_at = argc == 5 ? std::atoi(argv[4]) : -1;
  const char* attempt = std::getenv("WEFT_RUN_ATTEMPT");
  const bool first = attempt == nullptr || std::string(attempt) == "0";

  const dp_suite::Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  ckpt_suite::DpRun<weft::comm::MpiTransport> r(t, true);
  int start = 0;
  if (auto last = ck::latest(dir)) start = static_cast<int>(ck::load(*last, r, r.c, {.sharding = r.sharding()}).step);
  for (int s = start; s < steps; ++s) {
    if (first && s == kill_at && t.rank() == victim) {
      {
        std::ofstream f(dir / "victim.pid.tmp");
        f << ::getpid() << "\n";
      }
      std::filesystem::rename(dir / "victim.pid.tmp", dir / "victim.pid");
      std::this_thread::sleep_for(std::chrono::seconds(120));
      std::fprintf(stderr, "elastic_tool: rank %d was not killed within 120 s\n", t.rank());
      return 3;
    }
    r.step(data, s);
    if ((s + 1) % 2 == 0) ck::save(ck::step_dir(dir, s + 1), r, r.c, {.step = s + 1, .sharding = r.sharding()});
  }
  if (t.rank() == 0) {
    std::printf("resumed %d %d\n", t.size(), start);
    for (float x : r.m.values()) std::printf("value %.9g\n", static_cast<double>(x));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rc = 0;
  try {
    rc = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "elastic_tool: %s\n", e.what());
    rc = 1;
  }
  if (rc != 0) MPI_Abort(MPI_COMM_WORLD, rc);  // a rank that gives up ends the job
  MPI_Finalize();
  return rc;
}
