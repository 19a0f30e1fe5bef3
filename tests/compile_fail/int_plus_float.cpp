// expect: an expression cannot mix integer and floating-point operands
#include <cstdint>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({3});
  weft::Tensor<std::int32_t> i({3});
  auto e = x + i;
  (void)e;
}
