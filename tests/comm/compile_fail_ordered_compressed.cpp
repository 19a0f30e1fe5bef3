// Must NOT compile: Ordered reduces uncompressed, so a compressed inner policy would be bypassed.
// Twin (without WEFT_COMPILE_FAIL): Ordered over the plain ring.
// expect: comm::Ordered reduces uncompressed, in rank order
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/ordered.hpp>
#include <weft/comm/codec/cast.hpp>

#ifdef WEFT_COMPILE_FAIL
weft::comm::Ordered<weft::comm::Compressed<weft::comm::F16, weft::comm::Ring>> policy{};
#else
weft::comm::Ordered<weft::comm::Ring> policy{};
#endif
