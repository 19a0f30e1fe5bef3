// The pipeline under mpirun with 2 and 4 processes: every schedule, m = 1, 4,
// 8, against one rank's gradient accumulation over the same micro-batches
// (pipeline_suite.hpp, also run on thread ranks by test_pipeline.cpp): the
// step-0 gradients and the parameters after 20 SGD steps, bit for bit; with 4
// processes also 2 stages x 2 data-parallel replicas.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <weft/comm/transport/mpi.hpp>

#include "comm/mpi_doctest.hpp"
#include "pipeline_suite.hpp"

TEST_CASE("mpi: every schedule trains bit for bit like one rank's gradient accumulation") {
  const pipe_suite::Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  weft::comm::testing::agree(pipe_suite::check_all_schedules(t, data, 20));
}

TEST_CASE("mpi: 2 stages x 2 data-parallel replicas train bit for bit like one rank (np = 4)") {
  const pipe_suite::Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  weft::comm::testing::agree(t.size() == 4 ? pipe_suite::check_pipeline_data_parallel(t, data) : std::string());
}

TEST_CASE("mpi: a measured 1F1B trace gathered at rank 0") {
  const pipe_suite::Data data;
  weft::comm::MpiTransport t{MPI_COMM_WORLD};
  pipe_suite::Model model = pipe_suite::make_model();
  namespace pp = weft::parallel::pipeline;
  std::string err;
  if (t.size() == 2) {
    auto pipe = pp::make_pipeline<float, std::int32_t>(t, pp::OneFOneB{}, 4, pp::cut<4>(model), pipe_suite::loss_fn(),
                                                       {.trace = true});
    for (int s = 0; s < 3; ++s) pipe.step(data.xs(s), data.ys(s));
    const pp::Trace tr = pipe.gather_trace();
    if (t.rank() == 0) {
      int computes = 0;
      for (const auto& r : tr.ranks)
        for (const pp::Event& e : r) computes += pp::is_compute(e.action.op) && e.end >= e.start;
      if (tr.ranks.size() != 2 || computes != 2 * 2 * 4) err = "the gathered trace lacks actions";
      MESSAGE("\n", pp::ascii_timeline(tr, 64));
    }
  }
  weft::comm::testing::agree(err);
}

int main(int argc, char** argv) {
  openblas_set_num_threads(1);  // the ranks already fill the cores
  return weft::comm::testing::run_doctest_under_mpi(argc, argv);
}
