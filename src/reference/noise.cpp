// Spec §2: combining face embeddings and the uncond input noise.

#include <cmath>
#include <cstdint>
#include <random>

#include "instantid/reference.hpp"

namespace instantid::ref {

std::vector<float> torch_rand(std::uint64_t seed, std::size_t n) {
  // torch's CPU generator is mt19937 seeded with the low 32 bits of the seed; torch.rand on float
  // takes one 32-bit draw per value and keeps its low 24 bits.
  std::mt19937 engine(static_cast<std::uint32_t>(seed & 0xffffffffu));
  std::vector<float> values(n);
  constexpr std::uint32_t kMask = (1u << 24) - 1;
  constexpr float kScale = 1.0f / static_cast<float>(1u << 24);
  for (float& value : values) value = static_cast<float>(engine() & kMask) * kScale;
  return values;
}

std::uint64_t noise_seed(const float* values, std::size_t n) {
  INSTANTID_CHECK(values != nullptr || n == 0, "noise_seed values: got a null pointer for ", n,
                  " values, expected data");
  // torch.sum of float32 is a float32 value; summing in double and rounding once gives the
  // correctly rounded sum, which torch's pairwise sum matches except within an ulp of an integer.
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) sum += static_cast<double>(values[i]);
  const float rounded = static_cast<float>(sum);
  INSTANTID_CHECK(std::isfinite(rounded), "noise_seed: got a sum of ", rounded,
                  ", expected a finite value (embedding has NaN/Inf or is too large)");
  // Python's int() is exact for any float and % is never negative; fmod of doubles is exact, so
  // this holds for sums beyond the int64 range too.
  constexpr double kModulus = 1000000007.0;
  double seed = std::fmod(std::trunc(static_cast<double>(rounded)), kModulus);
  if (seed < 0) seed += kModulus;
  return static_cast<std::uint64_t>(seed);
}

namespace {

// [N, E] or [N, 1, E] → (N, E).
std::pair<std::int64_t, std::int64_t> embedding_rows(const HostTensor& embeds, const char* what) {
  const bool rank2 = embeds.ndim() == 2;
  const bool rank3 = embeds.ndim() == 3 && embeds.size(1) == 1;
  if (!rank2 && !rank3) throw_mismatch(what, embeds.shape_str(), "[N, E] or [N, 1, E]");
  const std::int64_t n = embeds.size(0);
  const std::int64_t e = embeds.size(embeds.ndim() - 1);
  INSTANTID_CHECK(n > 0 && e > 0, what, ": got ", embeds.shape_str(),
                  ", expected at least one embedding of positive length");
  return {n, e};
}

}  // namespace

HostTensor combine_embeddings(const HostTensor& embeds, Combine combine) {
  const auto [n, e] = embedding_rows(embeds, "combine_embeddings embeds");
  const float* x = embeds.data();  // [N, E]
  for (std::int64_t i = 0; i < n * e; ++i) {
    INSTANTID_CHECK(std::isfinite(x[i]), "combine_embeddings embeds: got a non-finite value ", x[i],
                    " at row ", i / e, ", column ", i % e, ", expected finite values");
  }
  if (combine == Combine::kConcat || n == 1) {
    // ComfyUI combines only when there are several images; one image passes through unchanged.
    return HostTensor({n, 1, e}, embeds.values());
  }
  HostTensor out({1, 1, e});
  float* y = out.data();  // [1, 1, E]
  const auto count = static_cast<float>(n);
  for (std::int64_t j = 0; j < e; ++j) {
    float norm = 1.0f;
    if (combine == Combine::kNormAverage) {
      // torch.norm(x, dim=0): per feature, across the image axis.
      float squares = 0.0f;
      for (std::int64_t i = 0; i < n; ++i) squares += x[i * e + j] * x[i * e + j];
      norm = std::sqrt(squares);
    }
    float sum = 0.0f;
    for (std::int64_t i = 0; i < n; ++i)
      sum += combine == Combine::kNormAverage ? x[i * e + j] / norm : x[i * e + j];
    y[j] = sum / count;
  }
  return out;
}

HostTensor uncond_input(const HostTensor& cond_input, float noise) {
  INSTANTID_CHECK(std::isfinite(noise) && noise >= 0.0f, "uncond_input noise: got ", noise,
                  ", expected a finite value >= 0");
  INSTANTID_CHECK(cond_input.ndim() == 3 && cond_input.size(1) == 1 && cond_input.numel() > 0,
                  "uncond_input cond_input: got ", cond_input.shape_str(), ", expected [k, 1, E]");
  HostTensor out(cond_input.shape());
  if (noise == 0.0f) return out;
  // As ComfyUI: one seed from the sum of the whole combined input, then torch.rand_like of it.
  const auto n = static_cast<std::size_t>(cond_input.numel());
  const std::vector<float> u = torch_rand(noise_seed(cond_input.data(), n), n);
  for (std::size_t i = 0; i < n; ++i) out.data()[i] = noise * u[i];
  return out;
}

}  // namespace instantid::ref
