// Must NOT compile: Ordered reduces uncompressed, so a compressed inner policy would be bypassed.
// expect: comm::Ordered reduces uncompressed, in rank order
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/ordered.hpp>
#include <weft/comm/codec/cast.hpp>

weft::comm::Ordered<weft::comm::Compressed<weft::comm::F16, weft::comm::Ring>> policy{};
