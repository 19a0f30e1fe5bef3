// weft-bench's measurement: the rows of a run (nccl-tests' columns plus
// p50/p99, the cost model's prediction, arrival skew and Auto's choice), the
// run / calibrate modes over a transport, the projection and the reports.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <weft/comm/tuning/cost_model.hpp>

#include "options.hpp"

namespace weft_bench {

using Clock = std::chrono::steady_clock;

struct Sample {  // one placement (out-of-place or in-place) of one row
  double time_us = 0, p50_us = 0, p99_us = 0, algbw = 0, busbw = 0;
  std::int64_t wrong = -1;  // -1: not checked
  double skew_us = 0;
  int last_rank = -1;
  bool run = false;
  std::string chosen;  // what Auto picked for this placement ("" for the other policies)
};

struct Row {
  std::string transport, algo;
  Collective op = Collective::allreduce;
  dtype type = dtype::f32;
  ReduceOp redop = ReduceOp::sum;
  int root = -1, ranks = 0, iters = 0;
  std::size_t bytes = 0, count = 0;
  double pred_us = 0;
  Sample oop, ip;
};

// One transport's run (or calibration, by o.mode) on every rank; rows on rank 0.
template <class T>
void run_mode(T& t, const Options& o, const char* section, wc::CostModel fallback, std::vector<Row>& rows);

// The cost model of a transport's section of --model, else `fallback`.
wc::CostModel model_for(const Options& o, const char* section, wc::CostModel fallback);

// Tables and files after a run (rank 0), and the count of wrong elements.
void finish(const Options& o, const std::vector<Row>& rows);
std::int64_t total_wrong(const std::vector<Row>& rows);

// `project`: allreduce beyond one machine from the cost model; `memcpy`: the machine's copy bandwidth.
void project(const wc::CostModel& m0, const Options& o, const char* tname);
void memcpy_bw(const Options& o);

}  // namespace weft_bench
