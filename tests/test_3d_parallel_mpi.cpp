// 3-D parallelism under mpirun -np 8 (oversubscribed on small machines): the
// checks of parallel_3d_suite.hpp (also run on thread ranks by
// test_3d_parallel.cpp), one MPI process per mesh rank: pp2 x dp2 x tp2 with
// DataParallel, dp4 x tp2 with DataParallel and ZeRO-2, dp2 x pp2 x tp2 with
// ZeRO-2, each against one rank's training of the unsharded model (computed in
// every process); and the configuration errors. Every rank must agree.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <weft/comm/transport/mpi.hpp>

#include "comm/mpi_doctest.hpp"
#include "parallel_3d_suite.hpp"

using weft::comm::MpiTransport;
namespace pp = weft::parallel::pipeline;

namespace {
void report(const char* what, const p3d::Result& r, MpiTransport& t) {
  weft::comm::testing::agree(r.err);
  double worst[2] = {r.loss_diff, r.param_diff}, all[2] = {0, 0};
  MPI_Allreduce(worst, all, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (t.rank() == 0) MESSAGE(std::string(what), ": largest |loss diff| ", all[0], ", largest |parameter diff| ", all[1]);
}
}  // namespace

TEST_CASE("mpi: pp2 x dp2 x tp2 with DataParallel trains like one rank (np = 8)") {
  const p3d::Data data;
  MpiTransport t{MPI_COMM_WORLD};
  if (t.size() != 8) return;
  report("pp2 x dp2 x tp2, DataParallel, ZB-H1 m=2",
         p3d::pipeline_3d(t, {{"pp", 2}, {"dp", 2}, {"tp", 2}}, p3d::DpKind::data_parallel, pp::ZeroBubbleH1{}, 2, data), t);
}

TEST_CASE("mpi: dp4 x tp2 with DataParallel and with ZeRO-2 trains like one rank (np = 8)") {
  const p3d::Data data;
  MpiTransport t{MPI_COMM_WORLD};
  if (t.size() != 8) return;
  report("dp4 x tp2, DataParallel", p3d::data_tensor(t, {{"dp", 4}, {"tp", 2}}, p3d::DpKind::data_parallel, data), t);
  report("dp4 x tp2, ZeRO-2", p3d::data_tensor(t, {{"dp", 4}, {"tp", 2}}, p3d::DpKind::zero2, data), t);
}

TEST_CASE("mpi: dp2 x pp2 x tp2 with ZeRO-2 on the dp axis trains like one rank (np = 8)") {
  const p3d::Data data;
  MpiTransport t{MPI_COMM_WORLD};
  if (t.size() != 8) return;
  report("dp2 x pp2 x tp2, ZeRO-2, 1F1B m=2",
         p3d::pipeline_3d(t, {{"dp", 2}, {"pp", 2}, {"tp", 2}}, p3d::DpKind::zero2, pp::OneFOneB{}, 2, data), t);
}

TEST_CASE("mpi: a 3-D mesh on the wrong rank count, and a tp axis that does not divide the heads, fail on every rank") {
  MpiTransport t{MPI_COMM_WORLD};
  const std::string want = "mesh holds " + std::to_string(4 * t.size()) + " ranks but the transport has " + std::to_string(t.size());
  CHECK_THROWS_WITH_AS(weft::parallel::Mesh<MpiTransport>(t, {{"pp", 2}, {"dp", 2}, {"tp", t.size()}}), doctest::Contains(want.c_str()),
                       weft::ValueError);
  if (t.size() == 8) weft::comm::testing::agree(p3d::heads_not_divisible(t));
}

int main(int argc, char** argv) {
  openblas_set_num_threads(1);  // the ranks already fill the cores
  return weft::comm::testing::run_doctest_under_mpi(argc, argv);
}
