// Must NOT compile: a compressed policy inside another compresses twice.
// expect: inside comm::Compressed would compress twice
// Twin (without WEFT_COMPILE_FAIL): one codec over the plain algorithm compiles.
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/codec/top_k.hpp>

#ifdef WEFT_COMPILE_FAIL
weft::comm::Compressed<weft::comm::TopK, weft::comm::Compressed<weft::comm::F16, weft::comm::Ring>> policy{};
#else
weft::comm::Compressed<weft::comm::TopK, weft::comm::Ring> policy{};
#endif
