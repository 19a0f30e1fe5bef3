// Must NOT compile: Compressed takes the codec first and the algorithm second.
// expect: takes the codec first and the algorithm second: write Compressed<TopK, Ring>
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/codec/top_k.hpp>

weft::comm::Compressed<weft::comm::Ring, weft::comm::TopK> policy{};
