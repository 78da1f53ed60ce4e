// Spec §4, §6: option names, the discrete sigma schedule, option validation and sigma ranges.

#include <cmath>
#include <limits>
#include <string>

#include "instantid/patch.hpp"

namespace instantid {

EmbedsScaling parse_embeds_scaling(std::string_view name) {
  if (name == "V only") return EmbedsScaling::kVOnly;
  if (name == "K+V") return EmbedsScaling::kKV;
  if (name == "K+V w/ C penalty") return EmbedsScaling::kKVCPenalty;
  if (name == "K+mean(V) w/ C penalty") return EmbedsScaling::kKMeanVCPenalty;
  throw Error(make_message("embeds_scaling: got \"", name,
                           "\", expected \"V only\", \"K+V\", \"K+V w/ C penalty\" or "
                           "\"K+mean(V) w/ C penalty\""));
}

const char* embeds_scaling_name(EmbedsScaling scaling) {
  switch (scaling) {
    case EmbedsScaling::kVOnly:
      return "V only";
    case EmbedsScaling::kKV:
      return "K+V";
    case EmbedsScaling::kKVCPenalty:
      return "K+V w/ C penalty";
    case EmbedsScaling::kKMeanVCPenalty:
      return "K+mean(V) w/ C penalty";
  }
  return "?";
}

Combine parse_combine(std::string_view name) {
  if (name == "average") return Combine::kAverage;
  if (name == "norm average" || name == "norm-average") return Combine::kNormAverage;
  if (name == "concat") return Combine::kConcat;
  throw Error(make_message("combine_embeds: got \"", name,
                           "\", expected \"average\", \"norm average\" or \"concat\""));
}

const char* combine_name(Combine combine) {
  switch (combine) {
    case Combine::kAverage:
      return "average";
    case Combine::kNormAverage:
      return "norm average";
    case Combine::kConcat:
      return "concat";
  }
  return "?";
}

namespace {

// exp as PyTorch's CPU kernels compute it for float32 (SLEEF's expf_u10 with FMA, which torch
// uses even for a one-element tensor); glibc's correctly rounded expf differs from it by one ulp
// at some points, and ComfyUI's percent_to_sigma goes through torch.
float torch_cpu_expf(float d) {
  const int q = static_cast<int>(
      std::nearbyint(d * 1.442695040888963407359924681001892137426645954152985934135449406931f));
  const auto qf = static_cast<float>(q);
  float s = std::fma(qf, -0.693145751953125f, d);
  s = std::fma(qf, -1.428606765330187045e-06f, s);
  float u = 0.000198527617612853646278381f;
  u = std::fma(u, s, 0.00139304355252534151077271f);
  u = std::fma(u, s, 0.00833336077630519866943359f);
  u = std::fma(u, s, 0.0416664853692054748535156f);
  u = std::fma(u, s, 0.166666671633720397949219f);
  u = std::fma(u, s, 0.5f);
  u = 1.0f + std::fma(s * s, u, s);
  u = std::ldexp(std::ldexp(u, q >> 1), q - (q >> 1));
  if (d < -104.0f) u = 0.0f;
  if (d > 100.0f) u = std::numeric_limits<float>::infinity();
  return u;
}

}  // namespace

DiscreteSchedule::DiscreteSchedule() {
  constexpr int kSteps = 1000;
  // torch.linspace(sqrt(0.00085), sqrt(0.012), 1000, dtype=float64): the first half counts up
  // from start, the second half down from end, as PyTorch's CPU kernel does.
  const double start = std::sqrt(0.00085);
  const double end = std::sqrt(0.012);
  const double step = (end - start) / (kSteps - 1);
  sigmas_.resize(kSteps);
  log_sigmas_.resize(kSteps);
  double cumprod = 1.0;
  for (int i = 0; i < kSteps; ++i) {
    const double root = i < kSteps / 2 ? start + step * i : end - step * (kSteps - 1 - i);
    const double beta = root * root;
    cumprod *= 1.0 - beta;
    const double sigma = std::sqrt((1.0 - cumprod) / cumprod);
    sigmas_[static_cast<std::size_t>(i)] = static_cast<float>(sigma);
    log_sigmas_[static_cast<std::size_t>(i)] = static_cast<float>(std::log(sigma));
  }
}

float DiscreteSchedule::percent_to_sigma(float percent) const {
  INSTANTID_CHECK(!std::isnan(percent), "percent_to_sigma percent: got NaN, expected a number");
  if (percent <= 0.0f) return static_cast<float>(kNoSigma);
  if (percent >= 1.0f) return 0.0f;
  // ComfyUI: torch.tensor((1.0 - percent) * 999.0) — a Python float rounded to float32.
  float t = static_cast<float>((1.0 - static_cast<double>(percent)) * 999.0);
  const float last = static_cast<float>(sigmas_.size() - 1);
  t = t < 0.0f ? 0.0f : (t > last ? last : t);
  const auto lo = static_cast<std::size_t>(std::floor(t));
  const auto hi = static_cast<std::size_t>(std::ceil(t));
  const float w = t - std::trunc(t);
  const float log_sigma = (1.0f - w) * log_sigmas_[lo] + w * log_sigmas_[hi];
  return torch_cpu_expf(log_sigma);
}

void validate(const PatchOptions& options) {
  INSTANTID_CHECK(std::isfinite(options.weight), "PatchOptions.weight: got ", options.weight,
                  ", expected a finite value");
  INSTANTID_CHECK(options.start_at >= 0.0f && options.start_at <= 1.0f,
                  "PatchOptions.start_at: got ", options.start_at, ", expected a value in [0, 1]");
  INSTANTID_CHECK(options.end_at >= options.start_at && options.end_at <= 1.0f,
                  "PatchOptions.end_at: got ", options.end_at,
                  ", expected a value in [start_at = ", options.start_at, ", 1]");
  INSTANTID_CHECK(std::isfinite(options.noise) && options.noise >= 0.0f, "PatchOptions.noise: got ",
                  options.noise, ", expected a finite value >= 0");
  const int scaling = static_cast<int>(options.embeds_scaling);
  INSTANTID_CHECK(scaling >= 0 && scaling <= static_cast<int>(EmbedsScaling::kKMeanVCPenalty),
                  "PatchOptions.embeds_scaling: got enum value ", scaling,
                  ", expected one of V only, K+V, K+V w/ C penalty, K+mean(V) w/ C penalty");
  const int combine = static_cast<int>(options.combine);
  INSTANTID_CHECK(combine >= 0 && combine <= static_cast<int>(Combine::kConcat),
                  "PatchOptions.combine: got enum value ", combine,
                  ", expected one of average, norm average, concat");
  if (options.mask) {
    const HostTensor& mask = *options.mask;
    INSTANTID_CHECK(mask.ndim() == 3 && mask.numel() > 0, "PatchOptions.mask: got ",
                    mask.shape_str(), ", expected a non-empty [M, Hm, Wm]");
    for (std::int64_t i = 0; i < mask.numel(); ++i) {
      const float value = mask.data()[i];
      INSTANTID_CHECK(value >= 0.0f && value <= 1.0f, "PatchOptions.mask value at flat index ", i,
                      ": got ", value, ", expected a value in [0, 1]");
    }
  }
  if (options.sigma_range) {
    const SigmaRange& range = *options.sigma_range;
    INSTANTID_CHECK(!std::isnan(range.start) && !std::isnan(range.end) && range.end >= 0.0 &&
                        range.start >= range.end,
                    "PatchOptions.sigma_range: got start ", range.start, ", end ", range.end,
                    ", expected 0 <= end <= start");
  }
}

SigmaRange resolve_sigma_range(const PatchOptions& options, const DiscreteSchedule& schedule) {
  validate(options);
  if (options.sigma_range) return *options.sigma_range;
  // percent_to_sigma(p <= 0) is ComfyUI's Python float 999999999.9, kept in double here.
  auto to_sigma = [&](float p) {
    return p <= 0.0f ? kNoSigma : static_cast<double>(schedule.percent_to_sigma(p));
  };
  return SigmaRange{to_sigma(options.start_at), to_sigma(options.end_at)};
}

}  // namespace instantid
