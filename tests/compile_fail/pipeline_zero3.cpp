// expect: Pipeline::step: ZeRO-3 keeps the parameters sharded between steps
// Twin (without WEFT_COMPILE_FAIL): the same pipeline step with ZeRO-2 on the
// data-parallel axis compiles (its gradients routed into Zero's shards).
#include <cstdint>
#include <tuple>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/pipeline/pipeline.hpp>
#include <weft/parallel/zero.hpp>
using namespace weft;
using Dp = comm::Communicator<comm::Ring, comm::ThreadTransport>;
void step(comm::ThreadTransport& t, nn::Linear<float>& l1, nn::Linear<float>& l2, nn::Registry<float>& reg, Dp& dp,
          TensorView<float> x, TensorView<std::int32_t> y) {
  auto pipe = parallel::pipeline::make_pipeline<float, std::int32_t>(
      t, parallel::pipeline::OneFOneB{}, 2,
      std::make_tuple([&](auto in) { return l1(std::move(in)); }, [&](auto in) { return l2(std::move(in)); }),
      [](auto out, TensorView<std::int32_t> labels) { return cross_entropy(std::move(out), labels); });
#ifdef WEFT_COMPILE_FAIL
  parallel::Zero<float, parallel::Zero3, Dp> z(reg, dp, nn::SGDOptions{});
#else
  parallel::Zero<float, parallel::Zero2, Dp> z(reg, dp, nn::SGDOptions{});
#endif
  pipe.step(x, y, z);
}
int main() {}
