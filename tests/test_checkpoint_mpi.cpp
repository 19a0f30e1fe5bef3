// Checkpoints under mpirun (Meson runs it with 2 ranks): data-parallel
// training resumes bit for bit from a checkpoint saved and loaded by
// separate processes, with and without the sharded update, and through a
// compressed communicator whose codec state the checkpoint carries
// (checkpoint/resume_suite.hpp, the same checks as on thread ranks).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <weft/comm/transport/mpi.hpp>

#include "checkpoint/resume_suite.hpp"
#include "comm/mpi_doctest.hpp"

namespace {

// One directory for every process: rank 0 names it, the others receive the name.
std::filesystem::path shared_dir() {
  char buf[256] = {};
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    const std::string p = (std::filesystem::temp_directory_path() / ("weft_test_ckpt_mpi_" + std::to_string(::getpid()))).string();
    p.copy(buf, sizeof buf - 1);
  }
  MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, MPI_COMM_WORLD);
  return buf;
}

}  // namespace

TEST_CASE("mpi: data-parallel training resumes bit for bit from a checkpoint, sharded or not") {
  const dp_suite::Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  const std::filesystem::path dir = shared_dir();
  for (bool shard : {false, true}) {
    CAPTURE(shard);
    const auto want = ckpt_suite::straight(t, data, shard);
    const auto got = ckpt_suite::resumed(t, data, shard, dir / (shard ? "sharded" : "plain"));
    CHECK(got == want);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (t.rank() == 0) std::filesystem::remove_all(dir);
}

TEST_CASE("mpi: a compressed communicator's codec state comes back: training resumes bit for bit (top-k, error feedback)") {
  const dp_suite::Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  const std::filesystem::path dir = shared_dir();
  const auto want = ckpt_suite::codec_straight<weft::comm::TopK>(t, data);
  const auto got = ckpt_suite::codec_resumed<weft::comm::TopK>(t, data, dir / "codec");
  CHECK(got == want);
  MPI_Barrier(MPI_COMM_WORLD);
  if (t.rank() == 0) std::filesystem::remove_all(dir);
}

int main(int argc, char** argv) {
  openblas_set_num_threads(1);  // the ranks already fill the cores
  return weft::comm::testing::run_doctest_under_mpi(argc, argv);
}
