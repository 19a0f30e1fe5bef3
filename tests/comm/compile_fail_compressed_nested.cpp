// Must NOT compile: a compressed policy inside another compresses twice.
// expect: inside comm::Compressed would compress twice
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/codec/top_k.hpp>

weft::comm::Compressed<weft::comm::TopK, weft::comm::Compressed<weft::comm::F16, weft::comm::Ring>> policy{};
