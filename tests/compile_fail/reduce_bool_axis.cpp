// expect: sum(x, bool): a bool is not an axis
// sum(x, true) used to reduce everything (the bool converted to the keepdim
// overload) when the caller meant an axis or keepdim alone; now it is refused.
// Twin (without WEFT_COMPILE_FAIL): the keep-dims tag says what was meant.
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({2, 3}, 1.0f);
#ifdef WEFT_COMPILE_FAIL
  auto s = weft::sum(x, true);
#else
  auto s = weft::sum(x, weft::keepdim);
#endif
  (void)s;
}
