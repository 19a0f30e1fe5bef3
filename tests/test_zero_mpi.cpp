// Mesh and ZeRO-1/2/3 on the MPI transport, run by Meson under mpirun with 1,
// 2 and 4 ranks: the checks of zero_suite.hpp (stage 3 all at once and layer
// by layer, bf16 mixed precision), each process computing the one-rank and
// mixed-precision references itself.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <weft/comm/transport/mpi.hpp>

#include "comm/mpi_doctest.hpp"
#include "zero_suite.hpp"

using namespace zero_suite;

TEST_CASE("mpi: DP, ZeRO-1, -2, -3: 20 steps like one rank, bit for bit across stages when deterministic") {
  const Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  check_stages(t, data, single_rank(data));
}

TEST_CASE("mpi: hybrid sharding (replicate x shard mesh) trains like one rank") {
  const Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  if (t.size() % 2 != 0) return;  // needs two replicas
  const auto one = single_rank(data);
  check_close(train_hybrid<weft::parallel::Zero2>(t, data, 2), one, "HSDP ZeRO-2");
  check_close(train_hybrid<weft::parallel::Zero3>(t, data, 2), one, "HSDP ZeRO-3");
}

TEST_CASE("mpi: ZeRO-3 per layer, bf16 mixed precision: like the bf16 reference, away from f32") {
  const Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  check_mixed(t, data, mixed_reference(data, t.size(), kAdamMixed, true), mixed_reference(data, 1, kAdamMixed, false));
}

TEST_CASE("mpi: ZeRO-3 per layer, hybrid sharding trains like one rank") {
  const Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  if (t.size() % 2 != 0) return;
  check_close(train_hybrid_layers(t, data, 2), single_rank(data), "HSDP ZeRO-3 per layer");
}

TEST_CASE("mpi: mesh coordinates and axis communicators") {
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  const int n = t.size();
  if (n % 2 == 0)
    check_mesh(t, {{"dp", n / 2}, {"tp", 2}});
  else
    check_mesh(t, {{"pp", 1}, {"dp", n}});
}

TEST_CASE("mpi: a mesh that does not match the rank count fails on every rank") {
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  CHECK_THROWS_WITH_AS(weft::parallel::Mesh<weft::comm::MpiTransport>(t, {{"dp", t.size() + 1}}),
                       doctest::Contains("mesh holds"), weft::ValueError);
}

int main(int argc, char** argv) {
  openblas_set_num_threads(1);  // the ranks already fill the cores
  return weft::comm::testing::run_doctest_under_mpi(argc, argv);
}
