// The skinny fp32 GEMM (weight streaming, deterministic split K) and its cuBLAS fallback.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/skinny_gemm.hpp"
#include "instantid/kernels/async_pipeline.cuh"

namespace instantid::cuda {

namespace {

constexpr int kThreads = 128;  // 4 warps per CTA
constexpr int kTileN = kSkinnyGemmTileN;
constexpr int kTileK = kSkinnyGemmTileK;
constexpr int kStages = 4;
// Fewer k tiles per CTA make the split-K fix-up dominate (measured: 2 → 4 took the Resampler from
// 0.426 to 0.419 ms on an H200; 8 gave 0.440 ms).
constexpr int kMinTilesPerSplit = 4;

// One launch runs one or two problems: CTAs with blockIdx.x < tiles0 take the first, the others
// the second (each with its own split count; blockIdx.y past it exits at once).
// With cluster_reduce the launch's clusters are (1, splits, 1): one output tile's splits.
struct KernelArgs {
  SkinnyGemmParams p[2];
  int k_tiles[2] = {0, 0};
  int tiles0 = 0;
  bool cluster_reduce = false;
  unsigned* tickets = nullptr;              // [tiles0 + tiles1]
  float* partials[2] = {nullptr, nullptr};  // per problem [tiles, splits, M, 64]
};

__device__ __forceinline__ float epilogue(float v, const SkinnyGemmParams& p, int m, int n) {
  if (p.bias != nullptr) v += p.bias[n];
  if (p.gelu) v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
  if (p.beta != 0.0f) v = fmaf(p.beta, p.c_in[static_cast<std::int64_t>(m) * p.n + n], v);
  return v;
}

// Writes the split sums of float4 e4 of the [M, 64] tile at column n0 through the epilogue.
__device__ __forceinline__ void store_sum4(const SkinnyGemmParams& p, int n0, int e4, float4 sum) {
  const int m = e4 * 4 / kTileN, n = n0 + e4 * 4 % kTileN;
  const float v[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    if (n + u < p.n) p.c[static_cast<std::int64_t>(m) * p.n + n + u] = epilogue(v[u], p, m, n + u);
  }
}

__device__ __forceinline__ void add4(float4& sum, float4 x) {
  sum.x += x.x;
  sum.y += x.y;
  sum.z += x.z;
  sum.w += x.w;
}

// The multiply of one stage (A rows [kMPad, 32 k] and W rows [64, 32 k] in shared memory) is
// done by a "core": the fp32 FMA core or the 3xTF32 tensor-core core below. A core says where
// row r, column kc of a stage lives (Layout), multiplies stages into its accumulators, and hands
// out its share of the 64-column output tile.

// Shared rows are 36 floats apart: 16-byte reads of 4 (W) or 8 (A) consecutive rows hit distinct
// bank groups, and cp.async destinations stay 16-byte aligned.
struct PaddedRows {
  static constexpr int kStride = kTileK + 4;
  __device__ static int offset(int r, int kc) { return r * kStride + kc; }
};

// fp32 FMAs from register tiles. Warps form kNWarps column groups × kKWarps k groups. Lane
// (ml = lane % kMLanes, ng = lane / kMLanes) of warp (wn, wk) accumulates rows m = ml + kMLanes·i
// (i < kMPerLane) and columns wn·(8·kNLanes) + ng + kNLanes·j (j < 8) over its k slice of every
// tile, 4 k per step. kMLanes 8: lane grid 8 × 4, warps 2 × 2 (kMPerLane 8 covers M = 64).
// kMLanes 4: lane grid 4 × 8, warps 1 × 4: each 16-byte shared read feeds twice the FMAs (fewer
// shared-memory wavefronts per FMA), for M <= 40.
template <int kMLanes, int kMPerLane>
struct FmaCore {
  using Layout = PaddedRows;
  static constexpr int kMPad = kMLanes * kMPerLane;
  static constexpr int kNLanes = 32 / kMLanes;
  static constexpr int kWarpN = 8 * kNLanes;
  static constexpr int kNWarps = kTileN / kWarpN;
  static constexpr int kKWarps = (kThreads / 32) / kNWarps;
  static constexpr int kWarpK = kTileK / kKWarps;  // k of each tile one warp multiplies
  static_assert(kNWarps * kWarpN == kTileN && kKWarps * kWarpK == kTileK && kWarpK % 4 == 0,
                "tile split");

  float acc[kMPerLane][8];
  int lane, wn, wk, ml, ng;

  __device__ FmaCore(int warp, int lane_id)
      : lane(lane_id),
        wn(warp % kNWarps),
        wk(warp / kNWarps),
        ml(lane_id % kMLanes),
        ng(lane_id / kMLanes) {
#pragma unroll
    for (int i = 0; i < kMPerLane; ++i) {
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
    }
  }

  __device__ void multiply(const float* sa, const float* sw) {
#pragma unroll
    for (int kk = 0; kk < kWarpK; kk += 4) {
      const int ko = wk * kWarpK + kk;
      float4 w[8], a[kMPerLane];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        w[j] = *reinterpret_cast<const float4*>(sw +
                                                Layout::offset(wn * kWarpN + ng + kNLanes * j, ko));
      }
#pragma unroll
      for (int i = 0; i < kMPerLane; ++i) {
        a[i] = *reinterpret_cast<const float4*>(sa + Layout::offset(ml + kMLanes * i, ko));
      }
      // k component outermost: consecutive FMAs update different accumulators (no dependent
      // chains); each accumulator still sums its k in order.
#pragma unroll
      for (int i = 0; i < kMPerLane; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i].x, w[j].x, acc[i][j]);
      }
#pragma unroll
      for (int i = 0; i < kMPerLane; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i].y, w[j].y, acc[i][j]);
      }
#pragma unroll
      for (int i = 0; i < kMPerLane; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i].z, w[j].z, acc[i][j]);
      }
#pragma unroll
      for (int i = 0; i < kMPerLane; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i].w, w[j].w, acc[i][j]);
      }
    }
  }

  // The k groups join the first one in order: acc(wk = 0) + acc(1) + ... (fixed). red: the
  // drained stage buffers.
  __device__ void join(float* red /*[kKWarps - 1][kNWarps][kMPerLane * 8][32 lanes]*/) {
    if (kKWarps == 1) return;
    if (wk > 0) {
#pragma unroll
      for (int i = 0; i < kMPerLane; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          red[((((wk - 1) * kNWarps + wn) * kMPerLane + i) * 8 + j) * 32 + lane] = acc[i][j];
        }
      }
    }
    __syncthreads();
    if (wk == 0) {
#pragma unroll
      for (int g = 1; g < kKWarps; ++g) {
#pragma unroll
        for (int i = 0; i < kMPerLane; ++i) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            acc[i][j] += red[((((g - 1) * kNWarps + wn) * kMPerLane + i) * 8 + j) * 32 + lane];
          }
        }
      }
    }
  }
  static constexpr int kJoinFloats = (kKWarps - 1) * kNWarps * kMPerLane * 8 * 32;

  // f(row m, column of the tile, value) for every output this thread holds after join().
  template <typename F>
  __device__ void for_each_output(F&& f) const {
    if (wk != 0) return;
#pragma unroll
    for (int i = 0; i < kMPerLane; ++i) {
#pragma unroll
      for (int j = 0; j < 8; ++j) f(ml + kMLanes * i, wn * kWarpN + ng + kNLanes * j, acc[i][j]);
    }
  }
};

// Rows of 32 floats; the 16-byte chunk c of row r sits at chunk c ^ (4 · (r & 1)), so the
// tensor core's 16-byte fragment reads (two rows × four chunks per quarter warp) hit all banks.
struct SwizzledRows {
  static constexpr int kStride = kTileK;
  __device__ static int offset(int r, int kc) { return r * kTileK + (kc ^ ((r & 1) << 4)); }
};

// x ≈ hi + lo: hi is x rounded to TF32's 10 fraction bits (half away from zero, on the bit
// pattern: cheaper than cvt.rna.tf32, which ptxas expands with an infinity check), lo = x − hi is
// exact (Sterbenz) and the MMA reads its top 19 bits, so x − hi − lo is below 2⁻²¹ |x|.
struct Tf32Pair {
  std::uint32_t hi, lo;
};
__device__ __forceinline__ Tf32Pair split_tf32(float x) {
  const std::uint32_t hi = (__float_as_uint(x) + 0x1000u) & 0xFFFFE000u;
  return {hi, __float_as_uint(x - __uint_as_float(hi))};
}

// d += a·b, one m16n8k8 TF32 tensor-core product with fp32 accumulation.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const std::uint32_t (&a)[4],
                                         const std::uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// 3xTF32 tensor-core products: W and A are each split into two TF32 parts and lo·hi, hi·lo,
// hi·hi of each k step are summed in that order (lo·lo, about 2⁻²² of the product, is dropped),
// then added to the running fp32 sum: about fp32's accuracy at a fraction of the FMA core's
// instructions. The MMA's M is the tile's weight rows, its N the problem's rows (8 per MMA,
// kNTiles of them). Warp (wm, wk) multiplies weight rows [32·wm, +32) (two MMA row tiles) by k
// [16·wk, +16) of every stage; thread (g = lane / 4, t = lane % 4) holds k 4t .. 4t + 3 of that
// block, the MMA's k t and t + 4 being the first two in one step and the last two in the next
// (the same permutation for both operands, so the products are unchanged). The two k halves
// join in order at the end.
template <int kNTiles>
struct Tf32x3Core {
  using Layout = SwizzledRows;
  static constexpr int kMPad = 8 * kNTiles;
  static constexpr int kAccPerThread = 2 * kNTiles * 4;
  static constexpr int kJoinFloats = 2 * kAccPerThread * 32;  // the wk = 1 warps' accumulators

  float acc[2][kNTiles][4];
  int wm, wk, lane, g, t;

  __device__ Tf32x3Core(int warp, int lane_id)
      : wm(warp % 2), wk(warp / 2), lane(lane_id), g(lane_id / 4), t(lane_id % 4) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.0f;
      }
    }
  }

  __device__ void multiply(const float* sa, const float* sw) {
    const int k = 16 * wk + 4 * t;
    Tf32Pair w[2][2][4];  // [row tile][row g or g + 8][k]
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float4 v =
            *reinterpret_cast<const float4*>(sw + Layout::offset(32 * wm + 16 * mt + 8 * h + g, k));
        w[mt][h][0] = split_tf32(v.x);
        w[mt][h][1] = split_tf32(v.y);
        w[mt][h][2] = split_tf32(v.z);
        w[mt][h][3] = split_tf32(v.w);
      }
    }
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      const float4 v = *reinterpret_cast<const float4*>(sa + Layout::offset(8 * j + g, k));
      const Tf32Pair x[4] = {split_tf32(v.x), split_tf32(v.y), split_tf32(v.z), split_tf32(v.w)};
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const std::uint32_t b_hi[2] = {x[2 * s].hi, x[2 * s + 1].hi};
        const std::uint32_t b_lo[2] = {x[2 * s].lo, x[2 * s + 1].lo};
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const std::uint32_t a_hi[4] = {w[mt][0][2 * s].hi, w[mt][1][2 * s].hi,
                                         w[mt][0][2 * s + 1].hi, w[mt][1][2 * s + 1].hi};
          const std::uint32_t a_lo[4] = {w[mt][0][2 * s].lo, w[mt][1][2 * s].lo,
                                         w[mt][0][2 * s + 1].lo, w[mt][1][2 * s + 1].lo};
          // The tensor core accumulates with truncation: summing the three products of this
          // step on their own keeps that error relative to one step's sum, and the running
          // sum is added in fp32 with rounding (measured: about the FMA core's error).
          float step[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          mma_tf32(step, a_lo, b_hi);
          mma_tf32(step, a_hi, b_lo);
          mma_tf32(step, a_hi, b_hi);
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][j][e] += step[e];
        }
      }
    }
  }

  // k half 1 joins k half 0: acc(wk = 0) + acc(1). red: the drained stage buffers.
  __device__ void join(float* red /*[2 wm][kAccPerThread][32 lanes]*/) {
    float* mine = red + wm * kAccPerThread * 32 + lane;
    if (wk == 1) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) mine[((mt * kNTiles + j) * 4 + e) * 32] = acc[mt][j][e];
        }
      }
    }
    __syncthreads();
    if (wk == 0) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][j][e] += mine[((mt * kNTiles + j) * 4 + e) * 32];
        }
      }
    }
  }

  template <typename F>
  __device__ void for_each_output(F&& f) const {
    if (wk != 0) return;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
        const int m = 8 * j + 2 * t, col = 32 * wm + 16 * mt + g;
        f(m, col, acc[mt][j][0]);
        f(m + 1, col, acc[mt][j][1]);
        f(m, col + 8, acc[mt][j][2]);
        f(m + 1, col + 8, acc[mt][j][3]);
      }
    }
  }
};

// The cp.async plan of one operand's stage tile ([kRows, 32 k] from rows [row0, row0 + kRows) of
// a [rows, ld] matrix): chunk i of this thread is tile row r0 + 16·i (r0 = tid / 8), columns
// kc .. kc + 3. Rows past the matrix and k past ld are zero-filled. Kept to a few registers (the
// FMA core needs nearly all of them for 3 CTAs per SM): chunk i's addresses are 16 rows apart.
template <typename Layout, int kRows>
struct TileCopy {
  static constexpr int kRowsPerPass = kThreads / (kTileK / 4);
  static constexpr int kChunks = (kRows + kRowsPerPass - 1) / kRowsPerPass;
  const float* first;  // matrix row row0 + r0, column kc
  int ld;
  int dst;        // stage offset of chunk 0
  int in_matrix;  // chunks whose row lies in the matrix
  int in_tile;    // chunks whose row lies in the tile
  int kc;

  __device__ TileCopy(const float* matrix, int ld_, int row0, int rows, int stage_offset, int tid)
      : ld(ld_), kc((tid % (kTileK / 4)) * 4) {
    const int r0 = tid / (kTileK / 4);
    first = matrix + static_cast<std::int64_t>(row0 + r0) * ld + kc;
    dst = stage_offset + Layout::offset(r0, kc);
    in_matrix = max(0, (rows - row0 - r0 + kRowsPerPass - 1) / kRowsPerPass);
    in_tile = (kRows - r0 + kRowsPerPass - 1) / kRowsPerPass;
  }

  __device__ void issue(float* stage, int k0) const {
    const bool k_ok = k0 + kc < ld;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if (i >= in_tile) break;
      const bool ok = k_ok && i < in_matrix;
      const float* src = first + static_cast<std::int64_t>(i) * kRowsPerPass * ld + k0;
      kernels::cp_async_16(stage + dst + i * kRowsPerPass * Layout::kStride, ok ? src : first,
                           ok ? 16 : 0);
    }
  }
};

template <typename Core>
constexpr std::size_t stage_floats() {
  return std::size_t{Core::kMPad + kTileN} * Core::Layout::kStride;
}

// Per-row sums of A over this CTA's k range for a folded LayerNorm (read from the stages the core
// has just multiplied: no extra barrier or copy). They are shifted by the row's first element, so
// the one-pass variance Σd²/K − (Σd/K)² keeps its digits for rows far from zero (tested with
// offsets of 30 and −200). Thread tid adds rows tid / 4 + 32·i, k 8·(tid % 4) .. + 7 of every
// stage; the four threads of a row join in a fixed order. Stored per row as {Σd, Σd²}
// (d = a − shift) and the shift, for the tile's owners.
template <typename Layout, int kMPad>
struct RowSums {
  static constexpr int kRowsPerPass = kThreads / 4;
  static constexpr int kPasses = (kMPad + kRowsPerPass - 1) / kRowsPerPass;
  float shift[kPasses], sum[kPasses], sq[kPasses];
  int row0, kq;

  __device__ RowSums(int tid) : row0(tid / 4), kq(8 * (tid % 4)) {
#pragma unroll
    for (int i = 0; i < kPasses; ++i) shift[i] = sum[i] = sq[i] = 0.0f;
  }

  // After the wait for the previous kernel: A's first column.
  __device__ void load_shifts(const SkinnyGemmParams& p) {
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int r = row0 + kRowsPerPass * i;
      if (r < p.m) shift[i] = p.a[static_cast<std::int64_t>(r) * p.k];
    }
  }

  // The stage sa holds k [k0, k0 + 32); columns past k are zero-filled and skipped.
  __device__ void add(const float* sa, int k0, int k) {
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int r = row0 + kRowsPerPass * i;
      if (r >= kMPad) break;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (k0 + kq + 4 * h >= k) break;
        const float4 v = *reinterpret_cast<const float4*>(sa + Layout::offset(r, kq + 4 * h));
        const float d[4] = {v.x - shift[i], v.y - shift[i], v.z - shift[i], v.w - shift[i]};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          sum[i] += d[u];
          sq[i] = fmaf(d[u], d[u], sq[i]);
        }
      }
    }
  }

  __device__ void publish(float2* sums /*[kMPad]*/, float* shifts /*[kMPad]*/, int m) {
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
#pragma unroll
      for (int o = 1; o < 4; o *= 2) {
        sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], o);
        sq[i] += __shfl_xor_sync(0xffffffffu, sq[i], o);
      }
      const int r = row0 + kRowsPerPass * i;
      if (kq == 0 && r < m) {
        sums[r] = make_float2(sum[i], sq[i]);
        shifts[r] = shift[i];
      }
    }
  }
};

// Split K within a cluster (sm_90+): each CTA leaves its partial [M, 64] in its own shared
// memory; after the cluster barrier CTA rank r (= split r: clusters are (1, splits, 1) and the
// grid has splits rows) sums its share of the tile over every rank's partial, in split order
// from zero like the ticket path (so both give the same bits), and writes C. The second barrier
// keeps each CTA's shared memory alive until all have read it. Measured alternatives (pushing
// partials into the owner's memory; arriving at the second barrier before the epilogue):
// docs/performance.md.
// With a folded LayerNorm (Sums = RowSums) the row sums travel the same way: each CTA publishes
// its rows' shifted sums after its partial, and the owner of a float4 adds its row's sums over the
// ranks in split order before it normalises. A launch without clusters is a cluster of one CTA.
template <typename Core, typename Sums>
__device__ void cluster_reduce_tile(const Core& core, Sums* row_sums, float* smem,
                                    const SkinnyGemmParams& p, int n0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  constexpr bool kRowNorm = !std::is_same_v<Sums, void>;
  const cg::cluster_group cluster = cg::this_cluster();
  __syncthreads();  // join() read the stage buffers
  core.for_each_output([&](int m, int col, float v) {
    if (m < p.m) smem[m * kTileN + col] = v;
  });
  // After the partial [kMPad, 64]: the row sums, shifts and {mean, inv} of a folded LayerNorm.
  static_assert(Core::kMPad % 2 == 0 &&
                    Core::kMPad * (kTileN + 5) <= kStages * static_cast<int>(stage_floats<Core>()),
                "the row statistics fit the stage buffers, float2-aligned");
  float2* stats = reinterpret_cast<float2*>(smem + Core::kMPad * kTileN);       // [kMPad]
  float* shifts = smem + Core::kMPad * (kTileN + 2);                            // [kMPad]
  float2* norm = reinterpret_cast<float2*>(smem + Core::kMPad * (kTileN + 3));  // [kMPad]
  if constexpr (kRowNorm) row_sums->publish(stats, shifts, p.m);
  cluster.sync();
  const int splits = static_cast<int>(cluster.num_blocks());
  if constexpr (kRowNorm) {
    // Row statistics first (one thread per row): loading them beside the partials below would
    // hold twice the remote addresses (244 instead of 138 registers, 2 instead of 3 CTAs per SM).
    const int m = threadIdx.x;
    if (m < p.m) {
      float2 st[kSkinnyGemmMaxClusterSplits];
#pragma unroll
      for (int r = 0; r < kSkinnyGemmMaxClusterSplits; ++r) {
        if (r < splits) st[r] = cluster.map_shared_rank(stats, r)[m];
      }
      float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
      for (int r = 0; r < kSkinnyGemmMaxClusterSplits; ++r) {
        if (r < splits) {
          s1 += st[r].x;
          s2 += st[r].y;
        }
      }
      const float mean_d = s1 / static_cast<float>(p.k);
      const float var = fmaxf(s2 / static_cast<float>(p.k) - mean_d * mean_d, 0.0f);
      norm[m] = make_float2(shifts[m] + mean_d, rsqrtf(var + p.row_norm_eps));
    }
    __syncthreads();
  }
  const int count4 = p.m * kTileN / 4;
  const int share = (count4 + splits - 1) / splits;
  const int first = static_cast<int>(cluster.block_rank()) * share;
  float4* mine = reinterpret_cast<float4*>(smem);
  for (int i = threadIdx.x; i < share && first + i < count4; i += kThreads) {
    float4 x[kSkinnyGemmMaxClusterSplits];
#pragma unroll
    for (int r = 0; r < kSkinnyGemmMaxClusterSplits; ++r) {
      if (r < splits) x[r] = cluster.map_shared_rank(mine, r)[first + i];
    }
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int r = 0; r < kSkinnyGemmMaxClusterSplits; ++r) {
      if (r < splits) add4(sum, x[r]);
    }
    if constexpr (kRowNorm) {
      const float2 mi = norm[(first + i) * 4 / kTileN];  // {mean, inv} of the float4's row
      const int n = n0 + (first + i) * 4 % kTileN;
      const auto normalise = [&](float v, int u) {
        return n + u < p.n ? mi.y * fmaf(-mi.x, p.row_norm_colsum[n + u], v) : v;
      };
      sum = make_float4(normalise(sum.x, 0), normalise(sum.y, 1), normalise(sum.z, 2),
                        normalise(sum.w, 3));
    }
    store_sum4(p, n0, first + i, sum);
  }
  cluster.sync();
#endif
}

// One CTA: output columns [64·blockIdx.x, +64) over k tiles [split range of blockIdx.y]. kRowNorm:
// the problem folds a LayerNorm (row_norm_colsum; one problem, cluster sums).
template <typename Core, bool kRowNorm>
__global__ void __launch_bounds__(kThreads) skinny_gemm_kernel(KernelArgs args) {
  using Layout = typename Core::Layout;
  constexpr int kMPad = Core::kMPad;
  constexpr int kStageFloats = static_cast<int>(stage_floats<Core>());
  static_assert(Core::kJoinFloats <= kStages * kStageFloats, "join buffer fits the stages");
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  __shared__ unsigned s_last;
  const int problem = static_cast<int>(blockIdx.x) < args.tiles0 ? 0 : 1;
  const SkinnyGemmParams& p = args.p[problem];
  const int tile = static_cast<int>(blockIdx.x) - (problem == 0 ? 0 : args.tiles0);
  const int split = blockIdx.y;
  if (split >= p.splits) return;  // the other problem of the launch has more splits
  const int k_tiles = args.k_tiles[problem];
  const int n0 = tile * kTileN;
  const int t_begin = static_cast<int>(static_cast<std::int64_t>(split) * k_tiles / p.splits);
  const int t_end = static_cast<int>(static_cast<std::int64_t>(split + 1) * k_tiles / p.splits);
  const int count = t_end - t_begin;
  const int tid = threadIdx.x;

  // Per stage, this thread copies 16-byte chunk columns kc of rows tid / 8 + 16·i: the row
  // pointers and shared offsets are fixed, only k0 moves.
  const TileCopy<Layout, kTileN> copy_w(p.w, p.k, n0, p.n, kMPad * Layout::kStride, tid);
  const TileCopy<Layout, kMPad> copy_a(p.a, p.k, 0, p.m, 0, tid);
  auto load_w = [&](int t, int stage) {
    copy_w.issue(smem + stage * kStageFloats, (t_begin + t) * kTileK);
  };
  auto load_a = [&](int t, int stage) {
    copy_a.issue(smem + stage * kStageFloats, (t_begin + t) * kTileK);
  };

  Core core(tid / 32, tid % 32);
  [[maybe_unused]] std::conditional_t<kRowNorm, RowSums<Layout, kMPad>, int> row_sums(tid);

  // Weights never change between kernels: fetch the first tiles, wait for the previous kernel
  // (programmatic launch), let the next one start (it prefetches its own weights meanwhile), then
  // fetch A. Group s holds A tile s (and, in group 0, the first weight tiles).
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < count) load_w(s, s);
  }
  kernels::wait_for_previous_grid();
  kernels::allow_next_grid();
  if constexpr (kRowNorm) row_sums.load_shifts(p);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < count) load_a(s, s);
    kernels::cp_async_commit();
  }
  for (int t = 0; t < count; ++t) {
    kernels::cp_async_wait<kStages - 2>();
    __syncthreads();
    if (t + kStages - 1 < count) {
      load_w(t + kStages - 1, (t + kStages - 1) % kStages);
      load_a(t + kStages - 1, (t + kStages - 1) % kStages);
    }
    kernels::cp_async_commit();
    const float* sa = smem + (t % kStages) * kStageFloats;
    core.multiply(sa, sa + kMPad * Layout::kStride);
    if constexpr (kRowNorm) row_sums.add(sa, (t_begin + t) * kTileK, p.k);
  }
  kernels::cp_async_wait<0>();
  __syncthreads();
  core.join(smem);

  if (p.splits == 1 && !kRowNorm) {
    core.for_each_output([&](int m, int col, float v) {
      const int n = n0 + col;
      if (m < p.m && n < p.n) p.c[static_cast<std::int64_t>(m) * p.n + n] = epilogue(v, p, m, n);
    });
    return;
  }

  if (args.cluster_reduce) {
    if constexpr (kRowNorm) {
      cluster_reduce_tile(core, &row_sums, smem, p, n0);
    } else {
      cluster_reduce_tile(core, static_cast<void*>(nullptr), smem, p, n0);
    }
    return;
  }
  if constexpr (kRowNorm) return;  // refused on the host

  // Split K: publish this CTA's partial, take a ticket; the last CTA of the tile sums all
  // partials in split order (s = 0, 1, ...) and writes C.
  float* tile_partials =
      args.partials[problem] + static_cast<std::int64_t>(tile) * p.splits * p.m * kTileN;
  unsigned* ticket = args.tickets + (problem == 0 ? 0 : args.tiles0) + tile;
  float* mine = tile_partials + static_cast<std::int64_t>(split) * p.m * kTileN;
  core.for_each_output([&](int m, int col, float v) {
    if (m < p.m) __stcg(mine + m * kTileN + col, v);
  });
  __threadfence();
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(ticket, 1u) == static_cast<unsigned>(p.splits - 1);
  __syncthreads();
  if (s_last == 0u) return;
  __threadfence();
  // Each thread owns up to kVec float4 of the [M, 64] tile. The partials of kSplitBatch splits
  // are loaded before any is added (about 16 loads in flight: one L2 round trip per batch, not
  // per split), then added in split order; splits past the last add 0.
  constexpr int kVec = (kMPad * kTileN / 4 + kThreads - 1) / kThreads;
  constexpr int kSplitBatch = kVec >= 16 ? 1 : 16 / kVec;
  const int count4 = p.m * kTileN / 4;
  const float4* parts4 = reinterpret_cast<const float4*>(tile_partials);
  float4 sum[kVec];
#pragma unroll
  for (int q = 0; q < kVec; ++q) sum[q] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int s0 = 0; s0 < p.splits; s0 += kSplitBatch) {
    float4 x[kSplitBatch][kVec];
#pragma unroll
    for (int b = 0; b < kSplitBatch; ++b) {
#pragma unroll
      for (int q = 0; q < kVec; ++q) {
        const int e4 = tid + q * kThreads;
        x[b][q] = s0 + b < p.splits && e4 < count4
                      ? __ldcg(parts4 + static_cast<std::int64_t>(s0 + b) * count4 + e4)
                      : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
    }
#pragma unroll
    for (int b = 0; b < kSplitBatch; ++b) {
#pragma unroll
      for (int q = 0; q < kVec; ++q) add4(sum[q], x[b][q]);
    }
  }
#pragma unroll
  for (int q = 0; q < kVec; ++q) {
    const int e4 = tid + q * kThreads;
    if (e4 < count4) store_sum4(p, n0, e4, sum[q]);
  }
  if (tid == 0) *ticket = 0u;
}

// Dynamic shared memory of the kernel on Core: the stage ring.
template <typename Core>
constexpr std::size_t kernel_smem_bytes() {
  return std::size_t{kStages} * stage_floats<Core>() * sizeof(float);
}

// Host-side attributes a launch of the kernel on Core needs: the shared-memory opt-in past 48 KB
// in all (the kernel's static s_last included; 3xTF32 at M <= 32 asks for exactly 48 KB of dynamic
// memory), and the non-portable cluster size when clusters have more than 8 CTAs.
template <typename Core, bool kRowNorm>
cudaError_t set_kernel_attributes(int cluster_size) noexcept {
  constexpr std::size_t kSmem = kernel_smem_bytes<Core>();
  if (kSmem + 1024 > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(skinny_gemm_kernel<Core, kRowNorm>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem));
    if (e != cudaSuccess) return e;
  }
  if (cluster_size > 8) {
    return cudaFuncSetAttribute(skinny_gemm_kernel<Core, kRowNorm>,
                                cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  }
  return cudaSuccess;
}

template <typename Core, bool kRowNorm>
cudaError_t launch(const KernelArgs& args, int tiles, int splits, cudaStream_t stream) noexcept {
  const int cluster_size = args.cluster_reduce && splits > 1 ? splits : 1;
  const cudaError_t e = set_kernel_attributes<Core, kRowNorm>(cluster_size);
  if (e != cudaSuccess) return e;
  return kernels::launch_kernel_in_clusters(
      args.p[0].programmatic, dim3(1, static_cast<unsigned>(cluster_size), 1),
      skinny_gemm_kernel<Core, kRowNorm>,
      dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits)), dim3(kThreads),
      kernel_smem_bytes<Core>(), stream, args);
}

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// c[r, :] = act(c[r, :] + bias) after a cuBLAS GEMM (the fallback's epilogue).
__global__ void bias_gelu_kernel(float* c /*[rows, cols]*/, const float* bias /*[cols] or null*/,
                                 std::int64_t total, int cols, bool gelu) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  float v = c[i];
  if (bias != nullptr) v += bias[i % cols];
  if (gelu) v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
  c[i] = v;
}

// Block j folds row j of w (fold_layer_norm_into_linear): fp64 sums over the threads' columns,
// joined in a fixed order.
constexpr int kFoldThreads = 256;
__global__ void fold_layer_norm_kernel(float* w /*[n, k]*/, const float* gamma /*[k]*/,
                                       const float* beta /*[k]*/, const float* b /*[n] or null*/,
                                       int k, float* colsum /*[n]*/, float* bias /*[n]*/) {
  __shared__ double partial[2][kFoldThreads];
  float* row = w + static_cast<std::int64_t>(blockIdx.x) * k;
  double s_w = 0.0, s_b = 0.0;
  for (int c = threadIdx.x; c < k; c += kFoldThreads) {
    const float folded = row[c] * gamma[c];
    s_b += static_cast<double>(row[c]) * beta[c];
    s_w += folded;
    row[c] = folded;
  }
  partial[0][threadIdx.x] = s_w;
  partial[1][threadIdx.x] = s_b;
  __syncthreads();
  for (int half = kFoldThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) {
      partial[0][threadIdx.x] += partial[0][threadIdx.x + half];
      partial[1][threadIdx.x] += partial[1][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    colsum[blockIdx.x] = static_cast<float>(partial[0][0]);
    bias[blockIdx.x] = static_cast<float>(partial[1][0] + (b != nullptr ? b[blockIdx.x] : 0.0f));
  }
}

}  // namespace

cudaError_t fold_layer_norm_into_linear(float* w, const float* gamma, const float* beta,
                                        const float* b, int n, int k, float* colsum, float* bias,
                                        cudaStream_t stream) noexcept {
  if (w == nullptr || gamma == nullptr || beta == nullptr || colsum == nullptr || bias == nullptr ||
      n < 1 || k < 1) {
    return cudaErrorInvalidValue;
  }
  fold_layer_norm_kernel<<<static_cast<unsigned>(n), kFoldThreads, 0, stream>>>(w, gamma, beta, b,
                                                                                k, colsum, bias);
  return cudaGetLastError();
}

bool skinny_gemm_supported(int m, int n, int k, const float* a, const float* w) noexcept {
  const auto aligned = [](const float* ptr) {
    return ptr != nullptr && reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0;
  };
  return m >= 1 && m <= kSkinnyGemmMaxRows && n >= 1 && k >= 4 && k % 4 == 0 && aligned(a) &&
         aligned(w);
}

namespace {

// Splits that bring tiles · splits up to about `target` CTAs, each with >= kMinTilesPerSplit k
// tiles.
int splits_for_tiles(int tiles, int k, int target) noexcept {
  if (tiles < 1 || k < 1 || tiles >= target) return 1;
  const int most = std::max(1, ceil_div(k, kTileK) / kMinTilesPerSplit);
  return std::max(1, std::min(target / tiles, most));
}

}  // namespace

int skinny_gemm_splits(int n, int k, int sm_count, int ctas_per_sm) noexcept {
  return splits_for_tiles(skinny_gemm_tiles(n), k,
                          std::max(1, sm_count) * std::max(1, ctas_per_sm));
}

int skinny_gemm_tiles(int n) noexcept { return n < 1 ? 0 : ceil_div(n, kTileN); }

std::size_t skinny_gemm_partials_count(int m, int n, int splits) noexcept {
  if (m < 1 || n < 1 || splits <= 1) return 0;
  return static_cast<std::size_t>(skinny_gemm_tiles(n)) * splits * m * kTileN;
}

namespace {

// Checks one problem of a launch and fills its slot of args; tickets and partials are taken
// from the workspace from the given offsets. False: nothing may be launched.
bool prepare_problem(const SkinnyGemmParams& params, const SkinnyGemmWorkspace& workspace, int slot,
                     int ticket_offset, std::size_t partial_offset, KernelArgs& args) noexcept {
  if (!skinny_gemm_supported(params.m, params.n, params.k, params.a, params.w) ||
      params.c == nullptr) {
    return false;
  }
  const int k_tiles = ceil_div(params.k, kTileK);
  if (params.splits < 1 || params.splits > k_tiles) return false;
  if (params.cluster_reduce && params.splits > kSkinnyGemmMaxClusterSplits) return false;
  if (params.row_norm_colsum != nullptr &&
      (!params.cluster_reduce || !(params.row_norm_eps > 0.0f) || slot != 0)) {
    return false;
  }
  const int tiles = skinny_gemm_tiles(params.n);
  if (params.splits > 1 && !params.cluster_reduce) {
    if (workspace.tickets == nullptr || workspace.tickets_count < ticket_offset + tiles ||
        workspace.partials == nullptr ||
        workspace.partials_count <
            partial_offset + skinny_gemm_partials_count(params.m, params.n, params.splits) ||
        reinterpret_cast<std::uintptr_t>(workspace.partials) % 16 != 0) {
      return false;
    }
  }
  args.p[slot] = params;
  if (params.c_in == nullptr) args.p[slot].c_in = params.c;  // where the kernel reads beta·C
  args.k_tiles[slot] = k_tiles;
  args.partials[slot] =
      workspace.partials == nullptr ? nullptr : workspace.partials + partial_offset;
  return true;
}

template <typename Core>
struct CoreTag {
  using type = Core;
};

// f(CoreTag<Core>{}) for the core and lane grid that problems of up to m rows take.
template <typename F>
cudaError_t with_core(SkinnyGemmMath math, int lane_rows, int m, F&& f) noexcept {
  if (math == SkinnyGemmMath::kTf32x3) {
    switch ((m + 7) / 8) {
      case 1:
        return f(CoreTag<Tf32x3Core<1>>{});
      case 2:
        return f(CoreTag<Tf32x3Core<2>>{});
      case 3:
        return f(CoreTag<Tf32x3Core<3>>{});
      case 4:
        return f(CoreTag<Tf32x3Core<4>>{});
      case 5:
        return f(CoreTag<Tf32x3Core<5>>{});
      case 6:
        return f(CoreTag<Tf32x3Core<6>>{});
      case 7:
        return f(CoreTag<Tf32x3Core<7>>{});
      default:
        return f(CoreTag<Tf32x3Core<8>>{});
    }
  }
  const int lanes = lane_rows == 0 ? (m <= 40 ? 4 : 8) : lane_rows;
  if (lanes == 4 && m <= 40) {
    if (m <= 4) return f(CoreTag<FmaCore<4, 1>>{});
    if (m <= 8) return f(CoreTag<FmaCore<4, 2>>{});
    if (m <= 16) return f(CoreTag<FmaCore<4, 4>>{});
    if (m <= 24) return f(CoreTag<FmaCore<4, 6>>{});
    if (m <= 32) return f(CoreTag<FmaCore<4, 8>>{});
    if (m <= 36) return f(CoreTag<FmaCore<4, 9>>{});
    return f(CoreTag<FmaCore<4, 10>>{});
  }
  if (lanes != 8 && lanes != 4) return cudaErrorInvalidValue;
  if (m <= 8) return f(CoreTag<FmaCore<8, 1>>{});
  if (m <= 16) return f(CoreTag<FmaCore<8, 2>>{});
  if (m <= 24) return f(CoreTag<FmaCore<8, 3>>{});
  if (m <= 32) return f(CoreTag<FmaCore<8, 4>>{});
  if (m <= 40) return f(CoreTag<FmaCore<8, 5>>{});
  if (m <= 48) return f(CoreTag<FmaCore<8, 6>>{});
  return f(CoreTag<FmaCore<8, 8>>{});
}

// Launches args (problems with up to m rows) on the core and lane grid the first problem asks for.
cudaError_t launch_for_rows(const KernelArgs& args, int m, int tiles, int splits,
                            cudaStream_t stream) noexcept {
  return with_core(args.p[0].math, args.p[0].lane_rows, m, [&](auto tag) {
    using Core = typename decltype(tag)::type;
    return args.p[0].row_norm_colsum != nullptr ? launch<Core, true>(args, tiles, splits, stream)
                                                : launch<Core, false>(args, tiles, splits, stream);
  });
}

}  // namespace

cudaError_t skinny_gemm(const SkinnyGemmParams& params, const SkinnyGemmWorkspace& workspace,
                        cudaStream_t stream) noexcept {
  KernelArgs args;
  if (!prepare_problem(params, workspace, 0, 0, 0, args)) return cudaErrorInvalidValue;
  if (params.row_norm_colsum != nullptr) {  // the row sums meet in cluster code (sm_90+)
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        major < 9) {
      return cudaErrorInvalidValue;
    }
  }
  args.cluster_reduce = params.cluster_reduce;
  args.tickets = workspace.tickets;
  args.tiles0 = skinny_gemm_tiles(params.n);
  return launch_for_rows(args, params.m, args.tiles0, params.splits, stream);
}

cudaError_t skinny_gemm_pair(const SkinnyGemmParams& first, const SkinnyGemmParams& second,
                             const SkinnyGemmWorkspace& workspace, cudaStream_t stream) noexcept {
  if (first.programmatic != second.programmatic || first.lane_rows != second.lane_rows ||
      first.math != second.math || first.cluster_reduce != second.cluster_reduce ||
      (first.cluster_reduce && first.splits != second.splits) || first.row_norm_colsum != nullptr ||
      second.row_norm_colsum != nullptr) {
    return cudaErrorInvalidValue;
  }
  KernelArgs args;
  const int tiles0 = skinny_gemm_tiles(first.n);
  if (!prepare_problem(first, workspace, 0, 0, 0, args) ||
      !prepare_problem(second, workspace, 1, tiles0,
                       skinny_gemm_partials_count(first.m, first.n, first.splits), args)) {
    return cudaErrorInvalidValue;
  }
  args.cluster_reduce = first.cluster_reduce;
  args.tickets = workspace.tickets;
  args.tiles0 = tiles0;
  return launch_for_rows(args, std::max(first.m, second.m), tiles0 + skinny_gemm_tiles(second.n),
                         std::max(first.splits, second.splits), stream);
}

bool skinny_gemm_clusters_fit(int m, SkinnyGemmMath math, int lane_rows) noexcept {
  if (m < 1 || m > kSkinnyGemmMaxRows) return false;
  const cudaError_t result = with_core(math, lane_rows, m, [&](auto tag) {
    using Core = typename decltype(tag)::type;
    constexpr int kSplits = kSkinnyGemmMaxClusterSplits;
    cudaError_t e = set_kernel_attributes<Core, false>(kSplits);
    if (e != cudaSuccess) return e;
    const kernels::LaunchConfig launch(false, dim3(1, kSplits, 1), dim3(1, kSplits), dim3(kThreads),
                                       kernel_smem_bytes<Core>(), nullptr);
    int clusters = 0;
    e = cudaOccupancyMaxActiveClusters(&clusters, skinny_gemm_kernel<Core, false>, &launch.config);
    return e == cudaSuccess && clusters > 0 ? cudaSuccess : cudaErrorNotSupported;
  });
  if (result != cudaSuccess) cudaGetLastError();  // a refused query leaves no sticky error
  return result == cudaSuccess;
}

LinearGemm::LinearGemm(int max_rows, const LinearGemmOptions& options)
    : options_(options), max_rows_(max_rows) {
  INSTANTID_CHECK(options.lane_rows == 0 || options.lane_rows == 4 || options.lane_rows == 8,
                  "LinearGemm: lane_rows: got ", options.lane_rows, ", expected 0, 4 or 8");
  INSTANTID_CHECK(max_rows >= 1, "LinearGemm: max_rows: got ", max_rows, ", expected >= 1");
  INSTANTID_CHECK(options.ctas_per_sm >= 1 && options.ctas_per_sm <= 64,
                  "LinearGemm: ctas_per_sm: got ", options.ctas_per_sm, ", expected 1..64");
  int device = 0;
  check_cuda(cudaGetDevice(&device), "LinearGemm: cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device),
             "LinearGemm: SM count");
  check_cuda(cudaDeviceGetAttribute(&sm_major_, cudaDevAttrComputeCapabilityMajor, device),
             "LinearGemm: compute capability");
  cluster_reduce_ = options.cluster_reduce && sm_major_ >= 9 && options.path == GemmPath::kAuto &&
                    skinny_gemm_clusters_fit(std::min(max_rows, kSkinnyGemmMaxRows), options.math,
                                             options.lane_rows);
  if (options.path == GemmPath::kAuto && !cluster_reduce_) {
    // skinny_gemm_splits keeps tiles · splits <= the CTA target whenever splits > 1.
    const int target = std::max(1, sm_count_) * options.ctas_per_sm;
    const int rows = std::min(max_rows, kSkinnyGemmMaxRows);
    // run_pair's two problems together stay below 2 · target CTAs.
    const int slots = 2 * target;
    tickets_ = DeviceBuffer(static_cast<std::size_t>(slots) * sizeof(unsigned));
    partials_ = DeviceBuffer(static_cast<std::size_t>(slots) * rows * kTileN * sizeof(float));
    check_cuda(cudaMemset(tickets_.data(), 0, tickets_.bytes()), "LinearGemm: zero tickets");
    workspace_.tickets = tickets_.as<unsigned>();
    workspace_.tickets_count = slots;
    workspace_.partials = partials_.as<float>();
    workspace_.partials_count = static_cast<std::size_t>(slots) * rows * kTileN;
  }
  check_cublas(cublasCreate(&cublas_), "cublasCreate");
  // A user workspace keeps cuBLAS from allocating inside stream capture.
  cublas_workspace_ = DeviceBuffer(std::size_t{4} << 20);
  check_cublas(cublasSetWorkspace(cublas_, cublas_workspace_.data(), cublas_workspace_.bytes()),
               "cublasSetWorkspace");
  check_cublas(cublasSetMathMode(cublas_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
  check_cuda(cudaDeviceSynchronize(), "LinearGemm: setup");
}

LinearGemm::~LinearGemm() {
  if (cublas_ != nullptr) cublasDestroy(cublas_);
}

bool LinearGemm::uses_skinny(int rows, int out, int in, const float* a,
                             const float* w) const noexcept {
  return options_.path == GemmPath::kAuto && rows <= max_rows_ &&
         skinny_gemm_supported(rows, out, in, a, w);
}

SkinnyGemmParams LinearGemm::skinny_params(const Product& x, int splits) const noexcept {
  SkinnyGemmParams p;
  p.a = x.a;
  p.w = x.w;
  p.c = x.c;
  p.m = x.rows;
  p.n = x.out;
  p.k = x.in;
  p.splits = splits;
  p.cluster_reduce = cluster_reduce_;
  p.programmatic = programmatic_;
  p.lane_rows = options_.lane_rows;
  p.math = options_.math;
  return p;
}

int LinearGemm::splits_for(int n, int k) const noexcept {
  const int splits = skinny_gemm_splits(n, k, sm_count_, options_.ctas_per_sm);
  return cluster_reduce_ ? std::min(splits, kSkinnyGemmMaxClusterSplits) : splits;
}

void LinearGemm::run(const float* a, const float* w, const float* bias, float* c, int rows, int out,
                     int in, float beta, bool gelu, cudaStream_t stream, const float* c_in) {
  INSTANTID_CHECK(rows >= 1 && out >= 1 && in >= 1, "LinearGemm::run: shape: got [", rows, ", ", in,
                  "] x [", out, ", ", in, "]ᵀ, expected every size >= 1");
  INSTANTID_CHECK(a != nullptr && w != nullptr && c != nullptr,
                  "LinearGemm::run: pointers: got a null a, w or c, expected device pointers");
  INSTANTID_CHECK(!gelu || beta == 0.0f, "LinearGemm::run: beta with gelu: got ", beta,
                  ", expected 0 (GELU output cannot accumulate into C)");
  if (uses_skinny(rows, out, in, a, w)) {
    SkinnyGemmParams p = skinny_params({a, w, c, rows, out, in}, splits_for(out, in));
    p.bias = bias;
    p.beta = beta;
    p.gelu = gelu;
    p.c_in = c_in;
    check_cuda(skinny_gemm(p, workspace_, stream), "LinearGemm: skinny_gemm");
    return;
  }
  if (c_in != nullptr && c_in != c && beta != 0.0f) {  // cuBLAS accumulates into C itself
    check_cuda(cudaMemcpyAsync(c, c_in, static_cast<std::size_t>(rows) * out * sizeof(float),
                               cudaMemcpyDeviceToDevice, stream),
               "LinearGemm: copying c_in");
  }
  const float alpha = 1.0f;
  check_cublas(cublasSetStream(cublas_, stream), "cublasSetStream");
  check_cublas(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, w, in, a, in,
                           &beta, c, out),
               "LinearGemm: cublasSgemm");
  if (bias != nullptr || gelu) {
    const std::int64_t total = static_cast<std::int64_t>(rows) * out;
    constexpr int kEpilogueThreads = 256;
    bias_gelu_kernel<<<static_cast<unsigned>((total + kEpilogueThreads - 1) / kEpilogueThreads),
                       kEpilogueThreads, 0, stream>>>(c, bias, total, out, gelu);
    check_cuda(cudaGetLastError(), "LinearGemm: bias/GELU kernel");
  }
}

void LinearGemm::run_row_normalized(const float* a, const float* w, const float* colsum,
                                    const float* bias, float* c, int rows, int out, int in,
                                    float eps, bool gelu, cudaStream_t stream) {
  INSTANTID_CHECK(row_norm_supported(rows), "LinearGemm::run_row_normalized: rows: got ", rows,
                  ", expected 1..", std::min(max_rows_, kSkinnyGemmMaxRows),
                  cluster_reduce_ ? "" : " on a device with cluster sums (sm_90+)");
  INSTANTID_CHECK(out >= 1 && in >= 1 && a != nullptr && w != nullptr && colsum != nullptr &&
                      c != nullptr && skinny_gemm_supported(rows, out, in, a, w),
                  "LinearGemm::run_row_normalized: got [", rows, ", ", in, "] x [", out, ", ", in,
                  "]ᵀ, expected non-null 16-byte aligned device pointers and in a multiple of 4");
  INSTANTID_CHECK(eps > 0.0f, "LinearGemm::run_row_normalized: eps: got ", eps, ", expected > 0");
  SkinnyGemmParams p = skinny_params({a, w, c, rows, out, in}, splits_for(out, in));
  p.bias = bias;
  p.gelu = gelu;
  p.row_norm_colsum = colsum;
  p.row_norm_eps = eps;
  check_cuda(skinny_gemm(p, workspace_, stream), "LinearGemm: skinny_gemm (row-normalised)");
}

void LinearGemm::run_pair(const Product& first, const Product& second, cudaStream_t stream) {
  if (!uses_skinny(first.rows, first.out, first.in, first.a, first.w) ||
      !uses_skinny(second.rows, second.out, second.in, second.a, second.w)) {
    run(first.a, first.w, nullptr, first.c, first.rows, first.out, first.in, 0.0f, false, stream);
    run(second.a, second.w, nullptr, second.c, second.rows, second.out, second.in, 0.0f, false,
        stream);
    return;
  }
  const int target = std::max(1, sm_count_) * options_.ctas_per_sm;
  const int tiles0 = skinny_gemm_tiles(first.out), tiles1 = skinny_gemm_tiles(second.out);
  int splits0 = 0, splits1 = 0;
  if (cluster_reduce_) {
    // One split count for the launch's clusters: the CTA target over both problems' tiles.
    splits0 = splits1 =
        std::min(splits_for_tiles(tiles0 + tiles1, std::min(first.in, second.in), target),
                 kSkinnyGemmMaxClusterSplits);
  } else {
    // The CTA target shared in proportion to the weights each problem reads.
    const double w0 = static_cast<double>(first.out) * first.in;
    const double w1 = static_cast<double>(second.out) * second.in;
    const int target0 = std::max(1, static_cast<int>(target * w0 / (w0 + w1) + 0.5));
    splits0 = splits_for_tiles(tiles0, first.in, target0);
    splits1 = splits_for_tiles(tiles1, second.in, std::max(1, target - target0));
  }
  check_cuda(skinny_gemm_pair(skinny_params(first, splits0), skinny_params(second, splits1),
                              workspace_, stream),
             "LinearGemm: skinny_gemm_pair");
}

}  // namespace instantid::cuda
