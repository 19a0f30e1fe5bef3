// --contend N: N busy processes on CPUs 0..N-1 (mod the CPUs this process may
// use) for as long as the benchmark runs, the way a compiler or another job
// shares a developer's machine. A rank that spins while its peer waits for a
// core shows up here as a collapse in busbw; one that blocks does not.
// Children die with the parent (PR_SET_PDEATHSIG) and are killed and reaped
// when this object goes away. Under mpirun only the process with local rank 0
// starts them, so N is per machine, not per rank.
#pragma once

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <sched.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace weft_bench {

class Contenders {
 public:
  explicit Contenders(int n) {
    if (n <= 0 || !local_leader()) return;
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    std::vector<int> cpus;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0)
      for (int c = 0; c < CPU_SETSIZE; ++c)
        if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
    if (cpus.empty()) cpus.push_back(0);
    const pid_t parent = getpid();
    for (int i = 0; i < n; ++i) {
      pid_t pid = fork();
      if (pid < 0) {
        std::perror("weft-bench --contend: fork");
        break;
      }
      if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(0);  // the parent died before prctl
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpus[static_cast<std::size_t>(i) % cpus.size()], &one);
        sched_setaffinity(0, sizeof one, &one);
        volatile unsigned long x = 0;
        for (;;) x = x + 1;
      }
      pids_.push_back(pid);
    }
    std::fprintf(stderr, "weft-bench: %zu busy process(es) competing on CPU", pids_.size());
    for (std::size_t i = 0; i < pids_.size(); ++i) std::fprintf(stderr, " %d", cpus[i % cpus.size()]);
    std::fprintf(stderr, "\n");
  }
  ~Contenders() {
    for (pid_t p : pids_) kill(p, SIGKILL);
    for (pid_t p : pids_) waitpid(p, nullptr, 0);
  }
  Contenders(const Contenders&) = delete;
  Contenders& operator=(const Contenders&) = delete;

 private:
  static bool local_leader() {
    for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"})
      if (const char* s = std::getenv(v)) return std::atoi(s) == 0;
    return true;
  }
  std::vector<pid_t> pids_;
};

}  // namespace weft_bench
