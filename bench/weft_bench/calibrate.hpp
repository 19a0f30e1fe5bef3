// weft-bench calibrate: the cost model's constants and Auto's measured
// decision table, through comm::calibrate() (weft/comm/tuning/calibrate.hpp);
// weft_bench_calibrate.cpp adds the command line and the printing.
#pragma once

#include <weft/comm/tuning/cost_model.hpp>

#include "options.hpp"

namespace weft_bench {

// The calibrated model (constants unless --table-only, and the table for this
// rank count), the same on every rank, starting from `base`.
template <class T>
wc::CostModel calibrate(T& t, const Options& o, wc::CostModel base);

}  // namespace weft_bench
