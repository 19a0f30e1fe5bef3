// 3-D parallelism on 8 thread ranks (the checks live in parallel_3d_suite.hpp,
// shared with test_3d_parallel_mpi.cpp): a transformer classifier trained on
// pp2 x dp2 x tp2 (pipeline stages, data-parallel replicas, tensor-parallel
// blocks), dp4 x tp2 and dp2 x pp2 x tp2 with ZeRO-2 (and ZeRO-1) on the dp
// axis, each against one rank training the unsharded model: the loss of every
// step and every parameter after the steps within the suite's tolerances.
// Plus the configuration errors a 3-D mesh can meet.
#include <doctest/doctest.h>

#include <cstdio>
#include <string>
#include <vector>
#include <weft/comm/run_local.hpp>

#include "parallel_3d_suite.hpp"

using namespace weft;
using comm::ThreadTransport;

namespace {

// Runs f on 8 thread ranks; every rank's error must be empty. Prints rank
// 0's loss curve and the largest differences over the ranks.
template <class F>
void on_8_ranks(const char* what, F f) {
  const p3d::Data data;
  p3d::Reference& ref = p3d::reference(data);  // trained here, before the ranks read it
  std::vector<p3d::Result> res(8);
  comm::run_local(8, [&](ThreadTransport& t) { res[static_cast<std::size_t>(t.rank())] = f(t, data); });
  double loss = 0, param = 0;
  for (int r = 0; r < 8; ++r) {
    CAPTURE(r);
    CHECK_MESSAGE(res[static_cast<std::size_t>(r)].err == "", res[static_cast<std::size_t>(r)].err);
    loss = std::max(loss, res[static_cast<std::size_t>(r)].loss_diff);
    param = std::max(param, res[static_cast<std::size_t>(r)].param_diff);
  }
  std::string curve;
  for (std::size_t s = 0; s < ref.losses.size(); ++s) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%.4f/%.4f", s ? " " : "", res[0].losses.size() > s ? res[0].losses[s] : 0.0, ref.losses[s]);
    curve += buf;
  }
  MESSAGE(std::string(what), ": loss (mesh/one rank) ", curve, "; largest |loss diff| ", loss, ", largest |parameter diff| ", param);
}

}  // namespace

TEST_CASE("pp2 x dp2 x tp2 with DataParallel, ZB-H1 and 1F1B: the loss curve and the parameters of one rank") {
  on_8_ranks("pp2 x dp2 x tp2, DataParallel, ZB-H1 m=2", [](ThreadTransport& t, const p3d::Data& d) {
    return p3d::pipeline_3d(t, {{"pp", 2}, {"dp", 2}, {"tp", 2}}, p3d::DpKind::data_parallel, parallel::pipeline::ZeroBubbleH1{}, 2, d);
  });
  on_8_ranks("pp2 x dp2 x tp2, DataParallel, 1F1B m=4", [](ThreadTransport& t, const p3d::Data& d) {
    return p3d::pipeline_3d(t, {{"pp", 2}, {"dp", 2}, {"tp", 2}}, p3d::DpKind::data_parallel, parallel::pipeline::OneFOneB{}, 4, d);
  });
}

TEST_CASE("dp4 x tp2 with DataParallel and with ZeRO-2: the loss curve and the parameters of one rank") {
  on_8_ranks("dp4 x tp2, DataParallel", [](ThreadTransport& t, const p3d::Data& d) {
    return p3d::data_tensor(t, {{"dp", 4}, {"tp", 2}}, p3d::DpKind::data_parallel, d);
  });
  on_8_ranks("dp4 x tp2, ZeRO-2", [](ThreadTransport& t, const p3d::Data& d) {
    return p3d::data_tensor(t, {{"dp", 4}, {"tp", 2}}, p3d::DpKind::zero2, d);
  });
}

TEST_CASE("dp2 x pp2 x tp2 with ZeRO-2 (and ZeRO-1) on the dp axis: the loss curve and the parameters of one rank") {
  on_8_ranks("dp2 x pp2 x tp2, ZeRO-2, 1F1B m=2", [](ThreadTransport& t, const p3d::Data& d) {
    return p3d::pipeline_3d(t, {{"dp", 2}, {"pp", 2}, {"tp", 2}}, p3d::DpKind::zero2, parallel::pipeline::OneFOneB{}, 2, d);
  });
  on_8_ranks("dp2 x pp2 x tp2, ZeRO-1, ZB-H1 m=2", [](ThreadTransport& t, const p3d::Data& d) {
    return p3d::pipeline_3d(t, {{"dp", 2}, {"pp", 2}, {"tp", 2}}, p3d::DpKind::zero1, parallel::pipeline::ZeroBubbleH1{}, 2, d);
  });
}

TEST_CASE("3-D configuration errors: a mesh of 8 on 6 ranks, a tp axis that does not divide the heads") {
  comm::run_local(6, [](ThreadTransport& t) {
    CHECK_THROWS_WITH_AS(parallel::Mesh<ThreadTransport>(t, {{"pp", 2}, {"dp", 2}, {"tp", 2}}),
                         doctest::Contains("a pp2 x dp2 x tp2 mesh holds 8 ranks but the transport has 6"), ValueError);
  });
  std::vector<std::string> errs(8);
  comm::run_local(8, [&](ThreadTransport& t) { errs[static_cast<std::size_t>(t.rank())] = p3d::heads_not_divisible(t); });
  for (const std::string& e : errs) CHECK_MESSAGE(e == "", e);
}
