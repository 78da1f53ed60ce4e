// The Resampler as one persistent kernel (see fused_resampler.hpp for the design).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <iterator>
#include <cmath>
#include <cstdint>
#include <string>

#include "cuda/fused_resampler.hpp"
#include "instantid/kernels/async_pipeline.cuh"

namespace instantid::cuda {

namespace {

constexpr int kThreads = 128;  // 4 warps; two CTAs per SM
constexpr int kWarps = kThreads / 32;
constexpr int kTileN = 64;  // output columns of a weight tile
constexpr int kTileK = 32;  // k of a weight tile
constexpr int kUnitFloats = kTileN * kTileK;
constexpr int kUnitBytes = kUnitFloats * 4;
constexpr int kMaxRows = kFusedResamplerMaxRows;
constexpr int kAStride = kTileK + 4;  // padded activation rows: 4 rows' float4 reads hit distinct banks
constexpr int kAStages = 3;
constexpr int kAStageFloats = kMaxRows * kAStride;
// Each warp's k sums of a tile ([4][kMaxRows][64]); also the row, LayerNorm and attention buffers
// of the phases between linear layers.
constexpr int kScratchFloats = kWarps * kTileN * kMaxRows;
constexpr int kMaxWidth = 4096;  // dim, inner and D_out bound: one row + 8 floats fit the scratch
constexpr int kMaxDepth = 6;
constexpr int kMaxLinears = 2 + 5 * kMaxDepth;
constexpr int kMaxKeys = kMaxRows;
constexpr int kDimHead = 64;
constexpr int kMaxRingSlots = 16;
static_assert(kMaxWidth + 8 <= kScratchFloats, "a row fits the scratch");
static_assert(kMaxKeys * (2 * kDimHead + 1 + kWarps) <= kScratchFloats, "attention fits");

struct LinearArgs {
  const float* w = nullptr;   // packed [units][64][32], unit u = n tile u / k_tiles, k tile u % k_tiles
  const float* a = nullptr;   // activations [m, k] row-major
  float* partials = nullptr;  // [grid][segments][m][64]
  // Per 64-column tile t: owners[t · owner_stride] = how many segments cover it, followed by
  // their indices (blockIdx · segments + segment), in CTA order.
  const int* owners = nullptr;
  int m = 0, n = 0, k = 0, k_tiles = 0, units = 0, segments = 0, owner_stride = 0;
};

struct LayerArgs {
  const float *norm1_w, *norm1_b, *norm2_w, *norm2_b, *ff_norm_w, *ff_norm_b;
};

struct KernelArgs {
  LinearArgs lin[kMaxLinears];  // proj_in, (to_q, to_kv, to_out, ff1, ff2) × depth, proj_out
  LayerArgs layer[kMaxDepth];
  int linears = 0, depth = 0, ring_slots = 0;
  const float *x, *latents, *proj_in_b, *proj_out_b, *norm_out_w, *norm_out_b;
  float *out, *x_proj, *lat, *kv_in, *ln, *q, *kv, *attn, *ff, *pre_out;
  int batch = 0, tokens = 0, nq = 0, dim = 0, inner = 0, heads = 0, ff_dim = 0, out_dim = 0;
  float scale = 0.0f;
  // Diagnostics (FusedResampler::set_timeline): %globaltimer of thread 0 of every CTA at its start,
  // each barrier's arrival and departure and its end, [2 + 2 · barriers][grid]; null: none.
  unsigned long long* timeline = nullptr;
  int probe = 0;  // FusedResampler::set_probe
  unsigned long long* events = nullptr;  // FusedResampler::set_events: [grid][kMaxEvents]
};

constexpr int kMaxEvents = 2048;
__device__ __forceinline__ unsigned long long global_timer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
// Diagnostics: thread 0 logs (time << 8 | tag) of the CTA's steps.
struct EventLog {
  unsigned long long* out = nullptr;
  int count = 0;
  __device__ void add(int tag) {
    if (out != nullptr && threadIdx.x == 0 && count < kMaxEvents) {
      out[static_cast<std::int64_t>(blockIdx.x) * kMaxEvents + count++] =
          (global_timer() << 8) | static_cast<unsigned>(tag);
    }
  }
};

// CTA c of `grid` takes units [begin, end) of a linear layer: contiguous, balanced to one unit.
// In 32 bits: the host checks (units + 1) · (grid + 8) < 2³¹.
__host__ __device__ inline void unit_range(int units, int grid, int c, int& begin, int& end) {
  begin = c * units / grid;
  end = (c + 1) * units / grid;
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

__device__ __forceinline__ void mbarrier_init(std::uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(kernels::smem_address(bar)),
               "r"(count));
}
__device__ __forceinline__ void mbarrier_wait(std::uint64_t* bar, unsigned parity) {
  const std::uint32_t address = kernels::smem_address(bar);
  unsigned done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
  } while (done == 0);
}
// One bulk copy of `bytes` (16-byte multiple) into shared memory, completing on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes,
                                          std::uint64_t* bar) {
  const std::uint32_t b = kernels::smem_address(bar);
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(b), "r"(bytes)
               : "memory");
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(kernels::smem_address(dst)),
      "l"(src), "r"(bytes), "r"(b)
      : "memory");
}

// The weight tiles of every linear layer, in the order the CTA multiplies them, flow through a
// ring of shared-memory slots. Thread 0 refills a slot as soon as the CTA has used it, with the
// next tile of the CTA's stream, whichever layer that is.
struct WeightStream {
  float* ring;           // [slots][kUnitFloats]
  std::uint64_t* bars;   // [slots]
  int slots;
  int slot = 0;          // ring slot of the next tile to multiply (every thread)
  unsigned parity = 0;   // mbarrier phase parity of that slot's fill
  int next_linear = -1;  // producer cursor (thread 0)
  int next_unit = 0, next_end = 0;
  EventLog log;

  __device__ void advance(const KernelArgs& p) {
    ++next_unit;
    while (next_unit >= next_end) {
      if (++next_linear >= p.linears) return;
      unit_range(p.lin[next_linear].units, gridDim.x, blockIdx.x, next_unit, next_end);
    }
  }
  __device__ void refill(const KernelArgs& p, int slot) {
    if (next_linear >= p.linears) return;
    bulk_copy(ring + slot * kUnitFloats,
              p.lin[next_linear].w + static_cast<std::int64_t>(next_unit) * kUnitFloats,
              kUnitBytes, bars + slot);
    advance(p);
  }
};

// partials[blockIdx.x][segment] = the sum of the 4 warps' [rows][64] k sums in scratch (in warp
// order).
__device__ __noinline__ void store_segment(const LinearArgs& L, int segment, const float* scratch,
                                           int rows) {
  float* dst = L.partials +
               (static_cast<std::int64_t>(blockIdx.x) * L.segments + segment) * L.m * kTileN;
#pragma unroll 4
  for (int e = threadIdx.x; e < L.m * kTileN; e += kThreads) {
    float v = scratch[e];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) v += scratch[w * rows * kTileN + e];
    __stcg(dst + e, v);
  }
}

// Multiplies this CTA's units of one linear layer with fp32 FMAs and, at the end of each run of
// one n tile (a segment), stores A · Wᵀ over the run's k to partials[blockIdx.x][segment]
// ([m][64]). Lane (ml = lane % 4, ng = lane / 4) of warp w owns rows ml + 4i, columns ng + 8j
// and k 8w .. 8w + 7 of every tile; each accumulator adds its k in order.
template <int kPerLane>
__device__ __noinline__ void run_linear(const LinearArgs& L, WeightStream& ws, float* a_ring,
                                        float* scratch, const KernelArgs& p) {
  int begin = 0, end = 0;
  unit_range(L.units, gridDim.x, blockIdx.x, begin, end);
  if (begin >= end) return;
  // Registers, not memory: the asm memory clobbers below would reload every field each tile.
  const int k_tiles = L.k_tiles, m = L.m, k = L.k;
  const float* const a_src = L.a;
  const float* const ring = ws.ring;
  std::uint64_t* const bars = ws.bars;
  const int slots = ws.slots;
  int slot = ws.slot;
  unsigned parity = ws.parity;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int ml = lane % 4, ng = lane / 4;
  constexpr int kRows = 4 * kPerLane;
  auto load_a = [&](int k_tile, int stage) {
    float* sa = a_ring + stage * kAStageFloats;
    const int k0 = k_tile * kTileK;
#pragma unroll
    for (int e = tid; e < kRows * (kTileK / 4); e += kThreads) {
      const int r = e / (kTileK / 4), kc = (e % (kTileK / 4)) * 4;
      const bool ok = r < m && k0 + kc < k;
      kernels::cp_async_16(sa + r * kAStride + kc,
                           ok ? a_src + static_cast<std::int64_t>(r) * k + k0 + kc : a_src,
                           ok ? 16 : 0);
    }
  };
  const bool load_activations = p.probe != 3, stream_weights = p.probe != 2;
  const bool multiply = p.probe != 1;
  for (int i = 0; i < kAStages - 1; ++i) {
    if (begin + i < end && load_activations) load_a((begin + i) % k_tiles, i);
    kernels::cp_async_commit();
  }
  float acc[kPerLane][8];
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[r][j] = 0.0f;
  }
  int segment = 0;
  int k_tile = begin % k_tiles;                                  // of tile u
  int ahead_k_tile = (begin + kAStages - 1) % k_tiles;           // of tile u + kAStages - 1
  int stage = 0, ahead_stage = kAStages - 1;
  for (int u = begin; u < end; ++u) {
    const int used_slot = stream_weights ? slot : 0;
    ws.log.add(1);
    kernels::cp_async_wait<kAStages - 2>();
    ws.log.add(2);
    if (stream_weights) mbarrier_wait(bars + used_slot, parity);
    ws.log.add(3);
    // One barrier per tile: it publishes this tile's activations and tells thread 0 that every
    // warp is done with the previous tile's slot, which it refills while the others multiply.
    __syncthreads();
    if (tid == 0 && stream_weights && u > begin) {
      ws.refill(p, used_slot == 0 ? slots - 1 : used_slot - 1);
    }
    if (u + kAStages - 1 < end && load_activations) load_a(ahead_k_tile, ahead_stage);
    kernels::cp_async_commit();
    if (++ahead_k_tile == k_tiles) ahead_k_tile = 0;
    if (++ahead_stage == kAStages) ahead_stage = 0;
    const float* sw = ring + used_slot * kUnitFloats;
    const float* sa = a_ring + stage * kAStageFloats;
    if (++stage == kAStages) stage = 0;
#pragma unroll
    for (int half = 0; half < 2 && multiply; ++half) {
      const int chunk = warp * 2 + half;  // 4 k of the tile
      float4 w[8], a[kPerLane];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        // Tiles store chunk c of row r at c ^ (r % 8): the 8 rows' reads hit distinct banks.
        w[j] = *reinterpret_cast<const float4*>(sw + (ng + 8 * j) * kTileK + ((chunk ^ ng) * 4));
      }
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
        a[r] = *reinterpret_cast<const float4*>(sa + (ml + 4 * r) * kAStride + chunk * 4);
      }
      // k component outermost: consecutive FMAs update different accumulators.
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r][j] = fmaf(a[r].x, w[j].x, acc[r][j]);
      }
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r][j] = fmaf(a[r].y, w[j].y, acc[r][j]);
      }
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r][j] = fmaf(a[r].z, w[j].z, acc[r][j]);
      }
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r][j] = fmaf(a[r].w, w[j].w, acc[r][j]);
      }
    }
    ws.log.add(4);
    if (++slot == slots) {
      slot = 0;
      parity ^= 1u;
    }
    const bool segment_ends = ++k_tile == k_tiles || u + 1 == end;
    if (k_tile == k_tiles) k_tile = 0;
    if (!segment_ends) continue;
    // End of a segment: every warp leaves its k sums in scratch [warp][row][64]; then the CTA
    // adds the four in warp order and stores the segment.
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        scratch[(warp * kRows + ml + 4 * r) * kTileN + ng + 8 * j] = acc[r][j];
        acc[r][j] = 0.0f;
      }
    }
    __syncthreads();
    store_segment(L, segment++, scratch, kRows);
    ws.log.add(5);
  }
  kernels::cp_async_wait<0>();
  __syncthreads();  // every warp is done with the last tile's slot
  if (tid == 0 && stream_weights) ws.refill(p, slot == 0 ? slots - 1 : slot - 1);
  ws.slot = slot;
  ws.parity = parity;
}

__device__ void run_linear_rows(const LinearArgs& L, WeightStream& ws, float* a_ring,
                                float* scratch, const KernelArgs& p) {
  if (L.m <= 8) {
    run_linear<2>(L, ws, a_ring, scratch, p);
  } else if (L.m <= 16) {
    run_linear<4>(L, ws, a_ring, scratch, p);
  } else if (L.m <= 32) {
    run_linear<8>(L, ws, a_ring, scratch, p);
  } else {
    run_linear<10>(L, ws, a_ring, scratch, p);
  }
}

// A · Wᵀ at (row r, column n): the segments' partial sums, added in the order of the CTAs that
// own them (loads batched 8 at a time so their latencies overlap).
__device__ __noinline__ float linear_output(const LinearArgs& L, int r, int n) {
  const int* entry = L.owners + (n / kTileN) * L.owner_stride;
  const int count = __ldg(entry);
  const float* base = L.partials + r * kTileN + n % kTileN;
  const int segment_floats = L.m * kTileN;
  float sum = 0.0f;
  for (int j = 0; j < count; j += 8) {
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      v[i] = j + i < count ? __ldcg(base + __ldg(entry + 1 + j + i) * segment_floats) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += v[i];
  }
  return sum;
}

enum class SumTo { kStore, kAdd, kAddBias, kGelu };

// For every output (r, n) of L, spread over all threads of the grid, with s = A · Wᵀ at (r, n):
// dst[r, n] = s (kStore), += s (kAdd), = s + bias[n] (kAddBias) or = GELU(s) (kGelu, exact erf).
__device__ __noinline__ void sum_linear(const LinearArgs& L, SumTo op, float* dst /*[m, n]*/,
                                        const float* bias) {
  const int total = L.m * L.n;
  for (int e = static_cast<int>(blockIdx.x * kThreads + threadIdx.x); e < total;
       e += static_cast<int>(gridDim.x) * kThreads) {
    const int r = e / L.n, n = e % L.n;
    const float s = linear_output(L, r, n);
    float* d = dst + e;
    switch (op) {
      case SumTo::kStore: *d = s; break;
      case SumTo::kAdd: *d = __ldcg(d) + s; break;
      case SumTo::kAddBias: *d = s + bias[n]; break;
      case SumTo::kGelu: *d = 0.5f * s * (1.0f + erff(s * 0.70710678118654752f)); break;
    }
  }
}

__device__ __noinline__ float block_sum(float v, float* red /*[kWarps + 1]*/) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int w = 0; w < kWarps; ++w) s += red[w];
    red[kWarps] = s;
  }
  __syncthreads();
  const float result = red[kWarps];
  __syncthreads();
  return result;
}

// LayerNorm (eps 1e-5, biased variance, two passes) of row[0, cols) into out (and out2 if set).
__device__ __noinline__ void layer_norm_row(const float* row, int cols, const float* w, const float* b,
                               float* red, float* out, float* out2) {
  __syncthreads();  // row complete
  float sum = 0.0f;
  for (int c = threadIdx.x; c < cols; c += kThreads) sum += row[c];
  const float mean = block_sum(sum, red) / static_cast<float>(cols);
  float sq = 0.0f;
  for (int c = threadIdx.x; c < cols; c += kThreads) {
    const float d = row[c] - mean;
    sq += d * d;
  }
  const float inv = rsqrtf(block_sum(sq, red) / static_cast<float>(cols) + 1e-5f);
  for (int c = threadIdx.x; c < cols; c += kThreads) {
    const float y = (row[c] - mean) * inv * w[c] + b[c];
    out[c] = y;
    if (out2 != nullptr) out2[c] = y;
  }
  __syncthreads();  // row reusable
}

// Perceiver attention of (batch row b, head h) for queries q0 .. q0 + 3 (one per warp) over
// T inputs + 16 latents, scores and softmax in fp32: lane j scores key j (and j + 32), then each
// lane sums two dims of the output.
__device__ __noinline__ void perceiver_attention(const KernelArgs& p, int b, int h, int q0,
                                                 float* scratch) {
  constexpr int kStride = kDimHead + 1;  // lanes read different keys' rows: no bank conflicts
  const int nq = p.nq, keys = p.tokens + p.nq;
  float* sk = scratch;                     // [keys][65]
  float* sv = sk + kMaxKeys * kStride;     // [keys][64]
  float* sp = sv + kMaxKeys * kDimHead;    // [4 warps][keys]
  for (int e = threadIdx.x; e < keys * kDimHead; e += kThreads) {
    const int j = e / kDimHead, d = e % kDimHead;
    const float* kv_row = p.kv + static_cast<std::int64_t>(b * keys + j) * 2 * p.inner;
    sk[j * kStride + d] = __ldcg(kv_row + h * kDimHead + d);
    sv[e] = __ldcg(kv_row + p.inner + h * kDimHead + d);
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int qi = q0 + warp;
  if (qi < nq) {
    const float* q_row = p.q + static_cast<std::int64_t>(b * nq + qi) * p.inner + h * kDimHead;
    float s0 = 0.0f, s1 = 0.0f;
    const int j0 = lane, j1 = lane + 32;
    for (int d = 0; d < kDimHead; ++d) {
      const float qd = __ldcg(q_row + d);
      if (j0 < keys) s0 = fmaf(qd, sk[j0 * kStride + d], s0);
      if (j1 < keys) s1 = fmaf(qd, sk[j1 * kStride + d], s1);
    }
    s0 = j0 < keys ? s0 * p.scale : -INFINITY;
    s1 = j1 < keys ? s1 * p.scale : -INFINITY;
    float m = fmaxf(s0, s1);
    for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const float e0 = j0 < keys ? expf(s0 - m) : 0.0f, e1 = j1 < keys ? expf(s1 - m) : 0.0f;
    float l = e0 + e1;
    for (int o = 16; o > 0; o /= 2) l += __shfl_xor_sync(0xffffffffu, l, o);
    float* prob = sp + warp * kMaxKeys;
    if (j0 < keys) prob[j0] = e0;
    if (j1 < keys) prob[j1] = e1;
    __syncwarp();
    float o0 = 0.0f, o1 = 0.0f;
    for (int j = 0; j < keys; ++j) {
      o0 = fmaf(prob[j], sv[j * kDimHead + lane], o0);
      o1 = fmaf(prob[j], sv[j * kDimHead + lane + 32], o1);
    }
    float* orow = p.attn + static_cast<std::int64_t>(b * nq + qi) * p.inner + h * kDimHead;
    orow[lane] = o0 / l;
    orow[lane + 32] = o1 / l;
  }
  __syncthreads();
}

// LayerNorm of row r of src ([rows, cols], written earlier in this kernel) into out (and out2).
__device__ __noinline__ void layer_norm_of(const float* src, int r, int cols, const float* w, const float* b,
                              float* row, float* red, float* out, float* out2) {
  for (int c = threadIdx.x; c < cols; c += kThreads) {
    row[c] = __ldcg(src + static_cast<std::int64_t>(r) * cols + c);
  }
  layer_norm_row(row, cols, w, b, red, out, out2);
}

// The inputs of perceiver layer l, one CTA per row: kv_in = [LN1(x_proj) ; LN2(latents)] per
// batch row and ln = LN2(latents). Items [0, R) are latent rows, [R, R + X) x_proj rows.
__device__ __noinline__ void layer_inputs(const KernelArgs& p, int l, float* row, float* red) {
  const int rows = p.batch * p.nq, x_rows = p.batch * p.tokens, keys = p.tokens + p.nq;
  const LayerArgs& la = p.layer[l];
  for (int item = blockIdx.x; item < rows + x_rows; item += gridDim.x) {
    if (item < rows) {
      const int r = item;
      layer_norm_of(p.lat, r, p.dim, la.norm2_w, la.norm2_b, row, red,
                    p.kv_in + ((r / p.nq) * keys + p.tokens + r % p.nq) * p.dim, p.ln + r * p.dim);
    } else {
      const int r = item - rows;
      layer_norm_of(p.x_proj, r, p.dim, la.norm1_w, la.norm1_b, row, red,
                    p.kv_in + ((r / p.tokens) * keys + r % p.tokens) * p.dim, nullptr);
    }
  }
}

__global__ void __launch_bounds__(kThreads, 2)
    fused_resampler_kernel(const __grid_constant__ KernelArgs p) {
  namespace cg = cooperative_groups;
  cg::grid_group grid_group = cg::this_grid();
  int barriers = 0;
  auto record = [&](int slot) {
    if (p.timeline != nullptr && threadIdx.x == 0) {
      p.timeline[static_cast<std::int64_t>(slot) * gridDim.x + blockIdx.x] = global_timer();
    }
  };
  record(0);
  WeightStream ws;
  ws.log.out = p.events;
  auto barrier = [&] {
    record(1 + 2 * barriers);
    ws.log.add(10);
    grid_group.sync();
    ws.log.add(11);
    record(2 + 2 * barriers);
    ++barriers;
  };
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  ws.slots = p.ring_slots;
  ws.ring = smem;
  float* a_ring = smem + ws.slots * kUnitFloats;
  float* scratch = a_ring + kAStages * kAStageFloats;
  ws.bars = reinterpret_cast<std::uint64_t*>(scratch + kScratchFloats);
  float* row = scratch;
  float* red = scratch + kScratchFloats - 8;

  if (threadIdx.x == 0) {
    for (int s = 0; s < ws.slots; ++s) mbarrier_init(ws.bars + s, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    ws.advance(p);
    for (int s = 0; s < ws.slots; ++s) ws.refill(p, s);
  }
  __syncthreads();

  const int rows = p.batch * p.nq, dim = p.dim;
  int li = 0;  // linear layer index

  // x_proj = x · W_inᵀ + b_in; latents broadcast per batch row; layer 0's inputs.
  run_linear_rows(p.lin[li], ws, a_ring, scratch, p);
  barrier();
  sum_linear(p.lin[li], SumTo::kAddBias, p.x_proj, p.proj_in_b);
  for (int e = static_cast<int>(blockIdx.x * kThreads + threadIdx.x); e < rows * dim;
       e += static_cast<int>(gridDim.x) * kThreads) {
    p.lat[e] = p.latents[(e / dim) % p.nq * dim + e % dim];
  }
  ++li;
  barrier();
  layer_inputs(p, 0, row, red);
  barrier();

  for (int l = 0; l < p.depth; ++l) {
    const LinearArgs &lq = p.lin[li], &lkv = p.lin[li + 1], &lout = p.lin[li + 2];
    const LinearArgs &lff1 = p.lin[li + 3], &lff2 = p.lin[li + 4];
    li += 5;
    const LayerArgs& la = p.layer[l];
    run_linear_rows(lq, ws, a_ring, scratch, p);
    run_linear_rows(lkv, ws, a_ring, scratch, p);
    barrier();
    sum_linear(lq, SumTo::kStore, p.q, nullptr);
    sum_linear(lkv, SumTo::kStore, p.kv, nullptr);
    barrier();
    {
      const int groups = (p.nq + kWarps - 1) / kWarps;  // of 4 queries
      for (int item = blockIdx.x; item < p.batch * p.heads * groups; item += gridDim.x) {
        const int bh = item / groups;
        perceiver_attention(p, bh / p.heads, bh % p.heads, (item % groups) * kWarps, scratch);
      }
    }
    barrier();
    run_linear_rows(lout, ws, a_ring, scratch, p);
    barrier();
    sum_linear(lout, SumTo::kAdd, p.lat, nullptr);
    barrier();
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
      layer_norm_of(p.lat, r, dim, la.ff_norm_w, la.ff_norm_b, row, red, p.ln + r * dim, nullptr);
    }
    barrier();
    run_linear_rows(lff1, ws, a_ring, scratch, p);
    barrier();
    sum_linear(lff1, SumTo::kGelu, p.ff, nullptr);
    barrier();
    run_linear_rows(lff2, ws, a_ring, scratch, p);
    barrier();
    sum_linear(lff2, SumTo::kAdd, p.lat, nullptr);
    barrier();
    if (l + 1 < p.depth) {
      layer_inputs(p, l + 1, row, red);
      barrier();
    }
  }

  // out = LN_out(latents · W_projᵀ + b_proj)
  run_linear_rows(p.lin[li], ws, a_ring, scratch, p);
  barrier();
  sum_linear(p.lin[li], SumTo::kAddBias, p.pre_out, p.proj_out_b);
  barrier();
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    layer_norm_of(p.pre_out, r, p.out_dim, p.norm_out_w, p.norm_out_b, row, red,
                  p.out + r * p.out_dim, nullptr);
  }
  if (p.probe == 2 && threadIdx.x == 0) {  // the first fill of the ring is all it copied
    for (int s = 0; s < ws.slots; ++s) mbarrier_wait(ws.bars + s, 0);
  }
  record(1 + 2 * barriers);
}

#else  // below sm_90: never launched (FusedResampler::supported is false there)

__global__ void fused_resampler_kernel(const __grid_constant__ KernelArgs) { __trap(); }

#endif

int ceil_div(int a, int b) { return (a + b - 1) / b; }

std::size_t smem_bytes_for(int slots) {
  return static_cast<std::size_t>(slots) * kUnitBytes +
         static_cast<std::size_t>(kAStages) * kAStageFloats * 4 +
         static_cast<std::size_t>(kScratchFloats) * 4 + static_cast<std::size_t>(slots) * 8;
}

struct DeviceFacts {
  int sms = 0, major = 0, cooperative = 0;
  std::size_t smem_per_sm = 0, smem_per_block_optin = 0, reserved_per_block = 0;
};

DeviceFacts device_facts() {
  DeviceFacts f;
  int device = 0, v = 0;
  check_cuda(cudaGetDevice(&device), "FusedResampler: cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, device),
             "FusedResampler: SM count");
  check_cuda(cudaDeviceGetAttribute(&f.major, cudaDevAttrComputeCapabilityMajor, device),
             "FusedResampler: compute capability");
  check_cuda(cudaDeviceGetAttribute(&f.cooperative, cudaDevAttrCooperativeLaunch, device),
             "FusedResampler: cooperative launch");
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device),
             "FusedResampler: shared memory per SM");
  f.smem_per_sm = static_cast<std::size_t>(v);
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "FusedResampler: shared memory per block");
  f.smem_per_block_optin = static_cast<std::size_t>(v);
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrReservedSharedMemoryPerBlock, device),
             "FusedResampler: reserved shared memory");
  f.reserved_per_block = static_cast<std::size_t>(v);
  return f;
}

// Ring slots for `ctas` CTAs per SM: as many as fit (0 when not even 2 fit).
int ring_slots_for(const DeviceFacts& f, int ctas, std::size_t static_smem) {
  const std::size_t budget =
      std::min(f.smem_per_sm / static_cast<std::size_t>(ctas) - f.reserved_per_block,
               f.smem_per_block_optin) -
      static_smem;
  int slots = 0;
  while (slots < kMaxRingSlots && smem_bytes_for(slots + 1) <= budget) ++slots;
  return slots >= 2 ? slots : 0;
}

bool shape_supported(const ModelLayout& layout, int output_dim, int max_batch, int max_tokens) {
  const int inner = layout.heads * layout.dim_head;
  const int ff = layout.dim * layout.ff_mult;
  const auto width_ok = [](int w) { return w >= 4 && w % 4 == 0 && w <= kMaxWidth; };
  return layout.dim_head == kDimHead && layout.depth >= 1 && layout.depth <= kMaxDepth &&
         max_batch >= 1 && max_tokens >= 1 &&
         max_batch * (max_tokens + layout.num_queries) <= kMaxRows &&
         max_tokens + layout.num_queries <= kMaxKeys && width_ok(layout.dim) &&
         width_ok(inner) && width_ok(output_dim) && layout.embed_dim >= 4 &&
         layout.embed_dim % 4 == 0 && ff >= 4 && ff % 4 == 0;
}

}  // namespace

bool FusedResampler::supported(const ModelLayout& layout, int output_dim, int max_batch,
                               int max_tokens) {
  if (!shape_supported(layout, output_dim, max_batch, max_tokens)) return false;
  const DeviceFacts f = device_facts();
  return f.major >= 9 && f.cooperative != 0 && ring_slots_for(f, 1, 0) > 0;
}

std::vector<std::string> FusedResampler::tensor_names(const ModelLayout& layout) {
  std::vector<std::string> names = {"latents",        "proj_in.weight",  "proj_in.bias",
                                    "proj_out.weight", "proj_out.bias",  "norm_out.weight",
                                    "norm_out.bias"};
  for (int i = 0; i < layout.depth; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    for (const char* s : {"0.norm1.weight", "0.norm1.bias", "0.norm2.weight", "0.norm2.bias",
                          "0.to_q.weight", "0.to_kv.weight", "0.to_out.weight", "1.0.weight",
                          "1.0.bias", "1.1.weight", "1.3.weight"}) {
      names.push_back(p + s);
    }
  }
  return names;
}

FusedResampler::FusedResampler(const ModelLayout& layout, int output_dim,
                               const TensorList& tensors, int max_batch, int max_tokens)
    : layout_(layout), output_dim_(output_dim), max_batch_(max_batch), max_tokens_(max_tokens) {
  INSTANTID_CHECK(shape_supported(layout, output_dim, max_batch, max_tokens),
                  "FusedResampler: shape: got dim_head ", layout.dim_head, ", depth ", layout.depth,
                  ", ", max_batch, " inputs of ", max_tokens,
                  " tokens, expected dim_head 64, depth 1..", kMaxDepth,
                  ", batch · (tokens + 16) <= ", kMaxRows, " and widths <= ", kMaxWidth);
  const DeviceFacts f = device_facts();
  INSTANTID_CHECK(f.major >= 9 && f.cooperative != 0, "FusedResampler: device: got compute ",
                  f.major, ".x, cooperative launch ", f.cooperative, ", expected sm_90+ with it");
  cudaFuncAttributes attributes{};
  check_cuda(cudaFuncGetAttributes(&attributes, fused_resampler_kernel),
             "FusedResampler: kernel attributes");
  int ctas = 2;
  ring_slots_ = ring_slots_for(f, ctas, attributes.sharedSizeBytes);
  if (ring_slots_ == 0) {
    ctas = 1;
    ring_slots_ = ring_slots_for(f, ctas, attributes.sharedSizeBytes);
  }
  INSTANTID_CHECK(ring_slots_ > 0, "FusedResampler: shared memory: got ", f.smem_per_sm,
                  " bytes per SM, expected room for ", smem_bytes_for(2));
  smem_bytes_ = smem_bytes_for(ring_slots_);
  check_cuda(cudaFuncSetAttribute(fused_resampler_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem_bytes_)),
             "FusedResampler: shared memory size");
  int resident = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, fused_resampler_kernel,
                                                           kThreads, smem_bytes_),
             "FusedResampler: occupancy");
  INSTANTID_CHECK(resident >= 1, "FusedResampler: occupancy: got 0 CTAs per SM, expected >= 1");
  grid_ = std::min(resident, ctas) * f.sms;

  // Linear layers in stream order, with their tensors' indices in tensor_names().
  const int dim = layout.dim, inner = layout.heads * layout.dim_head, ff = dim * layout.ff_mult;
  struct Spec {
    int tensor, n, k;
  };
  std::vector<Spec> specs = {{1, dim, layout.embed_dim}};
  for (int i = 0; i < layout.depth; ++i) {
    const int b = 7 + 11 * i;
    specs.push_back({b + 4, inner, dim});
    specs.push_back({b + 5, 2 * inner, dim});
    specs.push_back({b + 6, dim, inner});
    specs.push_back({b + 9, ff, dim});
    specs.push_back({b + 10, dim, ff});
  }
  specs.push_back({3, output_dim, dim});
  std::vector<int> vector_tensors = {0, 2, 4, 5, 6};
  for (int i = 0; i < layout.depth; ++i) {
    const int b = 7 + 11 * i;
    for (int o : {0, 1, 2, 3, 7, 8}) vector_tensors.push_back(b + o);
  }

  std::size_t total = 0;
  std::vector<std::vector<int>> owner_tables(specs.size());
  linears_.resize(specs.size());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    Linear& L = linears_[i];
    L.n = specs[i].n;
    L.k = specs[i].k;
    L.k_tiles = ceil_div(L.k, kTileK);
    L.units = ceil_div(L.n, kTileN) * L.k_tiles;
    const int tiles = ceil_div(L.n, kTileN);
    std::vector<std::vector<int>> owners(static_cast<std::size_t>(tiles));
    for (int c = 0; c < grid_; ++c) {
      int b = 0, e = 0;
      unit_range(L.units, grid_, c, b, e);
      if (b >= e) continue;
      L.segments = std::max(L.segments, (e - 1) / L.k_tiles - b / L.k_tiles + 1);
    }
    for (int c = 0; c < grid_; ++c) {
      int b = 0, e = 0;
      unit_range(L.units, grid_, c, b, e);
      for (int t = b / L.k_tiles; b < e && t <= (e - 1) / L.k_tiles; ++t) {
        owners[static_cast<std::size_t>(t)].push_back(c * L.segments + t - b / L.k_tiles);
      }
    }
    for (const auto& o : owners) L.owner_stride = std::max(L.owner_stride, 1 + static_cast<int>(o.size()));
    std::vector<int>& table = owner_tables[i];
    table.assign(static_cast<std::size_t>(tiles) * L.owner_stride, 0);
    for (int t = 0; t < tiles; ++t) {
      const auto& o = owners[static_cast<std::size_t>(t)];
      table[static_cast<std::size_t>(t) * L.owner_stride] = static_cast<int>(o.size());
      std::copy(o.begin(), o.end(), table.begin() + t * L.owner_stride + 1);
    }
    INSTANTID_CHECK(static_cast<std::int64_t>(L.units + 1) * (grid_ + 8) < (std::int64_t{1} << 31),
                    "FusedResampler: weight tiles of a linear layer: got ", L.units,
                    ", expected fewer than 2^31 / ", grid_ + 8);
    total += static_cast<std::size_t>(L.units) * kUnitFloats;
  }
  for (int t : vector_tensors) total += static_cast<std::size_t>(tensors[t]->numel() + 63) / 64 * 64;
  for (const auto& table : owner_tables) total += (table.size() + 63) / 64 * 64;
  weights_ = DeviceBuffer(total * sizeof(float));

  std::size_t offset = 0;
  std::vector<float> packed;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    Linear& L = linears_[i];
    const float* w = tensors[specs[i].tensor]->data();  // [N, K] row-major
    packed.assign(static_cast<std::size_t>(L.units) * kUnitFloats, 0.0f);
    for (int n = 0; n < L.n; ++n) {
      for (int k = 0; k < L.k; ++k) {
        const int unit = (n / kTileN) * L.k_tiles + k / kTileK;
        const int r = n % kTileN, chunk = (k % kTileK) / 4;
        packed[static_cast<std::size_t>(unit) * kUnitFloats + r * kTileK + (chunk ^ (r % 8)) * 4 +
               k % 4] = w[static_cast<std::size_t>(n) * L.k + k];
      }
    }
    float* dst = weights_.as<float>() + offset;
    check_cuda(cudaMemcpy(dst, packed.data(), packed.size() * sizeof(float),
                          cudaMemcpyHostToDevice),
               "FusedResampler: weight upload");
    L.w = dst;
    offset += packed.size();
  }
  for (int t : vector_tensors) {
    float* dst = weights_.as<float>() + offset;
    check_cuda(cudaMemcpy(dst, tensors[t]->data(), tensors[t]->numel() * sizeof(float),
                          cudaMemcpyHostToDevice),
               "FusedResampler: weight upload");
    vectors_.push_back(dst);
    offset += static_cast<std::size_t>(tensors[t]->numel() + 63) / 64 * 64;
  }
  for (std::size_t i = 0; i < linears_.size(); ++i) {
    int* dst = reinterpret_cast<int*>(weights_.as<float>() + offset);
    check_cuda(cudaMemcpy(dst, owner_tables[i].data(), owner_tables[i].size() * sizeof(int),
                          cudaMemcpyHostToDevice),
               "FusedResampler: owner table upload");
    linears_[i].owners = dst;
    offset += (owner_tables[i].size() + 63) / 64 * 64;
  }

  const std::int64_t rows = static_cast<std::int64_t>(max_batch) * layout.num_queries;
  const std::int64_t x_rows = static_cast<std::int64_t>(max_batch) * max_tokens;
  const std::int64_t kv_rows = static_cast<std::int64_t>(max_batch) * (max_tokens + layout.num_queries);
  std::int64_t partial_floats = 0;
  for (std::size_t i = 0; i < linears_.size(); ++i) {
    const std::int64_t m = i == 0 ? x_rows : (i % 5 == 2 ? kv_rows : rows);
    partial_floats = std::max(partial_floats,
                              static_cast<std::int64_t>(grid_) * linears_[i].segments * m * kTileN);
  }
  const std::int64_t sizes[] = {x_rows * dim,   rows * dim,       kv_rows * dim,
                                rows * dim,     rows * inner,     kv_rows * 2 * inner,
                                rows * inner,   rows * ff,        rows * output_dim,
                                partial_floats, partial_floats};
  float** slots[] = {&x_proj_, &lat_, &kv_in_, &ln_,      &q_,          &kv_,
                     &attn_,   &ff_,  &pre_out_, &partials_[0], &partials_[1]};
  std::int64_t ws_total = 0;
  for (std::int64_t s : sizes) ws_total += (s + 63) / 64 * 64;
  workspace_ = DeviceBuffer(static_cast<std::size_t>(ws_total) * sizeof(float));
  std::int64_t ws_offset = 0;
  for (std::size_t i = 0; i < std::size(slots); ++i) {
    *slots[i] = workspace_.as<float>() + ws_offset;
    ws_offset += (sizes[i] + 63) / 64 * 64;
  }
  check_cuda(cudaDeviceSynchronize(), "FusedResampler: upload");
}

FusedResampler::~FusedResampler() = default;

void FusedResampler::run(const float* x, int batch, int tokens, float* out, cudaStream_t stream) {
  INSTANTID_CHECK(batch >= 1 && batch <= max_batch_, "FusedResampler::run: batch: got ", batch,
                  ", expected 1..", max_batch_);
  INSTANTID_CHECK(tokens >= 1 && tokens <= max_tokens_, "FusedResampler::run: tokens: got ",
                  tokens, ", expected 1..", max_tokens_);
  KernelArgs p;
  const int nq = layout_.num_queries;
  const int rows = batch * nq, x_rows = batch * tokens, kv_rows = batch * (tokens + nq);
  p.linears = static_cast<int>(linears_.size());
  p.depth = layout_.depth;
  p.ring_slots = ring_slots_;
  const float* inputs[] = {ln_, kv_in_, attn_, ln_, ff_};  // of to_q, to_kv, to_out, ff1, ff2
  for (int i = 0; i < p.linears; ++i) {
    const Linear& L = linears_[static_cast<std::size_t>(i)];
    LinearArgs& a = p.lin[i];
    a.w = L.w;
    a.n = L.n;
    a.k = L.k;
    a.k_tiles = L.k_tiles;
    a.units = L.units;
    a.segments = L.segments;
    a.owners = L.owners;
    a.owner_stride = L.owner_stride;
    if (i == 0) {
      a.a = x;
      a.m = x_rows;
    } else if (i == p.linears - 1) {
      a.a = lat_;
      a.m = rows;
    } else {
      const int role = (i - 1) % 5;  // to_q, to_kv, to_out, ff1, ff2
      a.a = inputs[role];
      a.m = role == 1 ? kv_rows : rows;
    }
    a.partials = partials_[i % 5 == 2 ? 1 : 0];  // to_kv beside to_q
  }
  p.latents = vectors_[0];
  p.proj_in_b = vectors_[1];
  p.proj_out_b = vectors_[2];
  p.norm_out_w = vectors_[3];
  p.norm_out_b = vectors_[4];
  for (int i = 0; i < layout_.depth; ++i) {
    const float* const* v = vectors_.data() + 5 + 6 * i;
    p.layer[i] = LayerArgs{v[0], v[1], v[2], v[3], v[4], v[5]};
  }
  p.x = x;
  p.out = out;
  p.x_proj = x_proj_;
  p.lat = lat_;
  p.kv_in = kv_in_;
  p.ln = ln_;
  p.q = q_;
  p.kv = kv_;
  p.attn = attn_;
  p.ff = ff_;
  p.pre_out = pre_out_;
  p.batch = batch;
  p.tokens = tokens;
  p.nq = nq;
  p.dim = layout_.dim;
  p.inner = layout_.heads * layout_.dim_head;
  p.heads = layout_.heads;
  p.ff_dim = layout_.dim * layout_.ff_mult;
  p.out_dim = output_dim_;
  p.scale = 1.0f / std::sqrt(static_cast<float>(layout_.dim_head));
  p.timeline = timeline_;
  p.probe = probe_;
  p.events = events_;

  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(grid_));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem_bytes_;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeCooperative;
  attribute[0].val.cooperative = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  check_cuda(cudaLaunchKernelEx(&config, fused_resampler_kernel, p), "FusedResampler: launch");
}

}  // namespace instantid::cuda
