#pragma once
// Building blocks shared by the hand-written kernels: 16-byte asynchronous copies into shared
// memory (cp.async) and programmatic dependent launch (sm_90+: a kernel launched early waits for
// the previous kernel in the stream before it reads that kernel's output).

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace instantid::kernels {

__device__ __forceinline__ std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes == 0 zero-fills the destination without reading src.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Waits until the previous grid in the stream has finished and its writes are visible. A no-op
// for a plain launch and below sm_90.
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next grid in the stream launch now; it still waits in wait_for_previous_grid().
__device__ __forceinline__ void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// The configuration of a launch of grid × block threads with smem bytes of dynamic shared memory
// on stream, in thread-block clusters of `cluster` CTAs (sm_90+; dim3(1, 1, 1): no clusters),
// with `early` as a programmatic dependent launch
// (cudaLaunchAttributeProgrammaticStreamSerialization): the kernel may start before the previous
// kernel in the stream ends, so it must call wait_for_previous_grid() before reading that
// kernel's output. Callers pass early and clusters only on sm_90+. Not copyable: config.attrs
// points into attributes.
struct LaunchConfig {
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute attributes[2];

  LaunchConfig(bool early, dim3 cluster, dim3 grid, dim3 block, std::size_t smem,
               cudaStream_t stream) noexcept {
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    unsigned count = 0;
    if (early) {
      attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attributes[count].val.programmaticStreamSerializationAllowed = 1;
      ++count;
    }
    if (cluster.x * cluster.y * cluster.z > 1) {
      attributes[count].id = cudaLaunchAttributeClusterDimension;
      attributes[count].val.clusterDim.x = cluster.x;
      attributes[count].val.clusterDim.y = cluster.y;
      attributes[count].val.clusterDim.z = cluster.z;
      ++count;
    }
    config.attrs = attributes;
    config.numAttrs = count;
  }
  LaunchConfig(const LaunchConfig&) = delete;
  LaunchConfig& operator=(const LaunchConfig&) = delete;
};

// kernel<<<grid, block, smem, stream>>>(args...) as LaunchConfig describes it.
template <typename... Params, typename... Args>
cudaError_t launch_kernel_in_clusters(bool early, dim3 cluster, void (*kernel)(Params...),
                                      dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                                      Args... args) noexcept {
  LaunchConfig launch(early, cluster, grid, block, smem, stream);
  return cudaLaunchKernelEx(&launch.config, kernel, args...);
}

// The same without clusters.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(bool early, void (*kernel)(Params...), dim3 grid, dim3 block,
                          std::size_t smem, cudaStream_t stream, Args... args) noexcept {
  return launch_kernel_in_clusters(early, dim3(1, 1, 1), kernel, grid, block, smem, stream,
                                   args...);
}

}  // namespace instantid::kernels
