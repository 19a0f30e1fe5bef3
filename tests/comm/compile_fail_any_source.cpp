// Must NOT compile: a receive from any rank on a transport without the AnySource capability.
// expect: receiving from any rank needs a transport modelling AnySource
#include <weft/comm/algorithm.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>

#include <vector>

int receive(weft::comm::Communicator<weft::comm::Ring, weft::comm::detail::ArchetypeTransport>& c) {
  std::vector<float> v(4);
  return c.recv_any(v);
}
