// expect: concat: all operands must have the same element type
// Twin (without WEFT_COMPILE_FAIL): joining two float tensors compiles.
#include <weft/expr/concat.hpp>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> a({2, 3}), b({2, 3});
  weft::Tensor<double> d({2, 3});
#ifdef WEFT_COMPILE_FAIL
  auto e = weft::concat(0, a, d);
#else
  auto e = weft::concat(0, a, b);
#endif
  (void)e;
  (void)d;
}
