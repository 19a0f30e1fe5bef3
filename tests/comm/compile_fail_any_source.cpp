// Must NOT compile: a receive from any rank on a transport without the AnySource capability.
// Twin (without WEFT_COMPILE_FAIL): the thread transport, which has it.
// expect: receiving from any rank needs a transport modelling AnySource
#include <weft/comm/algorithm.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/transport/thread.hpp>

#include <vector>

#ifdef WEFT_COMPILE_FAIL
using Transport = weft::comm::detail::ArchetypeTransport;
#else
using Transport = weft::comm::ThreadTransport;
#endif

int receive(weft::comm::Communicator<weft::comm::Ring, Transport>& c) {
  std::vector<float> v(4);
  return c.recv_any(v);
}
