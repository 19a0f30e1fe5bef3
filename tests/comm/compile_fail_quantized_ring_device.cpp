// Must NOT compile: QuantizedRing re-encodes on the host at every hop, so it
// cannot run over a device transport (emulated_device.hpp stands in for
// NcclTransport: a transport with its own device executor).
// expect: QuantizedRing decodes and re-encodes on the host at every hop
// Twin (without WEFT_COMPILE_FAIL): Compressed<Int8, Ring>, which stages
// through the host once per call, compiles over the same transport.
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/quantized_ring.hpp>
#include <weft/comm/codec/int8.hpp>
#include <weft/comm/communicator.hpp>

#include "emulated_device.hpp"

#ifdef WEFT_COMPILE_FAIL
using Policy = weft::comm::QuantizedRing<weft::comm::Int8>;
#else
using Policy = weft::comm::Compressed<weft::comm::Int8, weft::comm::Ring>;
#endif

void reduce(weft::comm::Communicator<Policy, emulated::Transport<>>& c, float* x, std::size_t n) {
  c.allreduce(x, x, n);
}
