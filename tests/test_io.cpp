// IDX reader (weft/io/idx.hpp): round trips through synthetic gzip and plain
// files, every error path, and the real Fashion-MNIST files from Debian's
// dataset-fashion-mnist package checked against an independent zcat read.
// JSON (weft/io/json.hpp): what the checkpoint headers and tune's results
// files need of it.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>
#include <weft/io/idx.hpp>
#include <weft/io/json.hpp>

using namespace weft;
namespace fs = std::filesystem;
namespace json = weft::io::json;

namespace {

// A fresh directory under the system temp dir, removed with its contents.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    for (int attempt = 0; attempt < 100; ++attempt) {
      fs::path p = fs::temp_directory_path() / ("weft_test_io_" + std::to_string(rd()) + "_" + std::to_string(rd()));
      if (fs::create_directory(p)) {
        path = p;
        return;
      }
    }
    FAIL("could not create a temporary directory");
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::vector<unsigned char> idx_header(unsigned type, const std::vector<std::uint32_t>& dims) {
  std::vector<unsigned char> h = {0, 0, static_cast<unsigned char>(type), static_cast<unsigned char>(dims.size())};
  for (std::uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) h.push_back(static_cast<unsigned char>(d >> shift));
  return h;
}

void write_gz(const std::string& path, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!bytes.empty()) REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

void write_plain(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

std::vector<unsigned char> read_plain(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::vector<unsigned char> random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<unsigned char> v(n);
  for (auto& b : v) b = static_cast<unsigned char>(rng() & 0xFF);
  return v;
}

std::vector<unsigned char> concat(std::vector<unsigned char> a, const std::vector<unsigned char>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The IoError message read_idx(path) throws; fails the test if it does not throw one.
std::string idx_error(const std::string& path) {
  try {
    (void)io::read_idx(path);
  } catch (const IoError& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("read_idx threw a non-IoError: ", e.what());
  }
  FAIL("read_idx(", path, ") did not throw");
  return {};
}

template <class F>
std::string loader_error(F&& f) {
  try {
    f();
  } catch (const IoError& e) {
    return e.what();
  }
  FAIL("load_fashion_mnist did not throw an IoError");
  return {};
}

void check_contains(const std::string& msg, const std::string& part) {
  INFO("message: ", msg);
  CHECK(msg.find(part) != std::string::npos);
}

// Decompresses with the system's zcat: independent of zlib's gzread path.
std::vector<unsigned char> zcat(const std::string& path) {
  std::vector<unsigned char> out;
  FILE* p = popen(("zcat '" + path + "'").c_str(), "r");
  REQUIRE(p != nullptr);
  std::array<unsigned char, 1 << 16> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.insert(out.end(), buf.begin(), buf.begin() + n);
  REQUIRE(pclose(p) == 0);
  return out;
}

const std::string fashion_dir = "/usr/share/datasets/fashion-mnist";

}  // namespace

TEST_CASE("json: parses what the checkpoint headers hold, rejects what is not JSON, writes what it reads") {
  const json::Value j = json::parse(R"( {"a": [1, 18446744073709551615, -2.5e3, true, null], "s": "x\"\u00e9\ud83d\ude00"} )");
  REQUIRE(j.is_object());
  CHECK(j.find("a")->items()[1].as_uint() == 18446744073709551615ull);
  CHECK(j.find("a")->items()[2].as_number() == -2500.0);
  CHECK(j.find("s")->as_string() == "x\"\xc3\xa9\xf0\x9f\x98\x80");
  CHECK(json::parse(json::write(j)).find("s")->as_string() == j.find("s")->as_string());
  for (const char* bad : {"{", "{\"a\":1,}", "{\"a\":1 \"b\":2}", "{\"a\":1,\"a\":2}", "[1,2", "\"\\x\"", "01", "1.", "{} x",
                          "18446744073709551616", "\"\\ud800\"", "nul"})
    CHECK_THROWS_AS(json::parse(bad), json::Error);
  CHECK_THROWS_WITH_AS(json::parse(std::string(100, '[')), doctest::Contains("nested deeper"), json::Error);
}

TEST_CASE("json: what tune's results files need: optional members, any number, quoted text that reads back") {
  const json::Value j = json::parse(R"({"id": 3, "group": -1, "metric": null, "lr": 1e-05})");
  CHECK(j["id"].is_number());
  CHECK(j["group"].is_number());
  CHECK(j["group"].as_number() == -1.0);
  CHECK(j["lr"].as_number() == 1e-05);
  CHECK(j["metric"].is_null());
  CHECK(j["missing"].is_null());
  CHECK(j["missing"]["deeper"].is_null());
  CHECK(j["missing"].items().empty());
  const std::string odd = "a\"b\\c\nd\re\tf\bg\fh\x01i";
  CHECK(json::quote(odd) == R"("a\"b\\c\nd\re\tf\bg\fh\u0001i")");
  CHECK(json::parse(json::quote(odd)).as_string() == odd);
}

TEST_CASE("read_idx round-trips gzip files of every rank") {
  TempDir dir;
  const std::vector<std::vector<std::uint32_t>> shapes = {{7}, {5, 3}, {4, 28, 28}, {2, 3, 4, 5}, {0, 3}, {1000003}};
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    const auto& dims = shapes[k];
    std::size_t n = 1;
    for (auto d : dims) n *= d;
    const auto payload = random_bytes(n, static_cast<unsigned>(k + 1));
    const std::string path = dir.file("rank" + std::to_string(k) + ".idx.gz");
    write_gz(path, concat(idx_header(0x08, dims), payload));

    const Tensor<std::uint8_t> t = io::read_idx(path);
    REQUIRE(t.rank() == static_cast<int>(dims.size()));
    for (int d = 0; d < t.rank(); ++d) CHECK(t.size(d) == static_cast<index_t>(dims[static_cast<std::size_t>(d)]));
    REQUIRE(t.numel() == static_cast<index_t>(n));
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < n; ++i) mismatches += t.data()[i] != payload[i];
    CHECK(mismatches == 0);
  }
}

TEST_CASE("read_idx reads uncompressed files") {
  TempDir dir;
  const auto payload = random_bytes(3 * 4 * 5, 42);
  const std::string path = dir.file("plain.idx");
  write_plain(path, concat(idx_header(0x08, {3, 4, 5}), payload));
  const Tensor<std::uint8_t> t = io::read_idx(path);
  REQUIRE(t.shape() == Shape({3, 4, 5}));
  std::size_t i = 0;
  for (index_t a = 0; a < 3; ++a)
    for (index_t b = 0; b < 4; ++b)
      for (index_t c = 0; c < 5; ++c) CHECK(t(a, b, c) == payload[i++]);
}

TEST_CASE("read_idx errors name the path and the problem") {
  TempDir dir;

  SUBCASE("missing file") {
    const std::string path = dir.file("does_not_exist.idx.gz");
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "no such file");
  }
  SUBCASE("symbolic link to itself") {
    const std::string path = dir.file("loop.idx.gz");
    std::filesystem::create_symlink(path, path);
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "cannot open");
    CHECK(msg.find("no such file") == std::string::npos);
  }
  SUBCASE("dangling symbolic link") {
    const std::string path = dir.file("dangling.idx.gz");
    std::filesystem::create_symlink(dir.file("gone.idx.gz"), path);
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "symbolic link");
    check_contains(msg, "gone.idx.gz");
  }
  SUBCASE("directory") {
    const std::string msg = idx_error(dir.path.string());
    check_contains(msg, dir.path.string());
    check_contains(msg, "directory");
  }
  SUBCASE("truncated payload, gzip") {
    const std::string path = dir.file("short.idx.gz");
    write_gz(path, concat(idx_header(0x08, {10, 10}), random_bytes(60, 1)));
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "truncated");
    check_contains(msg, "needs 100 data bytes");
    check_contains(msg, "found 60");
  }
  SUBCASE("truncated payload, uncompressed") {
    const std::string path = dir.file("short.idx");
    write_plain(path, concat(idx_header(0x08, {10, 10}), random_bytes(60, 1)));
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "truncated");
    check_contains(msg, "needs 100 data bytes");
    check_contains(msg, "found 60");
  }
  SUBCASE("truncated header") {
    const std::string path = dir.file("short_header.idx.gz");
    auto h = idx_header(0x08, {10, 10, 10});
    h.resize(9);  // magic + 5 of the 12 dimension bytes
    write_gz(path, h);
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "truncated header");
    check_contains(msg, "expected 12");
    check_contains(msg, "found 5");
  }
  SUBCASE("empty file") {
    const std::string path = dir.file("empty.idx");
    write_plain(path, {});
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "found 0");
  }
  SUBCASE("gzip stream cut off in the middle") {
    const std::string full = dir.file("full.idx.gz");
    // Random bytes do not compress, so cutting the file in half cuts the payload.
    write_gz(full, concat(idx_header(0x08, {200, 100}), random_bytes(20000, 7)));
    auto bytes = read_plain(full);
    bytes.resize(bytes.size() / 2);
    const std::string path = dir.file("cut.idx.gz");
    write_plain(path, bytes);
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "truncated");
    check_contains(msg, "needs 20000 data bytes");
    check_contains(msg, "gzip stream ends early");
  }
  SUBCASE("gzip trailer missing") {
    const std::string full = dir.file("full.idx.gz");
    write_gz(full, concat(idx_header(0x08, {50}), random_bytes(50, 8)));
    auto bytes = read_plain(full);
    bytes.resize(bytes.size() - 8);  // drop CRC32 and ISIZE
    const std::string path = dir.file("no_trailer.idx.gz");
    write_plain(path, bytes);
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "truncated gzip stream");
  }
  SUBCASE("corrupt gzip: bad CRC") {
    const std::string path = dir.file("bad_crc.idx.gz");
    write_gz(path, concat(idx_header(0x08, {50}), random_bytes(50, 9)));
    auto bytes = read_plain(path);
    bytes[bytes.size() - 8] ^= 0xFF;  // first CRC32 byte
    write_plain(path, bytes);
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "corrupt gzip stream");
    check_contains(msg, "incorrect data check");
  }
  SUBCASE("corrupt gzip: garbage deflate data") {
    const std::string path = dir.file("garbage.idx.gz");
    write_gz(path, concat(idx_header(0x08, {50}), random_bytes(50, 10)));
    auto bytes = read_plain(path);
    // Keep the 10-byte gzip header; 0xFF... is a deflate block of reserved type 3.
    for (std::size_t i = 10; i < bytes.size(); ++i) bytes[i] = 0xFF;
    write_plain(path, bytes);
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "corrupt gzip stream");
  }
  SUBCASE("bad magic") {
    const std::string path = dir.file("zip.idx");
    write_plain(path, concat({0x50, 0x4B, 0x03, 0x04}, random_bytes(40, 2)));
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "not an IDX file");
    check_contains(msg, "50 4b 03 04");
  }
  SUBCASE("unsupported type code") {
    const std::string path = dir.file("float.idx.gz");
    write_gz(path, concat(idx_header(0x0D, {4}), random_bytes(16, 3)));
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "unsupported IDX type code 0x0D");
    check_contains(msg, "float32");
  }
  SUBCASE("rank 0") {
    const std::string path = dir.file("rank0.idx.gz");
    write_gz(path, concat(idx_header(0x08, {}), random_bytes(4, 4)));
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "unsupported rank 0");
  }
  SUBCASE("rank 5") {
    const std::string path = dir.file("rank5.idx.gz");
    write_gz(path, concat(idx_header(0x08, {1, 1, 1, 1, 2}), random_bytes(2, 5)));
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "unsupported rank 5");
  }
  SUBCASE("trailing bytes") {
    const std::string path = dir.file("long.idx.gz");
    write_gz(path, concat(idx_header(0x08, {10}), random_bytes(13, 6)));
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "3 unexpected bytes after the 10 data bytes");
  }
  SUBCASE("header whose dimensions overflow") {
    const std::string path = dir.file("overflow.idx.gz");
    write_gz(path, concat(idx_header(0x08, {0xFFFFFFFFu, 0xFFFFFFFFu, 16}), random_bytes(10, 11)));
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "too large");
  }
  SUBCASE("header claiming far more than the file can hold") {
    // Rejected before allocating 10 GB.
    const std::string path = dir.file("huge.idx.gz");
    write_gz(path, concat(idx_header(0x08, {100000, 100000}), random_bytes(10, 12)));
    const std::string msg = idx_error(path);
    check_contains(msg, path);
    check_contains(msg, "needs 10000000000 data bytes");
  }
}

TEST_CASE("gather_batch copies the rows an order names, and checks shapes and indices") {
  io::Dataset data{Tensor<float>(Shape{5, 3}), Tensor<std::int32_t>(Shape{5})};
  for (index_t i = 0; i < 15; ++i) data.images.data()[i] = static_cast<float>(i);
  for (index_t i = 0; i < 5; ++i) data.labels.data()[i] = static_cast<std::int32_t>(10 + i);
  const std::vector<index_t> order{4, 0, 3, 1, 2};
  Tensor<float> x(Shape{2, 3});
  Tensor<std::int32_t> y(Shape{2});
  io::gather_batch(data, order, 2, x, y);  // rows 3 and 1
  CHECK(x.to_vector() == std::vector<float>{9, 10, 11, 3, 4, 5});
  CHECK(y.to_vector() == std::vector<std::int32_t>{13, 11});
  CHECK_THROWS_WITH_AS(io::gather_batch(data, order, 4, x, y), doctest::Contains("rows 4..6 of an order of 5"), ValueError);
  const std::vector<index_t> bad{0, 7};
  CHECK_THROWS_WITH_AS(io::gather_batch(data, bad, 0, x, y), doctest::Contains("index 7 at position 1"), ValueError);
  Tensor<float> wide(Shape{2, 4});
  CHECK_THROWS_AS(io::gather_batch(data, order, 0, wide, y), ShapeError);
}

TEST_CASE("load_fashion_mnist validates its files") {
  TempDir dir;
  auto images = [](std::uint32_t n) { return concat(idx_header(0x08, {n, 28, 28}), random_bytes(n * 784, n)); };

  SUBCASE("missing files point at the Debian package") {
    const std::string msg = loader_error([&] { (void)io::load_fashion_mnist("train", dir.file("nowhere")); });
    check_contains(msg, dir.file("nowhere"));
    check_contains(msg, "train-images-idx3-ubyte.gz");
    check_contains(msg, "apt-get install dataset-fashion-mnist");
  }
  SUBCASE("image and label counts disagree") {
    write_gz(dir.file("t10k-images-idx3-ubyte.gz"), images(3));
    write_gz(dir.file("t10k-labels-idx1-ubyte.gz"), concat(idx_header(0x08, {2}), {1, 2}));
    const std::string msg = loader_error([&] { (void)io::load_fashion_mnist("test", dir.path.string()); });
    check_contains(msg, "3 images");
    check_contains(msg, "2 labels");
  }
  SUBCASE("label outside 0..9") {
    write_gz(dir.file("t10k-images-idx3-ubyte.gz"), images(3));
    write_gz(dir.file("t10k-labels-idx1-ubyte.gz"), concat(idx_header(0x08, {3}), {1, 12, 2}));
    const std::string msg = loader_error([&] { (void)io::load_fashion_mnist("test", dir.path.string()); });
    check_contains(msg, dir.file("t10k-labels-idx1-ubyte.gz"));
    check_contains(msg, "label 12 at index 1");
  }
  SUBCASE("a small valid split loads") {
    const auto img = images(3);
    write_gz(dir.file("t10k-images-idx3-ubyte.gz"), img);
    write_gz(dir.file("t10k-labels-idx1-ubyte.gz"), concat(idx_header(0x08, {3}), {0, 9, 4}));
    const io::Dataset ds = io::load_fashion_mnist("test", dir.path.string());
    REQUIRE(ds.images.shape() == Shape({3, 784}));
    REQUIRE(ds.labels.shape() == Shape({3}));
    CHECK(ds.labels(0) == 0);
    CHECK(ds.labels(1) == 9);
    CHECK(ds.labels(2) == 4);
    for (std::size_t i = 0; i < 3 * 784; ++i) CHECK(ds.images.data()[i] == static_cast<float>(img[16 + i]) / 255.0f);
  }
  SUBCASE("unknown split") { CHECK_THROWS_AS((void)io::load_fashion_mnist("validation", dir.path.string()), ValueError); }
}

TEST_CASE("load_fashion_mnist reads the real train and test splits") {
  struct Split {
    std::string name;
    std::string prefix;
    index_t n;
  };
  for (const Split& split : {Split{"train", "train", 60000}, Split{"test", "t10k", 10000}}) {
    CAPTURE(split.name);
    const auto start = std::chrono::steady_clock::now();
    const io::Dataset ds = io::load_fashion_mnist(split.name, fashion_dir);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    MESSAGE("fashion-mnist ", split.name, ": ", ds.images.size(0), " samples loaded in ", ms, " ms");

    REQUIRE(ds.images.shape() == Shape({split.n, 784}));
    REQUIRE(ds.labels.shape() == Shape({split.n}));

    float lo = 1.0f, hi = 0.0f;
    for (index_t i = 0; i < ds.images.numel(); ++i) {
      lo = std::min(lo, ds.images.data()[i]);
      hi = std::max(hi, ds.images.data()[i]);
    }
    CHECK(lo >= 0.0f);
    CHECK(hi <= 1.0f);
    CHECK(hi > 0.5f);  // not an all-dark (or all-zero) image set

    std::array<index_t, 10> counts{};
    bool in_range = true;
    for (index_t i = 0; i < split.n; ++i) {
      const std::int32_t y = ds.labels(i);
      if (y < 0 || y > 9) {
        in_range = false;
        continue;
      }
      ++counts[static_cast<std::size_t>(y)];
    }
    CHECK(in_range);
    for (std::size_t c = 0; c < 10; ++c) {
      CAPTURE(c);
      CHECK(counts[c] == split.n / 10);
    }

    // Independent decompression: zcat, then the raw IDX bytes by offset.
    const auto labels = zcat(fashion_dir + "/" + split.prefix + "-labels-idx1-ubyte.gz");
    REQUIRE(labels.size() == static_cast<std::size_t>(8 + split.n));
    CHECK(ds.labels(0) == labels[8]);
    index_t label_mismatches = 0;
    for (index_t i = 0; i < split.n; ++i) label_mismatches += ds.labels(i) != labels[static_cast<std::size_t>(8 + i)];
    CHECK(label_mismatches == 0);

    const auto pixels = zcat(fashion_dir + "/" + split.prefix + "-images-idx3-ubyte.gz");
    REQUIRE(pixels.size() == static_cast<std::size_t>(16 + split.n * 784));
    index_t pixel_mismatches = 0;
    for (index_t i = 0; i < split.n * 784; ++i)
      pixel_mismatches += ds.images.data()[i] != static_cast<float>(pixels[static_cast<std::size_t>(16 + i)]) / 255.0f;
    CHECK(pixel_mismatches == 0);
  }
  // Known by hand (zcat | xxd): the first training image is an ankle boot (9),
  // and so is the first test image.
  CHECK(io::read_idx(fashion_dir + "/train-labels-idx1-ubyte.gz").data()[0] == 9);
  CHECK(io::read_idx(fashion_dir + "/t10k-labels-idx1-ubyte.gz").data()[0] == 9);
}
