#pragma once
// Device templates of the fused decoupled cross-attention (see decoupled_attention.hpp for the
// formula; docs/kernels.md for the variants and how the launcher picks one). All variants: scores
// and P·V on mma.sync m16n8k16 with fp32 accumulation, one softmax per phase (the text keys, then
// each identity's ip keys), each phase normalised on its own and added with its scale and mask,
// the output written once. In this file, in order: the streaming variant (a CTA owns 64 query
// rows of one (batch, head) and streams key/value tiles through double-buffered shared memory
// with an online softmax), the resident variant (all keys in shared memory; its kernel follows
// the phase helpers of the persistent variant), and the persistent variant (the SDXL default: one
// wave of CTAs walking row tiles).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "instantid/kernels/async_pipeline.cuh"
#include "instantid/kernels/decoupled_attention.hpp"
#include "instantid/kernels/fast_divisor.hpp"
#include "instantid/kernels/warpgroup_mma.cuh"

namespace instantid::kernels {

template <int kHeadDim>
struct AttentionTile {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dim 64 or 128");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16 * kWarps;               // query rows per CTA
  static constexpr int kKeys = kHeadDim == 64 ? 32 : 16;  // keys per shared-memory tile
  static constexpr int kChunks = kHeadDim / 8;            // 16-byte chunks per row
  static constexpr int kPhases = 1 + kMaxIdentities;
  static constexpr int kMinBlocks = kHeadDim == 64 ? 4 : 2;  // CTAs per SM the registers must allow
};

namespace attention_detail {

template <typename T>
struct MmaType;
template <>
struct MmaType<__half> {
  static constexpr std::uint32_t kOnes = 0x3C003C00u;  // (1, 1)
  __device__ static std::uint32_t pack(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<std::uint32_t*>(&h);
  }
  __device__ static float2 unpack(std::uint32_t bits) {
    __half2 h = *reinterpret_cast<__half2*>(&bits);
    return __half22float2(h);
  }
  __device__ static void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                             std::uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <>
struct MmaType<__nv_bfloat16> {
  static constexpr std::uint32_t kOnes = 0x3F803F80u;  // (1, 1)
  __device__ static std::uint32_t pack(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<std::uint32_t*>(&h);
  }
  __device__ static float2 unpack(std::uint32_t bits) {
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&bits);
    return __bfloat1622float2(h);
  }
  __device__ static void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                             std::uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ void cp_async_wait_dynamic(int pending) {
  switch (pending) {
    case 0:
      cp_async_wait<0>();
      break;
    case 1:
      cp_async_wait<1>();
      break;
    case 2:
      cp_async_wait<2>();
      break;
    case 3:
      cp_async_wait<3>();
      break;
    case 4:
      cp_async_wait<4>();
      break;
    case 5:
      cp_async_wait<5>();
      break;
    case 6:
      cp_async_wait<6>();
      break;
    default:
      cp_async_wait<7>();
      break;
  }
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

__device__ __forceinline__ void ldmatrix_x4_at(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans_at(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Element offset of (row, col) in a [rows, kHeadDim] tile whose 16-byte chunks are XOR-swizzled
// by the row, so that ldmatrix's eight rows hit eight different bank groups.
template <int kHeadDim>
__device__ __forceinline__ int swizzle(int row, int col) {
  const int chunk = (col >> 3) ^ (row & 7);
  return row * kHeadDim + (chunk << 3) + (col & 7);
}

// Copies rows [0, count) of a [rows, kHeadDim] tile from global (row stride in elements); rows
// in [count, kRowsTile) are zero-filled so that masked keys never multiply garbage.
template <typename T, int kHeadDim, int kRowsTile, int kThreads>
__device__ __forceinline__ void load_tile(T* smem, const T* src, std::int64_t row_stride,
                                          int count) {
  constexpr int kChunks = kHeadDim / 8;
  for (int idx = threadIdx.x; idx < kRowsTile * kChunks; idx += kThreads) {
    const int row = idx / kChunks;
    const int chunk = idx % kChunks;
    const bool valid = row < count;
    const T* g = valid ? src + row * row_stride + chunk * 8 : src;
    cp_async_16(smem + swizzle<kHeadDim>(row, chunk * 8), g, valid ? 16 : 0);
  }
}

struct PhaseInfo {
  const void* k;
  const void* v;
  std::int64_t k_stride;
  std::int64_t v_stride;
  int count;  // keys in this phase
  int tiles;  // key tiles
  float scale;
  const float* mask;
  int mask_rows;
};

}  // namespace attention_detail

namespace attention_detail {

// One online-softmax step of a warp's 16 query rows over keys [base, base + valid) of swizzled
// K and V in shared memory (valid <= 16 · kKeyBlocks; blocks past valid are skipped, masked keys
// score -inf): S = q·kᵀ, the running max and sum, O = alpha · O + P·V with P rounded to T.
template <typename T, int kHeadDim, int kKeyBlocks>
__device__ __forceinline__ void online_softmax_step(float (&o_acc)[kHeadDim / 8][4],
                                                    float (&m_run)[2], float (&l_run)[2],
                                                    const std::uint32_t (&q_frag)[kHeadDim / 16][4],
                                                    const T* s_k, const T* s_v, int base,
                                                    int valid) {
  using Mma = MmaType<T>;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kDTiles = kHeadDim / 8;
  constexpr int kKeyTiles = 2 * kKeyBlocks;
  const int lane = threadIdx.x % 32;
  const int my_col = (lane % 4) * 2;
  // log2(e) / sqrt(d): scores go straight to exp2.
  const float score_scale = 1.4426950408889634f * rsqrtf(static_cast<float>(kHeadDim));
  float s[kKeyTiles][4];
#pragma unroll
  for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
  }
#pragma unroll
  for (int kb = 0; kb < kKeyBlocks; ++kb) {
    if (kb * 16 < valid) {
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        std::uint32_t bfrag[4];
        const int key = base + kb * 16 + (lane % 8) + (lane / 16) * 8;
        const int c = kk * 16 + ((lane / 8) % 2) * 8;
        ldmatrix_x4(bfrag, s_k + swizzle<kHeadDim>(key, c));
        Mma::mma(s[2 * kb], q_frag[kk], bfrag[0], bfrag[1]);
        Mma::mma(s[2 * kb + 1], q_frag[kk], bfrag[2], bfrag[3]);
      }
    }
  }
  // Rows my_row and my_row + 8 of the C fragments; masked keys at -inf.
  float m_tile[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = j * 8 + my_col + (e & 1);
      s[j][e] = key < valid ? s[j][e] * score_scale : -INFINITY;
      m_tile[e / 2] = fmaxf(m_tile[e / 2], s[j][e]);
    }
  }
  float alpha[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    m_tile[r] = fmaxf(m_tile[r], __shfl_xor_sync(0xffffffffu, m_tile[r], 1));
    m_tile[r] = fmaxf(m_tile[r], __shfl_xor_sync(0xffffffffu, m_tile[r], 2));
    const float m_new = fmaxf(m_run[r], m_tile[r]);
    alpha[r] = fast_exp2(m_run[r] - m_new);
    m_run[r] = m_new;
    l_run[r] *= alpha[r];
  }
#pragma unroll
  for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j][e] = fast_exp2(s[j][e] - m_run[e / 2]);
      l_run[e / 2] += s[j][e];
    }
  }
#pragma unroll
  for (int j = 0; j < kDTiles; ++j) {
    o_acc[j][0] *= alpha[0];
    o_acc[j][1] *= alpha[0];
    o_acc[j][2] *= alpha[1];
    o_acc[j][3] *= alpha[1];
  }
  // O += P·V; P rounded to T (the A operand), V read transposed by ldmatrix.
#pragma unroll
  for (int kb = 0; kb < kKeyBlocks; ++kb) {
    if (kb * 16 < valid) {
      std::uint32_t a[4];
      a[0] = Mma::pack(s[2 * kb][0], s[2 * kb][1]);
      a[1] = Mma::pack(s[2 * kb][2], s[2 * kb][3]);
      a[2] = Mma::pack(s[2 * kb + 1][0], s[2 * kb + 1][1]);
      a[3] = Mma::pack(s[2 * kb + 1][2], s[2 * kb + 1][3]);
#pragma unroll
      for (int dp = 0; dp < kDTiles / 2; ++dp) {
        std::uint32_t bfrag[4];
        const int key = base + kb * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        const int c = dp * 16 + (lane / 16) * 8;
        ldmatrix_x4_trans(bfrag, s_v + swizzle<kHeadDim>(key, c));
        Mma::mma(o_acc[2 * dp], a, bfrag[0], bfrag[1]);
        Mma::mma(o_acc[2 * dp + 1], a, bfrag[2], bfrag[3]);
      }
    }
  }
}

// A finished phase joins the output: out_acc += scale · M[image, n] / l · O for this thread's
// rows n = n_first and n_first + 8 (mask: [mask_rows, queries] or null).
template <int kHeadDim>
__device__ __forceinline__ void fold_phase(float (&out_acc)[kHeadDim / 8][4],
                                           const float (&o_acc)[kHeadDim / 8][4],
                                           const float (&l_run)[2], float scale, const float* mask,
                                           int mask_rows, int image, int n_first, int queries) {
  float factor[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    factor[r] = scale / l;
    if (mask != nullptr) {
      const int n = n_first + r * 8;
      const int mrow = min(image, mask_rows - 1);
      factor[r] *= n < queries ? mask[static_cast<std::int64_t>(mrow) * queries + n] : 0.0f;
    }
  }
#pragma unroll
  for (int j = 0; j < kHeadDim / 8; ++j) {
    out_acc[j][0] += factor[0] * o_acc[j][0];
    out_acc[j][1] += factor[0] * o_acc[j][1];
    out_acc[j][2] += factor[1] * o_acc[j][2];
    out_acc[j][3] += factor[1] * o_acc[j][3];
  }
}

// "Add ip only": the previous out of rows n_first and n_first + 8 joins the fp32 sum, so the
// result is rounded once. out: row 0 of the head, rows row_stride apart.
template <typename T, int kHeadDim>
__device__ __forceinline__ void add_previous_out(float (&out_acc)[kHeadDim / 8][4], const T* out,
                                                 std::int64_t row_stride, int n_first,
                                                 int queries) {
  using Mma = MmaType<T>;
  const int my_col = (threadIdx.x % 4) * 2;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int n = n_first + r * 8;
    if (n < queries) {
#pragma unroll
      for (int j = 0; j < kHeadDim / 8; ++j) {
        const float2 old = Mma::unpack(
            *reinterpret_cast<const std::uint32_t*>(out + n * row_stride + j * 8 + my_col));
        out_acc[j][2 * r] += old.x;
        out_acc[j][2 * r + 1] += old.y;
      }
    }
  }
}

// Rounds the warp's 16 output rows to T, stages them in its swizzled [16, kHeadDim] buffer
// `stage` (free to overwrite once every lane is done with it) and stores rows first_row ..
// first_row + 15 (those < queries) of out with 16-byte stores.
template <typename T, int kHeadDim>
__device__ __forceinline__ void store_warp_rows(const float (&out_acc)[kHeadDim / 8][4], T* stage,
                                                T* out, std::int64_t row_stride, int first_row,
                                                int queries) {
  using Mma = MmaType<T>;
  constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks of a row
  const int lane = threadIdx.x % 32;
  const int my_row = lane / 4, my_col = (lane % 4) * 2;
  __syncwarp();  // every lane is done reading the buffer
#pragma unroll
  for (int j = 0; j < kHeadDim / 8; ++j) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      *reinterpret_cast<std::uint32_t*>(stage + swizzle<kHeadDim>(my_row + r * 8, j * 8 + my_col)) =
          Mma::pack(out_acc[j][2 * r], out_acc[j][2 * r + 1]);
    }
  }
  __syncwarp();
#pragma unroll
  for (int idx = lane; idx < 16 * kChunks; idx += 32) {
    const int r = idx / kChunks, c = idx % kChunks;
    const int n = first_row + r;
    if (n < queries) {
      *reinterpret_cast<uint4*>(out + n * row_stride + c * 8) =
          *reinterpret_cast<const uint4*>(stage + swizzle<kHeadDim>(r, c * 8));
    }
  }
}

}  // namespace attention_detail

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(AttentionTile<kHeadDim>::kThreads,
                                  AttentionTile<kHeadDim>::kMinBlocks)
    decoupled_attention_kernel(const DecoupledAttentionParams p) {
  using Tile = AttentionTile<kHeadDim>;
  using Mma = attention_detail::MmaType<T>;
  using attention_detail::PhaseInfo;
  constexpr int kKeys = Tile::kKeys;
  constexpr int kKSteps = kHeadDim / 16;  // k-steps of q·kᵀ
  constexpr int kDTiles = kHeadDim / 8;   // n-tiles of the output
  constexpr int kKeyBlocks = kKeys / 16;  // 16-key blocks (k-steps of P·V)

  __shared__ __align__(128) T s_q[Tile::kRows * kHeadDim];  // [64, d], swizzled
  __shared__ __align__(128) T s_k[2][kKeys * kHeadDim];     // [stage][keys, d]
  __shared__ __align__(128) T s_v[2][kKeys * kHeadDim];
  __shared__ PhaseInfo s_phase[Tile::kPhases];
  __shared__ int s_num_phases;

  const int row0 = blockIdx.y * Tile::kRows;
  const int h = blockIdx.x;
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const std::int64_t head_col = static_cast<std::int64_t>(h) * kHeadDim;

  if (threadIdx.x == 0) {
    int n = 0;
    if (p.include_text) {
      PhaseInfo& ph = s_phase[n++];
      ph.k = static_cast<const T*>(p.k) + b * p.k_batch_stride + head_col;
      ph.v = static_cast<const T*>(p.v) + b * p.v_batch_stride + head_col;
      ph.k_stride = p.k_row_stride;
      ph.v_stride = p.v_row_stride;
      ph.count = p.text_len;
      ph.scale = 1.0f;
      ph.mask = nullptr;
      ph.mask_rows = 0;
    }
    const int chunk = b / p.images_per_chunk;
    const int uncond = chunk < 64 ? static_cast<int>((p.uncond_chunks >> chunk) & 1u) : 0;
    for (int i = 0; i < p.num_identities; ++i) {
      PhaseInfo& ph = s_phase[n++];
      ph.k = static_cast<const T*>(p.ip[i].k[uncond]) + head_col;
      ph.v = static_cast<const T*>(p.ip[i].v[uncond]) + head_col;
      ph.k_stride = p.ip[i].row_stride;
      ph.v_stride = p.ip[i].row_stride;
      ph.count = p.ip[i].tokens;
      ph.scale = p.ip[i].scale;
      ph.mask = p.ip[i].mask;
      ph.mask_rows = p.ip[i].mask_rows;
    }
    for (int i = 0; i < n; ++i) s_phase[i].tiles = (s_phase[i].count + kKeys - 1) / kKeys;
    s_num_phases = n;
  }

  // q rows of this CTA (rows past N are zero-filled and never stored).
  {
    const T* q =
        static_cast<const T*>(p.q) + b * p.q_batch_stride + row0 * p.q_row_stride + head_col;
    attention_detail::load_tile<T, kHeadDim, Tile::kRows, Tile::kThreads>(s_q, q, p.q_row_stride,
                                                                          p.queries - row0);
  }
  __syncthreads();  // s_phase visible

  const int num_phases = s_num_phases;
  int total_tiles = 0;
  for (int i = 0; i < num_phases; ++i) total_tiles += s_phase[i].tiles;

  auto issue_tile = [&](int phase, int tile, int stage) {
    const PhaseInfo& ph = s_phase[phase];
    const int first = tile * kKeys;
    const int count = min(kKeys, ph.count - first);
    attention_detail::load_tile<T, kHeadDim, kKeys, Tile::kThreads>(
        s_k[stage], static_cast<const T*>(ph.k) + first * ph.k_stride, ph.k_stride, count);
    attention_detail::load_tile<T, kHeadDim, kKeys, Tile::kThreads>(
        s_v[stage], static_cast<const T*>(ph.v) + first * ph.v_stride, ph.v_stride, count);
  };

  float out_acc[kDTiles][4];
  float o_acc[kDTiles][4];
#pragma unroll
  for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) out_acc[j][e] = 0.0f;
  }
  std::uint32_t q_frag[kKSteps][4];

  // Rows of this thread in the C fragments: r and r + 8 of the warp's 16.
  const int warp_row = warp * 16;
  const int my_row = lane / 4;

  int next_phase = 0, next_tile = 0;  // the tile to issue next
  if (total_tiles > 0) {
    issue_tile(0, 0, 0);
    if (++next_tile == s_phase[0].tiles) {
      ++next_phase;
      next_tile = 0;
    }
  }
  cp_async_commit();

  int phase = 0, tile = 0;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.0f, 0.0f};
  for (int t = 0; t < total_tiles; ++t) {
    const int stage = t & 1;
    if (t + 1 < total_tiles) {
      issue_tile(next_phase, next_tile, stage ^ 1);
      if (++next_tile == s_phase[next_phase].tiles) {
        ++next_phase;
        next_tile = 0;
      }
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    if (t == 0) {
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        const int r = warp_row + (lane % 16);
        const int c = kk * 16 + (lane / 16) * 8;
        attention_detail::ldmatrix_x4(q_frag[kk], s_q + attention_detail::swizzle<kHeadDim>(r, c));
      }
    }
    if (tile == 0) {
#pragma unroll
      for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o_acc[j][e] = 0.0f;
      }
      m_run[0] = m_run[1] = -INFINITY;
      l_run[0] = l_run[1] = 0.0f;
    }
    const PhaseInfo& ph = s_phase[phase];
    const int valid = min(kKeys, ph.count - tile * kKeys);
    const T* sk = s_k[stage];
    const T* sv = s_v[stage];

    attention_detail::online_softmax_step<T, kHeadDim, kKeyBlocks>(o_acc, m_run, l_run, q_frag, sk,
                                                                   sv, 0, valid);
    if (++tile == ph.tiles) {
      // Phase done: fold s · M / l · O into the output.
      attention_detail::fold_phase<kHeadDim>(out_acc, o_acc, l_run, ph.scale, ph.mask, ph.mask_rows,
                                             b % p.images_per_chunk, row0 + warp_row + my_row,
                                             p.queries);
      ++phase;
      tile = 0;
    }
    __syncthreads();  // stage is refilled by the next iteration's issue
  }

  // "Add ip only": the previous out joins the fp32 sum, so the result is rounded once.
  T* out = static_cast<T*>(p.out) + b * p.out_batch_stride + head_col;
  if (!p.include_text) {
    attention_detail::add_previous_out<T, kHeadDim>(out_acc, out, p.out_row_stride,
                                                    row0 + warp_row + my_row, p.queries);
  }
  // Stage the warp's 16 rows through its own rows of s_q (no longer read), then store.
  if (total_tiles == 0) {
    cp_async_wait<0>();
    __syncthreads();  // every thread's q copies have landed before s_q is overwritten
  }
  attention_detail::store_warp_rows<T, kHeadDim>(out_acc, s_q + warp_row * kHeadDim, out,
                                                 p.out_row_stride, row0 + warp_row, p.queries);
}

// ---- Resident variant: every key of every phase in shared memory at once ---------------------
// When the padded keys of all phases fit (SDXL: 77 text + 16 ip → 96 rows, 24 KB for d = 64),
// the CTA loads them once behind a single barrier and each warp then runs on its own through
// kGroups blocks of 16 query rows, prefetching the next block's q into a private double buffer.
// No block-level synchronisation after the load, so warps overlap freely.

template <int kHeadDim, int kWarpsT = 4, int kGroupsT = 2>
struct ResidentTile {
  static constexpr int kWarps = kWarpsT;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kGroups = kGroupsT;                     // 16-row blocks per warp
  static constexpr int kRows = 16 * kWarps * kGroups;          // query rows per CTA
  static constexpr int kChunkKeys = kHeadDim == 64 ? 32 : 16;  // keys per online-softmax step
  static constexpr int kSingleKeys = 80;  // keys of a one-pass phase (77 → 80)
  static constexpr int kMaxKeys = kHeadDim == 64 ? 256 : 128;  // padded keys held (64 KB K+V)
  static constexpr int kMinBlocks = kHeadDim == 64 ? 4 : 2;
  static constexpr int kChunks = kHeadDim / 8;
  static std::size_t smem_bytes(int keys_padded, std::size_t elem) {
    return (2 * static_cast<std::size_t>(keys_padded) * kHeadDim +
            static_cast<std::size_t>(kWarps) * kGroups * 16 * kHeadDim) *
           elem;
  }
};

namespace attention_detail {
struct ResidentPhase {
  int start;  // first shared-memory row (multiple of 16)
  int count;  // keys
  float scale;
  const float* mask;
  int mask_rows;
};

// Lane offsets (bytes) of the ldmatrix rows of K (q·Kᵀ) and V (P·V, transposed): block bases
// are multiples of 16 rows, so the swizzle depends on the lane only.
template <typename T, int kHeadDim>
__device__ __forceinline__ void ldmatrix_lane_offsets(std::uint32_t (&k_off)[kHeadDim / 16],
                                                      std::uint32_t (&v_off)[kHeadDim / 16]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    const int r = (lane % 8) + (lane / 16) * 8;
    const int chunk = (kk * 2 + (lane / 8) % 2) ^ (lane % 8);
    k_off[kk] = static_cast<std::uint32_t>((r * kHeadDim + chunk * 8) * sizeof(T));
  }
#pragma unroll
  for (int dp = 0; dp < kHeadDim / 16; ++dp) {
    const int r = (lane % 8) + ((lane / 8) % 2) * 8;
    const int chunk = (dp * 2 + lane / 16) ^ (lane % 8);
    v_off[dp] = static_cast<std::uint32_t>((r * kHeadDim + chunk * 8) * sizeof(T));
  }
}

// Keys at or past `valid` (only in the last block) to -inf, in kMT tiles of scores.
template <int kMT, int kBlocks>
__device__ __forceinline__ void mask_scores(float (&s)[kMT][2 * kBlocks][4], int valid) {
  if (kBlocks * 16 > valid) {
    const int my_col = (threadIdx.x % 4) * 2;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int j = 2 * kBlocks - 2; j < 2 * kBlocks; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (j * 8 + my_col + (e & 1) >= valid) s[mt][j][e] = -INFINITY;
        }
      }
    }
  }
}

// Scores of kMT 16-row MMA tiles against kBlocks blocks of 16 keys: s = q·Kᵀ, unscaled, keys at
// or past `valid` (only in the last block) at -inf. Each K fragment read from shared memory
// serves all kMT tiles.
template <typename T, int kHeadDim, int kMT, int kBlocks>
__device__ __forceinline__ void phase_scores(float (&s)[kMT][2 * kBlocks][4],
                                             const std::uint32_t (&q_frag)[kMT][kHeadDim / 16][4],
                                             std::uint32_t kb0,
                                             const std::uint32_t (&k_off)[kHeadDim / 16],
                                             int valid) {
  using Mma = MmaType<T>;
  constexpr std::uint32_t kBlockBytes = 16 * kHeadDim * sizeof(T);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int j = 0; j < 2 * kBlocks; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][j][e] = 0.0f;
    }
  }
  // Dims outer, keys inner: consecutive MMAs accumulate into different scores.
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
    for (int kb = 0; kb < kBlocks; ++kb) {
      std::uint32_t bfrag[4];
      ldmatrix_x4_at(bfrag, kb0 + kb * kBlockBytes + k_off[kk]);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        Mma::mma(s[mt][2 * kb], q_frag[mt][kk], bfrag[0], bfrag[1]);
        Mma::mma(s[mt][2 * kb + 1], q_frag[mt][kk], bfrag[2], bfrag[3]);
      }
    }
  }
  mask_scores<kMT, kBlocks>(s, valid);
}

// Row maxima of the thread's rows (r, r + 8) of each tile, times the exp2 scale (positive).
template <int kMT, int kN>
__device__ __forceinline__ void scaled_row_max(float (&mc)[kMT][2], const float (&s)[kMT][kN][4],
                                               float score_scale) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    float m[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      m[0] = fmaxf(m[0], fmaxf(s[mt][j][0], s[mt][j][1]));
      m[1] = fmaxf(m[1], fmaxf(s[mt][j][2], s[mt][j][3]));
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m[r] = fmaxf(m[r], __shfl_xor_sync(0xffffffffu, m[r], 1));
      m[r] = fmaxf(m[r], __shfl_xor_sync(0xffffffffu, m[r], 2));
      mc[mt][r] = m[r] * score_scale;
    }
  }
}

// P of a phase as MMA A fragments, unnormalised: exp2(s·scale - max·scale) in fp32, rounded to T.
template <typename T, int kMT, int kBlocks>
__device__ __forceinline__ void softmax_numerators(std::uint32_t (&a)[kMT][kBlocks][4],
                                                   const float (&s)[kMT][2 * kBlocks][4],
                                                   float score_scale) {
  using Mma = MmaType<T>;
  float mc[kMT][2];
  scaled_row_max(mc, s, score_scale);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int kb = 0; kb < kBlocks; ++kb) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float(&sj)[4] = s[mt][2 * kb + h];
        a[mt][kb][2 * h] = Mma::pack(fast_exp2(fmaf(sj[0], score_scale, -mc[mt][0])),
                                     fast_exp2(fmaf(sj[1], score_scale, -mc[mt][0])));
        a[mt][kb][2 * h + 1] = Mma::pack(fast_exp2(fmaf(sj[2], score_scale, -mc[mt][1])),
                                         fast_exp2(fmaf(sj[3], score_scale, -mc[mt][1])));
      }
    }
  }
}

// P of a phase with its normaliser and s_i·M_i folded in: exp2(s·scale - max·scale)·num/l in
// fp32 (l summed in fp32), rounded to T. num[mt][r]: factor of the thread's rows r, r + 8.
template <typename T, int kMT, int kBlocks>
__device__ __forceinline__ void folded_probabilities(std::uint32_t (&a)[kMT][kBlocks][4],
                                                     float (&s)[kMT][2 * kBlocks][4],
                                                     const float (&num)[kMT][2],
                                                     float score_scale) {
  using Mma = MmaType<T>;
  float mc[kMT][2];
  scaled_row_max(mc, s, score_scale);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    float l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < 2 * kBlocks; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[mt][j][e] = fast_exp2(fmaf(s[mt][j][e], score_scale, -mc[mt][e / 2]));
        l[e / 2] += s[mt][j][e];
      }
    }
    float factor[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
      factor[r] = __fdividef(num[mt][r], l[r]);
    }
#pragma unroll
    for (int kb = 0; kb < kBlocks; ++kb) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float(&sj)[4] = s[mt][2 * kb + h];
        a[mt][kb][2 * h] = Mma::pack(sj[0] * factor[0], sj[1] * factor[0]);
        a[mt][kb][2 * h + 1] = Mma::pack(sj[2] * factor[1], sj[3] * factor[1]);
      }
    }
  }
}

// out_acc += P·V over kBlocks blocks of 16 keys; with kRowSums also l += Σ P (one more MMA per
// block against a column of ones: the sums of the rounded P that P·V multiplies, in fp32).
template <typename T, int kHeadDim, int kMT, int kBlocks, bool kRowSums>
__device__ __forceinline__ void accumulate_pv(float (&out_acc)[kMT][kHeadDim / 8][4],
                                              float (&l)[kMT][4],
                                              const std::uint32_t (&a)[kMT][kBlocks][4],
                                              std::uint32_t vb0,
                                              const std::uint32_t (&v_off)[kHeadDim / 16]) {
  using Mma = MmaType<T>;
  constexpr std::uint32_t kBlockBytes = 16 * kHeadDim * sizeof(T);
#pragma unroll
  for (int kb = 0; kb < kBlocks; ++kb) {
    if constexpr (kRowSums) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) Mma::mma(l[mt], a[mt][kb], Mma::kOnes, Mma::kOnes);
    }
#pragma unroll
    for (int dp = 0; dp < kHeadDim / 16; ++dp) {
      std::uint32_t bfrag[4];
      ldmatrix_x4_trans_at(bfrag, vb0 + kb * kBlockBytes + v_off[dp]);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        Mma::mma(out_acc[mt][2 * dp], a[mt][kb], bfrag[0], bfrag[1]);
        Mma::mma(out_acc[mt][2 * dp + 1], a[mt][kb], bfrag[2], bfrag[3]);
      }
    }
  }
}

// out_acc = (Σ P)⁻¹ · out_acc per row, after accumulate_pv<..., true> from zero.
template <int kHeadDim, int kMT>
__device__ __forceinline__ void normalise_rows(float (&out_acc)[kMT][kHeadDim / 8][4],
                                               const float (&l)[kMT][4]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    const float inv0 = __fdividef(1.0f, l[mt][0]);
    const float inv1 = __fdividef(1.0f, l[mt][2]);
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      out_acc[mt][j][0] *= inv0;
      out_acc[mt][j][1] *= inv0;
      out_acc[mt][j][2] *= inv1;
      out_acc[mt][j][3] *= inv1;
    }
  }
}

template <int kMT, int kN>
__device__ __forceinline__ void zero(float (&acc)[kMT][kN][4]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.0f;
    }
  }
}

// The text phase of kMT tiles, assigning out_acc = softmax(q·Kᵀ/sqrt(d))·V: unnormalised P,
// row sums by MMA, one scaling at the end (no adds or shuffles for the sums).
template <typename T, int kHeadDim, int kMT, int kBlocks>
__device__ __forceinline__ void text_phase(float (&out_acc)[kMT][kHeadDim / 8][4],
                                           const std::uint32_t (&q_frag)[kMT][kHeadDim / 16][4],
                                           std::uint32_t kb0, std::uint32_t vb0,
                                           const std::uint32_t (&k_off)[kHeadDim / 16],
                                           const std::uint32_t (&v_off)[kHeadDim / 16], int valid) {
  const float score_scale = 1.4426950408889634f * rsqrtf(static_cast<float>(kHeadDim));
  std::uint32_t a[kMT][kBlocks][4];
  {
    float s[kMT][2 * kBlocks][4];
    phase_scores<T, kHeadDim, kMT, kBlocks>(s, q_frag, kb0, k_off, valid);
    softmax_numerators<T, kMT, kBlocks>(a, s, score_scale);
  }
  float l[kMT][4] = {};
  zero(out_acc);
  accumulate_pv<T, kHeadDim, kMT, kBlocks, true>(out_acc, l, a, vb0, v_off);
  normalise_rows<kHeadDim, kMT>(out_acc, l);
}

// An ip phase of kMT tiles, one pass, accumulating into out_acc: out_acc += (P·num/l)·V with P
// in fp32 (folded_probabilities). Its few keys make the fp32 sums cheap, and folding keeps a
// single output accumulator.
template <typename T, int kHeadDim, int kMT, int kBlocks>
__device__ __forceinline__ void folded_phase(float (&out_acc)[kMT][kHeadDim / 8][4],
                                             const std::uint32_t (&q_frag)[kMT][kHeadDim / 16][4],
                                             std::uint32_t kb0, std::uint32_t vb0,
                                             const std::uint32_t (&k_off)[kHeadDim / 16],
                                             const std::uint32_t (&v_off)[kHeadDim / 16], int valid,
                                             const float (&num)[kMT][2]) {
  const float score_scale = 1.4426950408889634f * rsqrtf(static_cast<float>(kHeadDim));
  std::uint32_t a[kMT][kBlocks][4];
  {
    float s[kMT][2 * kBlocks][4];
    phase_scores<T, kHeadDim, kMT, kBlocks>(s, q_frag, kb0, k_off, valid);
    folded_probabilities<T, kMT, kBlocks>(a, s, num, score_scale);
  }
  float unused[kMT][4];
  accumulate_pv<T, kHeadDim, kMT, kBlocks, false>(out_acc, unused, a, vb0, v_off);
}

// ---- Warpgroup phases (sm_90a wgmma; the persistent variant's warpgroup tiles, d = 64) -------
// K and V stay in shared memory in the layout the CTA loads them in: rows of 128 bytes whose
// 16-byte chunks are XOR-swizzled by the row mod 8, from a 1024-byte aligned base, which is
// wgmma's 128-byte swizzle. K is the K-major B of q·Kᵀ (a 32-byte step per 16 dims), V the N-major
// B of P·V (16 keys = 2048 bytes per step). For N = 64 (one swizzle atom wide) only the 8-row
// group stride (1024 bytes) matters; it is given as both offsets since the PTX ISA and CUTLASS
// name the two differently for N-major layouts. The same descriptor serves both. Steps within a
// phase are added to a descriptor as kv_step(bytes): the start address field holds address / 16
// and shared memory ends below 2^18 bytes, so the field never carries into the next one.
__device__ __forceinline__ std::uint64_t kv_descriptor(std::uint32_t addr) {
  return wgmma_descriptor(addr, 1024, 1024, 1);
}
constexpr std::uint64_t kv_step(std::uint32_t bytes) { return bytes >> 4; }

// log2(e) / sqrt(64): scores go straight to exp2.
constexpr float kWarpGroupScoreScale = 1.4426950408889634f * 0.125f;

template <int kN>
__device__ __forceinline__ float (&flat(float (&x)[kN][4]))[4 * kN] {
  return reinterpret_cast<float(&)[4 * kN]>(x);
}

// Issues s = q·Kᵀ of the warpgroup's 64 rows (this warp's 16 in s, as phase_scores lays them
// out) against kBlocks blocks of 16 keys at kb0; the caller fences, commits and waits.
template <typename T, int kBlocks>
__device__ __forceinline__ void issue_warpgroup_scores(float (&s)[1][2 * kBlocks][4],
                                                       const std::uint32_t (&q_frag)[1][4][4],
                                                       std::uint32_t kb0) {
  const std::uint64_t desc = kv_descriptor(kb0);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    WarpgroupMma<T, 16 * kBlocks>::template run<0>(flat(s[0]), q_frag[0][kk],
                                                   desc + kv_step(kk * 32), kk);
  }
}

// Scores of one phase: issue, wait, mask.
template <typename T, int kBlocks>
__device__ __forceinline__ void warpgroup_scores(float (&s)[1][2 * kBlocks][4],
                                                 const std::uint32_t (&q_frag)[1][4][4],
                                                 std::uint32_t kb0, int valid) {
  wgmma_fence();
  issue_warpgroup_scores<T, kBlocks>(s, q_frag, kb0);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operand(flat(s[0]));
  mask_scores<1, kBlocks>(s, valid);
}

// out_acc (+)= P·V over kBlocks blocks of 16 keys (accumulate 0 overwrites); with kRowSums also
// l += Σ P of the rounded P (one m64n8 MMA per block against the ones at ones_addr). l is
// accumulated, never overwritten: an overwritten accumulator may share registers with a dying A
// fragment, which makes ptxas serialise every wgmma of the kernel (C7511).
template <typename T, int kBlocks, bool kRowSums>
__device__ __forceinline__ void warpgroup_pv(float (&out_acc)[1][8][4], float (&l)[1][4],
                                             const std::uint32_t (&a)[1][kBlocks][4],
                                             std::uint32_t vb0, std::uint32_t ones_addr,
                                             int accumulate) {
  float(&acc)[32] = flat(out_acc[0]);
  const std::uint64_t desc = kv_descriptor(vb0);
  const std::uint64_t ones = wgmma_descriptor(ones_addr, 128, 128, 0);
  wgmma_fence();
#pragma unroll
  for (int kb = 0; kb < kBlocks; ++kb) {
    WarpgroupMma<T, 64>::template run<1>(acc, a[0][kb], desc + kv_step(kb * 2048),
                                         kb > 0 || accumulate);
    if constexpr (kRowSums) WarpgroupMma<T, 8>::template run<0>(l[0], a[0][kb], ones, 1);
  }
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operand(acc);
  if constexpr (kRowSums) wgmma_fence_operand(l[0]);
}

// text_phase for a warpgroup tile: out_acc = softmax(q·Kᵀ/8)·V, P unnormalised, row sums by MMA.
template <typename T, int kBlocks>
__device__ __forceinline__ void warpgroup_text_phase(float (&out_acc)[1][8][4],
                                                     const std::uint32_t (&q_frag)[1][4][4],
                                                     std::uint32_t kb0, std::uint32_t vb0,
                                                     std::uint32_t ones_addr, int valid) {
  const float score_scale = kWarpGroupScoreScale;
  std::uint32_t a[1][kBlocks][4];
  {
    float s[1][2 * kBlocks][4];
    warpgroup_scores<T, kBlocks>(s, q_frag, kb0, valid);
    softmax_numerators<T, 1, kBlocks>(a, s, score_scale);
  }
  float l[1][4] = {};
  wgmma_fence_operand(l[0]);  // zeroed before the wgmma sequence, not inside it (C7519)
  warpgroup_pv<T, kBlocks, true>(out_acc, l, a, vb0, ones_addr, 0);
  normalise_rows<64, 1>(out_acc, l);
}

// The text phase and a first identity of one key block together (one wait for both phases'
// scores, one for both P·V products, the two softmaxes interleaved): out_acc =
// softmax(q·Kᵀ/8)·V + (P_ip·num/l_ip)·V_ip.
template <typename T, int kBlocks>
__device__ __forceinline__ void warpgroup_text_and_identity(
    float (&out_acc)[1][8][4], const std::uint32_t (&q_frag)[1][4][4], std::uint32_t kb0,
    std::uint32_t vb0, std::uint32_t ones_addr, int valid, std::uint32_t ip_kb0,
    std::uint32_t ip_vb0, int ip_valid, const float (&num)[1][2]) {
  const float score_scale = kWarpGroupScoreScale;
  std::uint32_t a[1][kBlocks][4], a_ip[1][1][4];
  {
    float s[1][2 * kBlocks][4], s_ip[1][2][4];
    wgmma_fence();
    issue_warpgroup_scores<T, kBlocks>(s, q_frag, kb0);
    issue_warpgroup_scores<T, 1>(s_ip, q_frag, ip_kb0);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operand(flat(s[0]));
    wgmma_fence_operand(flat(s_ip[0]));
    mask_scores<1, kBlocks>(s, valid);
    mask_scores<1, 1>(s_ip, ip_valid);
    softmax_numerators<T, 1, kBlocks>(a, s, score_scale);
    folded_probabilities<T, 1, 1>(a_ip, s_ip, num, score_scale);
  }
  float l[1][4] = {};
  wgmma_fence_operand(l[0]);  // zeroed before the wgmma sequence, not inside it (C7519)
  float o_ip[1][8][4];
  const std::uint64_t desc = kv_descriptor(vb0);
  const std::uint64_t ones = wgmma_descriptor(ones_addr, 128, 128, 0);
  wgmma_fence();
  WarpgroupMma<T, 64>::template run<1>(flat(o_ip[0]), a_ip[0][0], kv_descriptor(ip_vb0), 0);
#pragma unroll
  for (int kb = 0; kb < kBlocks; ++kb) {
    WarpgroupMma<T, 64>::template run<1>(flat(out_acc[0]), a[0][kb], desc + kv_step(kb * 2048), kb);
    WarpgroupMma<T, 8>::template run<0>(l[0], a[0][kb], ones, 1);
  }
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operand(flat(out_acc[0]));
  wgmma_fence_operand(l[0]);
  wgmma_fence_operand(flat(o_ip[0]));
  const float inv0 = __fdividef(1.0f, l[0][0]);
  const float inv1 = __fdividef(1.0f, l[0][2]);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    out_acc[0][j][0] = fmaf(out_acc[0][j][0], inv0, o_ip[0][j][0]);
    out_acc[0][j][1] = fmaf(out_acc[0][j][1], inv0, o_ip[0][j][1]);
    out_acc[0][j][2] = fmaf(out_acc[0][j][2], inv1, o_ip[0][j][2]);
    out_acc[0][j][3] = fmaf(out_acc[0][j][3], inv1, o_ip[0][j][3]);
  }
}

// folded_phase for a warpgroup tile: out_acc += (P·num/l)·V.
template <typename T, int kBlocks>
__device__ __forceinline__ void warpgroup_folded_phase(float (&out_acc)[1][8][4],
                                                       const std::uint32_t (&q_frag)[1][4][4],
                                                       std::uint32_t kb0, std::uint32_t vb0,
                                                       int valid, const float (&num)[1][2]) {
  const float score_scale = kWarpGroupScoreScale;
  std::uint32_t a[1][kBlocks][4];
  {
    float s[1][2 * kBlocks][4];
    warpgroup_scores<T, kBlocks>(s, q_frag, kb0, valid);
    folded_probabilities<T, 1, kBlocks>(a, s, num, score_scale);
  }
  float unused[1][4];
  warpgroup_pv<T, kBlocks, false>(out_acc, unused, a, vb0, 0, 1);
}

// Calls f(std::integral_constant<int, B>{}) with B = the 16-key blocks of `valid` keys (1..5):
// phase bodies are compiled per block count.
template <typename F>
__device__ __forceinline__ void dispatch_key_blocks(int valid, F&& f) {
  switch ((valid + 15) / 16) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    default:
      f(std::integral_constant<int, 5>{});
      break;
  }
}
}  // namespace attention_detail

// kSingle: every phase has at most kSingleKeys keys, so each softmax is exact in one pass and
// its normaliser, scale and mask are folded into P before P·V accumulates straight into the
// output (no per-phase accumulator, no rescaling).
// kSmWarps: resident warps per SM the register budget must allow (16 → 128 registers per thread).
template <typename T, int kHeadDim, int kWarpsT, int kGroupsT, bool kSingle, int kSmWarps>
__global__ void __launch_bounds__(32 * kWarpsT, kSmWarps / kWarpsT)
    decoupled_attention_resident_kernel(const DecoupledAttentionParams p) {
  using Tile = ResidentTile<kHeadDim, kWarpsT, kGroupsT>;
  using Mma = attention_detail::MmaType<T>;
  using attention_detail::ResidentPhase;
  constexpr int kChunkKeys = kSingle ? Tile::kSingleKeys : Tile::kChunkKeys;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kDTiles = kHeadDim / 8;
  constexpr int kKeyBlocks = kChunkKeys / 16;
  constexpr int kChunks = Tile::kChunks;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ ResidentPhase s_phase[1 + kMaxIdentities];
  __shared__ int s_num_phases;
  __shared__ int s_rows;

  const int h = blockIdx.x;
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const std::int64_t head_col = static_cast<std::int64_t>(h) * kHeadDim;

  if (threadIdx.x == 0) {
    int n = 0, rows = 0;
    if (p.include_text) {
      s_phase[n++] = ResidentPhase{rows, p.text_len, 1.0f, nullptr, 0};
      rows += (p.text_len + 15) / 16 * 16;
    }
    for (int i = 0; i < p.num_identities; ++i) {
      s_phase[n++] =
          ResidentPhase{rows, p.ip[i].tokens, p.ip[i].scale, p.ip[i].mask, p.ip[i].mask_rows};
      rows += (p.ip[i].tokens + 15) / 16 * 16;
    }
    s_num_phases = n;
    s_rows = rows;
  }
  __syncthreads();
  const int num_phases = s_num_phases;
  const int rows = s_rows;
  T* s_k = reinterpret_cast<T*>(smem_raw);
  T* s_v = s_k + rows * kHeadDim;
  T* s_q = s_v + rows * kHeadDim + warp * Tile::kGroups * 16 * kHeadDim;  // [kGroups][16, d]

  // All keys and values, rows past each phase's count zero-filled.
  {
    const int chunk_uncond = b / p.images_per_chunk;
    const int uncond =
        chunk_uncond < 64 ? static_cast<int>((p.uncond_chunks >> chunk_uncond) & 1u) : 0;
    for (int ph = 0; ph < num_phases; ++ph) {
      const bool text = p.include_text && ph == 0;
      const int id = ph - (p.include_text ? 1 : 0);
      const T* k = text ? static_cast<const T*>(p.k) + b * p.k_batch_stride
                        : static_cast<const T*>(p.ip[id].k[uncond]);
      const T* v = text ? static_cast<const T*>(p.v) + b * p.v_batch_stride
                        : static_cast<const T*>(p.ip[id].v[uncond]);
      const std::int64_t ks = text ? p.k_row_stride : p.ip[id].row_stride;
      const std::int64_t vs = text ? p.v_row_stride : p.ip[id].row_stride;
      const int start = s_phase[ph].start, count = s_phase[ph].count;
      const int padded = (count + 15) / 16 * 16;
      for (int idx = threadIdx.x; idx < padded * kChunks; idx += Tile::kThreads) {
        const int r = idx / kChunks;
        const int c = idx % kChunks;
        const bool valid = r < count;
        const int dst = attention_detail::swizzle<kHeadDim>(start + r, c * 8);
        cp_async_16(s_k + dst, valid ? k + r * ks + head_col + c * 8 : k, valid ? 16 : 0);
        cp_async_16(s_v + dst, valid ? v + r * vs + head_col + c * 8 : v, valid ? 16 : 0);
      }
    }
  }
  cp_async_commit();

  const T* q_base = static_cast<const T*>(p.q) + b * p.q_batch_stride + head_col;
  T* out_base = static_cast<T*>(p.out) + b * p.out_batch_stride + head_col;
  auto group_row = [&](int g) {
    return static_cast<int>(blockIdx.y) * Tile::kRows + (g * Tile::kWarps + warp) * 16;
  };
  auto issue_q = [&](int g) {
    const int row0 = group_row(g);
    T* dst = s_q + g * 16 * kHeadDim;
#pragma unroll
    for (int idx = lane; idx < 16 * kChunks; idx += 32) {
      const int r = idx / kChunks;
      const int c = idx % kChunks;
      const bool valid = row0 + r < p.queries;
      cp_async_16(dst + attention_detail::swizzle<kHeadDim>(r, c * 8),
                  valid ? q_base + (row0 + r) * p.q_row_stride + c * 8 : q_base, valid ? 16 : 0);
    }
  };
  // Every q block of this warp is requested up front (one commit group each) so that the
  // loads overlap the compute of the blocks before them.
#pragma unroll
  for (int g = 0; g < Tile::kGroups; ++g) {
    issue_q(g);
    cp_async_commit();
  }
  cp_async_wait<Tile::kGroups - 1>();
  __syncthreads();  // keys and values of every thread have landed

  const int my_row = lane / 4;

#pragma unroll 1
  for (int g = 0; g < Tile::kGroups; ++g) {
    attention_detail::cp_async_wait_dynamic(Tile::kGroups - 1 - g);
    __syncwarp();
    const int row0 = group_row(g);
    if (row0 >= p.queries) continue;
    T* sq = s_q + g * 16 * kHeadDim;
    std::uint32_t q_frag[kKSteps][4];
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      attention_detail::ldmatrix_x4(q_frag[kk], sq + attention_detail::swizzle<kHeadDim>(
                                                         lane % 16, kk * 16 + (lane / 16) * 8));
    }
    float out_acc[kDTiles][4];
#pragma unroll
    for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) out_acc[j][e] = 0.0f;
    }

    if constexpr (kSingle) {
      // One 16-row MMA tile per group: the persistent variant's folded phase body with kMT = 1.
      std::uint32_t k_off[kKSteps], v_off[kDTiles / 2];
      attention_detail::ldmatrix_lane_offsets<T, kHeadDim>(k_off, v_off);
      const std::uint32_t k_addr = smem_address(s_k);
      const std::uint32_t v_addr = smem_address(s_v);
      auto& acc = reinterpret_cast<float(&)[1][kDTiles][4]>(out_acc);
      const auto& q_tile = reinterpret_cast<const std::uint32_t(&)[1][kKSteps][4]>(q_frag);
      const int image = b % p.images_per_chunk;
      for (int ph = 0; ph < num_phases; ++ph) {
        const ResidentPhase phase = s_phase[ph];
        float num[1][2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int n = row0 + my_row + r * 8;
          const float m =
              phase.mask == nullptr
                  ? 1.0f
                  : (n < p.queries
                         ? phase.mask[static_cast<std::int64_t>(min(image, phase.mask_rows - 1)) *
                                          p.queries +
                                      n]
                         : 0.0f);
          num[0][r] = phase.scale * m;
        }
        const std::uint32_t start_bytes = phase.start * kHeadDim * sizeof(T);
        attention_detail::dispatch_key_blocks(phase.count, [&](auto blocks) {
          attention_detail::folded_phase<T, kHeadDim, 1, decltype(blocks)::value>(
              acc, q_tile, k_addr + start_bytes, v_addr + start_bytes, k_off, v_off, phase.count,
              num);
        });
      }
    } else {
      for (int ph = 0; ph < num_phases; ++ph) {
        const ResidentPhase phase = s_phase[ph];
        float o_acc[kDTiles][4];
#pragma unroll
        for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) o_acc[j][e] = 0.0f;
        }
        float m_run[2] = {-INFINITY, -INFINITY};
        float l_run[2] = {0.0f, 0.0f};
        for (int c0 = 0; c0 < phase.count; c0 += kChunkKeys) {
          const int valid = min(kChunkKeys, phase.count - c0);
          const int base = phase.start + c0;
          attention_detail::online_softmax_step<T, kHeadDim, kKeyBlocks>(
              o_acc, m_run, l_run, q_frag, s_k, s_v, base, valid);
        }
        attention_detail::fold_phase<kHeadDim>(out_acc, o_acc, l_run, phase.scale, phase.mask,
                                               phase.mask_rows, b % p.images_per_chunk,
                                               row0 + my_row, p.queries);
      }
    }  // kSingle

    if (!p.include_text) {
      attention_detail::add_previous_out<T, kHeadDim>(out_acc, out_base, p.out_row_stride,
                                                      row0 + my_row, p.queries);
    }
    // Stage through this group's q buffer (its q is in registers now), then store.
    attention_detail::store_warp_rows<T, kHeadDim>(out_acc, sq, out_base, p.out_row_stride, row0,
                                                   p.queries);
  }
}

// The largest key count of any phase.
inline int max_phase_keys(const DecoupledAttentionParams& p) {
  int keys = p.include_text ? p.text_len : 0;
  for (int i = 0; i < p.num_identities; ++i) keys = keys > p.ip[i].tokens ? keys : p.ip[i].tokens;
  return keys;
}

// Padded key rows of all phases (0 when none), as the resident variant lays them out.
inline int resident_key_rows(const DecoupledAttentionParams& p) {
  int rows = p.include_text ? (p.text_len + 15) / 16 * 16 : 0;
  for (int i = 0; i < p.num_identities; ++i) rows += (p.ip[i].tokens + 15) / 16 * 16;
  return rows;
}

// Launches the resident variant with a given tile (benchmarks compare tiles through this).
template <typename T, int kHeadDim, int kWarps, int kGroups, bool kSingle,
          int kSmWarps = (kHeadDim == 64 ? 16 : 8)>
cudaError_t launch_resident_attention(const DecoupledAttentionParams& params,
                                      cudaStream_t stream) noexcept {
  using Tile = ResidentTile<kHeadDim, kWarps, kGroups>;
  static_assert(kGroups <= 8, "cp.async group depth");
  // The opt-in above 48 KB is a per-device function attribute: set it once per device.
  static std::atomic<std::uint64_t> configured{0};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return cudaErrorInvalidDevice;
  const std::uint64_t bit = std::uint64_t{1} << (device & 63);
  if ((configured.load(std::memory_order_acquire) & bit) == 0) {
    const cudaError_t e = cudaFuncSetAttribute(
        decoupled_attention_resident_kernel<T, kHeadDim, kWarps, kGroups, kSingle, kSmWarps>,
        cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(Tile::smem_bytes(Tile::kMaxKeys, sizeof(T))));
    if (e != cudaSuccess) return e;
    configured.fetch_or(bit, std::memory_order_acq_rel);
  }
  const dim3 grid(params.heads, (params.queries + Tile::kRows - 1) / Tile::kRows, params.batch);
  decoupled_attention_resident_kernel<T, kHeadDim, kWarps, kGroups, kSingle, kSmWarps>
      <<<grid, Tile::kThreads, Tile::smem_bytes(resident_key_rows(params), sizeof(T)), stream>>>(
          params);
  return cudaGetLastError();
}

// ---- Persistent variant: one wave of CTAs, each walking a contiguous range of row tiles -------
// For head dim 64 with every phase <= 80 keys (SDXL: 77 text + 16 ip tokens). The grid is about
// one CTA per SM; CTA c owns tiles [c·R, c·R + R) of the (pair = b·H + h, row tile) order, R
// chosen so that the range touches at most kMaxPairs pairs, whose K/V are loaded once behind the
// CTA's only barrier. Each warp walks its tiles (warp, warp + kWarps, ...) with a kStages-deep
// cp.async ring of q tiles (the next load is issued as soon as a tile's q is in registers) and
// writes out through its own staging tile with 16-byte stores; ring and staging rows are padded
// by 16 bytes, which keeps ldmatrix and the staging writes free of bank conflicts with
// compile-time addresses. A warp tile is kMmaTiles 16-row MMA tiles (with 2, every K/V fragment
// read from shared memory serves 32 rows). The text phase assigns the output (unnormalised P, row
// sums by MMA, see text_phase); each ip phase adds s_i·M_i·softmax·V with the factor folded into
// P (folded_phase).
// The kernel waits for the grid before it in the stream (griddepcontrol.wait) before it reads
// anything, so it may be launched early (programmatic dependent launch) to hide launch latency.

template <int kHeadDimT, int kWarpsT, int kStagesT = 2, int kCtasPerSmT = 1, int kMmaTilesT = 2,
          bool kWarpGroupT = false>
struct PersistentTile {
  static constexpr int kHeadDim = kHeadDimT;
  static constexpr int kWarps = kWarpsT;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStages = kStagesT;  // q tiles in flight per warp
  static constexpr int kCtasPerSm = kCtasPerSmT;
  static constexpr int kMmaTiles = kMmaTilesT;  // 16-row MMA tiles per warp tile
  static constexpr int kRows = 16 * kMmaTiles;  // query rows per warp tile
  // Warpgroup MMA (sm_90a): the four warps of a warpgroup take one 64-row tile together, 16 rows
  // each, and multiply with wgmma reading K and V straight from shared memory.
  static constexpr bool kWarpGroup = kWarpGroupT;
  static_assert(!kWarpGroup || (kMmaTiles == 1 && kWarps % 4 == 0 && kHeadDim == 64),
                "warpgroup tiles: 16 rows per warp, whole warpgroups, head dim 64");
  static constexpr int kTileRows = kWarpGroup ? 64 : kRows;  // query rows per scheduled tile
  // wgmma: the text phase and a first one-block identity in one pass (about 160 registers per
  // thread); with more than 12 warps per SM the register budget (<= 128) keeps them apart, since
  // ptxas serialises every wgmma of a kernel whose registers run short.
  static constexpr bool kFusedFirstIdentity = kWarpGroup && kWarps * kCtasPerSm <= 12;
  static constexpr int kMaxPairs = 2;     // (batch, head) pairs a CTA's range may touch
  static constexpr int kSingleKeys = 80;  // keys of any phase (77 text → 5 blocks of 16)
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr int kPitch = kHeadDim + 8;  // elements per row of the q ring and staging
  // wgmma: up to 1 KB to align K/V to the 128-byte swizzle's 1024-byte period, and 256 bytes of
  // ones (the B operand of the row sums).
  static constexpr std::size_t kWarpGroupExtraBytes = kWarpGroup ? 1024 + 256 : 0;
  static std::size_t smem_bytes(int key_rows, std::size_t elem) {
    return (static_cast<std::size_t>(kMaxPairs) * 2 * key_rows * kHeadDim +
            static_cast<std::size_t>(kWarps) * (kStages + 1) * kRows * kPitch) *
               elem +
           kWarpGroupExtraBytes;
  }
};

// How the launcher cut the (pair = b·H + h, row tile) order: CTA c owns tiles
// [c·tiles_per_cta, ...) of total_tiles; the divisors the prologue needs are prepared on the host.
struct PersistentSchedule {
  int tiles_per_pair = 1, tiles_per_cta = 1, total_tiles = 0;
  FastDivisor by_tiles_per_pair, by_heads, by_images_per_chunk;
};

// kProbe (benchmarks only): 0 the attention; 1 q in and out written, no math (memory pattern);
// 2 the math alone, no q loaded and nothing stored; 3 the prologue alone (K/V loaded and the
// first q tiles requested, then exit); 4 the attention with a timeline: lane 0 of every warp writes
// %globaltimer at entry, after griddepcontrol.wait, after the K/V barrier, after its last tile's
// math and at exit, and its tile count, as 8 u64 at q + (blockIdx·warps + warp)·64 bytes, over
// q rows every CTA has read by then (q is garbage afterwards).
// kIpOneBlock: every ip phase has <= 16 tokens (its body is compiled for one key block).
template <typename T, typename Tile, bool kIpOneBlock, int kProbe = 0>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kCtasPerSm)
    decoupled_attention_persistent_kernel(const DecoupledAttentionParams p,
                                          const PersistentSchedule schedule) {
  constexpr int kHeadDim = Tile::kHeadDim;
  using Mma = attention_detail::MmaType<T>;
  using attention_detail::ResidentPhase;
  constexpr int kStages = Tile::kStages;
  constexpr int kWarps = Tile::kWarps;
  constexpr int kMT = Tile::kMmaTiles;
  constexpr int kRows = Tile::kRows;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kDTiles = kHeadDim / 8;
  constexpr int kChunks = Tile::kChunks;
  constexpr int kPitch = Tile::kPitch;
  constexpr int kTileElems = kRows * kPitch;
  constexpr int kLaneChunks = kRows * kChunks / 32;  // 16-byte chunks of a tile per lane
  // Tiles are walked by warps, or by warpgroups (warp w taking rows 16·(w % 4) of each tile).
  constexpr bool kWarpGroup = Tile::kWarpGroup;
  constexpr int kWalkers = kWarpGroup ? kWarps / 4 : kWarps;
  constexpr int kTileRows = Tile::kTileRows;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ ResidentPhase s_phase[kMaxIdentities];

  std::uint64_t stamp[5] = {};  // kProbe 4 only
  auto timestamp = [] {
    std::uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
  };
  if constexpr (kProbe == 4) stamp[0] = timestamp();
  // Nothing the previous grid writes is read before this; letting the next grid launch now
  // costs nothing, since it waits the same way.
  wait_for_previous_grid();
  allow_next_grid();
  if constexpr (kProbe == 4) stamp[1] = timestamp();

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int walker = kWarpGroup ? warp / 4 : warp;
  const int sub_row = kWarpGroup ? (warp % 4) * 16 : 0;
  const int tiles_per_pair = schedule.tiles_per_pair;
  const int first_tile = static_cast<int>(blockIdx.x) * schedule.tiles_per_cta;
  const int end_tile = min(first_tile + schedule.tiles_per_cta, schedule.total_tiles);
  const int first_pair = schedule.by_tiles_per_pair.div(first_tile);
  const int num_pairs = schedule.by_tiles_per_pair.div(end_tile - 1) - first_pair + 1;
  const int text_rows = p.include_text ? (p.text_len + 15) / 16 * 16 : 0;
  int rows = text_rows;
  for (int i = 0; i < p.num_identities; ++i) rows += (p.ip[i].tokens + 15) / 16 * 16;

  unsigned char* smem_base = smem_raw;
  if constexpr (kWarpGroup) smem_base += (1024u - (smem_address(smem_raw) & 1023u)) & 1023u;
  T* s_kv = reinterpret_cast<T*>(smem_base);  // [kMaxPairs][K rows, V rows][d], swizzled
  // [kStages + 1][kRows, kPitch]: this warp's q ring, then its out staging tile
  T* s_ring = s_kv + Tile::kMaxPairs * 2 * rows * kHeadDim + warp * (kStages + 1) * kTileElems;
  T* s_out = s_ring + kStages * kTileElems;
  // wgmma only: 256 bytes of ones after every warp's ring and staging tile
  std::uint32_t* s_ones = reinterpret_cast<std::uint32_t*>(
      s_kv + Tile::kMaxPairs * 2 * rows * kHeadDim + kWarps * (kStages + 1) * kTileElems);

  const T* q_all = static_cast<const T*>(p.q);
  // (batch, head) of the range's first pair and of the next one; tiles at or past `boundary` are
  // the next pair's.
  const int b0 = schedule.by_heads.div(first_pair);
  const int h0 = first_pair - b0 * p.heads;
  const int b1 = h0 + 1 == p.heads ? b0 + 1 : b0;
  const int h1 = h0 + 1 == p.heads ? 0 : h0 + 1;
  const int boundary = (first_pair + 1) * tiles_per_pair;
  // mask rows are per image of a chunk; a chunk's rows use the uncond ip K/V when its bit is set
  const int chunk0 = schedule.by_images_per_chunk.div(b0);
  const int chunk1 = schedule.by_images_per_chunk.div(b1);
  const int image0 = b0 - chunk0 * p.images_per_chunk;
  const int image1 = b1 - chunk1 * p.images_per_chunk;
  struct TilePos {
    int slot, b, h, image, row0;
  };
  auto tile_pos = [&](int g) {
    const bool next = g >= boundary;
    return TilePos{next ? 1 : 0, next ? b1 : b0, next ? h1 : h0, next ? image1 : image0,
                   (g - (next ? boundary : boundary - tiles_per_pair)) * kTileRows + sub_row};
  };
  // The i-th tile of this warp (its rows of it) into ring slot i % kStages (rows past N
  // zero-filled).
  auto issue_q = [&](int i) {
    const int g = first_tile + walker + i * kWalkers;
    if (kProbe == 2 || g >= end_tile) return;
    const TilePos t = tile_pos(g);
    const int n0 = t.row0 + lane / kChunks;  // this lane's first row; then every 32/kChunks
    const T* src = q_all + t.b * p.q_batch_stride + n0 * p.q_row_stride +
                   static_cast<std::int64_t>(t.h) * kHeadDim + (lane % kChunks) * 8;
    T* dst = s_ring + (i % kStages) * kTileElems + (lane / kChunks) * kPitch + (lane % kChunks) * 8;
#pragma unroll
    for (int k = 0; k < kLaneChunks; ++k) {
      const bool valid = n0 + k * (32 / kChunks) < p.queries;
      cp_async_16(dst + k * (32 / kChunks) * kPitch, valid ? src : q_all, valid ? 16 : 0);
      src += (32 / kChunks) * p.q_row_stride;
    }
  };

  // Commit groups, in order: all K/V, q tiles 0 .. kStages-1, then one per tile. K/V go first:
  // every warp needs them, and behind the q tiles of the whole CTA (all of q, for small layers)
  // they arrived last, holding the barrier (timeline probe, docs/performance.md).
  if constexpr (kWarpGroup) {
    if (threadIdx.x < 64) s_ones[threadIdx.x] = Mma::kOnes;
  }
  if (threadIdx.x == 0) {
    int start = text_rows;
    for (int i = 0; i < p.num_identities; ++i) {
      s_phase[i] =
          ResidentPhase{start, p.ip[i].tokens, p.ip[i].scale, p.ip[i].mask, p.ip[i].mask_rows};
      start += (p.ip[i].tokens + 15) / 16 * 16;
    }
  }
  const int num_phases = (p.include_text ? 1 : 0) + p.num_identities;
  // K/V of the range's pairs: thread t copies 16-byte chunk t % kChunks of rows t / kChunks,
  // + kRowsPerPass, ... of every phase (rows past its count zero-filled). Phases start at
  // multiples of 16 rows, so the swizzle depends on the local row only.
  constexpr int kRowsPerPass = Tile::kThreads / kChunks;
  const int kv_chunk = threadIdx.x % kChunks;
  const int kv_row0 = threadIdx.x / kChunks;
  for (int slot = 0; slot < num_pairs; ++slot) {
    const int b = slot == 0 ? b0 : b1;
    const std::int64_t head_col = static_cast<std::int64_t>(slot == 0 ? h0 : h1) * kHeadDim;
    const int chunk_uncond = slot == 0 ? chunk0 : chunk1;
    const int uncond =
        chunk_uncond < 64 ? static_cast<int>((p.uncond_chunks >> chunk_uncond) & 1u) : 0;
    T* sk = s_kv + slot * 2 * rows * kHeadDim;
    T* sv = sk + rows * kHeadDim;
    int start = 0;
    for (int ph = 0; ph < num_phases; ++ph) {
      const bool text = p.include_text && ph == 0;
      const int id = ph - (p.include_text ? 1 : 0);
      const T* k = text ? static_cast<const T*>(p.k) + b * p.k_batch_stride
                        : static_cast<const T*>(p.ip[id].k[uncond]);
      const T* v = text ? static_cast<const T*>(p.v) + b * p.v_batch_stride
                        : static_cast<const T*>(p.ip[id].v[uncond]);
      const std::int64_t ks = text ? p.k_row_stride : p.ip[id].row_stride;
      const std::int64_t vs = text ? p.v_row_stride : p.ip[id].row_stride;
      const int count = text ? p.text_len : p.ip[id].tokens;
      const int padded = (count + 15) / 16 * 16;
      const T* k_src = k + kv_row0 * ks + head_col + kv_chunk * 8;
      const T* v_src = v + kv_row0 * vs + head_col + kv_chunk * 8;
      for (int r = kv_row0; r < padded; r += kRowsPerPass) {
        const bool valid = r < count;
        const int dst = (start + r) * kHeadDim + ((kv_chunk ^ (r & 7)) << 3);
        cp_async_16(sk + dst, valid ? k_src : k, valid ? 16 : 0);
        cp_async_16(sv + dst, valid ? v_src : v, valid ? 16 : 0);
        k_src += kRowsPerPass * ks;
        v_src += kRowsPerPass * vs;
      }
      start += padded;
    }
  }
  cp_async_commit();
#pragma unroll
  for (int i = 0; i < kStages; ++i) {
    issue_q(i);
    cp_async_commit();
  }
  cp_async_wait<kStages>();  // this thread's K/V
  __syncthreads();           // everyone's K/V and the phase table
  if (kProbe == 3) return;
  if constexpr (kProbe == 4) stamp[2] = timestamp();

  const int my_row = lane / 4;
  const int my_col = (lane % 4) * 2;
  std::uint32_t k_off[kKSteps], v_off[kDTiles / 2];
  attention_detail::ldmatrix_lane_offsets<T, kHeadDim>(k_off, v_off);
  const std::uint32_t pair_bytes = static_cast<std::uint32_t>(2 * rows * kHeadDim * sizeof(T));
  const std::uint32_t kv_addr = smem_address(s_kv);

  const int my_tiles = (end_tile - first_tile - walker + kWalkers - 1) / kWalkers;
#pragma unroll 1
  for (int i = 0; i < my_tiles; ++i) {
    cp_async_wait<kStages - 1>();
    __syncwarp();
    const TilePos t = tile_pos(first_tile + walker + i * kWalkers);
    const T* sq = s_ring + (i % kStages) * kTileElems + (lane % 16) * kPitch + (lane / 16) * 8;
    std::uint32_t q_frag[kMT][kKSteps][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        attention_detail::ldmatrix_x4(q_frag[mt][kk], sq + mt * 16 * kPitch + kk * 16);
      }
    }
    __syncwarp();  // every lane holds its q fragments: the slot may be refilled
    issue_q(i + kStages);
    cp_async_commit();

    const std::uint32_t k_addr = kv_addr + t.slot * pair_bytes;
    const std::uint32_t v_addr = k_addr + pair_bytes / 2;
    // s_i · M_i of an identity for the thread's rows (mask row of this tile's image)
    auto ip_factors = [&](const ResidentPhase& phase, float(&num)[kMT][2]) {
      const float* mask =  // [N] or null
          phase.mask == nullptr
              ? nullptr
              : phase.mask +
                    static_cast<std::int64_t>(min(t.image, phase.mask_rows - 1)) * p.queries;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int n = t.row0 + mt * 16 + my_row + r * 8;
          num[mt][r] =
              mask == nullptr ? phase.scale : (n < p.queries ? phase.scale * mask[n] : 0.0f);
        }
      }
    };
    float out_acc[kMT][kDTiles][4];
    // One identity's pass, out_acc += (P·s_i·M_i/l)·V, on this tile's MMAs.
    auto identity_pass = [&](const ResidentPhase phase) {  // a copy: one read of shared memory
      float num[kMT][2];
      ip_factors(phase, num);
      const std::uint32_t start_bytes = phase.start * kHeadDim * sizeof(T);
      auto pass = [&](auto blocks) {
        constexpr int kBlocks = decltype(blocks)::value;
        if constexpr (kWarpGroup) {
          attention_detail::warpgroup_folded_phase<T, kBlocks>(
              out_acc, q_frag, k_addr + start_bytes, v_addr + start_bytes, phase.count, num);
        } else {
          attention_detail::folded_phase<T, kHeadDim, kMT, kBlocks>(
              out_acc, q_frag, k_addr + start_bytes, v_addr + start_bytes, k_off, v_off,
              phase.count, num);
        }
      };
      if constexpr (kIpOneBlock) {
        pass(std::integral_constant<int, 1>{});
      } else {
        attention_detail::dispatch_key_blocks(phase.count, pass);
      }
    };
    // The text phase (warpgroup tiles: with the first identity when it has one key block), then
    // the identities not done yet.
    int first_id = 0;
    if (kProbe == 1 || !p.include_text) {
      attention_detail::zero(out_acc);
    } else if constexpr (kWarpGroup) {
      const std::uint32_t ones_addr = smem_address(s_ones);
      if (Tile::kFusedFirstIdentity && p.num_identities > 0 && s_phase[0].count <= 16) {
        const ResidentPhase phase = s_phase[0];
        float num[kMT][2];
        ip_factors(phase, num);
        const std::uint32_t start_bytes = phase.start * kHeadDim * sizeof(T);
        attention_detail::dispatch_key_blocks(p.text_len, [&](auto blocks) {
          attention_detail::warpgroup_text_and_identity<T, decltype(blocks)::value>(
              out_acc, q_frag, k_addr, v_addr, ones_addr, p.text_len, k_addr + start_bytes,
              v_addr + start_bytes, phase.count, num);
        });
        first_id = 1;
      } else {
        attention_detail::dispatch_key_blocks(p.text_len, [&](auto blocks) {
          attention_detail::warpgroup_text_phase<T, decltype(blocks)::value>(
              out_acc, q_frag, k_addr, v_addr, ones_addr, p.text_len);
        });
      }
    } else {
      attention_detail::dispatch_key_blocks(p.text_len, [&](auto blocks) {
        attention_detail::text_phase<T, kHeadDim, kMT, decltype(blocks)::value>(
            out_acc, q_frag, k_addr, v_addr, k_off, v_off, p.text_len);
      });
    }
    for (int id = first_id; id < (kProbe == 1 ? 0 : p.num_identities); ++id) {
      identity_pass(s_phase[id]);
    }
    const int b = t.b;
    const int row0 = t.row0;
    T* out_base =
        static_cast<T*>(p.out) + b * p.out_batch_stride + static_cast<std::int64_t>(t.h) * kHeadDim;
    // "Add ip only": the previous out joins the fp32 sum, so the result is rounded once.
    if (!p.include_text) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int n = row0 + mt * 16 + my_row + r * 8;
          if (n < p.queries) {
#pragma unroll
            for (int j = 0; j < kDTiles; ++j) {
              const float2 old = Mma::unpack(*reinterpret_cast<const std::uint32_t*>(
                  out_base + n * p.out_row_stride + j * 8 + my_col));
              out_acc[mt][j][2 * r] += old.x;
              out_acc[mt][j][2 * r + 1] += old.y;
            }
          }
        }
      }
    }
    if constexpr (kProbe == 4) stamp[3] = timestamp();
    if (kProbe == 2 && p.batch > 0) continue;
    // The previous tile's 16-byte stores have read s_out (the __syncwarp at the loop head).
    T* my_out = s_out + my_row * kPitch + my_col;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          *reinterpret_cast<std::uint32_t*>(my_out + (mt * 16 + r * 8) * kPitch + j * 8) =
              Mma::pack(out_acc[mt][j][2 * r], out_acc[mt][j][2 * r + 1]);
        }
      }
    }
    __syncwarp();
    const int n0 = row0 + lane / kChunks;
    T* dst = out_base + n0 * p.out_row_stride + (lane % kChunks) * 8;
    const T* staged = s_out + (lane / kChunks) * kPitch + (lane % kChunks) * 8;
#pragma unroll
    for (int k = 0; k < kLaneChunks; ++k) {
      if (n0 + k * (32 / kChunks) < p.queries) {
        *reinterpret_cast<uint4*>(dst) =
            *reinterpret_cast<const uint4*>(staged + k * (32 / kChunks) * kPitch);
      }
      dst += (32 / kChunks) * p.out_row_stride;
    }
  }
  if constexpr (kProbe == 4) {
    stamp[4] = timestamp();
    if (lane == 0) {
      auto* record = reinterpret_cast<std::uint64_t*>(const_cast<void*>(p.q)) +
                     (static_cast<std::size_t>(blockIdx.x) * kWarps + warp) * 8;
      for (int k = 0; k < 5; ++k) record[k] = stamp[k];
      record[5] = static_cast<std::uint64_t>(my_tiles);
    }
  }
}

// Dynamic shared memory a CTA of the current device may opt into (1 KB left for the static part),
// 0 on error. 227 KB on sm_80 / sm_90, 99 KB on sm_86 / sm_89.
inline int persistent_smem_limit() noexcept {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
      cudaSuccess) {
    return 0;
  }
  return optin > 1024 ? optin - 1024 : 0;
}

// Whether the persistent variant takes these params on the current device: one-pass phases
// (<= 80 keys) and the K/V of kMaxPairs pairs plus the warps' rings fit in shared memory.
template <typename Tile>
bool persistent_attention_fits(const DecoupledAttentionParams& params, std::size_t elem) noexcept {
  const int key_rows = resident_key_rows(params);
  if (key_rows == 0 || max_phase_keys(params) > Tile::kSingleKeys) return false;
  const long long tiles = static_cast<long long>(params.batch) * params.heads *
                          ((params.queries + Tile::kTileRows - 1) / Tile::kTileRows);
  return tiles <= 0x7fffffffLL &&
         Tile::smem_bytes(key_rows, elem) <= static_cast<std::size_t>(persistent_smem_limit());
}

// Launches the persistent variant with a given tile. max_ctas > 0 caps the grid below one CTA per
// SM slot (tests use it to make warps walk many tiles and ranges span two pairs). early_launch:
// on sm_90+, allow the launch to start before the previous kernel in the stream has finished
// (programmatic dependent launch; the kernel waits for it before reading anything).
template <typename T, typename Tile, int kProbe = 0>
cudaError_t launch_persistent_attention(const DecoupledAttentionParams& params, cudaStream_t stream,
                                        int max_ctas = 0, bool early_launch = true) noexcept {
  if (!persistent_attention_fits<Tile>(params, sizeof(T))) return cudaErrorInvalidValue;
  if constexpr (Tile::kWarpGroup) {
    if (!warpgroup_mma_compiled()) return cudaErrorInvalidValue;
  }
  bool ip_one_block = true;
  for (int i = 0; i < params.num_identities; ++i) {
    ip_one_block = ip_one_block && params.ip[i].tokens <= 16;
  }
  auto* kernel = ip_one_block ? decoupled_attention_persistent_kernel<T, Tile, true, kProbe>
                              : decoupled_attention_persistent_kernel<T, Tile, false, kProbe>;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return cudaErrorInvalidDevice;
  // Set on every launch (a host-side attribute write, no device work): a once-per-process flag
  // proved unreliable when the launcher is instantiated in several binaries' units.
  const std::size_t smem = Tile::smem_bytes(resident_key_rows(params), sizeof(T));
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  int sms = 0, major = 0;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e != cudaSuccess) return e;
  const int tiles_per_pair = (params.queries + Tile::kTileRows - 1) / Tile::kTileRows;
  const long long total = static_cast<long long>(params.batch) * params.heads * tiles_per_pair;
  const long long slots = max_ctas > 0 ? max_ctas : static_cast<long long>(sms) * Tile::kCtasPerSm;
  long long per_cta = (total + slots - 1) / slots;
  // A range of at most tiles_per_pair tiles touches at most two pairs.
  const long long max_per_cta = static_cast<long long>(tiles_per_pair) * (Tile::kMaxPairs - 1);
  per_cta = per_cta < max_per_cta ? per_cta : max_per_cta;
  const long long grid = (total + per_cta - 1) / per_cta;
  PersistentSchedule schedule;
  schedule.tiles_per_pair = tiles_per_pair;
  schedule.tiles_per_cta = static_cast<int>(per_cta);
  schedule.total_tiles = static_cast<int>(total);
  schedule.by_tiles_per_pair = FastDivisor(tiles_per_pair);
  schedule.by_heads = FastDivisor(params.heads);
  schedule.by_images_per_chunk = FastDivisor(params.images_per_chunk);
  return launch_kernel(early_launch && major >= 9, kernel, dim3(static_cast<unsigned>(grid)),
                       dim3(Tile::kThreads), smem, stream, params, schedule);
}

// The persistent tiles the launchers use (d 64): the default (measured, docs/performance.md),
// and a smaller one for key sets whose K/V leave too little shared memory for the default's rings
// (several identities with up to 80 tokens each).
using DefaultPersistentTile = PersistentTile<64, 12, 1, 1, 1>;
using SmallPersistentTile = PersistentTile<64, 6, 2, 1, 2>;
// Warpgroup tiles (sm_90a wgmma): 12 warps = 3 warpgroups of 64-row tiles.
using WarpGroupPersistentTile = PersistentTile<64, 12, 1, 1, 1, true>;

// The persistent variant with the first tile that fits; cudaErrorInvalidValue if none does.
// warpgroup: try the wgmma tile first (used where this image has sm_90a code).
template <typename T>
cudaError_t launch_persistent_default(const DecoupledAttentionParams& params, cudaStream_t stream,
                                      int max_ctas = 0, bool warpgroup = false) noexcept {
  if (warpgroup && persistent_attention_fits<WarpGroupPersistentTile>(params, sizeof(T)) &&
      warpgroup_mma_compiled()) {
    return launch_persistent_attention<T, WarpGroupPersistentTile>(params, stream, max_ctas);
  }
  if (persistent_attention_fits<DefaultPersistentTile>(params, sizeof(T))) {
    return launch_persistent_attention<T, DefaultPersistentTile>(params, stream, max_ctas);
  }
  return launch_persistent_attention<T, SmallPersistentTile>(params, stream, max_ctas);
}

// The default tiles of the resident variants (measured on an H200 over the SDXL step, d 64:
// docs/performance.md). One pass: 4 warps × 1 block of 16 rows at 96 registers (20 warps per SM)
// beat 4 × 2 at 128 registers by 4.6 %; online: 4 × 2 at 128 registers. d 128 is not tuned.
template <int kHeadDim>
struct DefaultResident {
  static constexpr int kWarps = 4;
  static constexpr int kOnePassGroups = kHeadDim == 64 ? 1 : 2;
  static constexpr int kOnePassSmWarps = kHeadDim == 64 ? 20 : 8;
  static constexpr int kOnlineGroups = 2;
  static constexpr int kOnlineSmWarps = kHeadDim == 64 ? 16 : 8;
};

template <typename T, int kHeadDim>
cudaError_t launch_decoupled_attention(const DecoupledAttentionParams& params,
                                       cudaStream_t stream) noexcept {
  const cudaError_t status = check_decoupled_attention(params);
  if (status != cudaSuccess) return status;
  const int key_rows = resident_key_rows(params);
  if (key_rows > 0 && key_rows <= ResidentTile<kHeadDim>::kMaxKeys) {
    using D = DefaultResident<kHeadDim>;
    if (max_phase_keys(params) <= ResidentTile<kHeadDim>::kSingleKeys) {
      if constexpr (kHeadDim == 64) {
        if (persistent_attention_fits<DefaultPersistentTile>(params, sizeof(T)) ||
            persistent_attention_fits<SmallPersistentTile>(params, sizeof(T))) {
          return launch_persistent_default<T>(params, stream, 0, true);
        }
      }
      return launch_resident_attention<T, kHeadDim, D::kWarps, D::kOnePassGroups, true,
                                       D::kOnePassSmWarps>(params, stream);
    }
    return launch_resident_attention<T, kHeadDim, D::kWarps, D::kOnlineGroups, false,
                                     D::kOnlineSmWarps>(params, stream);
  }
  using Tile = AttentionTile<kHeadDim>;
  const dim3 grid(params.heads, (params.queries + Tile::kRows - 1) / Tile::kRows, params.batch);
  decoupled_attention_kernel<T, kHeadDim><<<grid, Tile::kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

template <typename T, int kHeadDim>
cudaError_t launch_decoupled_attention_variant(AttentionVariant variant,
                                               const DecoupledAttentionParams& params, int max_ctas,
                                               cudaStream_t stream) noexcept {
  if (variant == AttentionVariant::kAuto) {
    return launch_decoupled_attention<T, kHeadDim>(params, stream);
  }
  const cudaError_t status = check_decoupled_attention(params);
  if (status != cudaSuccess) return status;
  if (variant == AttentionVariant::kPersistent) {
    if constexpr (kHeadDim == 64) return launch_persistent_default<T>(params, stream, max_ctas);
    return cudaErrorInvalidValue;
  }
  if (variant == AttentionVariant::kPersistentWarpGroup) {
    if constexpr (kHeadDim == 64) {
      return launch_persistent_attention<T, WarpGroupPersistentTile>(params, stream, max_ctas);
    }
    return cudaErrorInvalidValue;
  }
  const int key_rows = resident_key_rows(params);
  if (key_rows == 0 || key_rows > ResidentTile<kHeadDim>::kMaxKeys) return cudaErrorInvalidValue;
  using D = DefaultResident<kHeadDim>;
  if (max_phase_keys(params) <= ResidentTile<kHeadDim>::kSingleKeys) {
    return launch_resident_attention<T, kHeadDim, D::kWarps, D::kOnePassGroups, true,
                                     D::kOnePassSmWarps>(params, stream);
  }
  return launch_resident_attention<T, kHeadDim, D::kWarps, D::kOnlineGroups, false,
                                   D::kOnlineSmWarps>(params, stream);
}

}  // namespace instantid::kernels
