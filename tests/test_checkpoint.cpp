// Checkpoints (io/checkpoint/): the safetensors reader and writer, the
// checkpoint directory, exact resume on 1, 2 and 4 thread ranks with and
// without the sharded update and with compressed communicators' codec
// state, resharding (4 -> 2, 4 -> 3, 2 -> 4), atomic
// saves under injected crashes, and bad input: each error names the file,
// the tensor and the problem.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>
#include <weft/comm/run_local.hpp>
#include <weft/io/sampler.hpp>
#include <weft/io/checkpoint/checkpoint.hpp>
#include <weft/io/checkpoint/codec_state.hpp>
#include <weft/io/checkpoint/elastic.hpp>
#include <weft/io/json.hpp>
#include <weft/io/checkpoint/safetensors.hpp>

#include "checkpoint/resume_suite.hpp"

using namespace weft;
namespace ck = weft::io::checkpoint;
namespace fs = std::filesystem;

namespace {

// A fresh, empty directory under the system's temporary directory.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("weft_test_ckpt_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::vector<unsigned char> slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void spill(const fs::path& p, const std::vector<unsigned char>& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
// A file with this header text and `data` bytes of data (any header, valid or not).
void raw_file(const fs::path& p, const std::string& header, std::size_t data) {
  std::vector<unsigned char> b(8 + header.size() + data, 0);
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = static_cast<unsigned char>(n >> (8 * i));
  std::memcpy(b.data() + 8, header.data(), header.size());
  spill(p, b);
}

}  // namespace

TEST_CASE("safetensors: written files read back with shapes, dtypes, metadata and checksums") {
  TempDir d("st");
  const std::vector<float> a{1, 2, 3, 4, 5, 6};
  const std::vector<std::int64_t> b{7, -8};
  const std::vector<double> c{};
  ck::SafetensorsWriter w;
  w.add("a", a.data(), {2, 3});
  w.add("b", b.data(), {2});
  w.add("c", c.data(), {0, 4});
  w.metadata("format", "pt");
  w.write(d.path / "x.safetensors");
  const auto bytes = slurp(d.path / "x.safetensors");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[static_cast<std::size_t>(i)];
  CHECK((8 + n) % 8 == 0);  // data aligned
  CHECK(bytes[8] == '{');

  ck::SafetensorsReader r(d.path / "x.safetensors");
  CHECK(r.header().tensors.size() == 3);
  CHECK(r.info("a").shape == std::vector<std::uint64_t>{2, 3});
  CHECK(r.info("b").dtype == ck::Dtype::I64);
  CHECK(*r.header().meta("format") == "pt");
  CHECK(r.header().meta("crc32:a") != nullptr);
  std::vector<float> a2(6);
  r.read("a", a2.data(), a2.size() * sizeof(float), true);
  CHECK(a2 == a);
  std::vector<std::int64_t> b2(2);
  r.read("b", b2.data(), 16, true);
  CHECK(b2 == b);
  CHECK(r.read("c").empty());
  CHECK_THROWS_WITH_AS(r.info("zz"), doctest::Contains("x.safetensors: tensor 'zz': not in the file"), IoError);
  // Nothing left under a temporary name.
  for (const auto& e : fs::directory_iterator(d.path)) CHECK(e.path().filename() == "x.safetensors");
}

TEST_CASE("safetensors: bad files are errors naming the file, the tensor and the problem") {
  TempDir d("bad");
  const fs::path p = d.path / "bad.safetensors";
  auto fails = [&](const std::string& header, std::size_t data, const char* msg) {
    CAPTURE(header);
    raw_file(p, header, data);
    CHECK_THROWS_WITH_AS(ck::SafetensorsReader{p}, doctest::Contains(msg), IoError);
    try {
      ck::SafetensorsReader r(p);
    } catch (const IoError& e) {
      CHECK(std::string(e.what()).find("bad.safetensors") != std::string::npos);
    }
  };
  const std::string ok_a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  fails(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12,
        "tensor 'b': data_offsets [4, 12] overlap tensor 'a'");
  fails("{" + ok_a + "}", 4, "tensor 'a': data_offsets [0, 8] run past the end of the data (4 bytes");
  fails(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, "tensor 'a': shape [3] of F32 is 12 bytes, but data_offsets [0, 8] span 8");
  fails(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8, "tensor 'a': unknown dtype \"F33\"");
  fails(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, "tensor 'a': data_offsets [8, 0] end before they begin");
  fails(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8, "tensor 'a': data_offsets begin at 4, leaving a gap");
  fails("{" + ok_a + "}", 12, "trailing bytes");
  fails(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8, "tensor 'a': unknown key \"x\"");
  fails(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "tensor 'a': shape holds a number");
  fails(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8, "overflows 64 bits");
  fails(R"({"a":{"dtype":"F32","shape":[2]}})", 8, "tensor 'a': missing data_offsets");
  fails(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)", 8, "JSON syntax error");
  fails(R"({"__metadata__":{"k":1}})", 0, "__metadata__ value \"k\" is an integer");
  fails("[1]", 0, "does not start with '{'");
  // Header length past the end of the file, and a file shorter than 8 bytes.
  raw_file(p, "{}", 0);
  auto bytes = slurp(p);
  bytes[0] = 200;
  spill(p, bytes);
  CHECK_THROWS_WITH_AS(ck::SafetensorsReader{p}, doctest::Contains("header length 200 runs past the end of the file"), IoError);
  spill(p, {1, 2, 3});
  CHECK_THROWS_WITH_AS(ck::SafetensorsReader{p}, doctest::Contains("too short"), IoError);
  CHECK_THROWS_WITH_AS(ck::SafetensorsReader{d.path / "none.safetensors"}, doctest::Contains("none.safetensors: no such file"), IoError);

  // A flipped data byte: the checksum names the tensor.
  const std::vector<float> a{1, 2, 3, 4};
  ck::SafetensorsWriter w;
  w.add("w", a.data(), {4});
  w.write(p);
  bytes = slurp(p);
  bytes[bytes.size() - 3] ^= 0x10;
  spill(p, bytes);
  ck::SafetensorsReader r(p);
  std::vector<float> got(4);
  CHECK_THROWS_WITH_AS(r.read("w", got.data(), 16), doctest::Contains("bad.safetensors: tensor 'w': checksum mismatch"), IoError);
  // Truncated: the header no longer matches the file.
  bytes.resize(bytes.size() - 5);
  spill(p, bytes);
  CHECK_THROWS_WITH_AS(ck::SafetensorsReader{p}, doctest::Contains("tensor 'w': data_offsets [0, 16] run past the end"), IoError);
}

namespace {

// A single-rank run: two linear layers, Adam, an RNG and a sampler whose
// batches (16 of 64 samples: an epoch ends every 4 steps) drive training.
struct SoloRun {
  dp_suite::Model m;
  nn::Adam<float> opt{m.reg, {.lr = 1e-2f}};
  nn::Rng noise{5};
  io::DistributedSampler sampler{64, 0, 1, 9};
  Tensor<float> xb{Shape{dp_suite::kBatch, dp_suite::kIn}};
  Tensor<std::int32_t> yb{Shape{dp_suite::kBatch}};
  Workspace<> ws;
  void step(const dp_suite::Data& d, int) {
    if (sampler.position() + dp_suite::kBatch > sampler.shard_size()) sampler.set_epoch(sampler.epoch() + 1);
    const std::vector<index_t> idx = sampler.indices();
    for (index_t b = 0; b < dp_suite::kBatch; ++b) {
      const index_t row = idx[static_cast<std::size_t>(sampler.position() + b)];
      for (index_t j = 0; j < dp_suite::kIn; ++j)
        xb.data()[b * dp_suite::kIn + j] = d.x.data()[row * dp_suite::kIn + j] + 0.01f * noise.normal();
      yb.data()[b] = d.y.data()[row];
    }
    (void)noise.normal();  // an odd count of draws: a Box-Muller spare is pending between steps
    sampler.advance(dp_suite::kBatch);
    opt.zero_grad();
    backward(m.loss(xb, yb), ws);
    opt.step();
  }
  template <class V>
  void visit_state(V& v) {
    nn::visit_part(v, "model", m.reg);
    nn::visit_part(v, "optimizer", opt);
    nn::visit_part(v, "rng", noise);
    nn::visit_part(v, "sampler", sampler);
  }
};

}  // namespace

TEST_CASE("checkpoint: one rank resumes bit for bit; the files are what checkpoint.json says") {
  TempDir d("solo");
  const dp_suite::Data data;
  SoloRun a;
  for (int s = 0; s < 11; ++s) a.step(data, s);
  SoloRun b;
  for (int s = 0; s < 6; ++s) b.step(data, s);  // mid-epoch, past an epoch boundary
  ck::save(d.path / "c", b, {.step = 6});
  SoloRun c;
  c.noise = nn::Rng(77);
  c.sampler = io::DistributedSampler(64, 0, 1, 123);
  for (Parameter<float>* p : c.m.reg) p->value.data()[0] = 9.0f;
  CHECK(ck::load(d.path / "c", c).step == 6);
  CHECK(c.sampler.epoch() == 1);
  CHECK(c.sampler.position() == 32);
  for (int s = 6; s < 11; ++s) c.step(data, s);
  CHECK(c.m.values() == a.m.values());
  CHECK(c.noise.next_u64() == a.noise.next_u64());
  CHECK(c.sampler.epoch() == a.sampler.epoch());
  CHECK(c.sampler.position() == a.sampler.position());

  const io::json::Value meta = io::json::parse([&] {
    const auto b = slurp(d.path / "c" / "checkpoint.json");
    return std::string(b.begin(), b.end());
  }());
  CHECK(meta.find("version")->as_uint() == 1);
  const io::json::Value* w = meta.find("tensors")->find("model.l1.weight");
  REQUIRE(w);
  CHECK(w->find("dtype")->as_string() == "F32");
  CHECK(w->find("shape")->items().size() == 2);
  CHECK(meta.find("tensors")->find("optimizer.l2.bias.exp_avg_sq") != nullptr);
  ck::SafetensorsReader r(d.path / "c" / "rank-00000.safetensors");
  CHECK(r.header().meta("scalar:optimizer.step") != nullptr);
  CHECK(r.header().meta("scalar:rng.has_spare") != nullptr);
  CHECK(*r.header().meta("scalar:sampler.position") == "i64:32");
}

TEST_CASE("checkpoint: data-parallel training resumes bit for bit on 1, 2 and 4 thread ranks, sharded or not") {
  const dp_suite::Data data;
  for (int p : {1, 2, 4})
    for (bool shard : {false, true}) {
      CAPTURE(p);
      CAPTURE(shard);
      TempDir d("dp" + std::to_string(p) + (shard ? "s" : ""));
      std::mutex mu;
      std::vector<std::vector<float>> want(static_cast<std::size_t>(p)), got(static_cast<std::size_t>(p));
      comm::run_local(p, [&](comm::ThreadTransport& t) {
        auto a = ckpt_suite::straight(t, data, shard);
        auto b = ckpt_suite::resumed(t, data, shard, d.path / "ck");
        std::lock_guard lock(mu);
        want[static_cast<std::size_t>(t.rank())] = std::move(a);
        got[static_cast<std::size_t>(t.rank())] = std::move(b);
      });
      for (int r = 0; r < p; ++r) CHECK(got[static_cast<std::size_t>(r)] == want[static_cast<std::size_t>(r)]);  // bit for bit
      if (shard && p > 1) {
        // Optimizer state is stored in pieces, one per rank and parameter shard.
        ck::SafetensorsReader r1(d.path / "ck" / "rank-00001.safetensors");
        bool piece = false;
        for (const auto& t : r1.header().tensors) piece = piece || t.name.find("exp_avg@") != std::string::npos;
        CHECK(piece);
      }
    }
}

TEST_CASE("checkpoint: save on p ranks, load on q (4 -> 2, 4 -> 3, 2 -> 4): training continues as without resharding") {
  const dp_suite::Data data;
  for (const auto& pq : {std::pair{4, 2}, std::pair{4, 3}, std::pair{2, 4}}) {
    const int p = pq.first, q = pq.second;  // named, not bound: lambdas below capture them (clang refuses bindings)
    CAPTURE(p);
    CAPTURE(q);
    TempDir d("reshard" + std::to_string(p) + std::to_string(q));
    std::vector<float> ref, got;
    std::vector<float> ref_loss(3), got_loss(3);
    std::mutex mu;
    comm::run_local(p, [&](comm::ThreadTransport& t) {
      ckpt_suite::DpRun<comm::ThreadTransport> a(t, true);
      for (int s = 0; s < 3; ++s) a.step(data, s);
      ck::save(d.path / "ck", a, a.c, {.step = 3, .sharding = a.sharding()});
      // The run as it would go on without resharding.
      ckpt_suite::DpRun<comm::ThreadTransport> b(t, true);
      b.scribble();
      ck::load(d.path / "ck", b, b.c, {.sharding = b.sharding()});
      for (int s = 3; s < 6; ++s) {
        const float l = b.step(data, s);
        std::lock_guard lock(mu);
        ref_loss[static_cast<std::size_t>(s - 3)] += l / static_cast<float>(p);
      }
      std::lock_guard lock(mu);
      if (t.rank() == 0) ref = b.m.values();
    });
    comm::run_local(q, [&](comm::ThreadTransport& t) {
      ckpt_suite::DpRun<comm::ThreadTransport> b(t, true);
      b.scribble();
      const auto info = ck::load(d.path / "ck", b, b.c, {.sharding = b.sharding()});
      CHECK(info.ranks == p);
      for (int s = 3; s < 6; ++s) {
        const float l = b.step(data, s);
        std::lock_guard lock(mu);
        got_loss[static_cast<std::size_t>(s - 3)] += l / static_cast<float>(q);
      }
      const auto v = b.m.values();
      std::lock_guard lock(mu);
      if (t.rank() == 0) got = v;
    });
    dp_suite::check_close(got, ref);
    for (std::size_t s = 0; s < 3; ++s) CHECK(got_loss[s] == doctest::Approx(ref_loss[s]).epsilon(1e-5));
  }
}

TEST_CASE("checkpoint: a crash at any stage leaves the previous checkpoint loadable and the partial one detected") {
  TempDir d("crash");
  const dp_suite::Data data;
  for (const char* stage : {"begin", "rank file written", "metadata"})
    for (int who : {0, 1}) {
      if (std::string_view(stage) == "metadata" && who == 1) continue;  // rank 0 alone writes checkpoint.json
      CAPTURE(stage);
      CAPTURE(who);
      fs::remove_all(d.path);
      fs::create_directories(d.path);
      comm::run_local(2, [&](comm::ThreadTransport& t) {
        ckpt_suite::DpRun<comm::ThreadTransport> a(t, true);
        a.step(data, 0);
        ck::save(ck::step_dir(d.path, 1), a, a.c, {.step = 1, .sharding = a.sharding()});
        a.step(data, 1);
        ck::SaveOptions o{.step = 2, .sharding = a.sharding()};
        o.fault = [&](std::string_view s, int rank) {
          if (s == stage && rank == who) throw IoError("injected crash");
        };
        CHECK_THROWS_AS(ck::save(ck::step_dir(d.path, 2), a, a.c, o), IoError);
        // Every rank sees the failure; the newest complete checkpoint is step 1.
        const auto last = ck::latest(d.path);
        REQUIRE(last);
        CHECK(*last == ck::step_dir(d.path, 1));
        ckpt_suite::DpRun<comm::ThreadTransport> b(t, true);
        CHECK(ck::load(*last, b, b.c, {.sharding = b.sharding()}).step == 1);
        if (fs::exists(ck::step_dir(d.path, 2)))
          CHECK_THROWS_WITH_AS(ck::load(ck::step_dir(d.path, 2), b, b.c, {.sharding = b.sharding()}),
                               doctest::Contains("incomplete checkpoint"), IoError);
      });
      // A failed save leaves no temporary files behind.
      for (const auto& e : fs::recursive_directory_iterator(d.path))
        CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
    }
  // Saving again over a complete checkpoint: the old checkpoint.json goes first,
  // so a crash in the middle cannot pair it with new files.
  comm::run_local(2, [&](comm::ThreadTransport& t) {
    ckpt_suite::DpRun<comm::ThreadTransport> a(t, false);
    ck::save(ck::step_dir(d.path, 1), a, a.c, {.step = 1, .sharding = a.sharding()});
    ck::SaveOptions o{.step = 1, .sharding = a.sharding()};
    o.fault = [](std::string_view s, int rank) {
      if (s == "rank file written" && rank == 1) throw IoError("injected crash");
    };
    CHECK_THROWS_AS(ck::save(ck::step_dir(d.path, 1), a, a.c, o), IoError);
    CHECK(!fs::exists(ck::step_dir(d.path, 1) / "checkpoint.json"));
  });
}

TEST_CASE("checkpoint: damaged or mismatched checkpoints are errors naming file, tensor and problem") {
  TempDir d("damaged");
  const fs::path dir = d.path / "ck";
  auto fresh = [&] {
    fs::remove_all(dir);
    comm::run_local(2, [&](comm::ThreadTransport& t) {
      ckpt_suite::DpRun<comm::ThreadTransport> a(t, true);
      ck::save(dir, a, a.c, {.step = 7, .sharding = a.sharding()});
    });
  };
  auto load_fails = [&](const char* msg) {
    comm::run_local(2, [&](comm::ThreadTransport& t) {
      ckpt_suite::DpRun<comm::ThreadTransport> b(t, true);
      CHECK_THROWS_WITH_AS(ck::load(dir, b, b.c, {.sharding = b.sharding()}), doctest::Contains(msg), IoError);
    });
  };
  SUBCASE("a missing shard file") {
    fresh();
    fs::remove(dir / "rank-00001.safetensors");
    load_fails("rank-00001.safetensors: no such file");
  }
  SUBCASE("a truncated shard file") {
    fresh();
    auto b = slurp(dir / "rank-00001.safetensors");
    b.resize(b.size() - 4);
    spill(dir / "rank-00001.safetensors", b);
    load_fails("rank-00001.safetensors: tensor '");
  }
  SUBCASE("a flipped byte") {
    fresh();
    auto b = slurp(dir / "rank-00000.safetensors");
    b[b.size() - 1] ^= 1;
    spill(dir / "rank-00000.safetensors", b);
    load_fails("checksum mismatch");
  }
  SUBCASE("a file from another save") {
    fresh();
    const auto old = slurp(dir / "rank-00001.safetensors");
    fresh();
    spill(dir / "rank-00001.safetensors", old);
    load_fails("rank-00001.safetensors: from another save");
  }
  SUBCASE("a model of another shape") {
    fresh();
    comm::run_local(2, [&](comm::ThreadTransport& t) {
      nn::Linear<float> l1(dp_suite::kIn, dp_suite::kHidden + 1, 1), l2(dp_suite::kHidden + 1, dp_suite::kClasses, 2);
      nn::Registry<float> reg;
      reg.add("l1", l1).add("l2", l2);
      auto visit = [&](auto& v) {
        auto model = nn::prefixed("model", v);
        nn::visit_state(reg, model);
      };
      comm::Communicator<comm::Ring, comm::ThreadTransport> c{t};
      CHECK_THROWS_WITH_AS(ck::load(dir, visit, c, {.strict = false}),
                           doctest::Contains("checkpoint.json: tensor 'model.l1.weight': the checkpoint holds F32 [12, 10], the model F32 [12, 11]"),
                           IoError);
    });
  }
  SUBCASE("a model of another dtype") {
    fresh();
    nn::Linear<double> l1(dp_suite::kIn, dp_suite::kHidden, 1);
    nn::Registry<double> reg;
    reg.add("l1", l1);
    auto visit = [&](auto& v) {
      auto model = nn::prefixed("model", v);
      nn::visit_state(reg, model);
    };
    CHECK_THROWS_WITH_AS(ck::load<double>(dir, visit, {.strict = false}),
                         doctest::Contains("tensor 'model.l1.weight': the checkpoint holds F32 [12, 10], the model F64 [12, 10]"), IoError);
  }
  SUBCASE("a model without some of the checkpoint's tensors, or with more") {
    fresh();
    dp_suite::Model m;
    auto visit = [&](auto& v) {
      auto model = nn::prefixed("model", v);
      nn::visit_state(m.reg, model);
    };
    CHECK_THROWS_WITH_AS(ck::load(dir, visit), doctest::Contains("tensor 'optimizer.l1.bias.exp_avg': in the checkpoint but not in the model"),
                         IoError);
    CHECK_NOTHROW(ck::load(dir, visit, {.strict = false}));
    Parameter<float> extra("extra", {3});
    auto more = [&](auto& v) { v(std::string_view("model.extra"), extra.value.view()); };
    CHECK_THROWS_WITH_AS(ck::load(dir, more, {.strict = false}),
                         doctest::Contains("tensor 'model.extra': the model has it, the checkpoint does not"), IoError);
  }
  SUBCASE("a damaged checkpoint.json") {
    fresh();
    auto b = slurp(dir / "checkpoint.json");
    b.resize(b.size() / 2);
    spill(dir / "checkpoint.json", b);
    load_fails("checkpoint.json: JSON syntax error");
  }
}

// The README's example, as written there, on 2 thread ranks.
TEST_CASE("checkpoint: the README example saves and resumes") {
  TempDir d("readme");
  const fs::path root = d.path / "ckpt";
  comm::run_local(2, [&](comm::ThreadTransport& t) {
    dp_suite::Model model;
    nn::Registry<float>& params = model.reg;
    comm::Communicator<comm::Ring, comm::ThreadTransport> comm{t};
    parallel::DataParallel dp(params, comm);
    dp.set_shard_update(true);
    nn::Adam<float> opt(params, {.lr = 1e-2f});
    std::int64_t step = 5;
    namespace ck = weft::io::checkpoint;
    auto state = [&](auto& v) {  // what a checkpoint holds, by name
      auto m = nn::prefixed("model", v);     nn::visit_state(params, m);
      auto o = nn::prefixed("optimizer", v); opt.visit_state(o);
      auto d = nn::prefixed("dp", v);        dp.visit_state(d);
    };
    ck::save(ck::step_dir(root, step), state, comm,
             {.step = step, .sharding = ck::data_parallel_sharding(dp, params)});
    step = 0;
    if (auto last = ck::latest(root))
      step = ck::load(*last, state, comm, {.sharding = ck::data_parallel_sharding(dp, params)}).step;
    CHECK(step == 5);
  });
}

// Elastic recovery: 4 thread ranks checkpoint every 2 steps; rank 2 is lost at
// step 5; the supervisor restarts the survivors (3 ranks), which reshard the
// step-4 checkpoint and finish. The result matches an uninterrupted 4-rank run
// within float tolerance (the same global batches; 3 ranks sum in another order).
TEST_CASE("checkpoint: run_elastic restarts the survivors from the latest checkpoint after a rank is lost") {
  TempDir d("elastic");
  const dp_suite::Data data;
  constexpr int kSteps = 8;
  std::vector<float> ref, got;
  std::mutex mu;
  comm::run_local(4, [&](comm::ThreadTransport& t) {
    ckpt_suite::DpRun<comm::ThreadTransport> r(t, true);
    for (int s = 0; s < kSteps; ++s) r.step(data, s);
    std::lock_guard lock(mu);
    if (t.rank() == 0) ref = r.m.values();
  });
  std::vector<ck::ElasticEvent> log;
  const int finished = ck::run_elastic(
      4, 2,
      [&](comm::ThreadTransport& t, int attempt) {
        ckpt_suite::DpRun<comm::ThreadTransport> r(t, true);
        int start = 0;
        if (auto last = ck::latest(d.path)) start = static_cast<int>(ck::load(*last, r, r.c, {.sharding = r.sharding()}).step);
        CHECK(start == (attempt == 0 ? 0 : 4));
        for (int s = start; s < kSteps; ++s) {
          if (attempt == 0 && s == 5 && t.rank() == 2) throw IoError("injected: rank 2 lost at step 5");
          r.step(data, s);
          if ((s + 1) % 2 == 0) ck::save(ck::step_dir(d.path, s + 1), r, r.c, {.step = s + 1, .sharding = r.sharding()});
        }
        std::lock_guard lock(mu);
        if (t.rank() == 0) got = r.m.values();
      },
      {.on_restart = [&](const ck::ElasticEvent& e) { log.push_back(e); }});
  CHECK(finished == 3);
  REQUIRE(log.size() == 1);
  CHECK(log[0].attempt == 0);
  CHECK(log[0].ranks == 4);
  CHECK(log[0].failed_rank == 2);
  CHECK(log[0].cause == "injected: rank 2 lost at step 5");
  CHECK(log[0].next_ranks == 3);
  dp_suite::check_close(got, ref);

  // Below min_ranks the error is the caller's.
  std::vector<ck::ElasticEvent> log2;
  CHECK_THROWS_WITH_AS(ck::run_elastic(
                           2, 2, [](comm::ThreadTransport& t, int) { if (t.rank() == 1) throw IoError("rank 1 down"); },
                           {.on_restart = [&](const ck::ElasticEvent& e) { log2.push_back(e); }}),
                       "rank 1 down", IoError);
  REQUIRE(log2.size() == 1);
  CHECK(log2[0].next_ranks == 0);
}

namespace {
// A replicated tensor and a per-rank one.
struct State {
  Tensor<float> shared{Shape{3}, 1.5f}, residual{Shape{5}};
  template <class V>
  void visit_state(V& v) {
    v(std::string_view("model.shared"), shared.view());
    v(std::string_view("codec.residual"), residual.view());
  }
};
}  // namespace

// Per-rank tensors (what a codec's error-feedback residual will be): each rank
// gets its own back; on another world size they start at zero; a tensor that
// differs across ranks but is not declared per rank is refused at save.
TEST_CASE("checkpoint: per-rank tensors come back to their rank; undeclared differences are refused") {
  TempDir d("perrank");
  const ck::Sharding own = ck::Sharding().per_rank("codec.");
  comm::run_local(2, [&](comm::ThreadTransport& t) {
    comm::Communicator<comm::Ring, comm::ThreadTransport> c{t};
    State s;
    for (index_t i = 0; i < 5; ++i) s.residual.data()[i] = static_cast<float>(10 * t.rank() + i);
    CHECK_THROWS_WITH_AS(ck::save(d.path / "bad", s, c), doctest::Contains("tensor 'codec.residual' differs from rank to rank"), IoError);
    ck::save(d.path / "ck", s, c, {.step = 1, .sharding = own});
    State b;
    ck::load(d.path / "ck", b, c, {.sharding = own});
    CHECK(b.residual.to_vector() == s.residual.to_vector());
    CHECK(b.shared.to_vector() == s.shared.to_vector());
    CHECK_THROWS_WITH_AS(ck::load(d.path / "ck", b, c), doctest::Contains("tensor 'codec.residual': saved per rank"), IoError);
  });
  comm::run_local(3, [&](comm::ThreadTransport& t) {
    comm::Communicator<comm::Ring, comm::ThreadTransport> c{t};
    State b;
    b.residual.data()[0] = 7.0f;
    ck::load(d.path / "ck", b, c, {.sharding = own});
    CHECK(b.residual.to_vector() == std::vector<float>(5, 0.0f));
    CHECK(b.shared.to_vector() == std::vector<float>(3, 1.5f));
  });
}

// Codec state (codec_state.hpp): a DataParallel run through a compressed
// communicator, with error feedback, resumes bit for bit only if the
// residuals (and PowerSGD's factors) come back; the control without them
// diverges, so the check has teeth.
TEST_CASE_TEMPLATE("checkpoint: compressed communicators' codec state is saved and restored: resume is bit for bit", Codec,
                   comm::TopK, comm::PowerSGD) {
  const dp_suite::Data data;
  for (int p : {2, 4}) {
    CAPTURE(p);
    TempDir d("codec" + std::to_string(p));
    std::vector<float> want, got, without;
    std::mutex mu;
    comm::run_local(p, [&](comm::ThreadTransport& t) {
      auto a = ckpt_suite::codec_straight<Codec>(t, data);
      auto b = ckpt_suite::codec_resumed<Codec>(t, data, d.path / "with");
      auto c = ckpt_suite::codec_resumed<Codec>(t, data, d.path / "without", false);
      std::lock_guard lock(mu);
      if (t.rank() == 0) {
        want = a;
        got = b;
        without = c;
      }
    });
    REQUIRE(!want.empty());
    CHECK(got == want);
    CHECK(without != want);
  }
}

TEST_CASE("checkpoint: codec state is per rank; on another world size the codec starts fresh") {
  TempDir d("codecq");
  const dp_suite::Data data;
  using Run = ckpt_suite::CodecRun<comm::ThreadTransport, comm::PowerSGD>;
  comm::run_local(4, [&](comm::ThreadTransport& t) {
    // One communicator at a time on the transport: each object is gone before the next is built.
    std::vector<std::string> names;
    std::vector<std::vector<float>> arrays;
    {
      Run a(t);
      for (int s = 0; s < 3; ++s) a.step(data, s);
      ck::save(d.path / "ck", a, a.c, {.step = 3, .sharding = a.sharding()});
      // Without Sharding::per_rank the residuals are refused, not saved as one rank's copy.
      CHECK_THROWS_WITH_AS(ck::save(d.path / "bad", a, a.c, {.step = 3, .sharding = ck::data_parallel_sharding(a.dp, a.m.reg)}),
                           doctest::Contains("from rank to rank but would be saved once"), IoError);
      names = a.c.algorithm().states->names();
      for (const std::string& n : names) arrays.push_back(a.c.algorithm().states->save(n));
    }
    {  // Into a fresh communicator without expect(): the error says what to call.
      Run b(t);
      CHECK_THROWS_WITH_AS(ck::load(d.path / "ck", b, b.c, {.sharding = b.sharding()}),
                           doctest::Contains("per-rank codec state: CodecState::expect creates it before load"), IoError);
    }
    Run c(t);
    ck::CodecState deduced(c.c);  // the README's spelling deduces the table from the communicator
    static_assert(std::is_same_v<decltype(deduced), decltype(c.codec)>);
    c.codec.expect(d.path / "ck", c.c);
    CHECK(c.c.algorithm().states->names() == names);
    ck::load(d.path / "ck", c, c.c, {.sharding = c.sharding()});
    for (std::size_t i = 0; i < names.size(); ++i) CHECK(c.c.algorithm().states->save(names[i]) == arrays[i]);
  });
  comm::run_local(3, [&](comm::ThreadTransport& t) {
    Run b(t);
    b.codec.expect(d.path / "ck", b.c);
    CHECK(b.c.algorithm().states->size() == 0);  // fresh: residuals zero, PowerSGD's Q its Gaussian start
    CHECK(ck::load(d.path / "ck", b, b.c, {.sharding = b.sharding()}).step == 3);
    for (int s = 3; s < 6; ++s) b.step(data, s);
    for (float x : b.m.values()) CHECK(std::isfinite(x));
  });
}

TEST_CASE("checkpoint: latest() picks the highest complete step, by number") {
  TempDir d("latest");
  CHECK(!ck::latest(d.path));
  Tensor<float> w(Shape{2}, 1.0f);
  auto state = [&](auto& v) { v(std::string_view("w"), w.view()); };
  for (std::int64_t s : {7, 99999999, 100000000}) ck::save(ck::step_dir(d.path, s), state, {.step = s});
  fs::create_directories(ck::step_dir(d.path, 200000000));  // incomplete: no checkpoint.json
  fs::create_directories(d.path / "step-x");
  REQUIRE(ck::latest(d.path));
  CHECK(*ck::latest(d.path) == ck::step_dir(d.path, 100000000));
  CHECK(ck::load(*ck::latest(d.path), state).step == 100000000);
}
