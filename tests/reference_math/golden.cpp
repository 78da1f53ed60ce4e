#include "reference_math/golden.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "support/test_data.hpp"

namespace instantid::test {

Goldens::Goldens(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("goldens: cannot open " + path + " (run tests/reference/make_goldens.py)");
  std::ostringstream s;
  s << in.rdbuf();
  bytes_ = s.str();
  std::uint64_t header_len = 0;
  if (bytes_.size() < 8) throw Error("goldens: " + path + " is too short");
  std::memcpy(&header_len, bytes_.data(), 8);
  data_start_ = 8 + static_cast<std::size_t>(header_len);
  const auto header = nlohmann::json::parse(bytes_.substr(8, static_cast<std::size_t>(header_len)));
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") continue;
    Entry e;
    e.dtype = value.at("dtype").get<std::string>();
    e.shape = value.at("shape").get<std::vector<std::int64_t>>();
    e.begin = value.at("data_offsets").at(0).get<std::size_t>();
    e.end = value.at("data_offsets").at(1).get<std::size_t>();
    entries_[name] = e;
  }
}

bool Goldens::has(const std::string& name) const { return entries_.count(name) != 0; }

const Goldens::Entry& Goldens::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error("goldens: no tensor " + name);
  return it->second;
}

HostTensor Goldens::f32(const std::string& name) const {
  const Entry& e = entry(name);
  const char* p = bytes_.data() + data_start_ + e.begin;
  HostTensor out(e.shape);
  for (std::int64_t i = 0; i < out.numel(); ++i) {
    if (e.dtype == "F32") {
      std::memcpy(out.data() + i, p + 4 * i, 4);
    } else if (e.dtype == "F64") {
      double d;
      std::memcpy(&d, p + 8 * i, 8);
      out.data()[i] = static_cast<float>(d);
    } else if (e.dtype == "F16" || e.dtype == "BF16") {
      std::uint16_t bits;
      std::memcpy(&bits, p + 2 * i, 2);
      out.data()[i] = e.dtype == "F16" ? half_to_float(bits) : bfloat16_to_float(bits);
    } else {
      throw Error("goldens: " + name + " has dtype " + e.dtype + ", expected a float");
    }
  }
  return out;
}

std::vector<double> Goldens::f64(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.dtype != "F64") throw Error("goldens: " + name + " is " + e.dtype + ", expected F64");
  std::vector<double> out((e.end - e.begin) / 8);
  std::memcpy(out.data(), bytes_.data() + data_start_ + e.begin, e.end - e.begin);
  return out;
}

std::vector<std::int64_t> Goldens::i64(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.dtype != "I64") throw Error("goldens: " + name + " is " + e.dtype + ", expected I64");
  std::vector<std::int64_t> out((e.end - e.begin) / 8);
  std::memcpy(out.data(), bytes_.data() + data_start_ + e.begin, e.end - e.begin);
  return out;
}

std::map<std::string, HostTensor> Goldens::all_f32() const {
  std::map<std::string, HostTensor> out;
  for (const auto& [name, e] : entries_) {
    if (e.dtype == "F32" || e.dtype == "F16" || e.dtype == "BF16" || e.dtype == "F64")
      out.emplace(name, f32(name));
  }
  return out;
}

HostTensor hash_values(std::uint32_t seed, std::vector<std::int64_t> shape, float scale) {
  HostTensor out(std::move(shape));
  const std::uint32_t offset = seed * 0x85EBCA77u + 0x165667B1u;
  for (std::int64_t i = 0; i < out.numel(); ++i) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 0x9E3779B1u + offset;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    h *= 0x297A2D39u;
    h ^= h >> 15;
    const float unit = static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
    out.data()[i] = (unit * 2.0f - 1.0f) * scale;
  }
  return out;
}

ModelLayout golden_layout() { return ModelLayout::reduced(10, 64, 64, 1); }

std::string golden_path(const std::string& file) { return data_path("reference/" + file); }

const Goldens& goldens() {
  static const Goldens g(golden_path("goldens.safetensors"));
  return g;
}

const InstantIDModel& golden_model() {
  static const InstantIDModel model = [] {
    const Goldens file(golden_path("model.safetensors"));
    return InstantIDModel::from_tensors(file.all_f32(), golden_layout(), "model.safetensors");
  }();
  return model;
}

double rel_l2(const HostTensor& a, const HostTensor& b) {
  if (a.shape() != b.shape())
    throw Error("rel_l2: shapes " + a.shape_str() + " and " + b.shape_str() + " differ");
  double num = 0.0, den = 0.0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double d = static_cast<double>(a.data()[i]) - b.data()[i];
    num += d * d;
    den += static_cast<double>(b.data()[i]) * b.data()[i];
  }
  return den == 0.0 ? std::sqrt(num) : std::sqrt(num / den);
}

double max_abs_diff(const HostTensor& a, const HostTensor& b) {
  if (a.shape() != b.shape())
    throw Error("max_abs_diff: shapes " + a.shape_str() + " and " + b.shape_str() + " differ");
  double m = 0.0;
  for (std::int64_t i = 0; i < a.numel(); ++i)
    m = std::max(m, std::fabs(static_cast<double>(a.data()[i]) - b.data()[i]));
  return m;
}

// clang-format off
const std::vector<ProjectionCase> kProjections = {
    {"avg", 101, 3, 1.0f, Combine::kAverage, 0.0f},
    {"navg", 101, 3, 1.0f, Combine::kNormAverage, 0.35f},
    {"concat", 102, 2, 1.0f, Combine::kConcat, 0.5f},
    {"single", 103, 1, 2.0f, Combine::kAverage, 1.0f},
};
// clang-format on

const ProjectionCase& projection_case(const std::string& name) {
  for (const ProjectionCase& p : kProjections)
    if (name == p.name) return p;
  throw Error("no projection case " + name);
}

HostTensor projection_embeds(const ProjectionCase& p) {
  return hash_values(p.seed, {p.count, 64}, p.scale);
}

HostTensor golden_mask(const std::string& name) {
  static const std::vector<MaskCase> kMasks = {
      {"m1", 201, {1, 48, 40}}, {"m2", 202, {2, 30, 20}}, {"m3", 203, {1, 17, 29}}};
  for (const MaskCase& m : kMasks) {
    if (name != m.name) continue;
    HostTensor t = hash_values(m.seed, m.shape, 0.5f);
    for (float& v : t.values()) v += 0.5f;
    return t;
  }
  throw Error("no mask " + name);
}

namespace {
constexpr auto kV = EmbedsScaling::kVOnly;
constexpr auto kKV = EmbedsScaling::kKV;
constexpr auto kKVC = EmbedsScaling::kKVCPenalty;
constexpr auto kKMV = EmbedsScaling::kKMeanVCPenalty;
constexpr auto kIn = BlockType::kInput;
constexpr auto kOut = BlockType::kOutput;
constexpr auto kMid = BlockType::kMiddle;
}  // namespace

// clang-format off
// Order matters: a case's input seed is 1000 + 10 · its position (as in make_goldens.py).
const std::vector<AttentionCase> kAttentionCases = {
    {"vonly_text77", {kIn, 4, 0}, 2, 40, 77, {1, 0}, 5.0, 0, 0,
     {{"avg", 0.8f, kV, 0.0f, 1.0f, nullptr}}, true},
    {"kv_text154", {kOut, 0, 3}, 2, 19, 154, {0, 1}, 5.0, 0, 0,
     {{"avg", 0.7f, kKV, 0.0f, 1.0f, nullptr}}, true},
    {"kvc", {kIn, 7, 1}, 2, 21, 77, {1, 0}, 5.0, 0, 0,
     {{"navg", 1.5f, kKVC, 0.0f, 1.0f, nullptr}}, false},
    {"kmeanv", {kMid, 0, 5}, 2, 21, 77, {1, 0}, 5.0, 0, 0,
     {{"concat", 0.6f, kKMV, 0.0f, 1.0f, nullptr}}, false},
    {"p2_10", {kOut, 5, 1}, 4, 24, 77, {1, 0}, 5.0, 0, 0,
     {{"navg", 1.3f, kV, 0.0f, 1.0f, nullptr}}, false},
    {"p2_01", {kOut, 5, 1}, 4, 24, 77, {0, 1}, 5.0, 0, 0,
     {{"navg", 1.3f, kV, 0.0f, 1.0f, nullptr}}, false},
    {"mask_m1_pad", {kIn, 4, 1}, 4, 26, 77, {1, 0}, 5.0, 96, 64,
     {{"single", 0.9f, kV, 0.0f, 1.0f, "m1"}}, false},
    {"mask_m2_exact", {kIn, 5, 0}, 4, 24, 77, {1, 0}, 5.0, 96, 64,
     {{"avg", 1.0f, kV, 0.0f, 1.0f, "m2"}}, false},
    {"mask_m2_p3", {kOut, 3, 0}, 3, 47, 77, {0}, 5.0, 64, 96,
     {{"avg", 1.1f, kKV, 0.0f, 1.0f, "m2"}}, false},
    {"stack2", {kIn, 8, 9}, 2, 26, 77, {1, 0}, 5.0, 96, 64,
     {{"avg", 0.8f, kV, 0.0f, 1.0f, "m1"}, {"concat", 0.5f, kKV, 0.0f, 1.0f, "m3"}}, false},
    {"gated_one", {kOut, 2, 4}, 2, 20, 77, {1, 0}, 0.5, 0, 0,
     {{"avg", 0.8f, kV, 0.0f, 0.5f, nullptr}, {"single", 0.7f, kV, 0.5f, 1.0f, nullptr}}, false},
    {"gated_none", {kOut, 2, 4}, 2, 20, 77, {1, 0}, 20.0, 0, 0,
     {{"avg", 0.8f, kV, 0.3f, 1.0f, nullptr}}, false},
    {"nosigma", {kOut, 1, 0}, 2, 20, 77, {1, 0}, std::nullopt, 0, 0,
     {{"avg", 0.8f, kV, 0.0f, 1.0f, nullptr}, {"single", 0.7f, kKV, 0.1f, 1.0f, nullptr}}, false},
};
// clang-format on

std::uint32_t AttentionCase::seed() const {
  for (std::size_t i = 0; i < kAttentionCases.size(); ++i)
    if (kAttentionCases[i].name == std::string(name))
      return 1000 + 10 * static_cast<std::uint32_t>(i);
  throw Error(std::string("no attention case ") + name);
}

CaseInputs case_inputs(const AttentionCase& c, int width) {
  const std::uint32_t s = c.seed();
  return CaseInputs{hash_values(s, {c.batch, c.tokens, width}, 1.0f),
                    hash_values(s + 1, {c.batch, c.text_tokens, width}, 1.0f),
                    hash_values(s + 2, {c.batch, c.text_tokens, width}, 1.0f)};
}

}  // namespace instantid::test
