// Must NOT compile: comm::Native on a transport without native collectives
// (the static_assert in algorithm/native.hpp names the rule).
// expect: delegates to the transport's own collectives and this transport has none
// Twin (without WEFT_COMPILE_FAIL): the same transport with the ring, which
// needs only point-to-point messages, compiles.
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/transport/thread.hpp>

namespace {
// A point-to-point-only transport: ThreadTransport's messaging, none of its collectives.
struct P2POnly {
  using Request = weft::comm::ThreadTransport::Request;
  weft::comm::ThreadTransport t;
  int rank() const { return t.rank(); }
  int size() const { return t.size(); }
  int node() const { return t.node(); }
  Request isend(const void* p, std::size_t n, int peer, weft::comm::Tag tag) { return t.isend(p, n, peer, tag); }
  Request irecv(void* p, std::size_t n, int peer, weft::comm::Tag tag) { return t.irecv(p, n, peer, tag); }
  bool test(Request& r) { return t.test(r); }
  weft::comm::WaitStatus wait(Request& r, weft::comm::Deadline d) { return t.wait(r, d); }
  void cancel(Request& r) { t.cancel(r); }
  std::string failure() const { return t.failure(); }
  P2POnly split(int c, int k, weft::comm::Deadline d) const { return {t.split(c, k, d)}; }
  const char* name() const { return "p2p-only"; }
};
static_assert(weft::comm::Transport<P2POnly>);
}  // namespace

void use(P2POnly t) {
#ifdef WEFT_COMPILE_FAIL
  weft::comm::Communicator<weft::comm::Native, P2POnly> c{t};
#else
  weft::comm::Communicator<weft::comm::Ring, P2POnly> c{t};
#endif
  float x[4] = {};
  c.allreduce(x, x, 4);
}
