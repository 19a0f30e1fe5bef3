// expect: the executor's device provides no such primitive
// A device whose kernels (kernels/<device>/) lack a primitive a node needs is
// refused at compile time with a sentence, not at run time. Here a device
// with memory and a queue but no kernels at all evaluates a softmax.
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

int main() {
  weft::Tensor<float, npu> x(weft::Shape{2, 3}), y(weft::Shape{2, 3});
  weft::Workspace<npu> ws;
  weft::assign(y.view(), weft::softmax(x), weft::Exec<npu>(ws));
}
