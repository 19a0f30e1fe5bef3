// DataParallel on the MPI transport, run by Meson under mpirun with 1, 2 and 4
// ranks: the same equivalence checks as on threads (data_parallel_suite.hpp),
// each process computing the one-rank reference itself.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <weft/comm/transport/mpi.hpp>

#include "comm/mpi_doctest.hpp"
#include "data_parallel_suite.hpp"

using namespace dp_suite;

TEST_CASE("mpi: p ranks with batch b/p train like one rank with batch b") {
  const Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  check_close(data_parallel(t, data, false), single_rank_adam(data));
}

TEST_CASE("mpi: deterministic mode is bit for bit the shard gradients in rank order") {
  const Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  CHECK(data_parallel(t, data, true) == shards_in_rank_order_sgd(data, t.size()));
}

TEST_CASE("mpi: the sharded update trains like one rank, and is bit for bit in deterministic mode") {
  const Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  check_close(data_parallel(t, data, false, true, true), single_rank_adam(data));
  CHECK(data_parallel(t, data, true, true, true) == shards_in_rank_order_sgd(data, t.size()));
}

TEST_CASE("mpi: a parameter unused on some ranks only: buckets start in the same order on every rank") {
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  for (bool c_before_b : {false, true})
    for (bool shard : {false, true}) {
      CAPTURE(c_before_b);
      CAPTURE(shard);
      check_unused_on_some_ranks(unused_on_some_ranks(t, c_before_b, shard), t.size());
    }
}

int main(int argc, char** argv) {
  openblas_set_num_threads(1);  // the ranks already fill the cores
  return weft::comm::testing::run_doctest_under_mpi(argc, argv);
}
