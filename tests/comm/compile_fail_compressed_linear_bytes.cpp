// Must NOT compile: a codec that calls itself linear but sends raw bytes,
// which no inner algorithm can sum (it must go by allgather: linear = false).
// expect: says it is linear but its payload_type is not f32, f16 or bf16
// Twin (without WEFT_COMPILE_FAIL): the same linear codec with f32 payloads,
// which the inner algorithm can sum, compiles.
#include <cstddef>
#include <cstdint>
#include <weft/comm/algorithm/compressed.hpp>

struct Bytes {
  static constexpr const char* name = "bytes";
  static constexpr bool linear = true;
#ifdef WEFT_COMPILE_FAIL
  using payload_type = std::uint8_t;
#else
  using payload_type = float;
#endif
  using State = weft::comm::detail::NoState;
  void check(std::size_t, const weft::comm::CodecCall&) const {}
  int rounds(const State&, std::size_t) const { return 1; }
  std::size_t payload_count(const State&, std::size_t n, int) const { return n; }
  void encode(State&, const float*, std::size_t, payload_type*, int, const weft::comm::CodecCall&) const {}
  void decode(State&, const payload_type*, float*, std::size_t, int, const weft::comm::CodecCall&) const {}
};

weft::comm::Compressed<Bytes, weft::comm::Ring> policy{};
