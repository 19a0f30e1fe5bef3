// Optimizers for device parameters (Parameter<T, weft::cuda>): SGD (with
// momentum), Adam and AdamW with the rules, options and shape of nn/optim.hpp
// (construct from the parameters, step(), zero_grad()), where one step() is
// ONE kernel launch that updates every parameter, and zero_grad() one more.
// Opt-in: include this and compile with nvcc.
//
// Multi-tensor launch (as apex's and PyTorch's multi_tensor_apply): at
// construction the optimizer uploads, once, a table of per-tensor pointers
// (value, grad, state) and sizes, and a list of (tensor, first element)
// chunks of `multi_tensor_chunk` elements; block b of the launch updates
// chunk b. Each step passes only the step's scalars (bias corrections, the
// first-step momentum rule), formed on the host by the same functions as the
// CPU optimizers' (detail::adam_coeffs, detail::sgd_coeffs), and each element
// runs the CPU's own WEFT_HD update (detail::adam_update, ...): a device step
// computes what the CPU step computes, up to the device's FMA contraction.
//
// Every call enqueues on the stream given at construction (the state is
// allocated there, from the device's pool, and zeroed there); nothing waits.
// The stream must outlive the optimizer (its memory is freed on it). The
// gradients must be written by work ordered before step() on that stream.
// Parameters' storage must stay where it was when the optimizer was built
// (a resize that reallocates is refused at the next step, with a sentence).
// step(parts) steps only the given element ranges (a sharded update's
// pieces, parallel/sharded_update.hpp), also in one launch, from a second
// table uploaded when the ranges change. Not supported on the device (host
// optimizers only): masks (set_mask).
//
// Legend: P parameters, n_k elements of parameter k, C = multi_tensor_chunk.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../expr/parameter.hpp"
#include "../kernels/cuda/memory.cuh"
#include "optim.hpp"

namespace weft::nn {

namespace detail {

// One tensor of a multi-tensor launch: n elements of the value, the gradient
// and up to two state buffers (nullptr when the optimizer keeps fewer).
template <class T>
struct MultiTensorRef {
  T* value;
  T* grad;
  T* state0;
  T* state1;
  index_t n;
};

// Block b of a launch updates elements [begin, min(begin + C, n)) of tensor `tensor`.
struct MultiTensorChunk {
  index_t tensor;
  index_t begin;
};

inline constexpr int multi_tensor_threads = 256;
// 32 elements per thread: enough work per block to hide its start, small
// enough that a parameter of a few thousand elements still spreads over blocks.
inline constexpr index_t multi_tensor_chunk = 8192;

// tensors: (P,), chunks: (sum_k ceil(n_k / C),), one block per chunk.
template <class T, class Op>
__global__ void __launch_bounds__(multi_tensor_threads)
    multi_tensor_kernel(const MultiTensorRef<T>* tensors, const MultiTensorChunk* chunks, Op op) {
  const MultiTensorChunk c = chunks[blockIdx.x];
  const MultiTensorRef<T> t = tensors[c.tensor];
  const index_t end = c.begin + multi_tensor_chunk < t.n ? c.begin + multi_tensor_chunk : t.n;
  for (index_t i = c.begin + static_cast<index_t>(threadIdx.x); i < end; i += multi_tensor_threads) op(t, i);
}

template <class T>
struct AdamElement {
  AdamCoeffs<T> c;
  __device__ void operator()(const MultiTensorRef<T>& t, index_t i) const {
    T p = t.value[i], m = t.state0[i], v = t.state1[i];
    adam_update(p, t.grad[i], m, v, c);
    t.state0[i] = m;
    t.state1[i] = v;
    t.value[i] = p;
  }
};

template <class T>
struct SGDElement {
  T lr, wd;
  __device__ void operator()(const MultiTensorRef<T>& t, index_t i) const {
    T p = t.value[i];
    sgd_update(p, t.grad[i], lr, wd);
    t.value[i] = p;
  }
};

template <class T>
struct SGDMomentumElement {
  SGDMomentumCoeffs<T> c;
  __device__ void operator()(const MultiTensorRef<T>& t, index_t i) const {
    T p = t.value[i], b = t.state0[i];
    sgd_momentum_update(p, t.grad[i], b, c);
    t.state0[i] = b;
    t.value[i] = p;
  }
};

inline void check_multi_tensor_lr(const char* name, float lr) {
  if (!(lr >= 0.0f) || !std::isfinite(lr)) throw_error<ValueError>(name, ": invalid learning rate ", lr);
}
inline void check_adam_options(const char* name, float beta1, float beta2, float eps, float wd) {
  check_unit_interval(name, "beta1", beta1);
  check_unit_interval(name, "beta2", beta2);
  check_nonnegative(name, "eps", eps);
  check_nonnegative(name, "weight_decay", wd);
}

template <class T>
struct ZeroGradElement {
  __device__ void operator()(const MultiTensorRef<T>& t, index_t i) const { t.grad[i] = T(0); }
};

// What the device optimizers share: the parameters, their state tensors
// (zeroed on the stream), the launch table on the device, step count and lr.
template <class T>
class MultiTensorBase {
 public:
  MultiTensorBase(const MultiTensorBase&) = delete;
  MultiTensorBase& operator=(const MultiTensorBase&) = delete;
  ~MultiTensorBase() {
    device_memory<cuda>::deallocate(all_.mem, stream_);
    device_memory<cuda>::deallocate(parts_table_.mem, stream_);
  }

  float lr() const { return lr_; }
  void set_lr(float lr) {
    check_multi_tensor_lr(name_, lr);
    lr_ = lr;
  }
  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t n) {
    if (n < 0) throw_error<ValueError>(name_, ": set_steps(", n, "): the step count cannot be negative");
    steps_ = n;
  }
  std::size_t size() const { return params_.size(); }
  Parameter<T, cuda>& parameter(std::size_t k) const { return *params_.at(k); }
  cudaStream_t stream() const { return stream_; }
  // Kernels this optimizer has launched (one per step(), one per zero_grad()).
  std::uint64_t launches() const { return launches_; }

  // Every parameter's gradient set to zero: one launch on the stream.
  void zero_grad() { launch(ZeroGradElement<T>{}, "zero_grad"); }

  // State tensor `key` (momentum_buffer; exp_avg, exp_avg_sq) of the parameter named `param_name`.
  Tensor<T, cuda>& state(const std::string& param_name, const std::string& key) {
    for (std::size_t k = 0; k < keys_.size(); ++k) {
      if (keys_[k] != key) continue;
      for (std::size_t i = 0; i < params_.size(); ++i)
        if (params_[i]->name == param_name) return state_[i * keys_.size() + k];
      throw_error<ValueError>(name_, ": no parameter named '", param_name, "' (state '", key, "' requested)");
    }
    throw_error<ValueError>(name_, ": unknown state '", key, "' for parameter '", param_name, "'");
  }

 protected:
  MultiTensorBase(const char* name, std::vector<Parameter<T, cuda>*> params, cudaStream_t stream, float lr,
                  std::vector<std::string> keys)
      : name_(name), keys_(std::move(keys)), params_(std::move(params)), stream_(stream), lr_(lr) {
    check_multi_tensor_lr(name_, lr);
    const std::size_t P = params_.size();
    std::vector<MultiTensorRef<T>> refs;  // (P,)
    std::vector<MultiTensorChunk> chunks;
    refs.reserve(P);
    state_.reserve(P * keys_.size());
    for (std::size_t k = 0; k < P; ++k) {
      Parameter<T, cuda>* p = params_[k];
      if (!p) throw_error<ValueError>(name_, ": parameter ", k, " is a null pointer");
      for (std::size_t j = 0; j < k; ++j)
        if (params_[j] == p) throw_error<ValueError>(name_, ": parameter '", p->name, "' is given twice (", j, " and ", k, ")");
      if (p->grad.shape() != p->value.shape())
        throw_error<ShapeError>(name_, ": parameter '", p->name, "' has value shape ", p->value.shape(), " but gradient shape ",
                                p->grad.shape());
      const index_t n = p->numel();
      T* st[2] = {nullptr, nullptr};
      for (std::size_t s = 0; s < keys_.size(); ++s) {
        state_.emplace_back(p->shape(), stream_);
        Tensor<T, cuda>& t = state_.back();
        if (n > 0) cuda_check(cudaMemsetAsync(t.data(), 0, t.bytes(), stream_), "optimizer state: cudaMemsetAsync");
        st[s] = t.data();
      }
      add_tensor(refs, chunks, MultiTensorRef<T>{p->value.data(), p->grad.data(), st[0], st[1], n});
      values_.push_back(p->value.data());
      grads_.push_back(p->grad.data());
    }
    all_ = upload(refs, chunks, "optimizer launch table upload");
  }

  // One launch of op over every element of every parameter.
  template <class Op>
  void launch(const Op& op, const char* what) {
    check_pointers(what);
    launch_table(all_, op, what);
  }

  // One launch of op over the given element ranges only (a sharded update:
  // this rank's pieces of the parameters, parallel/sharded_update.hpp). The
  // ranges' table is uploaded when they differ from the last call's, so a
  // fixed shard layout uploads once. Each range is a tensor of the launch
  // whose value, gradient and state pointers start at its first element:
  // the element rule is the same as step()'s, so a piece's elements get the
  // bits step() would give them.
  template <class Op>
  void launch_parts(const Op& op, const std::vector<ParamRange>& parts, const char* what) {
    check_pointers(what);
    if (parts != parts_) upload_parts(parts, what);
    launch_table(parts_table_, op, what);
  }

  // Every element (parts == nullptr) or the given ranges.
  template <class Op>
  void run(const Op& op, const std::vector<ParamRange>* parts, const char* what) {
    if (parts)
      launch_parts(op, *parts, what);
    else
      launch(op, what);
  }

  void check_pointers(const char* what) const {
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const Parameter<T, cuda>& p = *params_[k];
      if (p.value.data() != values_[k] || p.grad.data() != grads_[k] || p.value.numel() != p.grad.numel() ||
          p.value.numel() != state_numel(k))
        throw_error<ValueError>(name_, ".", what, ": parameter '", p.name,
                                "' was resized or reallocated after the optimizer was built (its device pointers were "
                                "uploaded once): build the optimizer after the parameters take their final shape");
    }
  }

  const char* name_;
  std::vector<std::string> keys_;
  std::vector<Parameter<T, cuda>*> params_;
  std::vector<Tensor<T, cuda>> state_;  // (P * keys) in parameter-major order
  cudaStream_t stream_;
  float lr_;
  std::int64_t steps_ = 0;

 private:
  index_t state_numel(std::size_t k) const {
    return keys_.empty() ? params_[k]->numel() : state_[k * keys_.size()].numel();
  }

  // A launch table in device memory: the refs, then the chunks (one block each).
  struct LaunchTable {
    unsigned char* mem = nullptr;
    const MultiTensorRef<T>* refs = nullptr;
    const MultiTensorChunk* chunks = nullptr;
    unsigned blocks = 0;
  };

  // One tensor of a launch, cut into chunks of multi_tensor_chunk elements.
  static void add_tensor(std::vector<MultiTensorRef<T>>& refs, std::vector<MultiTensorChunk>& chunks, const MultiTensorRef<T>& r) {
    const index_t t = static_cast<index_t>(refs.size());
    refs.push_back(r);
    for (index_t b = 0; b < r.n; b += multi_tensor_chunk) chunks.push_back(MultiTensorChunk{t, b});
  }

  // One upload: the refs then the chunks, both 8-byte aligned structs.
  LaunchTable upload(const std::vector<MultiTensorRef<T>>& refs, const std::vector<MultiTensorChunk>& chunks,
                     const char* what) const {
    if (chunks.size() > static_cast<std::size_t>(INT_MAX))
      throw_error<ValueError>(name_, ": ", chunks.size(), " chunks of ", multi_tensor_chunk, " elements exceed one launch's grid");
    static_assert(sizeof(MultiTensorRef<T>) % alignof(MultiTensorChunk) == 0);
    const std::size_t ref_bytes = refs.size() * sizeof(MultiTensorRef<T>);
    const std::size_t chunk_bytes = chunks.size() * sizeof(MultiTensorChunk);
    LaunchTable t;
    if (ref_bytes + chunk_bytes > 0) {
      std::vector<unsigned char> host(ref_bytes + chunk_bytes);
      if (ref_bytes) std::memcpy(host.data(), refs.data(), ref_bytes);
      if (chunk_bytes) std::memcpy(host.data() + ref_bytes, chunks.data(), chunk_bytes);
      t.mem = static_cast<unsigned char*>(device_memory<cuda>::allocate(host.size(), stream_));
      // From pageable memory: staged before cudaMemcpyAsync returns, so `host` may die.
      cuda_check(cudaMemcpyAsync(t.mem, host.data(), host.size(), cudaMemcpyHostToDevice, stream_), what);
    }
    t.refs = reinterpret_cast<const MultiTensorRef<T>*>(t.mem);
    t.chunks = reinterpret_cast<const MultiTensorChunk*>(t.mem + ref_bytes);
    t.blocks = static_cast<unsigned>(chunks.size());
    return t;
  }

  template <class Op>
  void launch_table(const LaunchTable& t, const Op& op, const char* what) {
    if (t.blocks == 0) return;
    multi_tensor_kernel<T, Op><<<t.blocks, multi_tensor_threads, 0, stream_>>>(t.refs, t.chunks, op);
    cuda_check(cudaGetLastError(), what);
    ++launches_;
  }

  // The ranges as a launch table: refs at each range's first element, chunks over its length.
  void upload_parts(const std::vector<ParamRange>& parts, const char* what) {
    std::vector<MultiTensorRef<T>> refs;
    std::vector<MultiTensorChunk> chunks;
    refs.reserve(parts.size());
    for (const ParamRange& r : parts) {
      if (r.param >= params_.size())
        throw_error<ValueError>(name_, ".step(parts): part names parameter ", r.param, " but the optimizer holds ", params_.size());
      Parameter<T, cuda>& p = *params_[r.param];
      if (r.begin < 0 || r.begin > r.end || r.end > p.numel())
        throw_error<ValueError>(name_, ".step(parts): elements [", r.begin, ", ", r.end, ") of parameter '", p.name, "' (",
                                p.numel(), " elements)");
      const std::size_t k = r.param;
      T* st[2] = {nullptr, nullptr};
      for (std::size_t s = 0; s < keys_.size(); ++s) st[s] = state_[k * keys_.size() + s].data() + r.begin;
      add_tensor(refs, chunks, MultiTensorRef<T>{p.value.data() + r.begin, p.grad.data() + r.begin, st[0], st[1], r.end - r.begin});
    }
    const LaunchTable t = upload(refs, chunks, what);
    // The old table may still be read by a queued launch: freed in stream order.
    device_memory<cuda>::deallocate(parts_table_.mem, stream_);
    parts_table_ = t;
    parts_ = parts;
  }

  std::vector<const T*> values_, grads_;  // the pointers the table holds, checked at each launch
  LaunchTable all_;                       // every element of every parameter
  // The table of the last step(parts) call, kept while the parts stay the
  // same (none yet: no parts, no blocks).
  std::vector<ParamRange> parts_;
  LaunchTable parts_table_;
  std::uint64_t launches_ = 0;
};

}  // namespace detail

// ---- SGD (torch.optim.SGD; see nn::SGD) -----------------------------------------
template <class T = float>
class MultiTensorSGD : public detail::MultiTensorBase<T> {
  using Base = detail::MultiTensorBase<T>;

 public:
  MultiTensorSGD(std::vector<Parameter<T, cuda>*> params, cudaStream_t stream, const SGDOptions& o = {})
      : Base("SGD", std::move(params), stream, o.lr,
             o.momentum != 0.0f ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{}),
        o_(o) {
    detail::check_nonnegative("SGD", "momentum", o.momentum);
    detail::check_nonnegative("SGD", "dampening", o.dampening);
    detail::check_nonnegative("SGD", "weight_decay", o.weight_decay);
    if (o.nesterov && (o.momentum <= 0.0f || o.dampening != 0.0f))
      throw_error<ValueError>("SGD: Nesterov momentum requires momentum > 0 and dampening = 0 (got momentum ", o.momentum,
                              ", dampening ", o.dampening, ")");
  }
  // Every parameter of a registry, in its order.
  MultiTensorSGD(const Registry<T, cuda>& reg, cudaStream_t stream, const SGDOptions& o = {})
      : MultiTensorSGD(std::vector<Parameter<T, cuda>*>(reg.begin(), reg.end()), stream, o) {}
  const SGDOptions& options() const { return o_; }

  void step() { update(nullptr); }
  // Only the given element ranges (nn::SGD::step(parts)'s contract): one launch.
  void step(const std::vector<ParamRange>& parts) { update(&parts); }

 private:
  void update(const std::vector<ParamRange>* parts) {
    const detail::SGDMomentumCoeffs<T> c = detail::sgd_coeffs<T>(this->steps_ + 1, this->lr_, o_);
    if (o_.momentum == 0.0f) this->run(detail::SGDElement<T>{c.lr, c.wd}, parts, "SGD.step");
    else this->run(detail::SGDMomentumElement<T>{c}, parts, "SGD.step");
    ++this->steps_;
  }

  SGDOptions o_;
};

// ---- Adam (torch.optim.Adam; see nn::Adam) ----------------------------------------
template <class T = float>
class MultiTensorAdam : public detail::MultiTensorBase<T> {
  using Base = detail::MultiTensorBase<T>;

 public:
  MultiTensorAdam(std::vector<Parameter<T, cuda>*> params, cudaStream_t stream, const AdamOptions& o = {})
      : Base("Adam", std::move(params), stream, o.lr, {"exp_avg", "exp_avg_sq"}), o_(o) {
    detail::check_adam_options("Adam", o.beta1, o.beta2, o.eps, o.weight_decay);
  }
  // Every parameter of a registry, in its order.
  MultiTensorAdam(const Registry<T, cuda>& reg, cudaStream_t stream, const AdamOptions& o = {})
      : MultiTensorAdam(std::vector<Parameter<T, cuda>*>(reg.begin(), reg.end()), stream, o) {}
  const AdamOptions& options() const { return o_; }

  void step() { update(nullptr); }
  // Only the given element ranges (nn::Adam::step(parts)'s contract): one launch.
  void step(const std::vector<ParamRange>& parts) { update(&parts); }

 private:
  void update(const std::vector<ParamRange>* parts) {
    this->run(detail::AdamElement<T>{detail::adam_coeffs<T>(this->steps_ + 1, this->lr_, o_.beta1, o_.beta2, o_.eps,
                                                            o_.weight_decay, 0.0f)},
              parts, "Adam.step");
    ++this->steps_;
  }

  AdamOptions o_;
};

// ---- AdamW (torch.optim.AdamW; see nn::AdamW) -------------------------------------
template <class T = float>
class MultiTensorAdamW : public detail::MultiTensorBase<T> {
  using Base = detail::MultiTensorBase<T>;

 public:
  MultiTensorAdamW(std::vector<Parameter<T, cuda>*> params, cudaStream_t stream, const AdamWOptions& o = {})
      : Base("AdamW", std::move(params), stream, o.lr, {"exp_avg", "exp_avg_sq"}), o_(o) {
    detail::check_adam_options("AdamW", o.beta1, o.beta2, o.eps, o.weight_decay);
  }
  // Every parameter of a registry, in its order.
  MultiTensorAdamW(const Registry<T, cuda>& reg, cudaStream_t stream, const AdamWOptions& o = {})
      : MultiTensorAdamW(std::vector<Parameter<T, cuda>*>(reg.begin(), reg.end()), stream, o) {}
  const AdamWOptions& options() const { return o_; }

  void step() { update(nullptr); }
  // Only the given element ranges (nn::AdamW::step(parts)'s contract): one launch.
  void step(const std::vector<ParamRange>& parts) { update(&parts); }

 private:
  void update(const std::vector<ParamRange>* parts) {
    this->run(detail::AdamElement<T>{detail::adam_coeffs<T>(this->steps_ + 1, this->lr_, o_.beta1, o_.beta2, o_.eps, 0.0f,
                                                            o_.weight_decay)},
              parts, "AdamW.step");
    ++this->steps_;
  }

  AdamWOptions o_;
};

}  // namespace weft::nn
