// Codec state in checkpoints: the error-feedback residuals and PowerSGD
// factors a compressed communicator keeps (comm/codec/state.hpp's
// CodecStates, under stable names such as "compressed/l1.weight/residual"),
// visited as 1-D f32 tensors through the nn/state.hpp protocol, so they are
// saved and restored with the rest of a run.
//
//   ck::CodecState codec(comm);                       // a Communicator<Compressed<...>, ...>
//   auto state = [&](auto& v) {
//     ...                                             // model, optimizer, dp
//     auto k = nn::prefixed("codec", v); codec.visit_state(k);
//   };
//   const auto sharding = ck::data_parallel_sharding(dp, params).per_rank("codec.");
//   ck::save(dir, state, comm, {.step = step, .sharding = sharding});
//   // a fresh communicator has no state yet: first create what the checkpoint holds
//   codec.expect(dir, comm, "codec");
//   ck::load(dir, state, comm, {.sharding = sharding});
//
// Every rank's state is its own (residuals differ from rank to rank), so
// declare the prefix Sharding::per_rank. On the same number of ranks each
// rank gets its own arrays back and training continues bit for bit; on
// another number, expect() creates nothing and load() skips them: the codec
// starts fresh (empty arrays: zero residuals, PowerSGD's Gaussian start), as
// a rank's residual means nothing to a different set of ranks.
//
// Saved with save<float> (the default): the arrays are f32.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/error.hpp"
#include "../../tensor/tensor.hpp"
#include "checkpoint.hpp"

namespace weft::io::checkpoint {

// What CodecState needs of a state table (comm::CodecStates<State> models it).
template <class S>
concept CodecStateTable = requires(S& s, std::string_view name, std::span<const float> values) {
  s.visit([](const std::string&, std::vector<float>&) {});
  s.load(name, values);
  { s.size() } -> std::convertible_to<std::size_t>;
};

template <CodecStateTable States>
class CodecState {
 public:
  explicit CodecState(States& states) : states_(&states) {}
  // A compressed communicator's table (comm.algorithm().states, shared by its copies).
  template <class Comm>
    requires requires(Comm& c) { { *c.algorithm().states } -> std::same_as<States&>; }
  explicit CodecState(Comm& comm) : states_(comm.algorithm().states.get()) {}

  // Each array as a tensor (n) under its state name.
  template <class V>
  void visit_state(V& v) {
    states_->visit([&](const std::string& name, std::vector<float>& values) {
      v(std::string_view(name), TensorView<float>(values.data(), Shape{static_cast<index_t>(values.size())}));
    });
  }

  // Before load() into a communicator that has not reduced yet: creates each
  // array the checkpoint in `dir` holds under "<prefix>." with its saved size
  // (the values follow in load). Creates nothing when the checkpoint has
  // another number of ranks (the codec starts fresh). Collective, like load:
  // a failure on one rank is an error on every rank.
  template <class Comm>
  void expect(const std::filesystem::path& dir, Comm& comm, std::string_view prefix = "codec") {
    const std::string where = "codec state from " + dir.string();
    detail::together(comm, where, [&] {
      const detail::Metadata meta(dir);
      if (meta.info.ranks != comm.size()) return;
      const std::string head = std::string(prefix) + ".";
      for (const auto& [name, t] : meta.tensors) {
        if (!std::string_view(name).starts_with(head)) continue;
        if (!t.per_rank)
          throw_error<IoError>(meta.path.string(), ": tensor '", name, "': codec state saved as one tensor, not per rank (save it with ",
                               "Sharding::per_rank(\"", head, "\"))");
        if (t.dtype != Dtype::F32 || t.shape.size() != 1)
          throw_error<IoError>(meta.path.string(), ": tensor '", name, "': codec state is a 1-D F32 array, the checkpoint holds ",
                               dtype_name(t.dtype), " ", shape_text(t.shape));
        if (t.shape[0] > (std::uint64_t(1) << 40))
          throw_error<IoError>(meta.path.string(), ": tensor '", name, "': ", t.shape[0], " elements is not a codec state");
        zeros_.assign(static_cast<std::size_t>(t.shape[0]), 0.0f);
        try {
          states_->load(std::string_view(name).substr(head.size()), zeros_);
        } catch (const ValueError& e) {
          throw_error<IoError>(meta.path.string(), ": tensor '", name, "' does not fit this communicator's codec: ", e.what(),
                               " (rank ", comm.rank(), ")");
        }
      }
    });
  }

 private:
  States* states_;
  std::vector<float> zeros_;
};

template <class Comm>
  requires requires(Comm& c) { *c.algorithm().states; }
CodecState(Comm&) -> CodecState<std::remove_cvref_t<decltype(*std::declval<Comm&>().algorithm().states)>>;

}  // namespace weft::io::checkpoint
