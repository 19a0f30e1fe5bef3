// ShardedUpdate: the optimizer step split across ranks (ZeRO stage 1 without
// the memory saving: DeepSpeed's ZeRO-1, PyTorch's ZeroRedundancyOptimizer),
// over the buckets of parallel/buckets.hpp. Communication-free: the strategy
// (parallel::DataParallel) runs the collectives on the spans given here.
//
//   bucket i's buffer, padded to p equal shards of shard(i) elements:
//     [ rank 0 | rank 1 | ... | rank p-1 ]      rank r owns [r shard, (r + 1) shard)
//   1. reduce-scatter the gradients: rank r receives the average of its shard
//      (NCCL's in-place layout: the output is the rank's own shard of the input);
//   2. the optimizer steps only the parameter elements in this rank's shards
//      (the pieces, as nn::ParamRange);
//   3. allgather the updated values of every shard to every rank.
// Same bytes on the wire as an allreduce, and the optimizer pass, memory-bound
// and otherwise repeated on every rank, shrinks p-fold. In between, a rank's
// .grad is averaged only on its own shard. On a device (Device = cuda) the
// copies between the buckets and the parameters are stream-ordered on the
// buckets' queue and the optimizer is a multi-tensor one (nn/optim_cuda.cuh)
// whose step(parts) is one launch over this rank's pieces.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/device.hpp"
#include "../core/error.hpp"
#include "../nn/optim.hpp"
#include "../nn/state.hpp"
#include "buckets.hpp"

namespace weft::parallel {

template <class T, class Device = cpu>
class ShardedUpdate {
 public:
  using Queue = typename device_memory<Device>::queue_type;
  struct Piece {  // this rank's shard within one parameter
    nn::ParamRange part;
    std::size_t at;  // where element part.begin sits in the bucket's buffer
    std::size_t elems() const { return static_cast<std::size_t>(part.end - part.begin); }
  };

  // Cut every bucket (padded to a multiple of `size` elements) into `size`
  // shards and find the parameter elements in shard `rank`.
  void layout(const Buckets<T, Device>& b, int rank, int size) {
    rank_ = static_cast<std::size_t>(rank);
    size_ = static_cast<std::size_t>(size);
    shard_.clear();
    pieces_.clear();
    first_.clear();
    parts_.clear();
    for (std::size_t i = 0; i < b.size(); ++i) {
      const auto& bk = b[i];
      if (bk.padded % size_ != 0)
        throw_error<ValueError>("ShardedUpdate: bucket ", i, " holds ", bk.padded, " elements, not a multiple of ", size_,
                                " ranks (build the buckets with pad = ranks)");
      const std::size_t shard = bk.padded / size_;
      shard_.push_back(shard);
      first_.push_back(pieces_.size());
      const std::size_t lo = std::min(rank_ * shard, bk.elems), hi = std::min(lo + shard, bk.elems);
      for (std::size_t s : bk.slots) {
        const auto& sl = b.slot(s);
        const std::size_t a = std::max(lo, sl.offset), e = std::min(hi, sl.offset + sl.elems());
        if (a < e) {
          pieces_.push_back(Piece{{sl.index, static_cast<index_t>(a - sl.offset), static_cast<index_t>(e - sl.offset)}, a});
          parts_.push_back(pieces_.back().part);
        }
      }
    }
    first_.push_back(pieces_.size());
  }

  // Elements per rank in bucket i.
  std::size_t shard(std::size_t i) const { return shard_[i]; }
  // This rank's shard of bucket i's data (gradients or values).
  std::span<T> mine(std::span<T> data, std::size_t i) const { return data.subspan(rank_ * shard_[i], shard_[i]); }

  // After the reduce-scatter: this rank's averaged shard, buffer -> .grad
  // (on a device, enqueued on `queue`).
  void unpack_grads(Buckets<T, Device>& b, nn::Registry<T, Device>& params, std::size_t i, Queue queue) const {
    if (b[i].in_place) return;
    const std::span<T> buf = b.grads(i);
    for (std::size_t k = first_[i]; k < first_[i + 1]; ++k) {
      const Piece& m = pieces_[k];
      device_memory<Device>::copy(params[m.part.param].grad.data() + m.part.begin, buf.data() + m.at, m.elems() * sizeof(T),
                                  queue);
    }
  }

  // Before the allgather: this rank's updated values, .value -> buffer.
  void stage_values(Buckets<T, Device>& b, nn::Registry<T, Device>& params, std::size_t i, Queue queue) const {
    if (b[i].in_place) return;
    const std::span<T> buf = b.values(i);
    for (std::size_t k = first_[i]; k < first_[i + 1]; ++k) {
      const Piece& m = pieces_[k];
      device_memory<Device>::copy(buf.data() + m.at, params[m.part.param].value.data() + m.part.begin, m.elems() * sizeof(T),
                                  queue);
    }
  }

  // The optimizer on this rank's pieces of every bucket (one step for all).
  template <class Optimizer>
  void step(Optimizer& opt) const {
    opt.step(parts_);
  }

  const std::vector<nn::ParamRange>& parts() const { return parts_; }

  // The shard layout, for checkpoints: which elements of which parameter this
  // rank steps (its optimizer state is meaningful only there). Restoring
  // checks that the layout is unchanged; a checkpoint from another number of
  // ranks is resharded by io/checkpoint, which reads this layout
  // (data_parallel_sharding) and leaves these items as the new objects have them.
  template <class V>
  void visit_state(V& v) const {
    constexpr std::string_view who = "ShardedUpdate (load another rank count's checkpoint through io/checkpoint)";
    nn::visit_fixed(v, "ranks", static_cast<std::int64_t>(size_), who);
    nn::visit_fixed(v, "rank", static_cast<std::int64_t>(rank_), who);
    nn::visit_fixed(v, "pieces", static_cast<std::int64_t>(parts_.size()), who);
    std::string name;
    for (std::size_t k = 0; k < parts_.size(); ++k) {
      const nn::ParamRange& r = parts_[k];
      const std::string at = "piece." + std::to_string(k) + ".";
      nn::visit_fixed(v, name.assign(at).append("param"), static_cast<std::int64_t>(r.param), who);
      nn::visit_fixed(v, name.assign(at).append("begin"), static_cast<std::int64_t>(r.begin), who);
      nn::visit_fixed(v, name.assign(at).append("end"), static_cast<std::int64_t>(r.end), who);
    }
  }

 private:
  std::size_t rank_ = 0, size_ = 1;
  std::vector<std::size_t> shard_;    // per bucket: elements per rank
  std::vector<std::size_t> first_;    // per bucket: its first piece (and one past the last bucket)
  std::vector<Piece> pieces_;         // this rank's pieces, bucket by bucket
  std::vector<nn::ParamRange> parts_;  // the same, as the optimizer takes them
};

}  // namespace weft::parallel
