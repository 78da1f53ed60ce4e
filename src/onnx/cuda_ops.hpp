#pragma once
// Launchers of the executor's small CUDA kernels (elementwise, pooling, resize, transpose, casts).
// T is float or __half; math is float. All launchers are noexcept, return the launch status and
// take the stream last; none allocates or synchronises (graph-capture safe).

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace instantid::onnx::cuda {

constexpr int kMaxDims = 6;

// Output index → input offsets for numpy broadcasting (stride 0 on broadcast dims).
struct BroadcastParams {
  int rank = 0;
  std::int64_t n = 0;
  std::int64_t out_shape[kMaxDims] = {};
  std::int64_t a_stride[kMaxDims] = {};
  std::int64_t b_stride[kMaxDims] = {};
};

enum class BinaryOp : int { kAdd, kSub, kMul, kDiv, kPRelu, kCopyB };

// y[i] = op(a[bcast(i)], b[bcast(i)]); y [n] contiguous.
template <typename T>
cudaError_t launch_binary(BinaryOp op, const BroadcastParams& p, const T* a, const T* b, T* y,
                          cudaStream_t stream) noexcept;

enum class UnaryOp : int { kClamp, kSigmoid };

// y = clamp(x, lo, hi) (Relu: lo 0, hi inf) or sigmoid(x); x, y [n]; in place allowed.
template <typename T>
cudaError_t launch_unary(UnaryOp op, std::int64_t n, float lo, float hi, const T* x, T* y,
                         cudaStream_t stream) noexcept;

// y[n, c, k] = clamp(x[n, c, k] * scale[c] + shift[c], lo, hi); x, y [N, C, inner]; scale may be
// null (= 1), shift may be null (= 0); in place allowed. BatchNorm, conv bias + Relu/Clip.
template <typename T>
cudaError_t launch_channel_affine(std::int64_t n, std::int64_t c, std::int64_t inner,
                                  const float* scale, const float* shift, float lo, float hi,
                                  const T* x, T* y, cudaStream_t stream) noexcept;

struct Pool2dParams {
  std::int64_t nc, h, w, oh, ow;
  std::int64_t kh, kw, sh, sw, dh, dw, pad_top, pad_left, pad_bottom, pad_right;
  bool is_max;
  bool count_include_pad;
};

// x [NC, H, W] → y [NC, OH, OW]
template <typename T>
cudaError_t launch_pool2d(const Pool2dParams& p, const T* x, T* y, cudaStream_t stream) noexcept;

// x [NC, inner] → y [NC]
template <typename T>
cudaError_t launch_global_average_pool(std::int64_t nc, std::int64_t inner, const T* x, T* y,
                                       cudaStream_t stream) noexcept;

// Nearest, asymmetric, floor: in index = min(floor(out / scale), in - 1) per dim (rank <= 4,
// right-aligned into 4 dims). x [in0..in3] → y [out0..out3]
struct ResizeParams {
  std::int64_t in[4];
  std::int64_t out[4];
  float scale[4];
};
template <typename T>
cudaError_t launch_resize_nearest(const ResizeParams& p, const T* x, T* y,
                                  cudaStream_t stream) noexcept;

// y[out index] = x[sum idx_d * in_stride[d]]; y contiguous with out_shape.
struct TransposeParams {
  int rank = 0;
  std::int64_t n = 0;
  std::int64_t out_shape[kMaxDims] = {};
  std::int64_t in_stride[kMaxDims] = {};  // input stride of each output dim
};
template <typename T>
cudaError_t launch_transpose(const TransposeParams& p, const T* x, T* y,
                             cudaStream_t stream) noexcept;

cudaError_t launch_cast(std::int64_t n, const float* x, __half* y, cudaStream_t stream) noexcept;
cudaError_t launch_cast(std::int64_t n, const __half* x, float* y, cudaStream_t stream) noexcept;

}  // namespace instantid::onnx::cuda
