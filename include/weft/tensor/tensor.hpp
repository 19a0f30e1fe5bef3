// Tensor<T, Device>: owning, contiguous, 64-byte-aligned storage with a runtime
// shape; TensorView<T, Device>: a non-owning strided view (row slices,
// transposes). Leaves of expressions reference these; they never own data.
#pragma once

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/config.hpp"
#include "../core/device.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/shape.hpp"

namespace weft {

template <class T, class Device = cpu>
class Tensor;
template <class T, class Device = cpu>
struct TensorView;

// Expression assignment is defined in the expr layer (weft/expr/assign.hpp);
// this declaration lets tensors accept `t = expr` once that header is included.
template <class T, class Device, class E>
void assign(TensorView<T, Device> dst, const E& e);

template <class T, class Device>
struct TensorView {
  using value_type = T;
  using device_type = Device;

  T* data = nullptr;
  Shape shape;
  Strides strides;

  TensorView() = default;
  TensorView(T* p, const Shape& s) : data(p), shape(s), strides(contiguous_strides(s)) {}
  TensorView(T* p, const Shape& s, const Strides& st) : data(p), shape(s), strides(st) {}

  int rank() const { return shape.rank; }
  index_t numel() const { return shape.numel(); }
  index_t size(int axis) const { return shape[normalize_axis("size", axis, shape.rank)]; }

  bool is_contiguous() const {
    Strides c = contiguous_strides(shape);
    for (int i = 0; i < shape.rank; ++i)
      if (shape[i] != 1 && strides[i] != c[i]) return false;
    return true;
  }

  // Element access on the host (cpu tensors): t(i, j).
  template <class... I>
  T& operator()(I... idx) const {
    static_assert(std::is_same_v<Device, cpu>, "element access with t(i, j) is host-only: copy device tensors to cpu first");
    const index_t ix[] = {static_cast<index_t>(idx)...};
    if (static_cast<int>(sizeof...(I)) != shape.rank)
      throw_error<ShapeError>("element access: ", sizeof...(I), " indices for a tensor of shape ", shape);
    index_t off = 0;
    for (int d = 0; d < shape.rank; ++d) {
      if (ix[d] < 0 || ix[d] >= shape[d])
        throw_error<ShapeError>("element access: index ", ix[d], " out of range for axis ", d, " of shape ", shape);
      off += ix[d] * strides[d];
    }
    return data[off];
  }

  // The value of a rank-0 (or one-element) tensor.
  T item() const {
    if (numel() != 1) throw_error<ShapeError>("item(): tensor of shape ", shape, " has ", numel(), " elements, not 1");
    return *data;
  }

  // Rows [begin, end) along axis 0; shares storage.
  TensorView slice(index_t begin, index_t end) const {
    if (shape.rank < 1) throw_error<ShapeError>("slice: a rank-0 tensor has no rows");
    if (begin < 0 || end > shape[0] || begin > end)
      throw_error<ShapeError>("slice: rows [", begin, ", ", end, ") out of range for shape ", shape);
    TensorView v = *this;
    v.data = data + begin * strides[0];
    v.shape[0] = end - begin;
    return v;
  }

  // Row i (drops axis 0).
  TensorView row(index_t i) const {
    if (shape.rank < 1) throw_error<ShapeError>("row: a rank-0 tensor has no rows");
    if (i < 0 || i >= shape[0]) throw_error<ShapeError>("row: index ", i, " out of range for shape ", shape);
    TensorView v;
    v.data = data + i * strides[0];
    v.shape.rank = shape.rank - 1;
    for (int d = 1; d < shape.rank; ++d) {
      v.shape[d - 1] = shape[d];
      v.strides[d - 1] = strides[d];
    }
    return v;
  }

  // Swap the last two axes (a rank-1 view is its own transpose).
  TensorView transposed() const {
    TensorView v = *this;
    if (shape.rank >= 2) {
      std::swap(v.shape[shape.rank - 1], v.shape[shape.rank - 2]);
      std::swap(v.strides[shape.rank - 1], v.strides[shape.rank - 2]);
    }
    return v;
  }

  TensorView reshape(const Shape& s) const {
    if (!is_contiguous()) throw_error<ShapeError>("reshape: view of shape ", shape, " is not contiguous");
    if (s.numel() != numel()) throw_error<ShapeError>("reshape: cannot view shape ", shape, " as ", s);
    return TensorView(data, s);
  }

  template <class E>
  const TensorView& operator=(const E& e) const {
    assign(*this, e);
    return *this;
  }
  TensorView(const TensorView&) = default;
  TensorView& operator=(const TensorView& other) = default;  // rebinding copies the view, not the data
};

namespace detail {

// Keeps the storage of tensors that die while it is active, and frees it when
// it ends. value_and_grad, vjp and gradcheck hold one around the call of the
// user's function: a constant made inside that function,
//   value_and_grad([&](auto x) { Tensor<float> c({3}, 2.0f); return sum(x * c); }, x)
// is referenced by the expression the function returns (a named tensor is
// captured by reference, as every operand is), and dies at its `}`; its memory
// stays valid until the pass has finished instead of being read after free.
// One per thread at a time (nesting restores the outer one); at most
// `capacity` tensors are kept, beyond that the pass refuses with a sentence.
class DeferredFrees {
 public:
  static constexpr int capacity = 64;
  // Room for the queue a stream-ordered tensor is freed on (a cudaStream_t).
  static constexpr std::size_t context_bytes = 2 * sizeof(void*);
  using Release = void (*)(void* p, const unsigned char* context) noexcept;

  DeferredFrees() : prev_(current()) { current() = this; }
  DeferredFrees(const DeferredFrees&) = delete;
  DeferredFrees& operator=(const DeferredFrees&) = delete;
  ~DeferredFrees() {
    stop();
    for (int i = 0; i < n_; ++i) free_[i](ptr_[i], ctx_[i]);
  }

  // Tensors dying from now on are freed at once again; those kept stay kept.
  void stop() noexcept {
    if (active_) current() = prev_;
    active_ = false;
  }
  // More tensors died than could be kept (some were freed at once).
  bool overflowed() const { return overflowed_; }
  int kept() const { return n_; }

  // Keep p (freed later by release(p, context), context a copy of the
  // `bytes` <= context_bytes at `context`); false when full.
  bool take(void* p, Release release, const void* context = nullptr, std::size_t bytes = 0) noexcept {
    if (n_ == capacity) {
      overflowed_ = true;
      return false;
    }
    ptr_[n_] = p;
    if (bytes > 0) std::memcpy(ctx_[n_], context, bytes);
    free_[n_++] = release;
    return true;
  }

  // The active one of this thread, or nullptr.
  static DeferredFrees*& current() noexcept {
    thread_local DeferredFrees* active = nullptr;
    return active;
  }

 private:
  DeferredFrees* prev_;
  bool active_ = true;
  bool overflowed_ = false;
  int n_ = 0;
  void* ptr_[capacity];
  Release free_[capacity];
  alignas(void*) unsigned char ctx_[capacity][context_bytes];
};

}  // namespace detail

template <class T, class Device>
class Tensor {
 public:
  // What this device's stream-ordered work is ordered on (HostQueue for the
  // host; a cudaStream_t with <weft/kernels/cuda/memory.cuh>).
  using queue_type = typename device_memory<Device>::queue_type;

 private:
  // Frees storage as it was allocated: synchronously, or stream-ordered on
  // the queue it was allocated on (the free runs after the work already there).
  struct Deleter {
    static_assert(std::is_trivially_copyable_v<queue_type> && sizeof(queue_type) <= detail::DeferredFrees::context_bytes,
                  "a device's queue_type must be a small trivially copyable handle");
    queue_type queue{};
    bool ordered = false;

    static void free_sync(void* p, const unsigned char*) noexcept { device_memory<Device>::deallocate(p); }
    static void free_ordered(void* p, const unsigned char* context) noexcept {
      queue_type q;
      std::memcpy(static_cast<void*>(&q), context, sizeof q);
      device_memory<Device>::deallocate(p, q);
    }
    T* allocate(std::size_t bytes) const {
      return static_cast<T*>(ordered ? device_memory<Device>::allocate(bytes, queue) : device_memory<Device>::allocate(bytes));
    }
    void copy(void* dst, const void* src, std::size_t bytes) const {
      if (ordered) device_memory<Device>::copy(dst, src, bytes, queue);
      else device_memory<Device>::copy(dst, src, bytes);
    }
    void operator()(T* p) const noexcept {
      if (!p) return;
      if (detail::DeferredFrees* keep = detail::DeferredFrees::current()) {
        if (ordered ? keep->take(p, &free_ordered, &queue, sizeof queue) : keep->take(p, &free_sync)) return;
      }
      if (ordered) device_memory<Device>::deallocate(p, queue);
      else device_memory<Device>::deallocate(p);
    }
  };

 public:
  using value_type = T;
  using device_type = Device;

  Tensor() = default;
  explicit Tensor(const Shape& s) { resize(s); }
  // Stream-ordered storage: allocated on queue q (for CUDA from the device's
  // memory pool, kernels/cuda/memory.cuh), usable by work ordered after this
  // on q, freed on q when the tensor dies or reallocates. Work on another
  // queue must be ordered after q's (an event) to use it, and before the free.
  Tensor(const Shape& s, queue_type q) : storage_(nullptr, Deleter{q, true}) { resize(s); }
  Tensor(const Shape& s, T fill_value) : Tensor(s) { fill(fill_value); }

  // Host tensor from values in row-major order: Tensor<float>({2, 2}, {1, 2, 3, 4}).
  Tensor(const Shape& s, std::initializer_list<T> values) : Tensor(s) {
    static_assert(std::is_same_v<Device, cpu>, "initialiser lists build host tensors");
    if (static_cast<index_t>(values.size()) != s.numel())
      throw_error<ShapeError>("Tensor: ", values.size(), " values for shape ", s, " (", s.numel(), " elements)");
    std::copy(values.begin(), values.end(), data());
  }

  static Tensor zeros(const Shape& s) { return Tensor(s, T(0.0f)); }

  // A copy is allocated as the original was (on its queue, if stream-ordered).
  Tensor(const Tensor& o) : storage_(nullptr, o.storage_.get_deleter()) {
    resize(o.shape_);
    copy_from(o.view());
  }
  Tensor(Tensor&& o) noexcept = default;
  Tensor& operator=(const Tensor& o) {
    if (this != &o) {
      resize(o.shape_);
      copy_from(o.view());
    }
    return *this;
  }
  Tensor& operator=(Tensor&& o) noexcept = default;

  // Evaluate an expression into this tensor, resizing to the expression's shape.
  // Aliasing (t = transpose(t), t = t / sum(t)) is detected and handled.
  template <class E>
    requires(!std::is_same_v<std::remove_cvref_t<E>, Tensor> && !std::is_same_v<std::remove_cvref_t<E>, TensorView<T, Device>>)
  Tensor& operator=(const E& e) {
    Shape s = e.shape();
    if (s != shape_) {
      // Resizing would free storage the expression may read; evaluate first.
      Tensor tmp = alike(s);
      assign(tmp.view(), e);
      *this = std::move(tmp);
    } else {
      assign(view(), e);
    }
    return *this;
  }
  Tensor& operator=(const TensorView<T, Device>& v) {
    if (v.data >= data() && v.data < data() + capacity_) {
      Tensor tmp = alike(v.shape);
      tmp.copy_from(v);
      *this = std::move(tmp);
    } else {
      resize(v.shape);
      copy_from(v);
    }
    return *this;
  }

  // Keeps storage when the element count fits (no allocation in steady state).
  void resize(const Shape& s) {
    index_t n = s.numel();
    if (n > capacity_ || !storage_) {
      storage_.reset(storage_.get_deleter().allocate(static_cast<std::size_t>(n > 0 ? n : 1) * sizeof(T)));
      capacity_ = n > 0 ? n : 1;
    }
    shape_ = s;
  }

  void fill(T v) {
    static_assert(std::is_same_v<Device, cpu>, "fill() is host-only");
    std::fill(data(), data() + numel(), v);
  }

  T* data() { return storage_.get(); }
  const T* data() const { return storage_.get(); }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank; }
  index_t numel() const { return shape_.numel(); }
  index_t size(int axis) const { return shape_[normalize_axis("size", axis, shape_.rank)]; }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * sizeof(T); }
  bool empty() const { return !storage_; }
  // Whether storage is stream-ordered, and on which queue (see Tensor(shape, q)).
  bool stream_ordered() const { return storage_.get_deleter().ordered; }
  queue_type queue() const { return storage_.get_deleter().queue; }

  TensorView<T, Device> view() { return TensorView<T, Device>(data(), shape_); }
  // A const tensor still yields a mutable-pointer view for expression leaves;
  // leaves only read through it.
  TensorView<T, Device> view() const { return TensorView<T, Device>(const_cast<T*>(data()), shape_); }
  operator TensorView<T, Device>() const { return view(); }

  template <class... I>
  T& operator()(I... idx) { return view()(idx...); }
  template <class... I>
  const T& operator()(I... idx) const { return view()(idx...); }
  T item() const { return view().item(); }

  TensorView<T, Device> slice(index_t b, index_t e) const { return view().slice(b, e); }
  TensorView<T, Device> row(index_t i) const { return view().row(i); }
  TensorView<T, Device> transposed() const { return view().transposed(); }
  TensorView<T, Device> reshape(const Shape& s) const { return view().reshape(s); }

  std::vector<T> to_vector() const {
    static_assert(std::is_same_v<Device, cpu>, "to_vector() is host-only");
    return std::vector<T>(data(), data() + numel());
  }

 private:
  // An empty tensor of shape s allocated as this one is.
  Tensor alike(const Shape& s) const {
    Tensor t;
    t.storage_ = std::unique_ptr<T, Deleter>(nullptr, storage_.get_deleter());
    t.resize(s);
    return t;
  }

  void copy_from(const TensorView<T, Device>& src) {
    if (src.is_contiguous()) {
      if (numel() > 0) storage_.get_deleter().copy(data(), src.data, bytes());
      return;
    }
    if constexpr (!std::is_same_v<Device, cpu>)
      throw_error<ValueError>("copying a strided ", Device::name,
                              " view: evaluate it into a contiguous tensor with weft::assign(dst, view, exec)");
    else {
      // Strided source: walk it in row-major order.
      Shape p = padded(src.shape);
      Strides st = aligned_strides(src.shape, src.strides, src.shape);
      T* out = data();
      for (index_t a = 0; a < p[0]; ++a)
        for (index_t b = 0; b < p[1]; ++b)
          for (index_t c = 0; c < p[2]; ++c)
            for (index_t d = 0; d < p[3]; ++d) *out++ = src.data[a * st[0] + b * st[1] + c * st[2] + d * st[3]];
    }
  }

  std::unique_ptr<T, Deleter> storage_;
  index_t capacity_ = 0;
  Shape shape_;
};

}  // namespace weft
