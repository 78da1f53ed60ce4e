#pragma once
// fp32 GEMM for few rows and large weights: C = act(A·Wᵀ + bias) + beta·C with W a PyTorch Linear
// weight [N, K]. For M <= 64 the work is the weight read plus M multiply-adds per weight (at
// M = 32 an H200's fp32 FMA peak is about its copy bandwidth), so the skinny kernel reads every
// weight once (cp.async 16-byte loads, 64 outputs × 32 k per stage), multiplies either with 3xTF32
// tensor-core products (the Resampler's default: fp32-level error, a fraction of the
// instructions) or with fp32 FMAs from register tiles, and splits K over a fixed number of CTAs.
// The partial sums of an output tile are added in split order, so results are deterministic for
// a given device and shape: on sm_90+ the splits of a tile form a thread-block cluster and add
// each other's partials from distributed shared memory; elsewhere the last CTA of a tile (an
// integer ticket, no float atomics) sums them from a global workspace. With cluster sums a
// LayerNorm of A's rows can be folded into the product (row_norm_colsum, fold_layer_norm_into_
// linear): the splits add their rows' sums with their partials. LinearGemm picks the kernel or
// falls back to cuBLAS SGEMM (pedantic math, no TF32). Numerical contract and measurements:
// docs/kernels.md and docs/performance.md ("Resampler").

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>

#include "cuda/cuda_check.hpp"

namespace instantid::cuda {

constexpr int kSkinnyGemmMaxRows = 64;
// Output columns per CTA and k per pipeline stage (fixed by the kernel).
constexpr int kSkinnyGemmTileN = 64;
constexpr int kSkinnyGemmTileK = 32;
// Split K until about this many CTAs per SM run (each keeps up to 3 tiles of 64×32 weights in
// flight).
constexpr int kSkinnyGemmCtasPerSm = 3;
// Most splits a cluster reduction takes (a non-portable cluster size that sm_90 allows).
constexpr int kSkinnyGemmMaxClusterSplits = 16;

// How the skinny kernel multiplies. kTf32x3: W and A are each split into two TF32 parts and three
// of the four products are taken on tensor cores with fp32 accumulation (error about fp32's,
// within twice a naive fp32 dot product: docs/kernels.md). kFp32Fma: fp32 FMAs from register tiles.
enum class SkinnyGemmMath { kFp32Fma, kTf32x3 };

struct SkinnyGemmParams {
  const float* a = nullptr;     // [M, K] row-major, 16-byte aligned
  const float* w = nullptr;     // [N, K] row-major, 16-byte aligned
  const float* bias = nullptr;  // [N] or null
  float* c = nullptr;           // [M, N] row-major; read only when beta != 0
  int m = 0, n = 0, k = 0;      // 1 <= M <= 64, N >= 1, K >= 4 and a multiple of 4
  float beta = 0.0f;
  bool gelu = false;  // exact erf GELU on A·Wᵀ + bias, before beta·C is added
  // A LayerNorm of A's rows folded into the product (cluster_reduce only; see
  // fold_layer_norm_into_linear): C = act(inv_m·(A·Wᵀ − mean_m·row_norm_colsum) + bias) + beta·C,
  // with mean_m and inv_m = 1 / sqrt(var_m + row_norm_eps) of row m of A over its K columns
  // (biased variance). The CTAs of a tile sum each row's shifted sums over their k ranges with
  // their partials, so the LayerNorm costs no launch of its own.
  const float* row_norm_colsum = nullptr;  // [N], or null: no LayerNorm
  float row_norm_eps = 1e-5f;
  // Where beta·C is read from when set (same layout as c; c is then only written).
  const float* c_in = nullptr;
  int splits = 1;  // K is cut into this many CTA ranges (1 .. ceil(K / 32))
  // sm_90+ only: the splits of each output tile run as one thread-block cluster and sum their
  // partials through distributed shared memory (splits <= kSkinnyGemmMaxClusterSplits; no
  // workspace needed). Otherwise the workspace's tickets and partials do it (a fence, an atomic
  // and the partials' loads through L2 per tile: the Resampler 0.346 vs 0.315 ms on an H200).
  bool cluster_reduce = false;
  // Programmatic dependent launch (sm_90+): the kernel may start while the previous kernel on the
  // stream still runs, prefetches its first weight tiles, then waits for that kernel to finish
  // before it reads A, C or the workspace (and only then lets the next kernel start early). The
  // previous kernel need not know about it, but must not write W.
  bool programmatic = false;
  // Lane grid of a warp, rows × columns: 8 (8 × 4) or 4 (4 × 8, M <= 40 only; larger M uses 8);
  // 0 picks 4 for M <= 40. Speed and the grouping of k partial sums differ, nothing else.
  // kFp32Fma only.
  int lane_rows = 0;
  SkinnyGemmMath math = SkinnyGemmMath::kFp32Fma;
};

// True when the skinny kernel can run this problem (sizes and 16-byte alignment as above).
bool skinny_gemm_supported(int m, int n, int k, const float* a, const float* w) noexcept;

// Whether this device can keep a cluster of kSkinnyGemmMaxClusterSplits CTAs of the kernel for
// problems of m rows resident at once (sm_90+ and room in one GPC; false otherwise). LinearGemm
// sums split-K partials in clusters only then.
bool skinny_gemm_clusters_fit(int m, SkinnyGemmMath math, int lane_rows = 0) noexcept;

// The split count LinearGemm uses: enough CTAs for ctas_per_sm per SM, each at least four k tiles.
int skinny_gemm_splits(int n, int k, int sm_count, int ctas_per_sm = kSkinnyGemmCtasPerSm) noexcept;

// Scratch of a split-K launch (unused when splits == 1 or cluster_reduce): one ticket per 64-column
// output tile, zero before the first launch (every launch leaves its tickets at zero), and the
// partial sums [tiles, splits, M, 64].
struct SkinnyGemmWorkspace {
  unsigned* tickets = nullptr;  // [tickets_count]
  int tickets_count = 0;
  float* partials = nullptr;  // [partials_count]
  std::size_t partials_count = 0;
};
int skinny_gemm_tiles(int n) noexcept;  // ceil(N / 64): tickets needed
std::size_t skinny_gemm_partials_count(int m, int n, int splits) noexcept;  // floats needed

// Enqueues one kernel. Returns cudaErrorInvalidValue for an unsupported problem, splits out of
// range or a workspace too small (nothing enqueued). Never allocates or synchronises;
// graph-capture safe. One launch at a time per workspace (launches on one stream are fine).
cudaError_t skinny_gemm(const SkinnyGemmParams& params, const SkinnyGemmWorkspace& workspace,
                        cudaStream_t stream) noexcept;

// LayerNorm(x)·Wᵀ + b = inv·(x·W′ᵀ − mean·colsum) + bias with W′ = W·diag(γ), colsum = W′·1 and
// bias = W·β + b: rewrites w [n, k] (device) into W′ in place and writes colsum [n] and bias [n]
// (device; b [n] or null). Sums in fp64. One kernel on stream; for
// SkinnyGemmParams::row_norm_colsum.
cudaError_t fold_layer_norm_into_linear(float* w, const float* gamma /*[k]*/,
                                        const float* beta /*[k]*/, const float* b, int n, int k,
                                        float* colsum, float* bias, cudaStream_t stream) noexcept;

// Two independent problems in one kernel (one pipeline fill and drain instead of two): the
// tickets of the second follow the first's tiles, its partials the first's partial sums. Each
// problem's results are bit-identical to its own skinny_gemm launch with the same splits. Both
// must agree on programmatic, lane_rows, math and cluster_reduce, and with cluster_reduce on
// splits; neither may fold a LayerNorm.
cudaError_t skinny_gemm_pair(const SkinnyGemmParams& first, const SkinnyGemmParams& second,
                             const SkinnyGemmWorkspace& workspace, cudaStream_t stream) noexcept;

enum class GemmPath { kAuto, kCublas };

// How a LinearGemm runs; the defaults suit any use, GpuResamplerOptions picks the Resampler's.
struct LinearGemmOptions {
  GemmPath path = GemmPath::kAuto;         // kCublas: cuBLAS for every problem
  int ctas_per_sm = kSkinnyGemmCtasPerSm;  // skinny split count (skinny_gemm_splits)
  int lane_rows = 0;                       // SkinnyGemmParams::lane_rows
  SkinnyGemmMath math = SkinnyGemmMath::kFp32Fma;
  // SkinnyGemmParams::cluster_reduce wherever the device has clusters (sm_90+) that fit
  // (skinny_gemm_clusters_fit), with at most kSkinnyGemmMaxClusterSplits splits.
  bool cluster_reduce = true;
};

// C = act(A·Wᵀ + bias) + beta·C for any M, N, K: the skinny kernel when supported (and path is
// kAuto), else cuBLAS SGEMM with pedantic math plus a bias/GELU kernel. Owns its cuBLAS handle and
// workspaces (allocated here); run() never allocates or synchronises and is graph-capturable.
class LinearGemm {
 public:
  // max_rows bounds M of the problems the skinny kernel takes (larger M goes to cuBLAS).
  explicit LinearGemm(int max_rows, const LinearGemmOptions& options = LinearGemmOptions());
  ~LinearGemm();
  LinearGemm(const LinearGemm&) = delete;
  LinearGemm& operator=(const LinearGemm&) = delete;

  // a: [rows, in], w: [out, in], bias: [out] or null, c: [rows, out], all device, row-major.
  // gelu requires beta == 0.
  // c_in, when set, is read for beta·C instead of c ([rows, out]; c is then only written).
  void run(const float* a, const float* w, const float* bias, float* c, int rows, int out, int in,
           float beta, bool gelu, cudaStream_t stream, const float* c_in = nullptr);

  // C = A·Wᵀ of two independent problems (no bias, GELU or beta): one skinny_gemm_pair launch
  // with the CTAs shared in proportion to the weights (one split count for both with cluster
  // reduction), or two run() calls when either problem does not take the skinny kernel.
  struct Product {
    const float* a;  // [rows, in]
    const float* w;  // [out, in]
    float* c;        // [rows, out]
    int rows, out, in;
  };
  void run_pair(const Product& first, const Product& second, cudaStream_t stream);

  // C = act(LayerNorm(A)·Wᵀ + b) with the LayerNorm's γ, β and b folded into w, colsum and bias
  // by fold_layer_norm_into_linear (SkinnyGemmParams::row_norm_colsum); one skinny launch. Only
  // where row_norm_supported.
  void run_row_normalized(const float* a, const float* w, const float* colsum, const float* bias,
                          float* c, int rows, int out, int in, float eps, bool gelu,
                          cudaStream_t stream);
  // Whether run_row_normalized takes problems of this many rows (cluster sums and the skinny
  // kernel's rows).
  bool row_norm_supported(int rows) const noexcept {
    return cluster_reduce_ && rows >= 1 && rows <= std::min(max_rows_, kSkinnyGemmMaxRows);
  }

  // Whether run() with these arguments takes the skinny kernel.
  bool uses_skinny(int rows, int out, int in, const float* a, const float* w) const noexcept;
  GemmPath path() const { return options_.path; }
  // Whether split-K launches sum their partials in clusters (options and device allowing).
  bool cluster_reduce() const noexcept { return cluster_reduce_; }
  // Launch the skinny kernel as a programmatic dependent launch (SkinnyGemmParams::programmatic);
  // ignored below sm_90.
  void set_programmatic(bool on) noexcept { programmatic_ = on && sm_major_ >= 9; }
  std::size_t device_bytes() const {
    return tickets_.bytes() + partials_.bytes() + cublas_workspace_.bytes();
  }

 private:
  // C = A·Wᵀ of x on the skinny kernel with this GEMM's launch settings (no bias, GELU or beta).
  SkinnyGemmParams skinny_params(const Product& x, int splits) const noexcept;

  // Split count of a problem of n outputs and k inputs at this GEMM's CTA target.
  int splits_for(int n, int k) const noexcept;

  LinearGemmOptions options_;
  int max_rows_ = 0;
  int sm_count_ = 0;
  int sm_major_ = 0;
  bool cluster_reduce_ = false;
  bool programmatic_ = false;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer tickets_, partials_;
  SkinnyGemmWorkspace workspace_;
  DeviceBuffer cublas_workspace_;
};

}  // namespace instantid::cuda
