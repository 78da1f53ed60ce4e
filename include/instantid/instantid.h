/* instantid C API: InstantID face-identity conditioning for engines written in C or bound from
 * other languages (Python ctypes, Rust, Go, C#).
 *
 * - Opaque handles: instantid_model (a checkpoint), instantid_patch (one or more identities ready
 *   to patch attn2 layers), instantid_face_analysis (an insightface model folder).
 * - Tensors in and out are DLPack (dlpack/dlpack.h): inputs are borrowed DLTensor pointers (the
 *   caller keeps them alive during the call); outputs are DLManagedTensor* the caller releases
 *   with `t->deleter(t)`.
 * - Every function returns an instantid_status; on failure instantid_last_error() returns the
 *   message ("what: got X, expected Y") for the calling thread. No C++ exception ever crosses this
 *   boundary; no function prints, exits or aborts.
 * - Thread safety: distinct handles may be used from distinct threads; one handle must not be
 *   used by two threads at once. Models may be shared read-only by several patches.
 *
 * The numerical contract is the C++ API's (include/instantid/patch.hpp, docs/c_api.md). */
#ifndef INSTANTID_INSTANTID_H_
#define INSTANTID_INSTANTID_H_

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum instantid_status {
  INSTANTID_OK = 0,
  INSTANTID_ERROR = 1,                  /* the library refused or failed (see last_error) */
  INSTANTID_ERROR_INVALID_ARGUMENT = 2, /* null handle/pointer, bad enum value, bad capacity */
  INSTANTID_ERROR_OUT_OF_MEMORY = 3,
  INSTANTID_ERROR_NO_FACE = 4,          /* face analysis: no face in the image at any size */
  INSTANTID_ERROR_UNAVAILABLE = 5,      /* feature not built in (CUDA, face analysis) */
  INSTANTID_ERROR_INTERNAL = 6          /* an unexpected failure; please report it */
} instantid_status;

/* "0.1.0". */
const char* instantid_version(void);
/* "ok", "error", "invalid argument", ... */
const char* instantid_status_string(instantid_status status);
/* The message of the last failed call on this thread ("" if none). Valid until the next call
 * into the library on this thread. */
const char* instantid_last_error(void);
/* 1 when the library was built with CUDA and a device is visible, else 0. */
int instantid_cuda_available(void);

/* ---- Layers -------------------------------------------------------------------------------- */

typedef enum instantid_block { INSTANTID_BLOCK_INPUT = 0, INSTANTID_BLOCK_MIDDLE = 1,
                               INSTANTID_BLOCK_OUTPUT = 2 } instantid_block;

/* How the host names one attn2 layer: ComfyUI's (block, block id, transformer index). */
typedef struct instantid_layer_id {
  int block; /* instantid_block */
  int block_id;
  int transformer_index;
} instantid_layer_id;

/* ---- Model --------------------------------------------------------------------------------- */

typedef struct instantid_model instantid_model;

/* A reduced SDXL-structured layout (tests, small fixtures). All zero = the real SDXL layout. */
typedef struct instantid_layout {
  int width_divisor; /* every SDXL width divided by this (1 = SDXL) */
  int embed_dim;     /* face embedding length (512) */
  int dim;           /* Resampler width (1280) */
  int heads;         /* Resampler heads (20) */
} instantid_layout;

/* Loads ip-adapter.bin or .safetensors (by content). layout may be NULL (SDXL). */
instantid_status instantid_model_load(const char* path, const instantid_layout* layout,
                                      instantid_model** out_model);
void instantid_model_free(instantid_model* model); /* NULL is fine */
/* Number of patched layers (70 for SDXL) and D_out (2048 for SDXL). */
instantid_status instantid_model_info(const instantid_model* model, int* num_layers,
                                      int* output_dim);
/* Identity and width C of layer `index` (host call order). */
instantid_status instantid_model_layer(const instantid_model* model, int index,
                                       instantid_layer_id* id, int* width);

/* ---- Projection (face embeddings → image tokens) ------------------------------------------- */

typedef enum instantid_combine { INSTANTID_COMBINE_AVERAGE = 0, INSTANTID_COMBINE_NORM_AVERAGE = 1,
                                 INSTANTID_COMBINE_CONCAT = 2 } instantid_combine;

/* embeds: [N, E] or [N, 1, E] float32/float16/bfloat16 on the CPU. Returns new float32 CPU
 * tensors cond, uncond [1, 16·k, D_out] and uncond_input [k, 1, E]; any out pointer may be NULL
 * when that output is not wanted. */
instantid_status instantid_project(const instantid_model* model, const DLTensor* embeds,
                                   int combine, float noise, DLManagedTensor** cond,
                                   DLManagedTensor** uncond, DLManagedTensor** uncond_input);

/* ---- Patch --------------------------------------------------------------------------------- */

typedef enum instantid_embeds_scaling {
  INSTANTID_SCALING_V_ONLY = 0,
  INSTANTID_SCALING_K_V = 1,
  INSTANTID_SCALING_K_V_C_PENALTY = 2,
  INSTANTID_SCALING_K_MEAN_V_C_PENALTY = 3
} instantid_embeds_scaling;

typedef enum instantid_backend { INSTANTID_BACKEND_CPU = 0, INSTANTID_BACKEND_CUDA = 1 }
    instantid_backend;

typedef enum instantid_dtype { INSTANTID_F32 = 0, INSTANTID_F16 = 1, INSTANTID_BF16 = 2 }
    instantid_dtype;

typedef struct instantid_patch_options {
  float weight;         /* 0 disables; default 1 */
  float start_at;       /* [0, 1]; default 0 */
  float end_at;         /* [start_at, 1]; default 1 */
  float noise;          /* >= 0; default 0 */
  int embeds_scaling;   /* instantid_embeds_scaling; default V only */
  int combine;          /* instantid_combine; default average */
  const DLTensor* mask; /* [M, H, W] in [0, 1] on the CPU, or NULL */
  int use_sigma_range;  /* nonzero: use sigma_start/sigma_end instead of start_at/end_at */
  double sigma_start;
  double sigma_end;
  int backend;          /* instantid_backend (patch creation only; ignored by stack) */
  int cuda_device;
  int cuda_dtype;       /* instantid_dtype of the ip K/V held on the GPU: F16 or BF16 */
} instantid_patch_options;

/* Fills the defaults above. */
void instantid_patch_options_default(instantid_patch_options* options);

typedef struct instantid_patch instantid_patch;

/* One identity from raw face embeddings [N, E] / [N, 1, E]. The model must outlive the patch. */
instantid_status instantid_patch_create(const instantid_model* model, const DLTensor* face_embeds,
                                        const instantid_patch_options* options,
                                        instantid_patch** out_patch);
/* One identity from tokens already projected (cond, uncond [1, T, D_out]). */
instantid_status instantid_patch_create_from_tokens(const instantid_model* model,
                                                    const DLTensor* cond, const DLTensor* uncond,
                                                    const instantid_patch_options* options,
                                                    instantid_patch** out_patch);
void instantid_patch_free(instantid_patch* patch); /* NULL is fine */
/* Stacks another identity (own weight, mask, range, scaling) on every layer. */
instantid_status instantid_patch_stack(instantid_patch* patch, const instantid_model* model,
                                       const DLTensor* face_embeds,
                                       const instantid_patch_options* options);

/* One attn2 call of the host UNet (spec §4). */
typedef struct instantid_attention_call {
  const DLTensor* q;  /* [B, N, C], C = heads × 64 */
  const DLTensor* k;  /* [B, L, C] */
  const DLTensor* v;  /* [B, L, C] */
  DLTensor* out;      /* [B, N, C]; written (attention) or accumulated into (add_image_attention) */
  instantid_layer_id layer;
  int has_sigma;      /* 0: no sigma (999999999.9) */
  double sigma;
  const int* cond_or_uncond; /* num_chunks entries, 0 = cond, 1 = uncond; NULL = one cond chunk */
  int num_chunks;
  int original_height; /* latent size; needed only with a mask */
  int original_width;
  void* stream;        /* cudaStream_t for the CUDA backend; NULL = default stream */
} instantid_attention_call;

/* out = Attn(q, k, v) + Σ active identities' ip term. */
instantid_status instantid_patch_attention(instantid_patch* patch,
                                           const instantid_attention_call* call);
/* out += Σ active identities' ip term (the host computed Attn(q, k, v) itself). */
instantid_status instantid_patch_add_image_attention(instantid_patch* patch,
                                                     const instantid_attention_call* call);
/* Precomputes the masks for a latent size, so later calls never allocate. */
instantid_status instantid_patch_prepare_resolution(instantid_patch* patch, int original_height,
                                                    int original_width);
/* Forgets the layers reached so far (call at the start of each step). */
instantid_status instantid_patch_begin_step(instantid_patch* patch);
/* Layers no call named since begin_step(): writes up to `capacity` ids and the total count. */
instantid_status instantid_patch_unreached_layers(const instantid_patch* patch,
                                                  instantid_layer_id* ids, int capacity,
                                                  int* count);
/* *active = 1 when any identity is active at sigma. */
instantid_status instantid_patch_active_at(const instantid_patch* patch, double sigma,
                                           int* active);

/* ---- Face analysis ------------------------------------------------------------------------- */

typedef struct instantid_face_analysis instantid_face_analysis;

/* An insightface model folder (detector + recogniser .onnx, e.g. antelopev2), CPU executor. */
instantid_status instantid_face_analysis_load(const char* folder,
                                              instantid_face_analysis** out_analysis);
void instantid_face_analysis_free(instantid_face_analysis* analysis); /* NULL is fine */
/* The raw embedding [1, E] float32 of the largest face of the image file (ComfyUI_InstantID's
 * detection sizes). INSTANTID_ERROR_NO_FACE when there is none. */
instantid_status instantid_face_embed_file(const instantid_face_analysis* analysis,
                                           const char* image_path, DLManagedTensor** embedding);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* INSTANTID_INSTANTID_H_ */
