#pragma once
// Test support for the goldens of tests/reference/make_goldens.py (tests/data/reference/): a small
// safetensors reader, the integer-hash inputs shared with the generator, and the case table.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "instantid/layout.hpp"
#include "instantid/model.hpp"
#include "instantid/patch.hpp"
#include "instantid/tensor.hpp"

namespace instantid::test {

// A safetensors file read whole: F32/F16/BF16 → float32, F64 → double, I64 → int64.
class Goldens {
 public:
  explicit Goldens(const std::string& path);
  bool has(const std::string& name) const;
  HostTensor f32(const std::string& name) const;  // any floating dtype, as float32
  std::vector<double> f64(const std::string& name) const;
  std::vector<std::int64_t> i64(const std::string& name) const;
  std::map<std::string, HostTensor> all_f32() const;  // every floating tensor

 private:
  struct Entry {
    std::string dtype;
    std::vector<std::int64_t> shape;
    std::size_t begin = 0, end = 0;
  };
  const Entry& entry(const std::string& name) const;
  std::string bytes_;
  std::size_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
};

// Values in [-scale, scale), bit-identical to make_goldens.py's hash_values (scale a power of 2).
HostTensor hash_values(std::uint32_t seed, std::vector<std::int64_t> shape, float scale);

// The reduced layout of the fixtures: ModelLayout::reduced(10, 64, 64, 1), D_out 32.
ModelLayout golden_layout();
std::string golden_path(const std::string& file);  // tests/data/reference/<file>
const Goldens& goldens();                          // goldens.safetensors, read once
// The committed checkpoint read by this file's reader and built with from_tensors (independent
// of the checkpoint loaders, which are tested against it).
const InstantIDModel& golden_model();

// ||a - b|| / ||b|| over all elements (shapes must match).
double rel_l2(const HostTensor& a, const HostTensor& b);
double max_abs_diff(const HostTensor& a, const HostTensor& b);

// ---- The case table, mirrored from make_goldens.py ----

struct ProjectionCase {
  const char* name;
  std::uint32_t seed;
  std::int64_t count;
  float scale;
  Combine combine;
  float noise;
};
extern const std::vector<ProjectionCase> kProjections;
const ProjectionCase& projection_case(const std::string& name);
HostTensor projection_embeds(const ProjectionCase& p);  // [count, 64]

struct MaskCase {
  const char* name;
  std::uint32_t seed;
  std::vector<std::int64_t> shape;
};
HostTensor golden_mask(const std::string& name);  // [M, H, W] in [0, 1)

struct IdentityCase {
  const char* projection;
  float weight;
  EmbedsScaling scaling;
  float start_at, end_at;
  const char* mask;  // null: none
};

struct AttentionCase {
  const char* name;
  LayerId layer;
  std::int64_t batch, tokens, text_tokens;
  std::vector<int> cond_or_uncond;
  std::optional<double> sigma;
  int original_height, original_width;
  std::vector<IdentityCase> identities;
  bool has_text;  // case.<name>.text stored
  std::uint32_t seed() const;
};
extern const std::vector<AttentionCase> kAttentionCases;

// q [B, N, C], k and v [B, L, C] of a case, from the hash.
struct CaseInputs {
  HostTensor q, k, v;
};
CaseInputs case_inputs(const AttentionCase& c, int width);

}  // namespace instantid::test
