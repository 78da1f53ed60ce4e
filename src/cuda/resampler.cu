// GPU Resampler: float32 GEMMs (skinny weight-streaming kernel or cuBLAS) and the small kernels
// between them (spec §3).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <iterator>

#include "cuda/resampler.hpp"
#include "instantid/kernels/async_pipeline.cuh"

namespace instantid::cuda {

namespace {

constexpr int kNormThreads = 256;
constexpr int kNormPerThread = 16;  // columns a thread holds: rows up to kNormMaxCols
constexpr int kNormMaxCols = kNormThreads * kNormPerThread;
constexpr float kLayerNormEps = 1e-5f;  // every LayerNorm of the Resampler (PyTorch's default)
constexpr int kMaxKeys = 64;  // perceiver keys per batch row held in shared memory (T + 16)
constexpr int kAttnDimHead = 64;

// Programmatic dependent launch (sm_90+): every kernel of run() lets the next one start early
// (the skinny GEMM prefetches weights meanwhile) and waits for the previous one to finish before
// it touches activations. No-ops for a plain launch.
__device__ __forceinline__ void chain_start() {
  kernels::wait_for_previous_grid();
  kernels::allow_next_grid();
}

// One LayerNorm (eps 1e-5, biased variance, two-pass in fp32) over `rows` rows of `in` (row r
// reads row r % in_rows when in_rows is set: the broadcast latents). Row r goes to row
// (r / group) * out_group_stride + out_offset + r % group of out, and of out2 (row r) when set;
// copy (row r), when set, receives the input row itself.
struct NormJob {
  const float* in = nullptr;  // [in_rows or rows, cols]
  const float* weight = nullptr;
  const float* bias = nullptr;
  int rows = 0, group = 1, out_group_stride = 0, out_offset = 0, in_rows = 0;
  float* out = nullptr;
  float* out2 = nullptr;  // [rows, cols] or null
  float* copy = nullptr;  // [rows, cols] or null
};

// Blocks [0, first.rows) normalise rows of `first`, the following ones rows of `second` (two
// LayerNorms of one perceiver layer in one launch). A row (cols <= kNormMaxCols) is read once into
// registers; weight and bias never change, so they are loaded before the wait for the previous
// kernel. Each thread adds its columns in increasing order.
__global__ void layer_norm_kernel(NormJob first, NormJob second, int cols) {
  __shared__ float partial[kNormThreads / 32];
  __shared__ float stat;
  const bool is_first = static_cast<int>(blockIdx.x) < first.rows;
  const NormJob& job = is_first ? first : second;
  const int r = is_first ? static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x) - first.rows;
  const int tid = static_cast<int>(threadIdx.x);
  float w[kNormPerThread], b[kNormPerThread], v[kNormPerThread];
#pragma unroll
  for (int k = 0; k < kNormPerThread; ++k) {
    const int c = tid + k * kNormThreads;
    w[k] = c < cols ? job.weight[c] : 0.0f;
    b[k] = c < cols ? job.bias[c] : 0.0f;
  }
  chain_start();
  auto block_sum = [&](float x) {
    for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    if (tid % 32 == 0) partial[tid / 32] = x;
    __syncthreads();
    if (tid == 0) {
      float s = 0.0f;
      for (int i = 0; i < kNormThreads / 32; ++i) s += partial[i];
      stat = s;
    }
    __syncthreads();
    const float result = stat;
    __syncthreads();
    return result;
  };
  const float* x = job.in + static_cast<std::int64_t>(job.in_rows > 0 ? r % job.in_rows : r) * cols;
#pragma unroll
  for (int k = 0; k < kNormPerThread; ++k) {
    const int c = tid + k * kNormThreads;
    v[k] = c < cols ? x[c] : 0.0f;
  }
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < kNormPerThread; ++k) {
    const int c = tid + k * kNormThreads;
    if (c >= cols) continue;
    sum += v[k];
    if (job.copy != nullptr) job.copy[static_cast<std::int64_t>(r) * cols + c] = v[k];
  }
  const float mean = block_sum(sum) / static_cast<float>(cols);
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < kNormPerThread; ++k) {
    const float d = tid + k * kNormThreads < cols ? v[k] - mean : 0.0f;
    sq += d * d;
  }
  const float inv = rsqrtf(block_sum(sq) / static_cast<float>(cols) + kLayerNormEps);
  const std::int64_t out_row = static_cast<std::int64_t>(r / job.group) * job.out_group_stride +
                               job.out_offset + r % job.group;
#pragma unroll
  for (int k = 0; k < kNormPerThread; ++k) {
    const int c = tid + k * kNormThreads;
    if (c >= cols) continue;
    const float y = (v[k] - mean) * inv * w[k] + b[k];
    job.out[out_row * cols + c] = y;
    if (job.out2 != nullptr) job.out2[static_cast<std::int64_t>(r) * cols + c] = y;
  }
}

constexpr int kAttnQueriesPerBlock = 4;  // one warp per query

// Where the perceiver attention of batch row b finds its queries and keys ([key, 2·inner] rows of
// K then V): query i is row b·q_batch_rows + i of q; key j < tokens is row b·x_batch_rows + j of
// x, key j >= tokens row b·lat_batch_rows + j − tokens of lat. A batch stride of 0 gives every
// batch row the same rows (layer 0's queries and latent keys, computed once).
struct PerceiverInputs {
  const float* q = nullptr;  // [.., inner]
  const float* x = nullptr;  // [.., 2·inner]
  const float* lat = nullptr;
  int q_batch_rows = 0, tokens = 0, x_batch_rows = 0, lat_batch_rows = 0;
};

// Perceiver attention of (batch row, head, group of 4 queries) over keys = T input tokens then
// the 16 latents, scores and softmax in fp32: lane j scores keys j and j + 32, then each lane
// sums two dims of the output.
__global__ void perceiver_attention_kernel(PerceiverInputs in, float* out /*[B*16, inner]*/,
                                           int num_queries, int keys, int inner, float scale) {
  chain_start();
  constexpr int kStride = kAttnDimHead + 1;  // lanes read different keys' rows: no bank conflicts
  __shared__ float s_k[kMaxKeys * kStride];
  __shared__ __align__(16) float s_v[kMaxKeys][kAttnDimHead];
  __shared__ float s_p[kAttnQueriesPerBlock][kMaxKeys];
  const int b = blockIdx.x;
  const int h = blockIdx.y;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  // K and V rows as float4 (16 per row), every load issued before any is stored: one L2 round
  // trip instead of one per loop iteration.
  constexpr int kRowVec = kAttnDimHead / 4;
  constexpr int kVecPerThread = kMaxKeys * kRowVec / (32 * kAttnQueriesPerBlock);
  float4 k4[kVecPerThread], v4[kVecPerThread];
#pragma unroll
  for (int u = 0; u < kVecPerThread; ++u) {
    const int i = static_cast<int>(threadIdx.x) + u * 32 * kAttnQueriesPerBlock;
    if (i >= keys * kRowVec) continue;
    const int j = i / kRowVec;
    const float* key =
        j < in.tokens
            ? in.x + (static_cast<std::int64_t>(b) * in.x_batch_rows + j) * 2 * inner
            : in.lat +
                  (static_cast<std::int64_t>(b) * in.lat_batch_rows + j - in.tokens) * 2 * inner;
    const float4* row = reinterpret_cast<const float4*>(key + h * kAttnDimHead);
    k4[u] = row[i % kRowVec];
    v4[u] = row[inner / 4 + i % kRowVec];
  }
  // Each lane holds dims lane and lane + 32 of its warp's query, fetched while K/V land.
  const int qi = blockIdx.z * kAttnQueriesPerBlock + warp;
  const bool has_query = qi < num_queries;
  const float* qrow =
      in.q + (static_cast<std::int64_t>(b) * in.q_batch_rows + (has_query ? qi : 0)) * inner +
      h * kAttnDimHead;
  const float q_lo = has_query ? qrow[lane] : 0.0f, q_hi = has_query ? qrow[lane + 32] : 0.0f;
#pragma unroll
  for (int u = 0; u < kVecPerThread; ++u) {
    const int i = static_cast<int>(threadIdx.x) + u * 32 * kAttnQueriesPerBlock;
    if (i >= keys * kRowVec) continue;
    const int j = i / kRowVec, d = i % kRowVec * 4;
    s_k[j * kStride + d] = k4[u].x;
    s_k[j * kStride + d + 1] = k4[u].y;
    s_k[j * kStride + d + 2] = k4[u].z;
    s_k[j * kStride + d + 3] = k4[u].w;
    *reinterpret_cast<float4*>(&s_v[j][d]) = v4[u];
  }
  __syncthreads();
  if (!has_query) return;
  const int j0 = lane, j1 = lane + 32;
  float s0 = 0.0f, s1 = 0.0f;
#pragma unroll 8
  for (int d = 0; d < kAttnDimHead; ++d) {
    const float qd = __shfl_sync(0xffffffffu, d < 32 ? q_lo : q_hi, d % 32);
    if (j0 < keys) s0 = fmaf(qd, s_k[j0 * kStride + d], s0);
    if (j1 < keys) s1 = fmaf(qd, s_k[j1 * kStride + d], s1);
  }
  s0 = j0 < keys ? s0 * scale : -INFINITY;
  s1 = j1 < keys ? s1 * scale : -INFINITY;
  float m = fmaxf(s0, s1);
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  const float e0 = j0 < keys ? expf(s0 - m) : 0.0f;
  const float e1 = j1 < keys ? expf(s1 - m) : 0.0f;
  float l = e0 + e1;
  for (int o = 16; o > 0; o /= 2) l += __shfl_xor_sync(0xffffffffu, l, o);
  if (j0 < keys) s_p[warp][j0] = e0;
  if (j1 < keys) s_p[warp][j1] = e1;
  __syncwarp();
  float o0 = 0.0f, o1 = 0.0f;
  for (int j = 0; j < keys; ++j) {
    o0 = fmaf(s_p[warp][j], s_v[j][lane], o0);
    o1 = fmaf(s_p[warp][j], s_v[j][lane + 32], o1);
  }
  float* orow = out + (static_cast<std::int64_t>(b) * num_queries + qi) * inner + h * kAttnDimHead;
  orow[lane] = o0 / l;
  orow[lane + 32] = o1 / l;
}

// Launches kernel, as a programmatic dependent launch when `programmatic`.
template <typename... Params, typename... Args>
void launch(bool programmatic, void (*kernel)(Params...), dim3 grid, dim3 block,
            cudaStream_t stream, Args... args) {
  check_cuda(kernels::launch_kernel(programmatic, kernel, grid, block, 0, stream, args...),
             "GpuResampler: kernel launch");
}

void launch_layer_norm(bool programmatic, const NormJob& first, const NormJob& second, int cols,
                       cudaStream_t stream) {
  launch(programmatic, layer_norm_kernel, dim3(static_cast<unsigned>(first.rows + second.rows)),
         dim3(kNormThreads), stream, first, second, cols);
}

NormJob norm_job(const float* in, const float* weight, const float* bias, int rows, float* out,
                 int group = 1, int out_group_stride = 1, int out_offset = 0,
                 float* out2 = nullptr) {
  NormJob j;
  j.in = in;
  j.weight = weight;
  j.bias = bias;
  j.rows = rows;
  j.group = group;
  j.out_group_stride = out_group_stride;
  j.out_offset = out_offset;
  j.out = out;
  j.out2 = out2;
  return j;
}

// Programmatic dependent launches on sm_90+ when requested.
bool programmatic_launch_wanted(bool requested) {
  int device = 0, major = 0;
  check_cuda(cudaGetDevice(&device), "GpuResampler: cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
             "GpuResampler: compute capability");
  return requested && major >= 9;
}

}  // namespace

GpuResampler::GpuResampler(const ModelLayout& layout, int output_dim,
                           const ResamplerWeights& weights, int max_batch, int max_tokens,
                           const GpuResamplerOptions& options)
    : layout_(layout), output_dim_(output_dim), max_batch_(max_batch), max_tokens_(max_tokens) {
  const int dim = layout.dim, inner = layout.heads * layout.dim_head,
            ff = layout.dim * layout.ff_mult;
  INSTANTID_CHECK(layout.dim_head == kAttnDimHead, "GpuResampler: dim_head: got ", layout.dim_head,
                  ", expected ", kAttnDimHead);
  INSTANTID_CHECK(max_tokens >= 1 && max_tokens + layout.num_queries <= kMaxKeys,
                  "GpuResampler: tokens per input: got ", max_tokens, ", expected 1..",
                  kMaxKeys - layout.num_queries);
  INSTANTID_CHECK(max_batch >= 1, "GpuResampler: max_batch: got ", max_batch, ", expected >= 1");
  INSTANTID_CHECK(dim <= kNormMaxCols && output_dim >= 1 && output_dim <= kNormMaxCols,
                  "GpuResampler: widths: got dim ", dim, " and output_dim ", output_dim,
                  ", expected 1..", kNormMaxCols, " (LayerNorm rows are held in registers)");

  struct Entry {
    std::string name;
    std::vector<std::int64_t> shape;
    const float** slot;
  };
  std::vector<Entry> entries = {
      {"latents", {1, layout.num_queries, dim}, &latents_},
      {"proj_in.weight", {dim, layout.embed_dim}, &proj_in_w_},
      {"proj_in.bias", {dim}, &proj_in_b_},
      {"proj_out.weight", {output_dim, dim}, &proj_out_w_},
      {"proj_out.bias", {output_dim}, &proj_out_b_},
      {"norm_out.weight", {output_dim}, &norm_out_w_},
      {"norm_out.bias", {output_dim}, &norm_out_b_},
  };
  layers_.resize(static_cast<std::size_t>(layout.depth));
  for (int i = 0; i < layout.depth; ++i) {
    Layer& l = layers_[static_cast<std::size_t>(i)];
    const std::string p = "layers." + std::to_string(i) + ".";
    entries.push_back({p + "0.norm1.weight", {dim}, &l.norm1_w});
    entries.push_back({p + "0.norm1.bias", {dim}, &l.norm1_b});
    entries.push_back({p + "0.norm2.weight", {dim}, &l.norm2_w});
    entries.push_back({p + "0.norm2.bias", {dim}, &l.norm2_b});
    entries.push_back({p + "0.to_q.weight", {inner, dim}, &l.to_q});
    entries.push_back({p + "0.to_kv.weight", {2 * inner, dim}, &l.to_kv});
    entries.push_back({p + "0.to_out.weight", {dim, inner}, &l.to_out});
    entries.push_back({p + "1.0.weight", {dim}, &l.ff_norm_w});
    entries.push_back({p + "1.0.bias", {dim}, &l.ff_norm_b});
    entries.push_back({p + "1.1.weight", {ff, dim}, &l.ff_w1});
    entries.push_back({p + "1.3.weight", {dim, ff}, &l.ff_w3});
  }
  // The largest GEMM has the kv rows: batch · (tokens + 16).
  const std::int64_t rows = static_cast<std::int64_t>(max_batch) * layout.num_queries;
  const std::int64_t kv_rows =
      static_cast<std::int64_t>(max_batch) * (max_tokens + layout.num_queries);
  gemm_ = std::make_unique<LinearGemm>(static_cast<int>(kv_rows), options.gemm);
  programmatic_ = programmatic_launch_wanted(options.programmatic);
  gemm_->set_programmatic(programmatic_);
  fold_ff_norm_ = options.fold_layer_norms && gemm_->row_norm_supported(static_cast<int>(rows));
  first_constants_ = options.first_layer_constants && layout.depth >= 1 &&
                     gemm_->row_norm_supported(max_batch * max_tokens);

  // Every weight and workspace slice starts on a 256-byte boundary.
  const auto slice = [](std::int64_t floats) {
    return static_cast<std::size_t>(floats + 63) / 64 * 64;
  };
  std::size_t total = 0;
  std::vector<const HostTensor*> tensors;
  for (const Entry& e : entries) {
    const HostTensor& t = weights(e.name);
    if (t.shape() != e.shape && !(e.name == "latents" && t.numel() == layout.num_queries * dim)) {
      throw_mismatch("GpuResampler: shape of image_proj." + e.name, t.shape_str(),
                     shape_string(e.shape));
    }
    tensors.push_back(&t);
    total += slice(t.numel());
  }
  const std::size_t ff_slice = slice(ff);
  if (fold_ff_norm_) total += layers_.size() * 2 * ff_slice;  // colsum and bias per layer
  const int nq = layout.num_queries;
  const std::size_t q0_slice = slice(nq * inner), kv0_slice = slice(nq * 2 * inner),
                    kv0_sums_slice = slice(2 * inner), tiled_slice = slice(rows * dim);
  if (first_constants_) total += q0_slice + kv0_slice + 2 * kv0_sums_slice + tiled_slice;
  weights_ = DeviceBuffer(total * sizeof(float));
  std::size_t offset = 0;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    float* dst = weights_.as<float>() + offset;
    check_cuda(cudaMemcpy(dst, tensors[i]->data(), tensors[i]->numel() * sizeof(float),
                          cudaMemcpyHostToDevice),
               "GpuResampler: weight upload");
    *entries[i].slot = dst;
    offset += slice(tensors[i]->numel());
  }
  if (fold_ff_norm_) {
    for (Layer& l : layers_) {
      float* colsum = weights_.as<float>() + offset;
      float* bias = colsum + ff_slice;
      offset += 2 * ff_slice;
      float* w1 = weights_.as<float>() + (l.ff_w1 - weights_.as<float>());  // rewritten in place
      check_cuda(fold_layer_norm_into_linear(w1, l.ff_norm_w, l.ff_norm_b, nullptr, ff, dim, colsum,
                                             bias, nullptr),
                 "GpuResampler: folding the FF LayerNorm");
      l.ff_colsum = colsum;
      l.ff_bias = bias;
    }
    check_cuda(cudaDeviceSynchronize(), "GpuResampler: folding the FF LayerNorms");
  }
  if (first_constants_) {
    float* q0 = weights_.as<float>() + offset;
    float* kv0 = q0 + q0_slice;
    float* colsum = kv0 + kv0_slice;
    float* bias = colsum + kv0_sums_slice;
    float* tiled = bias + kv0_sums_slice;
    offset += q0_slice + kv0_slice + 2 * kv0_sums_slice + tiled_slice;
    const Layer& l0 = layers_[0];
    float* w_kv0 = weights_.as<float>() + (l0.to_kv - weights_.as<float>());  // rewritten below
    // norm2(latents)·to_qᵀ and ·to_kvᵀ with the kernels run() would use, then norm1 folded into
    // to_kv for the inputs' rows.
    DeviceBuffer normed(static_cast<std::size_t>(nq) * dim * sizeof(float));
    cudaStream_t stream = nullptr;
    check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
               "GpuResampler: cudaStreamCreate");
    const std::unique_ptr<CUstream_st, cudaError_t (*)(cudaStream_t)> owned(stream,
                                                                            cudaStreamDestroy);
    launch_layer_norm(false, norm_job(latents_, l0.norm2_w, l0.norm2_b, nq, normed.as<float>()),
                      NormJob{}, dim, stream);
    gemm(normed.as<float>(), l0.to_q, nullptr, q0, nq, inner, dim, 0.0f, false, stream);
    gemm(normed.as<float>(), l0.to_kv, nullptr, kv0, nq, 2 * inner, dim, 0.0f, false, stream);
    check_cuda(fold_layer_norm_into_linear(w_kv0, l0.norm1_w, l0.norm1_b, nullptr, 2 * inner, dim,
                                           colsum, bias, stream),
               "GpuResampler: folding layer 0's norm1");
    for (int b = 0; b < max_batch; ++b) {
      check_cuda(cudaMemcpyAsync(tiled + static_cast<std::int64_t>(b) * nq * dim, latents_,
                                 static_cast<std::size_t>(nq) * dim * sizeof(float),
                                 cudaMemcpyDeviceToDevice, stream),
                 "GpuResampler: repeating the latents");
    }
    check_cuda(cudaStreamSynchronize(stream), "GpuResampler: layer 0's constants");
    q0_ = q0;
    kv0_latents_ = kv0;
    kv0_colsum_ = colsum;
    kv0_bias_ = bias;
    latents_tiled_ = tiled;
  }

  const std::int64_t sizes[] = {static_cast<std::int64_t>(max_batch) * max_tokens * dim,  // x_proj
                                rows * dim,                                               // latents
                                rows * dim,                                               // ln
                                kv_rows * dim,                                            // kv_in
                                rows * inner,                                             // q
                                kv_rows * 2 * inner,                                      // kv
                                rows * inner,                                             // attn
                                rows * ff,                                                // ff
                                rows * output_dim,                                        // pre_out
                                static_cast<std::int64_t>(max_batch) * max_tokens * 2 * inner};
  float** slots[] = {&x_proj_, &latents_buf_, &ln_, &kv_in_,   &q_,
                     &kv_,     &attn_,        &ff_, &pre_out_, &kv0_inputs_};
  std::size_t ws_total = 0;
  for (std::int64_t s : sizes) ws_total += slice(s);
  workspace_ = DeviceBuffer(ws_total * sizeof(float));
  std::size_t ws_offset = 0;
  for (std::size_t i = 0; i < std::size(slots); ++i) {
    *slots[i] = workspace_.as<float>() + ws_offset;
    ws_offset += slice(sizes[i]);
  }
}

GpuResampler::~GpuResampler() = default;

std::size_t GpuResampler::device_bytes() const {
  return weights_.bytes() + workspace_.bytes() + gemm_->device_bytes();
}

// c [rows, out] (row-major) = act(a [rows, in] · wᵀ + bias) + beta · c, w [out, in] row-major.
void GpuResampler::gemm(const float* a, const float* w, const float* bias, float* c, int rows,
                        int out_features, int in_features, float beta, bool gelu,
                        cudaStream_t stream, const float* c_in) {
  gemm_->run(a, w, bias, c, rows, out_features, in_features, beta, gelu, stream, c_in);
}

void GpuResampler::run(const float* x, int batch, int tokens, float* out, cudaStream_t stream) {
  INSTANTID_CHECK(batch >= 1 && batch <= max_batch_, "GpuResampler::run: batch: got ", batch,
                  ", expected 1..", max_batch_);
  INSTANTID_CHECK(tokens >= 1 && tokens <= max_tokens_, "GpuResampler::run: tokens: got ", tokens,
                  ", expected 1..", max_tokens_);
  const int dim = layout_.dim, inner = layout_.heads * layout_.dim_head;
  const int ff = layout_.dim * layout_.ff_mult, nq = layout_.num_queries;
  const int rows = batch * nq, x_rows = batch * tokens, keys = tokens + nq;

  gemm(x, proj_in_w_, proj_in_b_, x_proj_, x_rows, dim, layout_.embed_dim, 0.0f, false, stream);
  const bool pdl = programmatic_;
  const float scale = 1.0f / std::sqrt(static_cast<float>(layout_.dim_head));
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    const bool constants = i == 0 && first_constants_;
    PerceiverInputs in;
    if (constants) {
      // Only the inputs' keys/values depend on the input: norm1 folded into to_kv.
      gemm_->run_row_normalized(x_proj_, l.to_kv, kv0_colsum_, kv0_bias_, kv0_inputs_, x_rows,
                                2 * inner, dim, kLayerNormEps, false, stream);
      in = {q0_, kv0_inputs_, kv0_latents_, 0, tokens, tokens, 0};
    } else {
      // kv_in per batch row: the T normalised inputs, then the 16 normalised latents (also in
      // ln_). Layer 0 reads the learned latents broadcast over the batch and copies them to
      // latents_buf_.
      NormJob latents = norm_job(i == 0 ? latents_ : latents_buf_, l.norm2_w, l.norm2_b, rows,
                                 kv_in_, nq, keys, tokens, ln_);
      if (i == 0) {
        latents.in_rows = nq;
        latents.copy = latents_buf_;
      }
      launch_layer_norm(pdl,
                        norm_job(x_proj_, l.norm1_w, l.norm1_b, x_rows, kv_in_, tokens, keys, 0),
                        latents, dim, stream);
      // to_q and to_kv read different inputs but nothing of each other: one launch.
      gemm_->run_pair({ln_, l.to_q, q_, rows, inner, dim},
                      {kv_in_, l.to_kv, kv_, batch * keys, 2 * inner, dim}, stream);
      in = {q_, kv_, kv_ + static_cast<std::int64_t>(tokens) * 2 * inner, nq, tokens, keys, keys};
    }
    launch(pdl, perceiver_attention_kernel,
           dim3(batch, layout_.heads, (nq + kAttnQueriesPerBlock - 1) / kAttnQueriesPerBlock),
           dim3(32 * kAttnQueriesPerBlock), stream, in, attn_, nq, keys, inner, scale);
    // Layer 0's residual is the learned latents: repeated, or copied by its LayerNorm kernel.
    gemm(attn_, l.to_out, nullptr, latents_buf_, rows, dim, inner, 1.0f, false, stream,
         constants ? latents_tiled_ : nullptr);
    if (fold_ff_norm_) {
      gemm_->run_row_normalized(latents_buf_, l.ff_w1, l.ff_colsum, l.ff_bias, ff_, rows, ff, dim,
                                kLayerNormEps, true, stream);
    } else {
      launch_layer_norm(pdl, norm_job(latents_buf_, l.ff_norm_w, l.ff_norm_b, rows, ln_), NormJob{},
                        dim, stream);
      gemm(ln_, l.ff_w1, nullptr, ff_, rows, ff, dim, 0.0f, true, stream);
    }
    gemm(ff_, l.ff_w3, nullptr, latents_buf_, rows, dim, ff, 1.0f, false, stream);
  }
  gemm(latents_buf_, proj_out_w_, proj_out_b_, pre_out_, rows, output_dim_, dim, 0.0f, false,
       stream);
  launch_layer_norm(pdl, norm_job(pre_out_, norm_out_w_, norm_out_b_, rows, out), NormJob{},
                    output_dim_, stream);
  check_cuda(cudaGetLastError(), "GpuResampler: kernel launch");
}

}  // namespace instantid::cuda
