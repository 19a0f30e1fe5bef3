// expect: the executor's device provides no such primitive
// A device whose kernels (kernels/<device>/) lack a primitive a node needs is
// refused at compile time with a sentence, not at run time. Here a device
// with memory and a queue but no kernels at all evaluates a softmax. Twin
// (without WEFT_COMPILE_FAIL): the same program on the CPU, whose kernels exist.
#include <weft/weft.hpp>

struct npu {
  static constexpr const char* name = "npu";
};
template <>
struct weft::device_memory<npu> : weft::device_memory<weft::cpu> {};
template <>
struct weft::device_queue<npu> {
  using type = weft::HostQueue;
};

#ifdef WEFT_COMPILE_FAIL
using D = npu;
#else
using D = weft::cpu;
#endif

int main() {
  weft::Tensor<float, D> x(weft::Shape{2, 3}), y(weft::Shape{2, 3});
  weft::Workspace<D> ws;
  weft::assign(y.view(), weft::softmax(x), weft::Exec<D>(ws));
}
