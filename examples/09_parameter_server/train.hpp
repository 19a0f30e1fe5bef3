// Story 9, shared by the two launchers (threads.cpp: every rank a thread of
// one process; mpi.cpp: one rank per MPI process). The Fashion-MNIST MLP
// (784-256-256-10) trained by parameter servers under a consistency model
// chosen on the command line, or by DataParallel for comparison, with
// simulated stragglers:
//   --straggler transient   each step one worker, chosen at random, takes 3x as long
//   --straggler persistent  the last worker is always 2x slower
// A straggler sleeps for (k - 1) times the step's measured compute time.
// Each worker takes batches of --batch (per worker) from its own shard; the
// servers run Adam (or SGD with momentum: --optimizer sgd) on their pieces. Worker 0 keeps a copy of its current
// weights every --eval-every steps (the copy's time excluded); after training
// it evaluates the copies in order on 2,000 test images to find when the
// target accuracy was first reached, and its final weights on the whole test
// set. Evaluating after the run keeps it fair: evaluating during the run
// would stall the other workers under BSP but not under SSP/ASP.
// The last line is machine-readable (bench/compare_ps.sh reads it):
//   result consistency=... time_to_target_s=... final_accuracy=... steps=...
//   cpu_s=... cores=...
// cpu_s is the process's CPU time over the training (every rank's on thread
// ranks, worker 0's process alone under MPI); cores the CPUs it may run on.
// On thread ranks cpu_s / cores is the least wall time the run's work needs:
// a straggler's sleep frees a core only if nothing else is waiting for one.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sched.h>
#include <sys/resource.h>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/io/idx.hpp>
#include <weft/io/sampler.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/parallel/parameter_server/parameter_server.hpp>
#include <weft/weft.hpp>

namespace story9 {

using namespace weft;
namespace ps = weft::parallel::ps;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string consistency = "ssp4";  // bsp, ssp0, ssp1, ssp4, asp, dp
  int servers = 1, workers = 3, epochs = 2;
  index_t batch = 32;  // per worker
  std::string straggler = "none";  // none, transient, persistent
  double target = 85.0;
  std::string optimizer = "adam";  // adam, sgd (momentum)
  float lr = -1.0f;                // unset: 1e-3 for Adam, 0.05 for SGD
  float momentum = 0.9f;           // SGD's
  std::uint64_t seed = 1;
  long eval_every = 5;  // steps between worker 0's weight copies
};

inline Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : nullptr;
    auto need = [&]() -> const char* {
      if (!next) throw_error<ValueError>(argv[0], ": ", a, " needs a value");
      ++i;
      return next;
    };
    if (a == "--consistency") o.consistency = need();
    else if (a == "--servers") o.servers = std::atoi(need());
    else if (a == "--workers") o.workers = std::atoi(need());
    else if (a == "--epochs") o.epochs = std::atoi(need());
    else if (a == "--batch") o.batch = std::atoll(need());
    else if (a == "--straggler") o.straggler = need();
    else if (a == "--target") o.target = std::atof(need());
    else if (a == "--lr") o.lr = static_cast<float>(std::atof(need()));
    else if (a == "--optimizer") o.optimizer = need();
    else if (a == "--momentum") o.momentum = static_cast<float>(std::atof(need()));
    else if (a == "--seed") o.seed = std::strtoull(need(), nullptr, 10);
    else if (a == "--eval-every") o.eval_every = std::atol(need());
    else
      throw_error<ValueError>("usage: ", argv[0],
                              " [--consistency bsp|ssp0|ssp1|ssp4|asp|dp] [--servers S] [--workers W] [--epochs E] "
                              "[--batch B per worker] [--straggler none|transient|persistent] [--target PCT] "
                              "[--optimizer adam|sgd] [--lr LR] [--momentum M (sgd)] [--seed N] [--eval-every STEPS]  (at '",
                              a, "')");
  }
  const std::string c = o.consistency;
  if (c != "bsp" && c != "ssp0" && c != "ssp1" && c != "ssp4" && c != "asp" && c != "dp")
    throw_error<ValueError>("--consistency must be bsp, ssp0, ssp1, ssp4, asp or dp, got '", c, "'");
  if (o.straggler != "none" && o.straggler != "transient" && o.straggler != "persistent")
    throw_error<ValueError>("--straggler must be none, transient or persistent, got '", o.straggler, "'");
  if (o.workers < 1 || o.servers < 1) throw_error<ValueError>("need at least one server and one worker");
  if (o.eval_every < 1) throw_error<ValueError>("--eval-every must be at least 1, got ", o.eval_every);
  if (o.optimizer != "adam" && o.optimizer != "sgd")
    throw_error<ValueError>("--optimizer must be adam or sgd, got '", o.optimizer, "'");
  if (o.lr < 0) o.lr = o.optimizer == "sgd" ? 0.05f : 1e-3f;
  return o;
}

inline void standardise(io::Dataset& train, io::Dataset& test) {
  const float mu = eval(mean(train.images)).item();
  const float sd = std::sqrt(eval(mean(square(train.images - mu))).item());
  train.images = (train.images - mu) / sd;
  test.images = (test.images - mu) / sd;
}

struct Model {
  nn::Linear<float> l1, l2, l3;
  nn::Registry<float> reg;
  explicit Model(std::uint64_t seed) : l1(784, 256, seed), l2(256, 256, seed + 1), l3(256, 10, seed + 2) {
    reg.add("l1", l1).add("l2", l2).add("l3", l3);
  }
  template <class X>
  auto operator()(const X& x) {
    return l3(relu(l2(relu(l1(x)))));
  }
};

// Worker-side bookkeeping shared by both paths: the straggler sleep and worker 0's evaluations.
struct Progress {
  const Options& o;
  const io::Dataset& test;
  Tensor<float> probe_x{Shape{2000, 784}};
  Tensor<std::int32_t> probe_y{Shape{2000}};
  Clock::time_point start = Clock::now();
  double cpu_start = process_cpu_seconds();
  Clock::duration excluded{};
  static double process_cpu_seconds() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
  }
  double cpu_seconds() const { return process_cpu_seconds() - cpu_start; }
  double time_to_target = -1;
  std::mt19937_64 pick;

  Progress(const Options& opt, const io::Dataset& t) : o(opt), test(t), pick(opt.seed * 7919 + 17) {
    std::memcpy(probe_x.data(), test.images.data(), 2000 * 784 * sizeof(float));
    std::memcpy(probe_y.data(), test.labels.data(), 2000 * sizeof(std::int32_t));
  }
  // After a step's compute that took `compute`: the straggler of this step sleeps.
  void straggle(int worker, int workers, long step, Clock::duration compute) {
    double extra = 0;
    if (o.straggler == "transient") {
      std::mt19937_64 g(o.seed * 1000003ull + static_cast<std::uint64_t>(step));  // the same choice on every worker
      if (static_cast<int>(g() % static_cast<std::uint64_t>(workers)) == worker) extra = 2.0;
    } else if (o.straggler == "persistent" && worker == workers - 1) {
      extra = 1.0;
    }
    if (extra > 0) std::this_thread::sleep_for(std::chrono::duration_cast<std::chrono::microseconds>(compute * extra));
  }
  // Worker 0, every eval_every steps: a copy of its current weights and the
  // training time so far (the copy's own time excluded).
  std::vector<std::pair<double, std::vector<float>>> snapshots;
  long steps_to_target = -1;
  void snapshot(Model& m, long step) {
    if (step % o.eval_every != 0) return;
    const auto t0 = Clock::now();
    std::vector<float> w;
    for (Parameter<float>* p : m.reg) w.insert(w.end(), p->value.data(), p->value.data() + p->numel());
    snapshots.emplace_back(std::chrono::duration<double>(t0 - start - excluded).count(), std::move(w));
    excluded += Clock::now() - t0;
  }
  // After training (overwrites m's weights): the time of the first copy that
  // reaches the target accuracy on the probe images, -1 if none does.
  void find_target(Model& m, Workspace<>& ws) {
    for (std::size_t i = 0; i < snapshots.size(); ++i) {
      const auto& [t, w] = snapshots[i];
      std::size_t k = 0;
      for (Parameter<float>* p : m.reg) {
        std::copy_n(w.data() + k, p->numel(), p->value.data());
        k += static_cast<std::size_t>(p->numel());
      }
      Tensor<float> logits = eval(m(probe_x), ws);
      if (100.0 * nn::accuracy(logits, probe_y) >= o.target) {
        time_to_target = t;
        steps_to_target = static_cast<long>(i) * o.eval_every;
        return;
      }
    }
  }
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start - excluded).count(); }
};

inline void report(const Options& o, int ranks, const char* transport, const Progress& pr, double acc, double secs,
                   double cpu, long steps) {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const int cores = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 0;
  std::printf("result transport=%s consistency=%s servers=%d workers=%d straggler=%s time_to_target_s=%.3f "
              "steps_to_target=%ld final_accuracy=%.2f train_s=%.3f steps=%ld ranks=%d cpu_s=%.3f cores=%d\n",
              transport, o.consistency.c_str(), o.consistency == "dp" ? 0 : o.servers, o.workers, o.straggler.c_str(),
              pr.time_to_target, pr.steps_to_target, acc, secs, steps, ranks, cpu, cores);
  std::fflush(stdout);
}

// Parameter-server training on one rank of the group (servers + workers ranks).
template <class C, class Transport>
void train_ps(Transport& t, const io::Dataset& train, const io::Dataset& test, const Options& o) {
  Model m(o.seed);
  auto [keys, init] = parallel::ParameterServer<C, Transport>::keys_of(m.reg);
  ps::Options po;
  if (o.optimizer == "sgd") po.update = nn::SGDOptions{.lr = o.lr, .momentum = o.momentum};
  else po.update = nn::AdamOptions{.lr = o.lr};
  po.timeout = std::chrono::seconds(120);
  po.worker_timeout = std::chrono::seconds(60);
  parallel::ParameterServer<C, Transport> server(t, ps::Roles::count(o.servers, t.size()), keys, init, po);
  if (server.is_server()) {
    if (server.roles().server_index(t.rank()) == 0) std::printf("placement:\n%s", server.describe().c_str());
    server.serve();
    return;
  }
  const int w = server.roles().worker_index(t.rank()), W = o.workers;
  io::DistributedSampler sampler(train.labels.numel(), w, W, o.seed, io::Remainder::drop);
  const long per_epoch = static_cast<long>(sampler.shard_size() / o.batch);
  Tensor<float> xb({o.batch, 784});
  Tensor<std::int32_t> yb({o.batch});
  Workspace<> ws;
  Progress pr(o, test);
  long step = 0;
  // The step's pushes and clock go out without waiting for their answers (the
  // servers handle them before the next pull); `sent` is waited for before the
  // gradients are overwritten.
  typename parallel::ParameterServer<C, Transport>::Handle sent;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    auto idx = sampler.indices(static_cast<std::uint64_t>(epoch));
    for (long s = 0; s < per_epoch; ++s, ++step) {
      server.pull(m.reg);
      sent.wait();
      if (w == 0) pr.snapshot(m, step);
      const auto c0 = Clock::now();
      io::gather_batch(train, idx, s * o.batch, xb, yb);
      m.reg.zero_grad();
      backward(cross_entropy(m(xb), yb), ws);
      pr.straggle(w, W, step, Clock::now() - c0);
      sent = server.push_async(m.reg);
      sent += server.clock_async();
    }
  }
  sent.wait();
  server.pull(m.reg, true);  // once every worker has finished its steps (ASP/SSP: the slow one too)
  const double secs = pr.elapsed(), cpu = pr.cpu_seconds();
  server.leave();
  if (w == 0) {
    Tensor<float> logits = eval(m(test.images), ws);
    const double acc = 100.0 * nn::accuracy(logits, test.labels);
    pr.find_target(m, ws);
    report(o, t.size(), t.name(), pr, acc, secs, cpu, step);
  }
}

// DataParallel with the same per-worker batch, stragglers, optimizer and
// evaluation (every rank a worker), given the optimizer.
template <class Transport, class Opt>
void train_dp_with(Transport& t, const io::Dataset& train, const io::Dataset& test, const Options& o, Model& m,
                   Opt& opt) {
  using namespace weft::comm;
  Communicator<Ring, Transport> ring{t};
  parallel::DataParallel dp(m.reg, ring);
  dp.set_overlap(false);
  const int w = t.rank(), W = t.size();
  io::DistributedSampler sampler(train.labels.numel(), w, W, o.seed, io::Remainder::drop);
  const long per_epoch = static_cast<long>(sampler.shard_size() / o.batch);
  Tensor<float> xb({o.batch, 784});
  Tensor<std::int32_t> yb({o.batch});
  Workspace<> ws;
  Progress pr(o, test);
  long step = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    auto idx = sampler.indices(static_cast<std::uint64_t>(epoch));
    for (long s = 0; s < per_epoch; ++s, ++step) {
      if (w == 0) pr.snapshot(m, step);
      const auto c0 = Clock::now();
      io::gather_batch(train, idx, s * o.batch, xb, yb);
      opt.zero_grad();
      // compute first, then the straggler's sleep, then the allreduce (the sleep must come before it)
      backward(cross_entropy(m(xb), yb), ws);
      pr.straggle(w, W, step, Clock::now() - c0);
      dp.begin_backward();
      for (Parameter<float>* p : m.reg) dp.on_grad_ready(*p);
      dp.finish_backward();
      dp.step(opt);
    }
  }
  const double secs = pr.elapsed(), cpu = pr.cpu_seconds();
  if (w == 0) {
    Tensor<float> logits = eval(m(test.images), ws);
    const double acc = 100.0 * nn::accuracy(logits, test.labels);
    pr.find_target(m, ws);
    report(o, t.size(), t.name(), pr, acc, secs, cpu, step);
  }
}

// The same with the optimizer --optimizer names.
template <class Transport>
void train_dp(Transport& t, const io::Dataset& train, const io::Dataset& test, const Options& o) {
  Model m(o.seed);
  if (o.optimizer == "sgd") {
    nn::SGD<float> opt(m.reg, {.lr = o.lr, .momentum = o.momentum});
    train_dp_with(t, train, test, o, m, opt);
  } else {
    nn::Adam<float> opt(m.reg, {.lr = o.lr});
    train_dp_with(t, train, test, o, m, opt);
  }
}

template <class Transport>
void train(Transport& t, const io::Dataset& train, const io::Dataset& test, const Options& o) {
  const std::string& c = o.consistency;
  if (c == "dp") return train_dp(t, train, test, o);
  if (c == "bsp") return train_ps<parallel::BSP>(t, train, test, o);
  if (c == "ssp0") return train_ps<parallel::SSP<0>>(t, train, test, o);
  if (c == "ssp1") return train_ps<parallel::SSP<1>>(t, train, test, o);
  if (c == "ssp4") return train_ps<parallel::SSP<4>>(t, train, test, o);
  return train_ps<parallel::ASP>(t, train, test, o);
}

}  // namespace story9
