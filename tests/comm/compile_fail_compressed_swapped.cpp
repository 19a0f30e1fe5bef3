// Must NOT compile: Compressed takes the codec first and the algorithm second.
// expect: takes the codec first and the algorithm second: write Compressed<TopK, Ring>
// Twin (without WEFT_COMPILE_FAIL): the arguments in their order compile.
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/codec/top_k.hpp>

#ifdef WEFT_COMPILE_FAIL
weft::comm::Compressed<weft::comm::Ring, weft::comm::TopK> policy{};
#else
weft::comm::Compressed<weft::comm::TopK, weft::comm::Ring> policy{};
#endif
