// expect: softmax/log_softmax work over the last axis, and this operand has rank 0
// Twin (without WEFT_COMPILE_FAIL): softmax of the matrix itself compiles.
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({2, 3});
#ifdef WEFT_COMPILE_FAIL
  auto e = weft::softmax(weft::sum(x));
#else
  auto e = weft::softmax(x);
#endif
  (void)e;
}
