// expect: where: the mask must be a bool or integer expression
// Twin (without WEFT_COMPILE_FAIL): the same where with a bool mask compiles.
#include <weft/expr/where.hpp>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> a({2, 3}), b({2, 3}), fmask({2, 3});
  weft::Tensor<bool> bmask({2, 3});
#ifdef WEFT_COMPILE_FAIL
  auto e = weft::where(fmask, a, b);
#else
  auto e = weft::where(bmask, a, b);
#endif
  (void)e;
  (void)fmask;
}
