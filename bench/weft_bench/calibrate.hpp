// weft-bench calibrate: the cost model's constants from a ping-pong and a
// local sum, and Auto's measured decision table (weft_bench_calibrate.cpp;
// the calibration will move into a library function under comm/tuning/).
#pragma once

#include <optional>
#include <vector>

#include <weft/comm/cost_model.hpp>

#include "options.hpp"

namespace weft_bench {

// alpha, beta, gamma on rank 0 (nullopt elsewhere), starting from `base`.
template <class T>
std::optional<wc::CostModel> calibrate(T& t, const Options& o, wc::CostModel base);

// Auto's table: per (op, size) the candidate measured fastest (rank 0).
template <class T>
std::vector<wc::Decision> decision_table(T& t, const Options& o);

}  // namespace weft_bench
