#pragma once
// Test problems for the decoupled attention kernel: random inputs rounded to the kernel's dtype,
// an fp64 reference and a naive low-precision pipeline (what an unfused fp16/bf16 framework
// does: GEMM outputs, softmax probabilities and every intermediate tensor rounded to the dtype),
// both computed on the host from the same rounded inputs.

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "instantid/kernels/decoupled_attention.hpp"
#include "instantid/tensor.hpp"

namespace instantid::test {

struct IdentityCase {
  int tokens = 16;
  float scale = 1.0f;
  int mask_rows = 0;  // 0: no mask
};

struct AttentionCase {
  DType dtype = DType::kF16;
  int batch = 1, queries = 113, text_len = 77, heads = 2, head_dim = 64;
  int images_per_chunk = 1;
  std::uint64_t uncond_chunks = 0;
  bool include_text = true;
  int row_pad = 0;  // extra elements per row of q and out (strided views)
  std::vector<IdentityCase> identities;
  std::uint32_t seed = 1;
};

inline float round_to(DType dtype, float x) {
  return dtype == DType::kF16 ? half_to_float(float_to_half(x))
                              : bfloat16_to_float(float_to_bfloat16(x));
}
inline std::uint16_t bits_of(DType dtype, float x) {
  return dtype == DType::kF16 ? float_to_half(x) : float_to_bfloat16(x);
}
inline float from_bits(DType dtype, std::uint16_t b) {
  return dtype == DType::kF16 ? half_to_float(b) : bfloat16_to_float(b);
}

// Host data (values already rounded to dtype) plus device copies and the kernel params.
struct AttentionProblem {
  AttentionCase c;
  int width = 0;  // H * d
  std::int64_t q_stride = 0;
  std::vector<float> q, k, v, out_init;  // q/out: [B, N, q_stride]; k/v: [B, L, width]
  struct Ip {
    std::vector<float> k[2], v[2];  // [T, width]
    std::vector<float> mask;        // [M, N]
  };
  std::vector<Ip> ip;
  std::vector<cuda::DeviceBuffer> buffers;
  kernels::DecoupledAttentionParams params;
  void* out_device = nullptr;
  std::size_t out_elems = 0;

  explicit AttentionProblem(const AttentionCase& kase) : c(kase) {
    width = c.heads * c.head_dim;
    q_stride = width + c.row_pad;
    std::mt19937 rng(c.seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    auto fill = [&](std::vector<float>& x, std::size_t n, float sd) {
      x.resize(n);
      for (float& e : x) e = round_to(c.dtype, sd * normal(rng));
    };
    const std::size_t q_elems = static_cast<std::size_t>(c.batch) * c.queries * q_stride;
    fill(q, q_elems, 1.0f);
    fill(out_init, q_elems, 1.0f);
    fill(k, static_cast<std::size_t>(c.batch) * c.text_len * width, 1.0f);
    fill(v, static_cast<std::size_t>(c.batch) * c.text_len * width, 1.0f);
    for (const IdentityCase& ic : c.identities) {
      Ip x;
      for (int u = 0; u < 2; ++u) {
        fill(x.k[u], static_cast<std::size_t>(ic.tokens) * width, 1.0f);
        fill(x.v[u], static_cast<std::size_t>(ic.tokens) * width, 1.0f);
      }
      if (ic.mask_rows > 0) {
        // Soft values inside, exact zeros in a band at each end (the shape of a padded mask).
        x.mask.resize(static_cast<std::size_t>(ic.mask_rows) * c.queries);
        for (int m = 0; m < ic.mask_rows; ++m) {
          for (int n = 0; n < c.queries; ++n) {
            const bool pad = n < c.queries / 10 + m || n >= c.queries - c.queries / 10;
            x.mask[static_cast<std::size_t>(m) * c.queries + n] = pad ? 0.0f : uniform(rng);
          }
        }
      }
      ip.push_back(std::move(x));
    }
  }

  const void* upload(const std::vector<float>& x) {
    std::vector<std::uint16_t> bits(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) bits[i] = bits_of(c.dtype, x[i]);
    buffers.emplace_back(bits.size() * 2);
    cuda::check_cuda(cudaMemcpy(buffers.back().data(), bits.data(), bits.size() * 2,
                                cudaMemcpyHostToDevice),
                     "test upload");
    return buffers.back().data();
  }
  const float* upload_f32(const std::vector<float>& x) {
    buffers.emplace_back(x.size() * 4);
    cuda::check_cuda(cudaMemcpy(buffers.back().data(), x.data(), x.size() * 4, cudaMemcpyHostToDevice),
                     "test upload");
    return buffers.back().as<float>();
  }

  // Uploads everything; out starts as out_init everywhere, or as NaN (0xFFFF) when poison is set
  // (the row padding of out is always poisoned so that stray writes show).
  void prepare(bool poison) {
    buffers.reserve(64);
    kernels::DecoupledAttentionParams& p = params;
    p = kernels::DecoupledAttentionParams{};
    p.q = upload(q);
    p.q_batch_stride = static_cast<std::int64_t>(c.queries) * q_stride;
    p.q_row_stride = q_stride;
    p.k = upload(k);
    p.v = upload(v);
    p.k_batch_stride = p.v_batch_stride = static_cast<std::int64_t>(c.text_len) * width;
    p.k_row_stride = p.v_row_stride = width;
    std::vector<float> init = out_init;
    for (std::size_t i = 0; i < init.size(); ++i) {
      if (poison || static_cast<std::int64_t>(i % q_stride) >= width) init[i] = NAN;
    }
    out_elems = init.size();
    out_device = const_cast<void*>(upload(init));
    p.out = out_device;
    p.out_batch_stride = p.q_batch_stride;
    p.out_row_stride = q_stride;
    p.batch = c.batch;
    p.queries = c.queries;
    p.text_len = c.text_len;
    p.heads = c.heads;
    p.include_text = c.include_text;
    p.images_per_chunk = c.images_per_chunk;
    p.uncond_chunks = c.uncond_chunks;
    p.num_identities = static_cast<int>(c.identities.size());
    for (std::size_t i = 0; i < c.identities.size(); ++i) {
      kernels::IpIdentityParams& x = p.ip[i];
      for (int u = 0; u < 2; ++u) {
        x.k[u] = upload(ip[i].k[u]);
        x.v[u] = upload(ip[i].v[u]);
      }
      x.row_stride = width;
      x.tokens = c.identities[i].tokens;
      x.scale = c.identities[i].scale;
      x.mask_rows = c.identities[i].mask_rows;
      x.mask = x.mask_rows > 0 ? upload_f32(ip[i].mask) : nullptr;
    }
  }

  std::vector<std::uint16_t> download_bits() const {
    std::vector<std::uint16_t> bits(out_elems);
    cuda::check_cuda(cudaMemcpy(bits.data(), out_device, bits.size() * 2, cudaMemcpyDeviceToHost),
                     "test download");
    return bits;
  }

  int uncond_of(int b) const {
    return static_cast<int>((c.uncond_chunks >> (b / c.images_per_chunk)) & 1u);
  }

  // One attention row (head h) over keys [count, width] with an optional rounding function.
  template <typename Round>
  void attend(const float* qrow, const float* keys, const float* values, int count, int h,
              Round rnd, bool naive, double* o) const {
    const int d = c.head_dim;
    std::vector<double> s(static_cast<std::size_t>(count));
    double m = -INFINITY;
    for (int j = 0; j < count; ++j) {
      double acc = 0.0;
      if (naive) {
        float f = 0.0f;  // fp32-accumulated GEMM, output rounded, then scaled and rounded
        for (int e = 0; e < d; ++e) f += qrow[h * d + e] * keys[j * width + h * d + e];
        acc = rnd(rnd(f) * (1.0f / std::sqrt(static_cast<float>(d))));
      } else {
        for (int e = 0; e < d; ++e)
          acc += static_cast<double>(qrow[h * d + e]) * keys[j * width + h * d + e];
        acc /= std::sqrt(static_cast<double>(d));
      }
      s[j] = acc;
      m = std::max(m, acc);
    }
    double l = 0.0;
    for (int j = 0; j < count; ++j) {
      s[j] = naive ? static_cast<double>(std::exp(static_cast<float>(s[j] - m))) : std::exp(s[j] - m);
      l += s[j];
    }
    for (int e = 0; e < d; ++e) o[e] = 0.0;
    if (naive) {
      std::vector<float> of(static_cast<std::size_t>(d), 0.0f);
      for (int j = 0; j < count; ++j) {
        const float pj = rnd(static_cast<float>(s[j] / l));
        for (int e = 0; e < d; ++e) of[e] += pj * values[j * width + h * d + e];
      }
      for (int e = 0; e < d; ++e) o[e] = rnd(of[e]);
    } else {
      for (int j = 0; j < count; ++j) {
        for (int e = 0; e < d; ++e) o[e] += s[j] / l * values[j * width + h * d + e];
      }
    }
  }

  // The full expected output [B, N, width] (row stride width): fp64, or the naive pipeline.
  std::vector<double> expected(bool naive) const {
    const int d = c.head_dim;
    auto rnd = [&](float x) { return naive ? round_to(c.dtype, x) : x; };
    std::vector<double> out(static_cast<std::size_t>(c.batch) * c.queries * width);
    std::vector<double> o(static_cast<std::size_t>(d)), oi(static_cast<std::size_t>(d));
    for (int b = 0; b < c.batch; ++b) {
      const int u = uncond_of(b);
      for (int n = 0; n < c.queries; ++n) {
        const std::size_t qoff = (static_cast<std::size_t>(b) * c.queries + n) * q_stride;
        const float* qrow = &q[qoff];
        for (int h = 0; h < c.heads; ++h) {
          if (c.include_text) {
            const std::size_t koff = static_cast<std::size_t>(b) * c.text_len * width;
            attend(qrow, &k[koff], &v[koff], c.text_len, h, rnd, naive, o.data());
          } else {
            for (int e = 0; e < d; ++e) o[e] = out_init[qoff + h * d + e];
          }
          for (std::size_t i = 0; i < ip.size(); ++i) {
            const IdentityCase& ic = c.identities[i];
            attend(qrow, ip[i].k[u].data(), ip[i].v[u].data(), ic.tokens, h, rnd, naive, oi.data());
            double mval = 1.0;
            if (ic.mask_rows > 0) {
              const int mrow = std::min(b % c.images_per_chunk, ic.mask_rows - 1);
              mval = ip[i].mask[static_cast<std::size_t>(mrow) * c.queries + n];
            }
            for (int e = 0; e < d; ++e) {
              if (naive) {
                const float t = rnd(rnd(static_cast<float>(oi[e]) * ic.scale) * static_cast<float>(mval));
                o[e] = rnd(static_cast<float>(o[e]) + t);
              } else {
                o[e] += ic.scale * mval * oi[e];
              }
            }
          }
          for (int e = 0; e < d; ++e)
            out[(static_cast<std::size_t>(b) * c.queries + n) * width + h * d + e] = o[e];
        }
      }
    }
    return out;
  }
};

}  // namespace instantid::test
