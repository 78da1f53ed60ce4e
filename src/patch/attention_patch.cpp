// The AttentionPatch front end (spec §2–§6): validates every argument before anything is computed,
// maps layer identities through the layout, decides which identities are active at a sigma and
// keeps the step bookkeeping. The backends (patch/backend.hpp) only compute.

#include <cmath>
#include <string>
#include <utility>

#include "instantid/reference.hpp"
#include "patch/backend.hpp"

namespace instantid {

namespace {

constexpr int kHeadDim = 64;

const char* backend_name(Backend backend) { return backend == Backend::kCpu ? "cpu" : "cuda"; }

void check_embeds(const ModelLayout& layout, const HostTensor& embeds) {
  const int e = layout.embed_dim;
  const bool shape_ok = (embeds.ndim() == 2 || (embeds.ndim() == 3 && embeds.size(1) == 1)) &&
                        embeds.size(0) > 0 && embeds.size(embeds.ndim() - 1) == e;
  if (!shape_ok) {
    throw_mismatch("AttentionPatch face_embeds", embeds.shape_str(),
                   make_message("[N, ", e, "] or [N, 1, ", e, "] with N >= 1"));
  }
  for (std::int64_t i = 0; i < embeds.numel(); ++i) {
    INSTANTID_CHECK(std::isfinite(embeds.data()[i]),
                    "AttentionPatch face_embeds value at flat index ", i, ": got ",
                    embeds.data()[i], ", expected a finite value");
  }
}

void check_tokens(const InstantIDModel& model, const ImageTokens& tokens) {
  const int d_out = model.output_dim();
  const HostTensor* parts[] = {&tokens.cond, &tokens.uncond};
  const char* names[] = {"cond", "uncond"};
  for (int i = 0; i < 2; ++i) {
    const HostTensor& t = *parts[i];
    INSTANTID_CHECK(t.ndim() == 3 && t.size(0) == 1 && t.size(1) > 0 && t.size(2) == d_out,
                    "AttentionPatch tokens.", names[i], ": got ", t.shape_str(),
                    ", expected [1, T, ", d_out, "] (D_out of the model)");
    for (std::int64_t j = 0; j < t.numel(); ++j) {
      INSTANTID_CHECK(std::isfinite(t.data()[j]), "AttentionPatch tokens.", names[i],
                      " value at flat index ", j, ": got ", t.data()[j],
                      ", expected a finite value");
    }
  }
  INSTANTID_CHECK(tokens.cond.shape() == tokens.uncond.shape(),
                  "AttentionPatch tokens.uncond: got ", tokens.uncond.shape_str(), ", expected ",
                  tokens.cond.shape_str(), " (the shape of tokens.cond)");
}

bool same_shape(const TensorView& a, const TensorView& b) {
  if (a.ndim != b.ndim) return false;
  for (int d = 0; d < a.ndim; ++d) {
    if (a.shape[static_cast<std::size_t>(d)] != b.shape[static_cast<std::size_t>(d)]) return false;
  }
  return true;
}

bool same_layers(const ModelLayout& a, const ModelLayout& b) {
  if (a.num_layers() != b.num_layers() || a.embed_dim != b.embed_dim) return false;
  for (std::size_t i = 0; i < a.layers.size(); ++i) {
    if (!(a.layers[i].id == b.layers[i].id) || a.layers[i].width != b.layers[i].width) return false;
  }
  return true;
}

}  // namespace

struct AttentionPatch::Impl {
  ModelLayout layout;
  BackendOptions backend_options;
  int output_dim = 0;
  std::unique_ptr<detail::PatchBackend> backend;
  std::vector<detail::IdentitySpec> identities;
  std::vector<char> reached;  // per layer: named by a call since begin_step()
  std::vector<char> active;   // per identity, reused by every call

  Impl(const InstantIDModel& model, const BackendOptions& options)
      : layout(model.layout()), backend_options(options), output_dim(model.output_dim()) {
    INSTANTID_CHECK(options.backend == Backend::kCpu || options.backend == Backend::kCuda,
                    "BackendOptions::backend: got enum value ", static_cast<int>(options.backend),
                    ", expected cpu or cuda");
    backend = options.backend == Backend::kCpu ? detail::make_cpu_backend(layout)
                                               : detail::make_cuda_backend(layout, options);
    reached.assign(static_cast<std::size_t>(layout.num_layers()), 0);
  }

  void check_model(const InstantIDModel& model) const {
    INSTANTID_CHECK(same_layers(model.layout(), layout) && model.output_dim() == output_dim,
                    "AttentionPatch::stack model ", model.source(), ": got ",
                    model.layout().num_layers(), " layers, D_out ", model.output_dim(),
                    ", expected the patch's layout (", layout.num_layers(),
                    " layers, same widths) "
                    "and D_out ",
                    output_dim);
  }

  void add(const InstantIDModel& model, ImageTokens tokens, const PatchOptions& options) {
    detail::IdentitySpec spec{std::move(tokens), options, resolve_sigma_range(options)};
    backend->add_identity(model, spec);
    identities.push_back(std::move(spec));
    active.assign(identities.size(), 0);
  }

  void add_embeds(const InstantIDModel& model, const HostTensor& embeds,
                  const PatchOptions& options) {
    validate(options);
    check_embeds(layout, embeds);
    const HostTensor cond_input = ref::combine_embeddings(embeds, options.combine);
    const HostTensor uncond_input = ref::uncond_input(cond_input, options.noise);
    add(model, backend->project(model, cond_input, uncond_input), options);
  }

  void add_tokens(const InstantIDModel& model, const ImageTokens& tokens,
                  const PatchOptions& options) {
    validate(options);
    check_tokens(model, tokens);
    add(model, tokens, options);
  }

  // Validates a call; returns the layer index and fills `active`.
  int check_call(const AttentionCall& call, bool include_text, const char* where) {
    const int index = layout.index_of(call.layer);
    const int width = layout.layers[static_cast<std::size_t>(index)].width;
// The message prefix, built only when a check fails: a valid call allocates nothing here.
#define INSTANTID_AT where, " at layer ", layer_id_string(call.layer), ": "
    INSTANTID_CHECK(width % kHeadDim == 0, INSTANTID_AT, "layer width: got ", width,
                    ", expected a multiple of ", kHeadDim);

    const Device expected_device = backend_options.backend == Backend::kCpu
                                       ? Device{DeviceType::kCpu, 0}
                                       : Device{DeviceType::kCuda, backend_options.cuda_device};
    auto check_view = [&](const TensorView& t, const char* name) {
      INSTANTID_CHECK(t.ndim == 3, INSTANTID_AT, name, " rank: got ", t.ndim, " (shape ",
                      t.shape_str(), "), expected 3 ([B, tokens, C])");
      INSTANTID_CHECK(t.device == expected_device, INSTANTID_AT, name, " device: got ",
                      device_name(t.device), ", expected ", device_name(expected_device), " (the ",
                      backend_name(backend_options.backend), " backend's device)");
      const int dtype = static_cast<int>(t.dtype);
      INSTANTID_CHECK(dtype >= 0 && dtype <= static_cast<int>(DType::kBF16), INSTANTID_AT, name,
                      " dtype: got enum value ", dtype, ", expected f32, f16 or bf16");
      INSTANTID_CHECK(t.data != nullptr || t.numel() == 0, INSTANTID_AT, name,
                      " data: got a null pointer for shape ", t.shape_str(), ", expected memory");
      std::int64_t count = 1;
      for (int d = 0; d < 3; ++d) {
        INSTANTID_CHECK(t.shape[static_cast<std::size_t>(d)] > 0, INSTANTID_AT, name,
                        " shape: got ", t.shape_str(), ", expected non-empty dimensions");
        INSTANTID_CHECK(!__builtin_mul_overflow(count, t.shape[static_cast<std::size_t>(d)], &count),
                        INSTANTID_AT, name, " shape: got ", t.shape_str(),
                        ", expected an element count that fits in int64");
      }
    };

    check_view(call.q, "q");
    const std::int64_t batch = call.q.shape[0], tokens = call.q.shape[1];
    INSTANTID_CHECK(call.q.shape[2] == width, INSTANTID_AT, "q channels: got ", call.q.shape[2],
                    ", expected ", width, " (the layer's width C = heads x 64)");
    if (backend_options.backend == Backend::kCuda) {
      INSTANTID_CHECK(call.q.dtype == backend_options.cuda_dtype, INSTANTID_AT, "q dtype: got ",
                      dtype_name(call.q.dtype), ", expected ",
                      dtype_name(backend_options.cuda_dtype), " (BackendOptions::cuda_dtype)");
    }
    check_view(call.out, "out");
    INSTANTID_CHECK(same_shape(call.out, call.q), INSTANTID_AT, "out shape: got ",
                    call.out.shape_str(), ", expected ", call.q.shape_str(), " (q's shape)");
    INSTANTID_CHECK(call.out.dtype == call.q.dtype, INSTANTID_AT, "out dtype: got ",
                    dtype_name(call.out.dtype), ", expected ", dtype_name(call.q.dtype),
                    " (q's dtype)");
    if (include_text) {
      check_view(call.k, "k");
      check_view(call.v, "v");
      INSTANTID_CHECK(call.k.shape[0] == batch || call.k.shape[0] == 1, INSTANTID_AT,
                      "k batch: got ", call.k.shape[0], ", expected ", batch, " (q's batch) or 1");
      INSTANTID_CHECK(call.k.shape[2] == width, INSTANTID_AT, "k channels: got ", call.k.shape[2],
                      ", expected ", width, " (the layer's width)");
      INSTANTID_CHECK(same_shape(call.v, call.k), INSTANTID_AT, "v shape: got ", call.v.shape_str(),
                      ", expected ", call.k.shape_str(), " (k's shape)");
      for (const TensorView* t : {&call.k, &call.v}) {
        INSTANTID_CHECK(t->dtype == call.q.dtype, INSTANTID_AT, t == &call.k ? "k" : "v",
                        " dtype: got ", dtype_name(t->dtype), ", expected ",
                        dtype_name(call.q.dtype), " (q's dtype)");
      }
    }

    int chunks = 1;
    if (call.cond_or_uncond == nullptr) {
      INSTANTID_CHECK(call.num_chunks <= 1, INSTANTID_AT,
                      "cond_or_uncond: got a null pointer with num_chunks ", call.num_chunks,
                      ", expected num_chunks entries");
    } else {
      chunks = call.num_chunks;
      INSTANTID_CHECK(chunks >= 1, INSTANTID_AT, "num_chunks: got ", chunks,
                      ", expected >= 1 with a cond_or_uncond array");
      for (int g = 0; g < chunks; ++g) {
        INSTANTID_CHECK(call.cond_or_uncond[g] == 0 || call.cond_or_uncond[g] == 1, INSTANTID_AT,
                        "cond_or_uncond[", g, "]: got ", call.cond_or_uncond[g],
                        ", expected 0 (cond) or 1 (uncond)");
      }
    }
    INSTANTID_CHECK(batch % chunks == 0, INSTANTID_AT, "batch: got ", batch,
                    ", expected a multiple of the ", chunks, " cond_or_uncond chunks (B = G x P)");

    INSTANTID_CHECK(!call.sigma || !std::isnan(*call.sigma), INSTANTID_AT,
                    "sigma: got NaN, expected a number or no sigma");
    const double sigma = call.sigma.value_or(kNoSigma);
    bool needs_size = false;
    for (std::size_t i = 0; i < identities.size(); ++i) {
      const detail::IdentitySpec& id = identities[i];
      active[i] = id.range.contains(sigma) && id.options.weight != 0.0f ? 1 : 0;
      needs_size = needs_size || (active[i] != 0 && id.options.mask.has_value());
    }
    if (needs_size) {
      INSTANTID_CHECK(call.original_height > 0 && call.original_width > 0, INSTANTID_AT,
                      "original size: got ", call.original_height, "x", call.original_width,
                      ", expected the positive latent height and width (an active identity has a "
                      "mask)");
      ref::mask_grid(call.original_height, call.original_width, tokens);  // throws if degenerate
    }
    return index;
#undef INSTANTID_AT
  }

  void run(const AttentionCall& call, bool include_text, const char* where) {
    const int index = check_call(call, include_text, where);
    backend->run(call, index, include_text, active);
    reached[static_cast<std::size_t>(index)] = 1;
  }
};

AttentionPatch::AttentionPatch(const InstantIDModel& model, const HostTensor& face_embeds,
                               const PatchOptions& options, const BackendOptions& backend)
    : impl_(std::make_unique<Impl>(model, backend)) {
  impl_->add_embeds(model, face_embeds, options);
}

AttentionPatch::AttentionPatch(const InstantIDModel& model, const ImageTokens& tokens,
                               const PatchOptions& options, const BackendOptions& backend)
    : impl_(std::make_unique<Impl>(model, backend)) {
  impl_->add_tokens(model, tokens, options);
}

AttentionPatch::~AttentionPatch() = default;
AttentionPatch::AttentionPatch(AttentionPatch&&) noexcept = default;
AttentionPatch& AttentionPatch::operator=(AttentionPatch&&) noexcept = default;

void AttentionPatch::stack(const InstantIDModel& model, const HostTensor& face_embeds,
                           const PatchOptions& options) {
  impl_->check_model(model);
  impl_->add_embeds(model, face_embeds, options);
}

void AttentionPatch::stack(const InstantIDModel& model, const ImageTokens& tokens,
                           const PatchOptions& options) {
  impl_->check_model(model);
  impl_->add_tokens(model, tokens, options);
}

void AttentionPatch::attention(const AttentionCall& call) { impl_->run(call, true, "attention"); }

void AttentionPatch::add_image_attention(const AttentionCall& call) {
  impl_->run(call, false, "add_image_attention");
}

void AttentionPatch::prepare_resolution(int original_height, int original_width) {
  INSTANTID_CHECK(original_height > 0 && original_width > 0, "prepare_resolution: got ",
                  original_height, "x", original_width,
                  ", expected a positive latent height and width");
  impl_->backend->prepare_resolution(original_height, original_width);
}

void AttentionPatch::begin_step() { impl_->reached.assign(impl_->reached.size(), 0); }

std::vector<LayerId> AttentionPatch::unreached_layers() const {
  std::vector<LayerId> out;
  for (std::size_t i = 0; i < impl_->reached.size(); ++i) {
    if (impl_->reached[i] == 0) out.push_back(impl_->layout.layers[i].id);
  }
  return out;
}

bool AttentionPatch::active_at(double sigma) const {
  for (const detail::IdentitySpec& id : impl_->identities) {
    if (id.range.contains(sigma) && id.options.weight != 0.0f) return true;
  }
  return false;
}

int AttentionPatch::num_identities() const { return static_cast<int>(impl_->identities.size()); }

const ImageTokens& AttentionPatch::tokens(int identity) const {
  INSTANTID_CHECK(identity >= 0 && identity < num_identities(),
                  "AttentionPatch::tokens identity: got ", identity, ", expected 0..",
                  num_identities() - 1);
  return impl_->identities[static_cast<std::size_t>(identity)].tokens;
}

SigmaRange AttentionPatch::sigma_range(int identity) const {
  INSTANTID_CHECK(identity >= 0 && identity < num_identities(),
                  "AttentionPatch::sigma_range identity: got ", identity, ", expected 0..",
                  num_identities() - 1);
  return impl_->identities[static_cast<std::size_t>(identity)].range;
}

const ModelLayout& AttentionPatch::layout() const { return impl_->layout; }

Backend AttentionPatch::backend() const { return impl_->backend_options.backend; }

std::size_t AttentionPatch::device_bytes() const { return impl_->backend->device_bytes(); }

}  // namespace instantid
