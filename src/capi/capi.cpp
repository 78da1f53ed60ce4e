// The C API: every entry point validates its pointers, runs the C++ API inside a try block and
// turns exceptions into a status plus a thread-local message. Nothing throws across the boundary.

#include "instantid/instantid.h"

#include <exception>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "instantid/error.hpp"
#include "instantid/layout.hpp"
#include "instantid/model.hpp"
#include "instantid/patch.hpp"
#include "instantid/tensor.hpp"

#ifdef INSTANTID_CAPI_HAS_FACE
#include "instantid/face/analysis.hpp"
#include "instantid/face/image.hpp"
#endif

struct instantid_model {
  instantid::InstantIDModel model;
};

struct instantid_patch {
  instantid::AttentionPatch patch;
};

#ifdef INSTANTID_CAPI_HAS_FACE
struct instantid_face_analysis {
  instantid::face::FaceAnalysis analysis;
};
#endif

namespace {

thread_local std::string g_last_error;

// Raised inside the C layer for arguments the C++ API never sees (null pointers, bad enums).
struct InvalidArgument {
  std::string message;
};
struct NoFace {
  std::string message;
};
struct Unavailable {
  std::string message;
};

template <typename Body>
instantid_status guarded(const char* function, Body&& body) noexcept {
  g_last_error.clear();
  try {
    body();
    return INSTANTID_OK;
  } catch (const InvalidArgument& e) {
    g_last_error = std::string(function) + ": " + e.message;
    return INSTANTID_ERROR_INVALID_ARGUMENT;
  } catch (const NoFace& e) {
    g_last_error = std::string(function) + ": " + e.message;
    return INSTANTID_ERROR_NO_FACE;
  } catch (const Unavailable& e) {
    g_last_error = std::string(function) + ": " + e.message;
    return INSTANTID_ERROR_UNAVAILABLE;
  } catch (const instantid::Error& e) {
    g_last_error = std::string(function) + ": " + e.what();
    return INSTANTID_ERROR;
  } catch (const std::bad_alloc&) {
    g_last_error = std::string(function) + ": out of memory";
    return INSTANTID_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    g_last_error = std::string(function) + ": internal error: " + e.what();
    return INSTANTID_ERROR_INTERNAL;
  } catch (...) {
    g_last_error = std::string(function) + ": internal error: unknown exception";
    return INSTANTID_ERROR_INTERNAL;
  }
}

template <typename T>
T* require(T* pointer, const char* name) {
  if (pointer == nullptr) {
    throw InvalidArgument{std::string(name) + ": got NULL, expected a valid pointer"};
  }
  return pointer;
}

int require_enum(int value, int count, const char* name) {
  if (value < 0 || value >= count) {
    throw InvalidArgument{instantid::make_message(name, ": got ", value, ", expected 0..",
                                                  count - 1)};
  }
  return value;
}

instantid::HostTensor host_tensor(const DLTensor* tensor, const char* name) {
  const instantid::TensorView view = instantid::from_dlpack(*require(tensor, name));
  if (view.device.type != instantid::DeviceType::kCpu) {
    throw instantid::Error(instantid::make_message(name, ": device: got ",
                                                   instantid::device_name(view.device),
                                                   ", expected cpu"));
  }
  return instantid::HostTensor::from_view(view);
}

instantid::LayerId layer_id(const instantid_layer_id& id) {
  require_enum(id.block, 3, "layer.block");
  instantid::LayerId result;
  result.block = static_cast<instantid::BlockType>(id.block);
  result.block_id = id.block_id;
  result.transformer_index = id.transformer_index;
  return result;
}

instantid_layer_id c_layer_id(const instantid::LayerId& id) {
  return instantid_layer_id{static_cast<int>(id.block), id.block_id, id.transformer_index};
}

instantid::PatchOptions patch_options(const instantid_patch_options* c) {
  instantid::PatchOptions options;
  if (c == nullptr) return options;
  options.weight = c->weight;
  options.start_at = c->start_at;
  options.end_at = c->end_at;
  options.noise = c->noise;
  options.embeds_scaling = static_cast<instantid::EmbedsScaling>(
      require_enum(c->embeds_scaling, 4, "options.embeds_scaling"));
  options.combine =
      static_cast<instantid::Combine>(require_enum(c->combine, 3, "options.combine"));
  if (c->mask != nullptr) options.mask = host_tensor(c->mask, "options.mask");
  if (c->use_sigma_range != 0) {
    options.sigma_range = instantid::SigmaRange{c->sigma_start, c->sigma_end};
  }
  return options;
}

instantid::BackendOptions backend_options(const instantid_patch_options* c) {
  instantid::BackendOptions backend;
  if (c == nullptr) return backend;
  backend.backend = static_cast<instantid::Backend>(require_enum(c->backend, 2, "options.backend"));
  backend.cuda_device = c->cuda_device;
  backend.cuda_dtype = static_cast<instantid::DType>(require_enum(c->cuda_dtype, 3, "options.cuda_dtype"));
  return backend;
}

instantid::AttentionCall attention_call(const instantid_attention_call* c) {
  require(c, "call");
  instantid::AttentionCall call;
  call.q = instantid::from_dlpack(*require(c->q, "call.q"));
  call.k = instantid::from_dlpack(*require(c->k, "call.k"));
  call.v = instantid::from_dlpack(*require(c->v, "call.v"));
  call.out = instantid::from_dlpack(*require(c->out, "call.out"));
  call.layer = layer_id(c->layer);
  if (c->has_sigma != 0) call.sigma = c->sigma;
  call.cond_or_uncond = c->cond_or_uncond;
  call.num_chunks = c->num_chunks;
  if (c->cond_or_uncond != nullptr && c->num_chunks < 1) {
    throw InvalidArgument{instantid::make_message("call.num_chunks: got ", c->num_chunks,
                                                  ", expected >= 1 with cond_or_uncond")};
  }
  call.original_height = c->original_height;
  call.original_width = c->original_width;
  call.stream = c->stream;
  return call;
}

void give(DLManagedTensor** out, instantid::HostTensor tensor) {
  if (out != nullptr) *out = instantid::to_dlpack(std::move(tensor));
}

}  // namespace

extern "C" {

const char* instantid_version(void) { return INSTANTID_VERSION_STRING; }

const char* instantid_status_string(instantid_status status) {
  switch (status) {
    case INSTANTID_OK: return "ok";
    case INSTANTID_ERROR: return "error";
    case INSTANTID_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case INSTANTID_ERROR_OUT_OF_MEMORY: return "out of memory";
    case INSTANTID_ERROR_NO_FACE: return "no face";
    case INSTANTID_ERROR_UNAVAILABLE: return "unavailable";
    case INSTANTID_ERROR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

const char* instantid_last_error(void) { return g_last_error.c_str(); }

int instantid_cuda_available(void) {
  try {
    return instantid::cuda_available() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

instantid_status instantid_model_load(const char* path, const instantid_layout* layout,
                                      instantid_model** out_model) {
  return guarded("instantid_model_load", [&] {
    require(out_model, "out_model");
    *out_model = nullptr;
    require(path, "path");
    instantid::ModelLayout model_layout = instantid::ModelLayout::sdxl();
    if (layout != nullptr && (layout->width_divisor != 0 || layout->embed_dim != 0 ||
                              layout->dim != 0 || layout->heads != 0)) {
      model_layout = instantid::ModelLayout::reduced(layout->width_divisor, layout->embed_dim,
                                                     layout->dim, layout->heads);
    }
    *out_model = new instantid_model{instantid::InstantIDModel::load(path, model_layout)};
  });
}

void instantid_model_free(instantid_model* model) { delete model; }

instantid_status instantid_model_info(const instantid_model* model, int* num_layers,
                                      int* output_dim) {
  return guarded("instantid_model_info", [&] {
    require(model, "model");
    if (num_layers != nullptr) *num_layers = model->model.layout().num_layers();
    if (output_dim != nullptr) *output_dim = model->model.output_dim();
  });
}

instantid_status instantid_model_layer(const instantid_model* model, int index,
                                       instantid_layer_id* id, int* width) {
  return guarded("instantid_model_layer", [&] {
    require(model, "model");
    const auto& layers = model->model.layout().layers;
    if (index < 0 || index >= static_cast<int>(layers.size())) {
      throw InvalidArgument{instantid::make_message("index: got ", index, ", expected 0..",
                                                    layers.size() - 1)};
    }
    const instantid::LayerInfo& layer = layers[static_cast<std::size_t>(index)];
    if (id != nullptr) *id = c_layer_id(layer.id);
    if (width != nullptr) *width = layer.width;
  });
}

instantid_status instantid_project(const instantid_model* model, const DLTensor* embeds,
                                   int combine, float noise, DLManagedTensor** cond,
                                   DLManagedTensor** uncond, DLManagedTensor** uncond_input) {
  return guarded("instantid_project", [&] {
    require(model, "model");
    const auto mode = static_cast<instantid::Combine>(require_enum(combine, 3, "combine"));
    instantid::ImageTokens tokens = instantid::project_face_embeddings(
        model->model, host_tensor(embeds, "embeds"), mode, noise);
    // Hand out only after everything succeeded, so a failure leaks nothing.
    give(cond, std::move(tokens.cond));
    give(uncond, std::move(tokens.uncond));
    give(uncond_input, std::move(tokens.uncond_input));
  });
}

void instantid_patch_options_default(instantid_patch_options* options) {
  if (options == nullptr) return;
  *options = instantid_patch_options{};
  options->weight = 1.0f;
  options->start_at = 0.0f;
  options->end_at = 1.0f;
  options->noise = 0.0f;
  options->embeds_scaling = INSTANTID_SCALING_V_ONLY;
  options->combine = INSTANTID_COMBINE_AVERAGE;
  options->mask = nullptr;
  options->use_sigma_range = 0;
  options->sigma_start = instantid::kNoSigma;
  options->sigma_end = 0.0;
  options->backend = INSTANTID_BACKEND_CPU;
  options->cuda_device = 0;
  options->cuda_dtype = INSTANTID_F16;
}

instantid_status instantid_patch_create(const instantid_model* model, const DLTensor* face_embeds,
                                        const instantid_patch_options* options,
                                        instantid_patch** out_patch) {
  return guarded("instantid_patch_create", [&] {
    require(out_patch, "out_patch");
    *out_patch = nullptr;
    require(model, "model");
    *out_patch = new instantid_patch{instantid::AttentionPatch(
        model->model, host_tensor(face_embeds, "face_embeds"), patch_options(options),
        backend_options(options))};
  });
}

instantid_status instantid_patch_create_from_tokens(const instantid_model* model,
                                                    const DLTensor* cond, const DLTensor* uncond,
                                                    const instantid_patch_options* options,
                                                    instantid_patch** out_patch) {
  return guarded("instantid_patch_create_from_tokens", [&] {
    require(out_patch, "out_patch");
    *out_patch = nullptr;
    require(model, "model");
    instantid::ImageTokens tokens;
    tokens.cond = host_tensor(cond, "cond");
    tokens.uncond = host_tensor(uncond, "uncond");
    *out_patch = new instantid_patch{instantid::AttentionPatch(
        model->model, tokens, patch_options(options), backend_options(options))};
  });
}

void instantid_patch_free(instantid_patch* patch) { delete patch; }

instantid_status instantid_patch_stack(instantid_patch* patch, const instantid_model* model,
                                       const DLTensor* face_embeds,
                                       const instantid_patch_options* options) {
  return guarded("instantid_patch_stack", [&] {
    require(patch, "patch");
    require(model, "model");
    patch->patch.stack(model->model, host_tensor(face_embeds, "face_embeds"),
                       patch_options(options));
  });
}

instantid_status instantid_patch_attention(instantid_patch* patch,
                                           const instantid_attention_call* call) {
  return guarded("instantid_patch_attention", [&] {
    require(patch, "patch");
    patch->patch.attention(attention_call(call));
  });
}

instantid_status instantid_patch_add_image_attention(instantid_patch* patch,
                                                     const instantid_attention_call* call) {
  return guarded("instantid_patch_add_image_attention", [&] {
    require(patch, "patch");
    patch->patch.add_image_attention(attention_call(call));
  });
}

instantid_status instantid_patch_prepare_resolution(instantid_patch* patch, int original_height,
                                                    int original_width) {
  return guarded("instantid_patch_prepare_resolution", [&] {
    require(patch, "patch");
    patch->patch.prepare_resolution(original_height, original_width);
  });
}

instantid_status instantid_patch_begin_step(instantid_patch* patch) {
  return guarded("instantid_patch_begin_step", [&] { require(patch, "patch")->patch.begin_step(); });
}

instantid_status instantid_patch_unreached_layers(const instantid_patch* patch,
                                                  instantid_layer_id* ids, int capacity,
                                                  int* count) {
  return guarded("instantid_patch_unreached_layers", [&] {
    require(patch, "patch");
    require(count, "count");
    if (capacity < 0 || (capacity > 0 && ids == nullptr)) {
      throw InvalidArgument{instantid::make_message(
          "ids/capacity: got ", ids == nullptr ? "NULL" : "ids", " with capacity ", capacity,
          ", expected capacity >= 0 and ids non-NULL when capacity > 0")};
    }
    const std::vector<instantid::LayerId> unreached = patch->patch.unreached_layers();
    *count = static_cast<int>(unreached.size());
    for (std::size_t i = 0; i < unreached.size() && static_cast<int>(i) < capacity; ++i) {
      ids[i] = c_layer_id(unreached[i]);
    }
  });
}

instantid_status instantid_patch_active_at(const instantid_patch* patch, double sigma,
                                           int* active) {
  return guarded("instantid_patch_active_at", [&] {
    require(patch, "patch");
    require(active, "active");
    *active = patch->patch.active_at(sigma) ? 1 : 0;
  });
}

#ifdef INSTANTID_CAPI_HAS_FACE

instantid_status instantid_face_analysis_load(const char* folder,
                                              instantid_face_analysis** out_analysis) {
  return guarded("instantid_face_analysis_load", [&] {
    require(out_analysis, "out_analysis");
    *out_analysis = nullptr;
    require(folder, "folder");
    *out_analysis = new instantid_face_analysis{instantid::face::FaceAnalysis::load(folder)};
  });
}

void instantid_face_analysis_free(instantid_face_analysis* analysis) { delete analysis; }

instantid_status instantid_face_embed_file(const instantid_face_analysis* analysis,
                                           const char* image_path, DLManagedTensor** embedding) {
  return guarded("instantid_face_embed_file", [&] {
    require(analysis, "analysis");
    require(image_path, "image_path");
    require(embedding, "embedding");
    *embedding = nullptr;
    const instantid::face::Image image = instantid::face::load_image(image_path);
    const std::vector<instantid::face::ImageFaces> found = analysis->analysis.extract({image});
    if (found.empty() || found[0].embedding.empty()) {
      throw NoFace{instantid::make_message(image_path,
                                           ": faces: got none at any detection size, expected "
                                           "at least one")};
    }
    const auto size = static_cast<std::int64_t>(found[0].embedding.size());
    *embedding = instantid::to_dlpack(instantid::HostTensor({1, size}, found[0].embedding));
  });
}

#else

struct instantid_face_analysis {};

instantid_status instantid_face_analysis_load(const char*, instantid_face_analysis** out_analysis) {
  return guarded("instantid_face_analysis_load", [&] {
    if (out_analysis != nullptr) *out_analysis = nullptr;
    throw Unavailable{"face analysis: got a build without the face component, expected one"};
  });
}

void instantid_face_analysis_free(instantid_face_analysis* analysis) { delete analysis; }

instantid_status instantid_face_embed_file(const instantid_face_analysis*, const char*,
                                           DLManagedTensor** embedding) {
  return guarded("instantid_face_embed_file", [&] {
    if (embedding != nullptr) *embedding = nullptr;
    throw Unavailable{"face analysis: got a build without the face component, expected one"};
  });
}

#endif

}  // extern "C"
