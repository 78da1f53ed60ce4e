// Every class of bad input gives an Error that says what was wrong, and nothing is allocated for
// sizes a file cannot back.

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "checkpoint_test_util.hpp"
#include "checkpoint_writers.hpp"
#include "instantid/checkpoint.hpp"
#include "instantid/model.hpp"

using namespace instantid;
using namespace instantid::test;
using Catch::Contains;

namespace {

Bytes float_bytes(std::initializer_list<float> values) {
  Bytes b(values.size() * 4);
  std::memcpy(b.data(), values.begin(), b.size());
  return b;
}

Bytes filled(std::size_t n, std::uint8_t v = 0) { return Bytes(n, v); }

std::vector<CheckpointTensor> parse(const Bytes& b, const ReaderLimits& limits = {}) {
  return parse_checkpoint(ByteSpan{b.data(), b.size()}, limits);
}

// A temp directory removed at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("instantid_ckpt_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string write(const std::string& name, const Bytes& b) const {
    const std::string p = (path / name).string();
    std::ofstream(p, std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    return p;
  }
};

// A torch.save-like archive: "archive/data.pkl" plus storages "archive/data/<key>".
Bytes torch_zip(const Bytes& pickle, std::vector<ZipItem> storages = {}, bool zip64 = false) {
  std::vector<ZipItem> items{{"archive/data.pkl", pickle}};
  for (ZipItem& s : storages) items.push_back(std::move(s));
  items.push_back({"archive/version", Bytes{'3', '\n'}});
  return make_zip(items, zip64);
}

// {"top": {"w": tensor}} with one FloatStorage of `numel` elements under key "0".
Bytes one_tensor_pickle(std::int64_t numel, std::int64_t offset,
                        const std::vector<std::int64_t>& size,
                        const std::vector<std::int64_t>& stride,
                        const std::string& storage_class = "FloatStorage") {
  PickleWriter w;
  w.op('}').op('(').str("top").global("collections", "OrderedDict").op(')').op('R');
  w.op('(').str("w").tensor(storage_class, "0", numel, offset, size, stride).op('u');
  w.op('u');
  return w.done();
}

std::string zip_error(const Bytes& pickle, std::vector<ZipItem> storages = {},
                      const ReaderLimits& limits = {}) {
  try {
    parse(torch_zip(pickle, std::move(storages)), limits);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// The mini model as an f32 safetensors file, with `edit` applied to the tensor map first.
template <typename Edit>
Bytes mini_safetensors_with(Edit edit) {
  const InstantIDModel model =
      InstantIDModel::load(data_path("checkpoint/mini_f32.safetensors"), mini_layout());
  std::map<std::string, HostTensor> tensors = model.tensors();
  edit(tensors);
  std::vector<SafetensorsItem> items;
  for (const auto& [name, t] : tensors) {
    Bytes data(static_cast<std::size_t>(t.numel()) * 4);
    std::memcpy(data.data(), t.data(), data.size());
    items.push_back({name, "F32", t.shape(), std::move(data)});
  }
  return make_safetensors(items);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Truncation

TEST_CASE("Truncated safetensors files are refused at every cut point", "[checkpoint][errors]") {
  const Bytes full = fixture_bytes("mini_f16.safetensors");
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, full.data(), 8);
  std::vector<std::size_t> cuts;
  for (std::size_t c = 0; c < 64; ++c) cuts.push_back(c);
  for (std::size_t c = 8 + header_len - 16; c < 8 + header_len + 16; ++c) cuts.push_back(c);
  for (std::size_t c = 64; c < full.size(); c += 97) cuts.push_back(c);
  for (std::size_t c = full.size() - 8; c < full.size(); ++c) cuts.push_back(c);
  for (std::size_t cut : cuts) {
    INFO("cut at " << cut << " of " << full.size());
    const Bytes part(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(cut));
    if (cut < 8) {
      REQUIRE_THROWS_WITH(parse(part), Contains("file too short"));
    } else if (cut < 8 + header_len) {
      REQUIRE_THROWS_WITH(parse(part), Contains("runs past the end of the file"));
    } else {
      REQUIRE_THROWS_WITH(parse(part), Contains("out of range") || Contains("data section has"));
    }
  }
}

TEST_CASE("Truncated torch zip files are refused at every cut point", "[checkpoint][errors]") {
  // Exact-size copies for the small file (so sanitizers see any over-read), spans for the big one.
  const Bytes mini = fixture_bytes("mini_f16.bin");
  std::vector<std::size_t> cuts;
  for (std::size_t c = 0; c < 64; ++c) cuts.push_back(c);
  for (std::size_t c = 64; c < mini.size(); c += 89) cuts.push_back(c);
  for (std::size_t c = mini.size() > 1500 ? mini.size() - 1500 : 0; c < mini.size(); ++c) {
    cuts.push_back(c);  // through the central directory and end records, byte by byte
  }
  for (std::size_t cut : cuts) {
    INFO("cut at " << cut << " of " << mini.size());
    const Bytes part(mini.begin(), mini.begin() + static_cast<std::ptrdiff_t>(cut));
    REQUIRE_THROWS_WITH(parse(part), Contains("end-of-central-directory") ||
                                         Contains("file too short") || Contains("safetensors"));
  }
  const Bytes reduced = fixture_bytes("reduced_f16.bin");
  for (std::size_t cut = 22; cut < reduced.size(); cut += 4099) {
    INFO("cut at " << cut);
    REQUIRE_THROWS_WITH(parse_checkpoint(ByteSpan{reduced.data(), cut}),
                        Contains("end-of-central-directory"));
  }
}

TEST_CASE("Legacy (pre-zip) torch.save files are named as such", "[checkpoint][errors]") {
  // Legacy files start with a pickled magic number: PROTO 2, LONG1 ...
  const Bytes legacy{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8};
  REQUIRE_THROWS_WITH(parse(legacy), Contains("legacy pre-1.6 format is not supported"));
}

TEST_CASE("Files: missing, empty and truncated paths name the path", "[checkpoint][errors]") {
  TempDir dir;
  REQUIRE_THROWS_WITH(CheckpointFile::open((dir.path / "nope.bin").string()),
                      Contains("nope.bin: cannot open checkpoint"));
  const std::string empty = dir.write("empty.safetensors", {});
  REQUIRE_THROWS_WITH(InstantIDModel::load(empty), Contains("empty.safetensors: checkpoint file "
                                                            "is empty: got 0 bytes"));
  Bytes bin = fixture_bytes("mini_f32.bin");
  bin.resize(bin.size() / 2);
  const std::string half = dir.write("half.bin", bin);
  REQUIRE_THROWS_WITH(InstantIDModel::load(half, mini_layout()),
                      Contains("half.bin: zip: no end-of-central-directory record"));
}

// ---------------------------------------------------------------------------------------------
// Safetensors headers

TEST_CASE("Safetensors: a hand-made valid file parses", "[checkpoint][errors]") {
  const Bytes st = make_safetensors({{"a", "F32", {2, 3}, float_bytes({1, 2, 3, 4, 5, 6})},
                                     {"b", "F16", {2}, Bytes{0x00, 0x3c, 0x00, 0xc0}}});
  const auto tensors = parse(st);
  REQUIRE(tensors.size() == 2);
  CHECK(tensors[0].name == "a");
  CHECK(tensors[0].strides == std::vector<std::int64_t>{3, 1});
  CHECK(tensors[0].to_float().values() == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(tensors[1].to_float().values() == std::vector<float>{1.0f, -2.0f});
}

TEST_CASE("Safetensors: unaligned data is read correctly in every dtype", "[checkpoint][errors]") {
  std::string header =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[12,14]},"
      "\"c\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[14,16]}}";
  while ((8 + header.size()) % 4 != 1) header += ' ';
  Bytes data = float_bytes({1.5f, -2.0f, 1e-3f});
  data.insert(data.end(), {0x80, 0x3f, 0x00, 0xbc});  // bf16 1.0, f16 -1.0
  const Bytes b = make_safetensors_raw(header, data);
  const auto tensors = parse(b);
  REQUIRE(tensors.size() == 3);
  CHECK(reinterpret_cast<std::uintptr_t>(tensors[0].data) % 4 != 0);
  CHECK(tensors[0].to_float().values() == std::vector<float>{1.5f, -2.0f, 1e-3f});
  CHECK(tensors[1].to_float().values() == std::vector<float>{1.0f});
  CHECK(tensors[2].to_float().values() == std::vector<float>{-1.0f});
}

TEST_CASE("Safetensors: bad headers", "[checkpoint][errors]") {
  const Bytes data24 = filled(24);
  SECTION("length past the end of the file") {
    Bytes b = make_safetensors_raw("{}", {});
    b[0] = 0x40;
    b[1] = 0x42;
    b[2] = 0x0f;  // 1000000
    REQUIRE_THROWS_WITH(parse(b), Contains("header length 1000000 runs past the end of the file: "
                                           "got 2 bytes"));
  }
  SECTION("length beyond the configured limit") {
    ReaderLimits limits;
    limits.max_header_bytes = 16;
    const Bytes b = make_safetensors({{"a", "F32", {6}, data24}});
    REQUIRE_THROWS_WITH(parse(b, limits), Contains("exceeds the limit max_header_bytes = 16"));
  }
  SECTION("length near 2^64") {
    Bytes b = make_safetensors_raw("{}", {});
    for (int i = 0; i < 8; ++i) b[i] = 0xff;
    REQUIRE_THROWS_WITH(parse(b), Contains("exceeds the limit max_header_bytes"));
  }
  SECTION("invalid JSON") {
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw("{\"a\": {\"dtype\"", data24)),
                        Contains("safetensors header: invalid JSON"));
  }
  SECTION("JSON that is not an object") {
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw("[1, 2]", {})),
                        Contains("got a JSON array, expected an object"));
  }
  SECTION("deep nesting") {
    const std::string deep = "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(deep, {})), Contains("JSON nesting deeper"));
  }
  SECTION("entry not an object / field missing") {
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw("{\"a\": 3}", {})),
                        Contains("tensor \"a\": got a JSON number"));
    REQUIRE_THROWS_WITH(
        parse(make_safetensors_raw("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,24]}}", data24)),
        Contains("tensor \"a\": field \"shape\" is missing"));
  }
  SECTION("overlapping offsets") {
    const std::string h =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(h, data24)),
                        Contains("tensors \"a\" and \"b\" overlap"));
  }
  SECTION("offsets out of range") {
    const std::string h =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[24,40]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(h, data24)),
                        Contains("tensor \"b\": data_offsets [24, 40] out of range: expected "
                                 "begin <= end <= 24"));
    const std::string reversed = "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(reversed, data24)), Contains("out of range"));
  }
  SECTION("offsets inconsistent with dtype × shape") {
    const std::string h = "{\"a\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(h, data24)),
                        Contains("hold 24 bytes, expected 12 (f16 × [2, 3])"));
  }
  SECTION("holes and trailing bytes") {
    const std::string hole =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(hole, data24)),
                        Contains("data bytes [8, 16) belong to no tensor"));
    const std::string short_cover =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(short_cover, data24)),
                        Contains("data section has 24 bytes, expected 8"));
  }
  SECTION("unsupported and unknown dtypes name the tensor") {
    for (const char* dtype : {"F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4_K"}) {
      const std::string h = std::string("{\"w.x\":{\"dtype\":\"") + dtype +
                            "\",\"shape\":[3],\"data_offsets\":[0,24]}}";
      REQUIRE_THROWS_WITH(parse(make_safetensors_raw(h, data24)),
                          Contains(std::string("tensor \"w.x\": dtype \"") + dtype +
                                   "\" is not supported, expected F32, F16 or BF16"));
    }
  }
  SECTION("bad shapes") {
    const std::string neg = "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1,6],\"data_offsets\":[0,24]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(neg, data24)),
                        Contains("shape: got -1, expected a non-negative integer"));
    const std::string frac = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,24]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(frac, data24)), Contains("got 1.5"));
    const std::string rank9 =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,6],\"data_offsets\":[0,24]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(rank9, data24)),
                        Contains("9 dimensions exceed the limit max_ndim = 8"));
  }
  SECTION("10^12 elements are refused before any allocation") {
    const std::string h =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000,1000000],\"data_offsets\":[0,4000000000000]}"
        "}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(h, data24)),
                        Contains("more elements than the limit max_tensor_elements"));
    ReaderLimits wide;
    wide.max_tensor_elements = std::numeric_limits<std::int64_t>::max();
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(h, data24), wide),
                        Contains("data_offsets [0, 4000000000000] out of range"));
    const std::string overflow =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]}}";
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw(overflow, {}), wide),
                        Contains("more elements than the limit"));
  }
  SECTION("metadata must be strings") {
    REQUIRE_THROWS_WITH(parse(make_safetensors_raw("{\"__metadata__\":{\"v\":1}}", {})),
                        Contains("__metadata__ \"v\": got 1, expected a string"));
    CHECK(parse(make_safetensors_raw("{\"__metadata__\":{\"v\":\"1\"}}", {})).empty());
  }
}

// ---------------------------------------------------------------------------------------------
// Zip archives

TEST_CASE("Zip: stored and ZIP64-extra entries parse alike; hand-made pickle tensors",
          "[checkpoint][errors]") {
  // One storage of 8 floats holding a [2, 3] view at offset 1 with strides (1, 2) (a transpose).
  const Bytes pickle = one_tensor_pickle(8, 1, {2, 3}, {1, 2});
  const Bytes storage = float_bytes({0, 1, 2, 3, 4, 5, 6, 7});
  for (bool zip64 : {false, true}) {
    INFO("zip64 " << zip64);
    const Bytes b = torch_zip(pickle, {{"archive/data/0", storage}}, zip64);
    const auto entries = read_zip_directory(ByteSpan{b.data(), b.size()});
    REQUIRE(entries.size() == 3);
    CHECK(entries[1].name == "archive/data/0");
    CHECK(entries[1].size == 32);
    const auto tensors = parse(b);
    REQUIRE(tensors.size() == 1);
    CHECK(tensors[0].name == "top.w");
    // element (i, j) = storage[1 + i + 2 j]
    CHECK(tensors[0].to_float().values() == std::vector<float>{1, 3, 5, 2, 4, 6});
  }
}

TEST_CASE("Zip: compressed, encrypted and corrupt archives", "[checkpoint][errors]") {
  const Bytes pickle = one_tensor_pickle(2, 0, {2}, {1});
  SECTION("compressed entry names it") {
    std::vector<ZipItem> items{{"archive/data.pkl", pickle}, {"archive/data/0", filled(8), 8}};
    REQUIRE_THROWS_WITH(parse(make_zip(items)),
                        Contains("zip: entry \"archive/data/0\" is compressed (method 8), "
                                 "expected stored entries"));
  }
  SECTION("encrypted entry") {
    std::vector<ZipItem> items{{"archive/data.pkl", pickle, 0, 1}};
    REQUIRE_THROWS_WITH(parse(make_zip(items)), Contains("\"archive/data.pkl\" is encrypted"));
  }
  SECTION("no data.pkl") {
    REQUIRE_THROWS_WITH(parse(make_zip({{"archive/other", filled(4)}})),
                        Contains("no <archive>/data.pkl entry"));
  }
  SECTION("missing storage entry") {
    REQUIRE_THROWS_WITH(parse(torch_zip(pickle)),
                        Contains("tensor \"top.w\": storage entry \"archive/data/0\" is missing"));
  }
  SECTION("directory offset past the end") {
    Bytes b = torch_zip(pickle, {{"archive/data/0", filled(8)}});
    const std::size_t end = b.size() - 22;
    b[end + 16] = 0xff;
    b[end + 17] = 0xff;
    b[end + 18] = 0xff;
    b[end + 19] = 0x7f;
    REQUIRE_THROWS_WITH(parse(b), Contains("central directory [2147483647"));
  }
  SECTION("entry size past the directory") {
    Bytes b = torch_zip(pickle, {{"archive/data/0", filled(8)}});
    // Second central entry: the first entry's record is 46 + 16 bytes.
    std::uint32_t dir = 0;
    std::memcpy(&dir, &b[b.size() - 22 + 16], 4);
    const std::size_t second = dir + 46 + 16;
    for (std::size_t f : {second + 20, second + 24}) {
      b[f] = 0x00;
      b[f + 1] = 0x00;
      b[f + 2] = 0x01;  // 65536 bytes
    }
    REQUIRE_THROWS_WITH(parse(b), Contains("entry \"archive/data/0\" (65536 bytes"));
  }
  SECTION("too many entries for the limit") {
    ReaderLimits limits;
    limits.max_zip_entries = 2;
    REQUIRE_THROWS_WITH(parse(torch_zip(pickle, {{"archive/data/0", filled(8)}}), limits),
                        Contains("3 entries exceed the limit max_zip_entries = 2"));
  }
  SECTION("duplicate names") {
    REQUIRE_THROWS_WITH(
        parse(make_zip({{"archive/data.pkl", pickle}, {"archive/data.pkl", pickle}})),
        Contains("\"archive/data.pkl\" appears twice"));
  }
}

// ---------------------------------------------------------------------------------------------
// Pickles

TEST_CASE("Pickle: globals and opcodes outside the allowed set", "[checkpoint][errors]") {
  SECTION("os.system") {
    PickleWriter w;
    w.global("os", "system").str("echo hi").op(0x85).op('R');
    CHECK_THAT(zip_error(w.done()), Contains("pickle: global \"os.system\" is not allowed"));
  }
  SECTION("builtins.eval inside a real-looking tensor dict") {
    PickleWriter w;
    w.op('}').op('(').str("w").global("builtins", "eval").str("1").op(0x85).op('R').op('u');
    CHECK_THAT(zip_error(w.done()), Contains("global \"builtins.eval\" is not allowed"));
  }
  SECTION("a storage class of another dtype") {
    CHECK_THAT(zip_error(one_tensor_pickle(2, 0, {2}, {1}, "DoubleStorage"),
                         {{"archive/data/0", filled(16)}}),
               Contains("global \"torch.DoubleStorage\" is not allowed"));
  }
  SECTION("unknown opcodes name themselves and their position") {
    CHECK_THAT(zip_error(PickleWriter{}.op('G').done()),
               Contains("pickle: opcode 0x47 (BINFLOAT) at byte 2 is not supported"));
    CHECK_THAT(zip_error(PickleWriter{}.op('}').op(0x93).done()),
               Contains("opcode 0x93 (STACK_GLOBAL) at byte 3 is not supported"));
    CHECK_THAT(zip_error(PickleWriter{}.op(0xfe).done()),
               Contains("opcode 0xfe (unknown) at byte 2"));
  }
  SECTION("calling a storage class") {
    PickleWriter w;
    w.global("torch", "FloatStorage").op(')').op('R');
    CHECK_THAT(zip_error(w.done()), Contains("global \"torch.FloatStorage\" cannot be called"));
  }
}

TEST_CASE("Pickle: malformed programs", "[checkpoint][errors]") {
  const Bytes storage8 = filled(8);
  SECTION("truncated") {
    Bytes p = one_tensor_pickle(2, 0, {2}, {1});
    for (std::size_t cut = 0; cut < p.size(); ++cut) {
      INFO("cut " << cut);
      const Bytes part(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(cut));
      REQUIRE_THROWS_WITH(
          parse_torch_pickle(ByteSpan{part.data(), part.size()}),
          Contains("pickle: truncated") || Contains("empty stack") || Contains("without a MARK"));
    }
  }
  SECTION("memo key never stored") {
    CHECK_THAT(zip_error(PickleWriter{}.op('h').op(7).done()),
               Contains("memo key 7 was never stored"));
  }
  SECTION("stack underflow and stray marks") {
    CHECK_THAT(zip_error(PickleWriter{}.op('t').done()), Contains("TUPLE without a MARK"));
    CHECK_THAT(zip_error(PickleWriter{}.op('R').done()), Contains("REDUCE on an empty stack"));
    CHECK_THAT(zip_error(PickleWriter{}.op('}').op('(').done()),
               Contains("STOP inside an unclosed MARK"));
  }
  SECTION("the checkpoint is not a dict of tensors") {
    CHECK_THAT(zip_error(PickleWriter{}.op(']').done()),
               Contains("the checkpoint is a list, expected a dict of tensors"));
    PickleWriter w;
    w.op('}').str("a").op('K').op(1).op('s');
    CHECK_THAT(zip_error(w.done()),
               Contains("value of \"a\" is a int, expected a tensor or a dict"));
    PickleWriter k;
    k.op('}').op('K').op(1).op('N').op('s');
    CHECK_THAT(zip_error(k.done()), Contains("dict key in \"\" is a int, expected str"));
  }
  SECTION("duplicate flat names") {
    // {"a": {"b": t}, "a.b": t}
    PickleWriter w;
    w.op('}').op('(').str("a").op('}').str("b");
    w.tensor("FloatStorage", "0", 2, 0, {2}, {1}).op('s').str("a.b");
    w.tensor("FloatStorage", "0", 2, 0, {2}, {1}).op('u');
    CHECK_THAT(zip_error(w.done(), {{"archive/data/0", storage8}}),
               Contains("tensor name \"a.b\" appears twice"));
  }
  SECTION("negative offsets and strides, bad ranks") {
    CHECK_THAT(zip_error(one_tensor_pickle(2, -1, {2}, {1}), {{"archive/data/0", storage8}}),
               Contains("tensor storage offset -1 is negative"));
    CHECK_THAT(zip_error(one_tensor_pickle(2, 1, {2}, {-1}), {{"archive/data/0", storage8}}),
               Contains("expected non-negative values"));
    CHECK_THAT(zip_error(one_tensor_pickle(2, 0, {2}, {1, 1}), {{"archive/data/0", storage8}}),
               Contains("differ in rank"));
  }
  SECTION("views past their storage") {
    CHECK_THAT(zip_error(one_tensor_pickle(2, 1, {2}, {1}), {{"archive/data/0", storage8}}),
               Contains("tensor \"top.w\": shape [2] with strides [1] at offset 1 "
                        "reaches past its storage of 2 elements"));
    CHECK_THAT(zip_error(one_tensor_pickle(4, 0, {4}, {1}), {{"archive/data/0", storage8}}),
               Contains("declares 4 f32 elements, but the entry holds 8 bytes"));
  }
}

TEST_CASE("Pickle: absurd sizes and nesting are refused before allocation",
          "[checkpoint][errors]") {
  const Bytes storage8 = filled(8);
  SECTION("10^12 elements") {
    const Bytes p = one_tensor_pickle(2, 0, {1000000, 1000000}, {1000000, 1});
    CHECK_THAT(zip_error(p, {{"archive/data/0", storage8}}),
               Contains("tensor size [1000000, 1000000] has more elements than the limit "
                        "max_tensor_elements"));
    ReaderLimits wide;
    wide.max_tensor_elements = std::numeric_limits<std::int64_t>::max();
    CHECK_THAT(zip_error(p, {{"archive/data/0", storage8}}, wide),
               Contains("reaches past its storage of 2 elements"));
    const Bytes big_storage = one_tensor_pickle(1000000000000, 0, {2}, {1});
    CHECK_THAT(zip_error(big_storage, {{"archive/data/0", storage8}}, wide),
               Contains("declares 1000000000000 f32 elements, but the entry holds 8"));
    const Bytes overflow = one_tensor_pickle(2, 0, {1ll << 40, 1ll << 40}, {1, 1});
    CHECK_THAT(zip_error(overflow, {{"archive/data/0", storage8}}, wide),
               Contains("has more elements than the limit"));
  }
  SECTION("deeply nested MARKs") {
    PickleWriter w;
    for (int i = 0; i < 100000; ++i) w.op('(');
    CHECK_THAT(zip_error(w.done()),
               Contains("MARKs nested deeper than the limit max_pickle_depth = 32"));
  }
  SECTION("deeply nested dicts") {
    PickleWriter w;
    w.op('}');
    for (int i = 0; i < 1000; ++i) w.str("d").op('}');
    for (int i = 0; i < 1000; ++i) w.op('s');
    CHECK_THAT(zip_error(w.done()), Contains("dicts nested deeper than the limit"));
  }
  SECTION("a dict containing itself") {
    PickleWriter w;
    w.op('}').op('q').op(0).str("self").op('h').op(0).op('s');
    CHECK_THAT(zip_error(w.done()), Contains("dicts nested deeper than the limit"));
  }
  SECTION("stack and memo limits") {
    ReaderLimits limits;
    limits.max_pickle_stack = 4;
    limits.max_pickle_memo = 2;
    PickleWriter s;
    for (int i = 0; i < 10; ++i) s.op('N');
    CHECK_THAT(zip_error(s.done(), {}, limits),
               Contains("stack deeper than the limit max_pickle_stack = 4"));
    PickleWriter m;
    m.op('N');
    for (int i = 0; i < 3; ++i) m.op('q').op(static_cast<std::uint8_t>(i));
    CHECK_THAT(zip_error(m.done(), {}, limits),
               Contains("memo larger than the limit max_pickle_memo = 2"));
  }
  SECTION("many objects within the byte limit") {
    ReaderLimits limits;
    limits.max_pickle_objects = 1000;
    PickleWriter w;
    w.op('N').op('q').op(0).op('}');
    for (int i = 0; i < 600; ++i) w.op('h').op(0).op('h').op(0).op('s');  // refs only
    CHECK_THAT(zip_error(w.done(), {}, limits),
               Contains("more objects and references than the limit max_pickle_objects = 1000"));
  }
  SECTION("huge strings") {
    PickleWriter w;
    w.op('X');
    put_u32(w.b, 0xfffffff0u);
    CHECK_THAT(zip_error(w.done()),
               Contains("string of 4294967280 bytes exceeds the limit max_string_bytes"));
  }
  SECTION("pickle larger than the limit") {
    ReaderLimits limits;
    limits.max_pickle_bytes = 16;
    CHECK_THAT(zip_error(one_tensor_pickle(2, 0, {2}, {1}), {{"archive/data/0", storage8}}, limits),
               Contains("exceeding the limit max_pickle_bytes = 16"));
  }
}

// ---------------------------------------------------------------------------------------------
// The model: names, shapes, values

TEST_CASE("Model: all missing, extra and mis-shaped tensors are reported at once, with the path",
          "[checkpoint][errors]") {
  TempDir dir;
  const Bytes bad = mini_safetensors_with([](std::map<std::string, HostTensor>& t) {
    t.erase("image_proj.latents");
    t.erase("ip_adapter.139.to_v_ip.weight");
    t["image_proj.proj_in.weight"] = HostTensor({64, 63});
    t["ip_adapter.9.to_k_ip.weight"] = HostTensor({64, 32});
    t["ip_adapter.141.to_k_ip.weight"] = HostTensor({128, 32});
  });
  const std::string path = dir.write("bad.safetensors", bad);
  try {
    InstantIDModel::load(path, mini_layout());
    FAIL("no error");
  } catch (const Error& e) {
    const std::string m = e.what();
    CHECK_THAT(m, Contains("InstantID checkpoint " + path + ": 5 tensor(s) do not match"));
    CHECK_THAT(m, Contains("missing image_proj.latents (expected [1, 16, 64])"));
    CHECK_THAT(m, Contains("missing ip_adapter.139.to_v_ip.weight (expected [128, 32])"));
    CHECK_THAT(m, Contains("image_proj.proj_in.weight: got [64, 63], expected [64, 64]"));
    CHECK_THAT(m, Contains("ip_adapter.9.to_k_ip.weight: got [64, 32], expected [128, 32]"));
    CHECK_THAT(m, Contains("unexpected ip_adapter.141.to_k_ip.weight [128, 32]"));
  }
  // The same checks for tensors built in memory.
  std::map<std::string, HostTensor> tensors =
      InstantIDModel::load(data_path("checkpoint/mini_f32.bin"), mini_layout()).tensors();
  tensors.erase("image_proj.norm_out.bias");
  REQUIRE_THROWS_WITH(InstantIDModel::from_tensors(tensors, mini_layout(), "mem"),
                      Contains("InstantID checkpoint mem: 1 tensor(s)") &&
                          Contains("missing image_proj.norm_out.bias (expected [32])"));
}

TEST_CASE("Model: a checkpoint for another layout is refused", "[checkpoint][errors]") {
  // The reduced file against the full SDXL layout: every shape differs.
  REQUIRE_THROWS_WITH(
      InstantIDModel::load(data_path("checkpoint/reduced_f16.bin")),
      Contains("image_proj.latents: got [1, 16, 64], expected [1, 16, 1280]") &&
          Contains("ip_adapter.1.to_k_ip.weight: got [64, 32], expected [640, 32]"));
  // Missing D_out source: no first-layer k and no proj_out.
  std::map<std::string, HostTensor> none;
  REQUIRE_THROWS_WITH(InstantIDModel::from_tensors(none, mini_layout()),
                      Contains("cannot read D_out"));
}

TEST_CASE("Model: NaN and Inf weights are refused with the tensor's name", "[checkpoint][errors]") {
  TempDir dir;
  SECTION("NaN in f32 safetensors") {
    const Bytes bad = mini_safetensors_with([](std::map<std::string, HostTensor>& t) {
      t["image_proj.layers.0.0.to_q.weight"].data()[77] = std::nanf("");
    });
    REQUIRE_THROWS_WITH(InstantIDModel::load(dir.write("nan.safetensors", bad), mini_layout()),
                        Contains("nan.safetensors: tensor \"image_proj.layers.0.0.to_q.weight\": "
                                 "value at flat index 77 is NaN, expected finite weights"));
  }
  SECTION("Inf in an fp16 torch file, patched in place") {
    Bytes bin = fixture_bytes("mini_f16.bin");
    // Find the tensor's bytes through a parse over `bin` itself.
    const auto tensors = parse(bin);
    for (const CheckpointTensor& c : tensors) {
      if (c.name == "ip_adapter.139.to_v_ip.weight") {
        const std::size_t off = static_cast<std::size_t>(c.data - bin.data()) + 2 * 5;
        bin[off] = 0x00;
        bin[off + 1] = 0xfc;  // -Inf in fp16
      }
    }
    REQUIRE_THROWS_WITH(InstantIDModel::load(dir.write("inf.bin", bin), mini_layout()),
                        Contains("tensor \"ip_adapter.139.to_v_ip.weight\": value at flat index 5 "
                                 "is Inf"));
  }
  SECTION("from_tensors") {
    std::map<std::string, HostTensor> tensors =
        InstantIDModel::load(data_path("checkpoint/mini_f32.bin"), mini_layout()).tensors();
    tensors["image_proj.latents"].data()[3] = std::numeric_limits<float>::infinity();
    REQUIRE_THROWS_WITH(InstantIDModel::from_tensors(tensors, mini_layout()),
                        Contains("tensor \"image_proj.latents\": value at flat index 3 is Inf"));
  }
}

// ---------------------------------------------------------------------------------------------
// Random corruption: whatever the bytes, the readers either succeed (and every tensor they
// describe can be read) or throw Error. Reproducible seed; most useful in the sanitizer build.

TEST_CASE("Randomly corrupted files never crash the readers", "[checkpoint][errors]") {
  for (const char* name : {"mini_f16.bin", "mini_bf16.safetensors"}) {
    const Bytes original = fixture_bytes(name);
    std::uint64_t state = 0x9e3779b97f4a7c15ull;
    auto next = [&state] {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      return state;
    };
    // Mutations aimed at the structure: the first 4 KiB (headers, pickle) and the last 4 KiB
    // (zip directory), plus anywhere.
    int parsed = 0, refused = 0;
    for (int iter = 0; iter < 400; ++iter) {
      Bytes b = original;
      const int flips = 1 + static_cast<int>(next() % 4);
      for (int f = 0; f < flips; ++f) {
        const std::uint64_t r = next();
        const std::size_t window = std::min<std::size_t>(4096, b.size());
        const std::size_t k = static_cast<std::size_t>(next());
        const std::size_t at = r % 3 == 0   ? k % window
                               : r % 3 == 1 ? b.size() - 1 - k % window
                                            : k % b.size();
        b[at] = static_cast<std::uint8_t>(next());
      }
      try {
        const CheckpointFile file = CheckpointFile::from_bytes(b);
        for (const CheckpointTensor& t : file.tensors()) (void)t.to_float(false);
        ++parsed;
      } catch (const Error&) {
        ++refused;
      }
    }
    INFO(name << ": parsed " << parsed << ", refused " << refused);
    CHECK(parsed + refused == 400);
    CHECK(refused > 0);
  }
}
