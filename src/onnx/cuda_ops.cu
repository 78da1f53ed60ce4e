#include <cuda_fp16.h>

#include <cfloat>

#include "onnx/cuda_ops.hpp"

namespace instantid::onnx::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

unsigned int blocks_for(std::int64_t n) {
  const std::int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 65535 * 32 ? (b > 0 ? b : 1) : 65535 * 32);
}

template <typename T>
__global__ void binary_kernel(BinaryOp op, BroadcastParams p, const T* a, const T* b, T* y) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t rem = i, oa = 0, ob = 0;
    for (int d = p.rank - 1; d >= 0; --d) {
      const std::int64_t idx = rem % p.out_shape[d];
      rem /= p.out_shape[d];
      oa += idx * p.a_stride[d];
      ob += idx * p.b_stride[d];
    }
    const float u = op == BinaryOp::kCopyB ? 0.0f : to_float(a[oa]);
    const float v = to_float(b[ob]);
    float r;
    switch (op) {
      case BinaryOp::kAdd: r = u + v; break;
      case BinaryOp::kSub: r = u - v; break;
      case BinaryOp::kMul: r = u * v; break;
      case BinaryOp::kDiv: r = u / v; break;
      case BinaryOp::kPRelu: r = u < 0.0f ? u * v : u; break;
      default: r = v; break;
    }
    y[i] = from_float<T>(r);
  }
}

template <typename T>
__global__ void unary_kernel(UnaryOp op, std::int64_t n, float lo, float hi, const T* x, T* y) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float v = to_float(x[i]);
    y[i] = from_float<T>(op == UnaryOp::kSigmoid ? 1.0f / (1.0f + __expf(-v))
                                                 : fminf(fmaxf(v, lo), hi));
  }
}

template <typename T>
__global__ void channel_affine_kernel(std::int64_t total, std::int64_t c, std::int64_t inner,
                                      const float* scale, const float* shift, float lo, float hi,
                                      const T* x, T* y) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t ch = (i / inner) % c;
    float v = to_float(x[i]);
    if (scale != nullptr) v *= scale[ch];
    if (shift != nullptr) v += shift[ch];
    y[i] = from_float<T>(fminf(fmaxf(v, lo), hi));
  }
}

template <typename T>
__global__ void pool2d_kernel(Pool2dParams p, const T* x, T* y) {
  const std::int64_t total = p.nc * p.oh * p.ow;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t ox = i % p.ow, oy = (i / p.ow) % p.oh, nc = i / (p.ow * p.oh);
    const std::int64_t y0 = oy * p.sh - p.pad_top, x0 = ox * p.sw - p.pad_left;
    const T* xp = x + nc * p.h * p.w;
    float acc = p.is_max ? -FLT_MAX : 0.0f;
    bool any = false;
    std::int64_t valid = 0;
    for (std::int64_t ky = 0; ky < p.kh; ++ky) {
      const std::int64_t iy = y0 + ky * p.dh;
      if (iy < 0 || iy >= p.h) continue;
      for (std::int64_t kx = 0; kx < p.kw; ++kx) {
        const std::int64_t ix = x0 + kx * p.dw;
        if (ix < 0 || ix >= p.w) continue;
        const float v = to_float(xp[iy * p.w + ix]);
        acc = p.is_max ? fmaxf(acc, v) : acc + v;
        any = true;
        ++valid;
      }
    }
    if (!p.is_max) {
      std::int64_t divisor = valid;
      if (p.count_include_pad) {
        const std::int64_t ye = min(y0 + p.kh, p.h + p.pad_bottom);
        const std::int64_t xe = min(x0 + p.kw, p.w + p.pad_right);
        divisor = (ye - y0) * (xe - x0);
      }
      acc = divisor > 0 ? acc / static_cast<float>(divisor) : 0.0f;
    } else if (!any) {
      acc = -INFINITY;
    }
    y[i] = from_float<T>(acc);
  }
}

template <typename T>
__global__ void global_average_pool_kernel(std::int64_t nc, std::int64_t inner, const T* x, T* y) {
  // One block per (n, c) row.
  __shared__ float partial[kThreads];
  const std::int64_t row = blockIdx.x;
  if (row >= nc) return;
  float acc = 0.0f;
  for (std::int64_t k = threadIdx.x; k < inner; k += blockDim.x) acc += to_float(x[row * inner + k]);
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) y[row] = from_float<T>(partial[0] / static_cast<float>(inner));
}

template <typename T>
__global__ void resize_nearest_kernel(ResizeParams p, const T* x, T* y) {
  const std::int64_t total = p.out[0] * p.out[1] * p.out[2] * p.out[3];
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t rem = i, off = 0, stride = 1;
    for (int d = 3; d >= 0; --d) {
      const std::int64_t o = rem % p.out[d];
      rem /= p.out[d];
      std::int64_t s = static_cast<std::int64_t>(floorf(static_cast<float>(o) / p.scale[d]));
      s = s < 0 ? 0 : (s > p.in[d] - 1 ? p.in[d] - 1 : s);
      off += s * stride;
      stride *= p.in[d];
    }
    y[i] = x[off];
  }
}

template <typename T>
__global__ void transpose_kernel(TransposeParams p, const T* x, T* y) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t rem = i, off = 0;
    for (int d = p.rank - 1; d >= 0; --d) {
      off += (rem % p.out_shape[d]) * p.in_stride[d];
      rem /= p.out_shape[d];
    }
    y[i] = x[off];
  }
}

template <typename S, typename D>
__global__ void cast_kernel(std::int64_t n, const S* x, D* y) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    y[i] = from_float<D>(to_float(x[i]));
  }
}

}  // namespace

template <typename T>
cudaError_t launch_binary(BinaryOp op, const BroadcastParams& p, const T* a, const T* b, T* y,
                          cudaStream_t stream) noexcept {
  if (p.n == 0) return cudaSuccess;
  binary_kernel<T><<<blocks_for(p.n), kThreads, 0, stream>>>(op, p, a, b, y);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_unary(UnaryOp op, std::int64_t n, float lo, float hi, const T* x, T* y,
                         cudaStream_t stream) noexcept {
  if (n == 0) return cudaSuccess;
  unary_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(op, n, lo, hi, x, y);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_channel_affine(std::int64_t n, std::int64_t c, std::int64_t inner,
                                  const float* scale, const float* shift, float lo, float hi,
                                  const T* x, T* y, cudaStream_t stream) noexcept {
  const std::int64_t total = n * c * inner;
  if (total == 0) return cudaSuccess;
  channel_affine_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(total, c, inner, scale,
                                                                       shift, lo, hi, x, y);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_pool2d(const Pool2dParams& p, const T* x, T* y, cudaStream_t stream) noexcept {
  const std::int64_t total = p.nc * p.oh * p.ow;
  if (total == 0) return cudaSuccess;
  pool2d_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(p, x, y);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_global_average_pool(std::int64_t nc, std::int64_t inner, const T* x, T* y,
                                       cudaStream_t stream) noexcept {
  if (nc == 0) return cudaSuccess;
  if (nc > 0x7fffffff) return cudaErrorInvalidValue;
  global_average_pool_kernel<T><<<static_cast<unsigned int>(nc), kThreads, 0, stream>>>(nc, inner,
                                                                                        x, y);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_resize_nearest(const ResizeParams& p, const T* x, T* y,
                                  cudaStream_t stream) noexcept {
  const std::int64_t total = p.out[0] * p.out[1] * p.out[2] * p.out[3];
  if (total == 0) return cudaSuccess;
  resize_nearest_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(p, x, y);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_transpose(const TransposeParams& p, const T* x, T* y,
                             cudaStream_t stream) noexcept {
  if (p.n == 0) return cudaSuccess;
  transpose_kernel<T><<<blocks_for(p.n), kThreads, 0, stream>>>(p, x, y);
  return cudaGetLastError();
}

cudaError_t launch_cast(std::int64_t n, const float* x, __half* y, cudaStream_t stream) noexcept {
  if (n == 0) return cudaSuccess;
  cast_kernel<float, __half><<<blocks_for(n), kThreads, 0, stream>>>(n, x, y);
  return cudaGetLastError();
}

cudaError_t launch_cast(std::int64_t n, const __half* x, float* y, cudaStream_t stream) noexcept {
  if (n == 0) return cudaSuccess;
  cast_kernel<__half, float><<<blocks_for(n), kThreads, 0, stream>>>(n, x, y);
  return cudaGetLastError();
}

#define INSTANTID_ONNX_INSTANTIATE(T)                                                          \
  template cudaError_t launch_binary<T>(BinaryOp, const BroadcastParams&, const T*, const T*,  \
                                        T*, cudaStream_t) noexcept;                            \
  template cudaError_t launch_unary<T>(UnaryOp, std::int64_t, float, float, const T*, T*,      \
                                       cudaStream_t) noexcept;                                 \
  template cudaError_t launch_channel_affine<T>(std::int64_t, std::int64_t, std::int64_t,      \
                                                const float*, const float*, float, float,      \
                                                const T*, T*, cudaStream_t) noexcept;          \
  template cudaError_t launch_pool2d<T>(const Pool2dParams&, const T*, T*,                     \
                                        cudaStream_t) noexcept;                                \
  template cudaError_t launch_global_average_pool<T>(std::int64_t, std::int64_t, const T*, T*, \
                                                     cudaStream_t) noexcept;                   \
  template cudaError_t launch_resize_nearest<T>(const ResizeParams&, const T*, T*,             \
                                                cudaStream_t) noexcept;                        \
  template cudaError_t launch_transpose<T>(const TransposeParams&, const T*, T*,               \
                                           cudaStream_t) noexcept;

INSTANTID_ONNX_INSTANTIATE(float)
INSTANTID_ONNX_INSTANTIATE(__half)

}  // namespace instantid::onnx::cuda
