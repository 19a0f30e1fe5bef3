// expect: an expression cannot mix integer and floating-point operands
// Twin (without WEFT_COMPILE_FAIL): casting the integers first compiles.
#include <cstdint>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({3});
  weft::Tensor<std::int32_t> i({3});
#ifdef WEFT_COMPILE_FAIL
  auto e = x + i;
#else
  auto e = x + weft::cast<float>(i);
#endif
  (void)e;
}
