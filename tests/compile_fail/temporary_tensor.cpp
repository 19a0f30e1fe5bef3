// expect: an expression cannot hold a temporary Tensor
// Twin (without WEFT_COMPILE_FAIL): the same values held by a named tensor compile.
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({3}), ones({3}, 1.0f);
#ifdef WEFT_COMPILE_FAIL
  auto e = weft::Tensor<float>({3}, 1.0f) + x;  // the temporary dies at the semicolon
#else
  auto e = ones + x;
#endif
  (void)e;
}
