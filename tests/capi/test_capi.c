/* The C API from a C program: handles, DLPack in and out, status codes and messages, and the
 * numbers (plain attention against a naive C implementation, linearity of the image term in the
 * weight, projection through DLPack equal to the patch built from embeddings). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "instantid/instantid.h"

static int g_passed = 0;
static int g_failed = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (cond) {                                                                      \
      ++g_passed;                                                                    \
    } else {                                                                         \
      ++g_failed;                                                                    \
      fprintf(stderr, "FAILED %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
              instantid_last_error());                                               \
    }                                                                                \
  } while (0)

static const char* data_dir(void) {
  const char* env = getenv("INSTANTID_TEST_DATA");
  return (env != NULL && *env != '\0') ? env : INSTANTID_TEST_DATA_DIR;
}

/* A float32 CPU DLTensor over caller-owned memory. */
typedef struct {
  DLTensor t;
  int64_t shape[3];
} Tensor3;

static void make_tensor(Tensor3* tensor, float* data, int ndim, int64_t d0, int64_t d1,
                        int64_t d2) {
  memset(tensor, 0, sizeof(*tensor));
  tensor->shape[0] = d0;
  tensor->shape[1] = d1;
  tensor->shape[2] = d2;
  tensor->t.data = data;
  tensor->t.device.device_type = kDLCPU;
  tensor->t.device.device_id = 0;
  tensor->t.ndim = ndim;
  tensor->t.dtype.code = kDLFloat;
  tensor->t.dtype.bits = 32;
  tensor->t.dtype.lanes = 1;
  tensor->t.shape = tensor->shape;
  tensor->t.strides = NULL;
  tensor->t.byte_offset = 0;
}

/* Deterministic values in [-scale, scale). */
static void fill(float* values, size_t n, uint32_t seed, float scale) {
  uint32_t state = seed * 2654435761u + 12345u;
  size_t i;
  for (i = 0; i < n; ++i) {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    values[i] = ((float)(state >> 8) / 16777216.0f * 2.0f - 1.0f) * scale;
  }
}

/* Naive multi-head attention, head size 64, scale 1/8, double accumulation. */
static void naive_attention(const float* q, const float* k, const float* v, float* out, int b,
                            int n, int l, int c) {
  int bi, ni, h, li, d;
  double* scores = (double*)malloc(sizeof(double) * (size_t)l);
  for (bi = 0; bi < b; ++bi)
    for (h = 0; h < c / 64; ++h)
      for (ni = 0; ni < n; ++ni) {
        double max_score = -1e300, sum = 0.0;
        const float* qrow = q + ((size_t)bi * n + ni) * c + h * 64;
        for (li = 0; li < l; ++li) {
          const float* krow = k + ((size_t)bi * l + li) * c + h * 64;
          double s = 0.0;
          for (d = 0; d < 64; ++d) s += (double)qrow[d] * krow[d];
          scores[li] = s / 8.0;
          if (scores[li] > max_score) max_score = scores[li];
        }
        for (li = 0; li < l; ++li) {
          scores[li] = exp(scores[li] - max_score);
          sum += scores[li];
        }
        for (d = 0; d < 64; ++d) {
          double acc = 0.0;
          for (li = 0; li < l; ++li) acc += scores[li] * v[((size_t)bi * l + li) * c + h * 64 + d];
          out[((size_t)bi * n + ni) * c + h * 64 + d] = (float)(acc / sum);
        }
      }
  free(scores);
}

static double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0.0;
  size_t i;
  for (i = 0; i < n; ++i) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (d != d) return INFINITY;
    if (d > m) m = d;
  }
  return m;
}

static void test_basics(void) {
  CHECK(strlen(instantid_version()) > 0);
  CHECK(strcmp(instantid_status_string(INSTANTID_OK), "ok") == 0);
  CHECK(strcmp(instantid_status_string(INSTANTID_ERROR_NO_FACE), "no face") == 0);
  CHECK(instantid_cuda_available() == 0 || instantid_cuda_available() == 1);
}

static void test_model_errors(void) {
  instantid_model* model = (instantid_model*)1;
  char path[4096];
  CHECK(instantid_model_load(NULL, NULL, &model) == INSTANTID_ERROR_INVALID_ARGUMENT);
  CHECK(model == NULL);
  CHECK(strstr(instantid_last_error(), "path") != NULL);
  CHECK(instantid_model_load("x", NULL, NULL) == INSTANTID_ERROR_INVALID_ARGUMENT);
  snprintf(path, sizeof(path), "%s/reference/no_such_model.safetensors", data_dir());
  CHECK(instantid_model_load(path, NULL, &model) == INSTANTID_ERROR);
  CHECK(model == NULL);
  CHECK(strstr(instantid_last_error(), "no_such_model") != NULL);
  /* The reduced fixture is not an SDXL checkpoint: loading it as SDXL names a mismatch. */
  snprintf(path, sizeof(path), "%s/reference/model.safetensors", data_dir());
  CHECK(instantid_model_load(path, NULL, &model) == INSTANTID_ERROR);
  CHECK(strlen(instantid_last_error()) > 0);
  instantid_model_free(NULL);
  instantid_patch_free(NULL);
  instantid_face_analysis_free(NULL);
}

enum { kB = 2, kN = 23, kL = 77, kC = 64 };

static void test_patch(void) {
  static const instantid_layout layout = {10, 64, 64, 1};
  instantid_model* model = NULL;
  instantid_patch* patch = NULL;
  instantid_patch* half_patch = NULL;
  instantid_patch* token_patch = NULL;
  instantid_patch_options options;
  instantid_attention_call call;
  instantid_layer_id id, unreached[80];
  Tensor3 embeds_t, q_t, k_t, v_t, out_t, bad_t;
  static float embeds[2 * 64], q[kB * kN * kC], k[kB * kL * kC], v[kB * kL * kC];
  static float out[kB * kN * kC], expected[kB * kN * kC], full[kB * kN * kC],
      half[kB * kN * kC], from_tokens[kB * kN * kC];
  const int cond_or_uncond[2] = {1, 0};
  char path[4096];
  int layers = 0, output_dim = 0, width = 0, count = -1, active = -1, i;
  DLManagedTensor *cond = NULL, *uncond = NULL, *uncond_input = NULL;
  double linearity = 0.0;

  snprintf(path, sizeof(path), "%s/reference/model.safetensors", data_dir());
  CHECK(instantid_model_load(path, &layout, &model) == INSTANTID_OK);
  if (model == NULL) return;
  CHECK(instantid_model_info(model, &layers, &output_dim) == INSTANTID_OK);
  CHECK(layers == 70);
  CHECK(output_dim == 32);
  CHECK(instantid_model_layer(model, 0, &id, &width) == INSTANTID_OK);
  CHECK(id.block == INSTANTID_BLOCK_INPUT && id.block_id == 4 && id.transformer_index == 0);
  CHECK(width == 64);
  CHECK(instantid_model_layer(model, 69, &id, &width) == INSTANTID_OK);
  CHECK(id.block == INSTANTID_BLOCK_MIDDLE && id.transformer_index == 9 && width == 128);
  CHECK(instantid_model_layer(model, 70, &id, &width) == INSTANTID_ERROR_INVALID_ARGUMENT);

  fill(embeds, 2 * 64, 1, 1.0f);
  fill(q, kB * kN * kC, 2, 1.0f);
  fill(k, kB * kL * kC, 3, 1.0f);
  fill(v, kB * kL * kC, 4, 1.0f);
  make_tensor(&embeds_t, embeds, 2, 2, 64, 0);
  make_tensor(&q_t, q, 3, kB, kN, kC);
  make_tensor(&k_t, k, 3, kB, kL, kC);
  make_tensor(&v_t, v, 3, kB, kL, kC);
  make_tensor(&out_t, out, 3, kB, kN, kC);

  /* Projection through DLPack. */
  CHECK(instantid_project(model, &embeds_t.t, INSTANTID_COMBINE_AVERAGE, 0.0f, &cond, &uncond,
                          &uncond_input) == INSTANTID_OK);
  if (cond != NULL && uncond != NULL && uncond_input != NULL) {
    CHECK(cond->dl_tensor.ndim == 3 && cond->dl_tensor.shape[0] == 1 &&
          cond->dl_tensor.shape[1] == 16 && cond->dl_tensor.shape[2] == 32);
    CHECK(cond->dl_tensor.dtype.code == kDLFloat && cond->dl_tensor.dtype.bits == 32);
    CHECK(uncond_input->dl_tensor.shape[2] == 64);
  }
  CHECK(instantid_project(model, &embeds_t.t, 7, 0.0f, NULL, NULL, NULL) ==
        INSTANTID_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(instantid_last_error(), "combine") != NULL);

  /* Weight 0: the output is plain attention, checked against a naive C implementation. */
  instantid_patch_options_default(&options);
  options.weight = 0.0f;
  CHECK(instantid_patch_create(model, &embeds_t.t, &options, &patch) == INSTANTID_OK);
  memset(&call, 0, sizeof(call));
  call.q = &q_t.t;
  call.k = &k_t.t;
  call.v = &v_t.t;
  call.out = &out_t.t;
  call.layer.block = INSTANTID_BLOCK_INPUT;
  call.layer.block_id = 4;
  call.layer.transformer_index = 1;
  call.has_sigma = 1;
  call.sigma = 5.0;
  call.cond_or_uncond = cond_or_uncond;
  call.num_chunks = 2;
  CHECK(instantid_patch_attention(patch, &call) == INSTANTID_OK);
  naive_attention(q, k, v, expected, kB, kN, kL, kC);
  CHECK(max_abs_diff(out, expected, kB * kN * kC) < 1e-5);
  instantid_patch_free(patch);
  patch = NULL;

  /* The image term is linear in the weight ("V only"): (w=1) - text == 2 * ((w=0.5) - text). */
  instantid_patch_options_default(&options);
  options.weight = 1.0f;
  CHECK(instantid_patch_create(model, &embeds_t.t, &options, &patch) == INSTANTID_OK);
  options.weight = 0.5f;
  CHECK(instantid_patch_create(model, &embeds_t.t, &options, &half_patch) == INSTANTID_OK);
  if (patch != NULL && half_patch != NULL) {
    call.out = &out_t.t;
    CHECK(instantid_patch_attention(patch, &call) == INSTANTID_OK);
    memcpy(full, out, sizeof(out));
    CHECK(instantid_patch_attention(half_patch, &call) == INSTANTID_OK);
    memcpy(half, out, sizeof(out));
    for (i = 0; i < kB * kN * kC; ++i) {
      double d = fabs((full[i] - expected[i]) - 2.0 * (half[i] - expected[i]));
      if (d > linearity) linearity = d;
    }
    CHECK(linearity < 1e-4);
    CHECK(max_abs_diff(full, expected, kB * kN * kC) > 1e-3); /* the identity does something */

    /* add_image_attention accumulates only the image term onto the caller's text attention. */
    memcpy(out, expected, sizeof(out));
    CHECK(instantid_patch_add_image_attention(patch, &call) == INSTANTID_OK);
    CHECK(max_abs_diff(out, full, kB * kN * kC) < 1e-4);

    /* The same identity from the projected tokens gives the same output. */
    if (cond != NULL && uncond != NULL) {
      instantid_patch_options_default(&options);
      CHECK(instantid_patch_create_from_tokens(model, &cond->dl_tensor, &uncond->dl_tensor,
                                               &options, &token_patch) == INSTANTID_OK);
      if (token_patch != NULL) {
        CHECK(instantid_patch_attention(token_patch, &call) == INSTANTID_OK);
        memcpy(from_tokens, out, sizeof(out));
        CHECK(max_abs_diff(from_tokens, full, kB * kN * kC) < 1e-5);
      }
    }

    /* Step bookkeeping: after begin_step and one call, the other 69 layers are unreached. */
    CHECK(instantid_patch_begin_step(patch) == INSTANTID_OK);
    CHECK(instantid_patch_attention(patch, &call) == INSTANTID_OK);
    CHECK(instantid_patch_unreached_layers(patch, unreached, 80, &count) == INSTANTID_OK);
    CHECK(count == 69);
    CHECK(unreached[0].block == INSTANTID_BLOCK_INPUT && unreached[0].transformer_index == 0);
    CHECK(instantid_patch_unreached_layers(patch, NULL, 0, &count) == INSTANTID_OK);
    CHECK(count == 69);
    CHECK(instantid_patch_unreached_layers(patch, NULL, 5, &count) ==
          INSTANTID_ERROR_INVALID_ARGUMENT);

    /* Errors: a wrong width, an unknown layer, a bad block, a NULL tensor. */
    make_tensor(&bad_t, q, 3, kB, kN * 2, kC / 2);
    call.q = &bad_t.t;
    CHECK(instantid_patch_attention(patch, &call) == INSTANTID_ERROR);
    CHECK(strstr(instantid_last_error(), "got") != NULL);
    call.q = &q_t.t;
    call.layer.block_id = 6;
    CHECK(instantid_patch_attention(patch, &call) == INSTANTID_ERROR);
    CHECK(strlen(instantid_last_error()) > 0);
    call.layer.block = 9;
    CHECK(instantid_patch_attention(patch, &call) == INSTANTID_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(instantid_last_error(), "layer.block") != NULL);
    call.layer.block = INSTANTID_BLOCK_INPUT;
    call.layer.block_id = 4;
    call.k = NULL;
    CHECK(instantid_patch_attention(patch, &call) == INSTANTID_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(instantid_last_error(), "call.k") != NULL);
    call.k = &k_t.t;
    CHECK(instantid_patch_attention(NULL, &call) == INSTANTID_ERROR_INVALID_ARGUMENT);
    CHECK(instantid_patch_attention(patch, NULL) == INSTANTID_ERROR_INVALID_ARGUMENT);
    /* A successful call clears the message. */
    CHECK(instantid_patch_attention(patch, &call) == INSTANTID_OK);
    CHECK(strcmp(instantid_last_error(), "") == 0);
  }
  instantid_patch_free(patch);
  instantid_patch_free(half_patch);
  instantid_patch_free(token_patch);
  patch = NULL;

  /* Sigma gating: end_at 0.5 → inactive at sigma 0 (end of sampling), active at sigma 10. */
  instantid_patch_options_default(&options);
  options.start_at = 0.0f;
  options.end_at = 0.5f;
  CHECK(instantid_patch_create(model, &embeds_t.t, &options, &patch) == INSTANTID_OK);
  if (patch != NULL) {
    CHECK(instantid_patch_active_at(patch, 10.0, &active) == INSTANTID_OK && active == 1);
    CHECK(instantid_patch_active_at(patch, 0.01, &active) == INSTANTID_OK && active == 0);
  }
  instantid_patch_free(patch);
  patch = NULL;
  options.end_at = 2.0f; /* out of range */
  CHECK(instantid_patch_create(model, &embeds_t.t, &options, &patch) == INSTANTID_ERROR);
  CHECK(patch == NULL);
  CHECK(strstr(instantid_last_error(), "end_at") != NULL);

  /* A mask of zeros removes the image term everywhere: the output is plain attention again. */
  {
    static float zeros[1 * 16 * 12];
    Tensor3 mask_t;
    memset(zeros, 0, sizeof(zeros));
    make_tensor(&mask_t, zeros, 3, 1, 16, 12);
    instantid_patch_options_default(&options);
    options.mask = &mask_t.t;
    CHECK(instantid_patch_create(model, &embeds_t.t, &options, &patch) == INSTANTID_OK);
    if (patch != NULL) {
      call.original_height = 16;
      call.original_width = 12;
      CHECK(instantid_patch_attention(patch, &call) == INSTANTID_OK);
      CHECK(max_abs_diff(out, expected, kB * kN * kC) < 1e-5);
      call.original_height = 0; /* a mask needs the latent size */
      CHECK(instantid_patch_attention(patch, &call) == INSTANTID_ERROR);
      CHECK(strlen(instantid_last_error()) > 0);
    }
    instantid_patch_free(patch);
    patch = NULL;
  }

  if (cond != NULL) cond->deleter(cond);
  if (uncond != NULL) uncond->deleter(uncond);
  if (uncond_input != NULL) uncond_input->deleter(uncond_input);
  instantid_model_free(model);
}

static void test_face(void) {
  const char* env = getenv("INSTANTID_SHARED_DIR");
  const char* shared = (env != NULL && *env != '\0') ? env : INSTANTID_DEFAULT_SHARED_DIR;
  char folder[4096], image[4096];
  instantid_face_analysis* analysis = NULL;
  DLManagedTensor* embedding = NULL;
  instantid_status status;
  FILE* probe;
  snprintf(folder, sizeof(folder), "%s/models", shared);
  snprintf(image, sizeof(image), "%s/faces/astronaut.png", shared);
  probe = fopen(image, "rb");
  if (probe == NULL) {
    printf("WARNING: %s absent (set INSTANTID_SHARED_DIR): face analysis part skipped\n", image);
    return;
  }
  fclose(probe);
  status = instantid_face_analysis_load(folder, &analysis);
  if (status == INSTANTID_ERROR_UNAVAILABLE) {
    printf("WARNING: built without the face component: face analysis part skipped\n");
    return;
  }
  CHECK(status == INSTANTID_OK);
  if (analysis == NULL) return;
  CHECK(instantid_face_embed_file(analysis, image, &embedding) == INSTANTID_OK);
  if (embedding != NULL) {
    CHECK(embedding->dl_tensor.ndim == 2 && embedding->dl_tensor.shape[0] == 1 &&
          embedding->dl_tensor.shape[1] > 0);
    embedding->deleter(embedding);
    embedding = NULL;
  }
  snprintf(image, sizeof(image), "%s/faces/no_face_coffee.png", shared);
  CHECK(instantid_face_embed_file(analysis, image, &embedding) == INSTANTID_ERROR_NO_FACE);
  CHECK(embedding == NULL);
  CHECK(strstr(instantid_last_error(), "no_face_coffee") != NULL);
  instantid_face_analysis_free(analysis);
}

int main(void) {
  test_basics();
  test_model_errors();
  test_patch();
  test_face();
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
