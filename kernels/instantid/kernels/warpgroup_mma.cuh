#pragma once
// Warpgroup MMA (wgmma.mma_async, sm_90a): four consecutive warps multiply a 64-row A held in
// their registers (each warp's 16 rows in the mma.sync m16n8k16 A layout) by a B in shared
// memory described by a matrix descriptor, accumulating a 64 × N fp32 tile whose per-warp
// fragment is the mma.sync m16n8 C layout, n8 block j in d[4j .. 4j + 3]. The instructions exist
// only in sm_90a code; elsewhere the wrappers trap, and warpgroup_mma_compiled() tells a host
// launcher whether the image loaded for the current device has them.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define INSTANTID_WGMMA 1
#endif

namespace instantid::kernels {

// Descriptor of a B operand in shared memory: 1024-byte aligned 128-byte-swizzle layout (rows of
// 128 bytes whose 16-byte chunks are XOR-ed with the row index mod 8), 8-row groups
// stride_bytes apart (swizzle 1) or the no-swizzle core-matrix layout (swizzle 0).
__device__ __forceinline__ std::uint64_t wgmma_descriptor(std::uint32_t smem_addr,
                                                          std::uint32_t leading_bytes,
                                                          std::uint32_t stride_bytes,
                                                          std::uint32_t swizzle) {
  return static_cast<std::uint64_t>((smem_addr & 0x3FFFFu) >> 4) |
         static_cast<std::uint64_t>((leading_bytes >> 4) & 0x3FFFu) << 16 |
         static_cast<std::uint64_t>((stride_bytes >> 4) & 0x3FFFu) << 32 |
         static_cast<std::uint64_t>(swizzle) << 62;
}

// Orders this thread's earlier register writes before the next wgmma reads them.
__device__ __forceinline__ void wgmma_fence() {
#if defined(INSTANTID_WGMMA)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(INSTANTID_WGMMA)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#if defined(INSTANTID_WGMMA)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// The compiler sees an accumulator as written when the wgmma statement issues; this makes every
// element look rewritten here, so no read of it moves above the wgmma_wait before the call.
template <int kN>
__device__ __forceinline__ void wgmma_fence_operand(float (&d)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// One wgmma.mma_async per macro, for the N this library uses; `type` is "f16" or "bf16". They
// expect d, a, desc, scale_d and kTransB in scope (WarpgroupMma::run).
#define INSTANTID_WGMMA_M64N8K16(type)                           \
  asm volatile(                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"                \
      "wgmma.mma_async.sync.aligned.m64n8k16.f32." type "." type \
      " {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1, %10;\n}\n"    \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])           \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(kTransB))
#define INSTANTID_WGMMA_M64N16K16(type)                                                     \
  asm volatile(                                                                             \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"                                          \
      "wgmma.mma_async.sync.aligned.m64n16k16.f32." type "." type                           \
      " {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, p, 1, 1, %14;\n}\n"                \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), \
        "+f"(d[7])                                                                          \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(kTransB))
#define INSTANTID_WGMMA_M64N32K16(type)                                                          \
  asm volatile(                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"                                               \
      "wgmma.mma_async.sync.aligned.m64n32k16.f32." type "." type                                \
      " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, " \
      "1, "                                                                                      \
      "%22;\n}\n"                                                                                \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),      \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),  \
        "+f"(d[14]), "+f"(d[15])                                                                 \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(kTransB))
#define INSTANTID_WGMMA_M64N48K16(type)                                                            \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %29, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n48k16.f32." type "." type                                  \
      " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23}, " \
      "{%24,%25,%26,%27}, %28, p, 1, 1, %30;\n}\n"                                                 \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23])                                                      \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(kTransB))
#define INSTANTID_WGMMA_M64N64K16(type)                                                            \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." type "." type                                  \
      " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%"  \
      "24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, %38;\n}\n"                \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                         \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(kTransB))
#define INSTANTID_WGMMA_M64N80K16(type)                                                            \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %45, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n80k16.f32." type "." type                                  \
      " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%"  \
      "24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39}, {%40,%41,%42,%43}, %44, "  \
      "p, 1, 1, %46;\n}\n"                                                                         \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])                            \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(kTransB))

// d (+)= A · B for a 64 × kN tile: A from registers (four .b32 of two T each), B = the shared
// memory tile `desc` describes, K-major (kTransB 0) or N-major (kTransB 1); scale_d 0 overwrites d.
template <typename T, int kN>
struct WarpgroupMma {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "f16 or bf16");
  static_assert(kN == 8 || kN == 16 || kN == 32 || kN == 48 || kN == 64 || kN == 80,
                "N of a wgmma this library uses");
  template <int kTransB>
  __device__ static void run(float (&d)[kN / 2], const std::uint32_t (&a)[4], std::uint64_t desc,
                             int scale_d) {
#if defined(INSTANTID_WGMMA)
    constexpr bool kHalf = std::is_same_v<T, __half>;
    if constexpr (kN == 8) {
      if constexpr (kHalf)
        INSTANTID_WGMMA_M64N8K16("f16");
      else
        INSTANTID_WGMMA_M64N8K16("bf16");
    } else if constexpr (kN == 16) {
      if constexpr (kHalf)
        INSTANTID_WGMMA_M64N16K16("f16");
      else
        INSTANTID_WGMMA_M64N16K16("bf16");
    } else if constexpr (kN == 32) {
      if constexpr (kHalf)
        INSTANTID_WGMMA_M64N32K16("f16");
      else
        INSTANTID_WGMMA_M64N32K16("bf16");
    } else if constexpr (kN == 48) {
      if constexpr (kHalf)
        INSTANTID_WGMMA_M64N48K16("f16");
      else
        INSTANTID_WGMMA_M64N48K16("bf16");
    } else if constexpr (kN == 64) {
      if constexpr (kHalf)
        INSTANTID_WGMMA_M64N64K16("f16");
      else
        INSTANTID_WGMMA_M64N64K16("bf16");
    } else {
      if constexpr (kHalf)
        INSTANTID_WGMMA_M64N80K16("f16");
      else
        INSTANTID_WGMMA_M64N80K16("bf16");
    }
#else
    __trap();
#endif
  }
};

template <int kUnused = 0>
__global__ void warpgroup_mma_marker_kernel() {
#if defined(INSTANTID_WGMMA)
  __shared__ int marker[64];
#else
  __shared__ int marker[32];
#endif
  static_cast<volatile int*>(marker)[threadIdx.x % 32] = 0;  // keeps the array allocated
}

// Whether the image of this translation unit loaded for the current device was compiled for
// sm_90a (so the wrappers above run): read once per device from the marker kernel's static
// shared memory size, which needs no launch or synchronisation (safe during stream capture).
inline bool warpgroup_mma_compiled() noexcept {
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices] = {};  // 0 not asked yet, 1 yes, 2 no
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (device >= 0 && device < kDevices && known[device].load() != 0) {
    return known[device].load() == 1;
  }
  cudaFuncAttributes attributes{};
  bool compiled = false;
  if (cudaFuncGetAttributes(&attributes, warpgroup_mma_marker_kernel<0>) == cudaSuccess) {
    compiled = attributes.sharedSizeBytes == 64 * sizeof(int);
  } else {
    cudaGetLastError();
  }
  if (device >= 0 && device < kDevices) known[device].store(compiled ? 1 : 2);
  return compiled;
}

}  // namespace instantid::kernels
