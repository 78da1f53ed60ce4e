// Spec §2–§3: face embeddings → cond/uncond image tokens, on the CPU.

#include "instantid/reference.hpp"

namespace instantid {

namespace {

// [k, 16, D] → [1, 16·k, D]: the k Resampler outputs concatenated along the token axis.
HostTensor tokens_row(const HostTensor& per_image) {
  return per_image.reshaped({1, per_image.size(0) * per_image.size(1), per_image.size(2)});
}

}  // namespace

ImageTokens project_face_embeddings(const InstantIDModel& model, const HostTensor& embeds,
                                    Combine combine, float noise) {
  const int e = model.layout().embed_dim;
  INSTANTID_CHECK(embeds.ndim() >= 1 && embeds.size(embeds.ndim() - 1) == e,
                  "face embeddings: got ", embeds.shape_str(), ", expected [N, ", e, "] or [N, 1, ",
                  e, "]");
  HostTensor cond_input = ref::combine_embeddings(embeds, combine);  // [k, 1, E]
  HostTensor uncond_input = ref::uncond_input(cond_input, noise);    // [k, 1, E]
  ImageTokens tokens;
  tokens.cond = tokens_row(ref::resampler(model, cond_input));
  tokens.uncond = tokens_row(ref::resampler(model, uncond_input));
  tokens.uncond_input = std::move(uncond_input);
  return tokens;
}

}  // namespace instantid
