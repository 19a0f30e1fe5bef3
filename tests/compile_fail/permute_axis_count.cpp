// expect: permute: the operand's rank is known from its type and differs from the number of axes given
// Twin (without WEFT_COMPILE_FAIL): permuting a matrix's two axes compiles.
#include <weft/expr/view.hpp>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({2, 3});
#ifdef WEFT_COMPILE_FAIL
  auto e = weft::permute(weft::sum(x), 1, 0);
#else
  auto e = weft::permute(x, 1, 0);
#endif
  (void)e;
}
