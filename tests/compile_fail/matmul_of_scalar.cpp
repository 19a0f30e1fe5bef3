// expect: matmul: the left operand's rank is known from its type and is below 2
// Twin (without WEFT_COMPILE_FAIL): the same matmul of two matrices compiles.
#include <weft/expr/matmul.hpp>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({2, 2}), y({2, 2});
#ifdef WEFT_COMPILE_FAIL
  auto e = weft::matmul(weft::sum(x), y);
#else
  auto e = weft::matmul(x, y);
#endif
  (void)e;
}
