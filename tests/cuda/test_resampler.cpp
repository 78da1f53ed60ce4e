// The GPU Resampler against an fp64 host implementation of spec §3 (random weights, reduced and
// full SDXL sizes), through the skinny GEMM and through cuBLAS, and its replay from a CUDA graph.

#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cuda/resampler.hpp"
#include "instantid/model.hpp"

namespace {

using instantid::HostTensor;
using instantid::ModelLayout;
using Weights = std::map<std::string, HostTensor>;

// The Resampler's tensors of InstantIDModel::synthetic, named as GpuResampler asks for them
// (without "image_proj."); a layout without layers has no ip_adapter.* projections.
Weights random_weights(const ModelLayout& layout, int d_out, std::uint64_t seed) {
  ModelLayout resampler_only = layout;
  resampler_only.layers.clear();
  const std::string prefix = "image_proj.";
  Weights w;
  for (auto& [name, t] : instantid::InstantIDModel::synthetic_tensors(resampler_only, d_out, seed))
    w.emplace(name.substr(prefix.size()), std::move(t));
  return w;
}

// Spec §3 on the host in T: fp64 for the reference, fp32 for the naive implementation the
// tolerance is stated against (one sequential dot product per output, as the skinny GEMM's test).
template <typename T>
using Mat = std::vector<T>;  // row-major

// y [rows, out] = x [rows, in] · wᵀ
template <typename T>
Mat<T> linear(const Mat<T>& x, int rows, int in, const HostTensor& w, const HostTensor* bias) {
  const int out = static_cast<int>(w.size(0));
  Mat<T> y(static_cast<std::size_t>(rows) * out);
  for (int r = 0; r < rows; ++r) {
    for (int o = 0; o < out; ++o) {
      T acc = bias ? static_cast<T>(bias->data()[o]) : T(0);
      const float* wr = w.data() + static_cast<std::size_t>(o) * in;
      const T* xr = x.data() + static_cast<std::size_t>(r) * in;
      for (int i = 0; i < in; ++i) acc += xr[i] * wr[i];
      y[static_cast<std::size_t>(r) * out + o] = acc;
    }
  }
  return y;
}

template <typename T>
Mat<T> layer_norm(const Mat<T>& x, int rows, int cols, const HostTensor& w, const HostTensor& b) {
  Mat<T> y(x.size());
  for (int r = 0; r < rows; ++r) {
    const T* xr = x.data() + static_cast<std::size_t>(r) * cols;
    T mean = 0, var = 0;
    for (int c = 0; c < cols; ++c) mean += xr[c];
    mean /= cols;
    for (int c = 0; c < cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= cols;
    for (int c = 0; c < cols; ++c)
      y[static_cast<std::size_t>(r) * cols + c] =
          (xr[c] - mean) / std::sqrt(var + T(1e-5)) * w.data()[c] + b.data()[c];
  }
  return y;
}

// x [B, T, E] → [B, 16, D_out].
template <typename T>
Mat<T> resampler_host(const ModelLayout& L, const Weights& w, const std::vector<float>& x_in,
                      int batch, int tokens) {
  auto W = [&](const std::string& n) -> const HostTensor& { return w.at(n); };
  const int dim = L.dim, inner = L.heads * L.dim_head, nq = L.num_queries, keys = tokens + nq;
  Mat<T> x(x_in.begin(), x_in.end());
  Mat<T> xp = linear(x, batch * tokens, L.embed_dim, W("proj_in.weight"), &W("proj_in.bias"));
  Mat<T> lat(static_cast<std::size_t>(batch) * nq * dim);
  for (std::size_t i = 0; i < lat.size(); ++i)
    lat[i] = W("latents").data()[i % (static_cast<std::size_t>(nq) * dim)];
  for (int i = 0; i < L.depth; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    Mat<T> xn = layer_norm(xp, batch * tokens, dim, W(p + "0.norm1.weight"), W(p + "0.norm1.bias"));
    Mat<T> ln = layer_norm(lat, batch * nq, dim, W(p + "0.norm2.weight"), W(p + "0.norm2.bias"));
    Mat<T> q = linear(ln, batch * nq, dim, W(p + "0.to_q.weight"), nullptr);
    Mat<T> kv_in(static_cast<std::size_t>(batch) * keys * dim);
    for (int b = 0; b < batch; ++b) {
      for (int t = 0; t < keys; ++t) {
        const T* src = t < tokens ? &xn[(static_cast<std::size_t>(b) * tokens + t) * dim]
                                  : &ln[(static_cast<std::size_t>(b) * nq + t - tokens) * dim];
        std::copy(src, src + dim, &kv_in[(static_cast<std::size_t>(b) * keys + t) * dim]);
      }
    }
    Mat<T> kv = linear(kv_in, batch * keys, dim, W(p + "0.to_kv.weight"), nullptr);
    Mat<T> attn(static_cast<std::size_t>(batch) * nq * inner);
    for (int b = 0; b < batch; ++b) {
      for (int h = 0; h < L.heads; ++h) {
        for (int qi = 0; qi < nq; ++qi) {
          std::vector<T> s(static_cast<std::size_t>(keys));
          T m = -INFINITY, l = 0;
          for (int j = 0; j < keys; ++j) {
            T acc = 0;
            for (int e = 0; e < L.dim_head; ++e)
              acc += q[(static_cast<std::size_t>(b) * nq + qi) * inner + h * L.dim_head + e] *
                     kv[(static_cast<std::size_t>(b) * keys + j) * 2 * inner + h * L.dim_head + e];
            s[j] = acc / std::sqrt(static_cast<T>(L.dim_head));
            m = std::max(m, s[j]);
          }
          for (T& e : s) l += (e = std::exp(e - m));
          for (int e = 0; e < L.dim_head; ++e) {
            T acc = 0;
            for (int j = 0; j < keys; ++j)
              acc += s[j] / l *
                     kv[(static_cast<std::size_t>(b) * keys + j) * 2 * inner + inner +
                        h * L.dim_head + e];
            attn[(static_cast<std::size_t>(b) * nq + qi) * inner + h * L.dim_head + e] = acc;
          }
        }
      }
    }
    Mat<T> o = linear(attn, batch * nq, inner, W(p + "0.to_out.weight"), nullptr);
    for (std::size_t e = 0; e < lat.size(); ++e) lat[e] += o[e];
    Mat<T> f = linear(layer_norm(lat, batch * nq, dim, W(p + "1.0.weight"), W(p + "1.0.bias")),
                      batch * nq, dim, W(p + "1.1.weight"), nullptr);
    for (T& e : f) e = T(0.5) * e * (T(1) + std::erf(e / std::sqrt(T(2))));
    Mat<T> g = linear(f, batch * nq, dim * L.ff_mult, W(p + "1.3.weight"), nullptr);
    for (std::size_t e = 0; e < lat.size(); ++e) lat[e] += g[e];
  }
  const int d_out = static_cast<int>(W("proj_out.weight").size(0));
  Mat<T> y = linear(lat, batch * nq, dim, W("proj_out.weight"), &W("proj_out.bias"));
  return layer_norm(y, batch * nq, d_out, W("norm_out.weight"), W("norm_out.bias"));
}

// The fp64 and naive fp32 host Resamplers of one problem. check_resampler derives the weights and
// inputs from the sizes alone (fixed seeds) and checks the SDXL problem under several GEMM
// settings, so each problem's references are computed once.
struct HostReferences {
  Mat<double> exact;
  Mat<float> naive;
};
const HostReferences& host_references(const ModelLayout& L, const Weights& w,
                                      const std::vector<float>& x, int d_out, int batch,
                                      int tokens) {
  static std::map<std::vector<int>, HostReferences> cache;
  const std::vector<int> key = {L.embed_dim,   L.dim,     L.depth, L.heads, L.dim_head,
                                L.num_queries, L.ff_mult, d_out,   batch,   tokens};
  auto it = cache.find(key);
  if (it == cache.end()) {
    it = cache
             .emplace(key, HostReferences{resampler_host<double>(L, w, x, batch, tokens),
                                          resampler_host<float>(L, w, x, batch, tokens)})
             .first;
  }
  return it->second;
}

void check_resampler(
    const ModelLayout& layout, int d_out, int batch, int tokens,
    instantid::cuda::GemmPath path = instantid::cuda::GemmPath::kAuto, bool programmatic = true,
    instantid::cuda::SkinnyGemmMath math = instantid::cuda::GpuResamplerOptions{}.gemm.math,
    bool cluster_reduce = true, bool fold_layer_norms = true, bool first_layer_constants = true) {
  const bool cublas = path == instantid::cuda::GemmPath::kCublas;
  INFO("dim " << layout.dim << " D_out " << d_out << " batch " << batch << " tokens " << tokens
              << (cublas ? " cuBLAS" : " skinny GEMM"));
  const Weights w = random_weights(layout, d_out, 7);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(batch) * tokens * layout.embed_dim);
  for (float& e : x) e = 3.0f * normal(rng);
  instantid::cuda::GpuResampler gpu(
      layout, d_out, [&](const std::string& s) -> const HostTensor& { return w.at(s); }, batch,
      tokens,
      [&] {
        instantid::cuda::GpuResamplerOptions o;
        o.gemm.path = path;
        o.programmatic = programmatic;
        o.gemm.math = math;
        o.gemm.cluster_reduce = cluster_reduce;
        o.fold_layer_norms = fold_layer_norms;
        o.first_layer_constants = first_layer_constants;
        return o;
      }());
  CHECK(gpu.gemm_path() == path);
  // The FF LayerNorms fold where the GEMMs sum in clusters and the 16 latents per input fit.
  CHECK(gpu.folds_layer_norms() ==
        (fold_layer_norms && gpu.cluster_reduce() && batch * layout.num_queries <= 64));
  // Layer 0's latent terms are precomputed where its inputs' rows take the folded norm1.
  CHECK(gpu.first_layer_constants() ==
        (first_layer_constants && gpu.cluster_reduce() && batch * tokens <= 64));
  INFO("programmatic launches " << gpu.programmatic_launch());
  const std::size_t out_elems = static_cast<std::size_t>(batch) * layout.num_queries * d_out;
  instantid::cuda::DeviceBuffer xd(x.size() * 4), yd(out_elems * 4);
  REQUIRE(cudaMemcpy(xd.data(), x.data(), x.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  gpu.run(xd.as<float>(), batch, tokens, yd.as<float>(), stream);
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  std::vector<float> y(out_elems);
  REQUIRE(cudaMemcpy(y.data(), yd.data(), out_elems * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  const HostReferences& refs = host_references(layout, w, x, d_out, batch, tokens);
  const Mat<double>& ref = refs.exact;
  const Mat<float>& naive = refs.naive;
  double err = 0, naive_err = 0, ref_max = 0;
  for (std::size_t i = 0; i < out_elems; ++i) {
    err = std::max(err, std::abs(y[i] - ref[i]));
    naive_err = std::max(naive_err, std::abs(naive[i] - ref[i]));
    ref_max = std::max(ref_max, std::abs(ref[i]));
  }
  std::printf(
      "resampler %s%s%s%s dim %d D_out %d batch %d tokens %d: max|err| vs fp64 %.3e, naive fp32 "
      "%.3e (|ref| <= %.2f)\n",
      cublas                                             ? "cuBLAS"
      : math == instantid::cuda::SkinnyGemmMath::kTf32x3 ? "skinny 3xTF32"
                                                         : "skinny",
      gpu.programmatic_launch() ? " PDL" : "", gpu.folds_layer_norms() ? " folded-LN" : "",
      gpu.first_layer_constants() ? " layer-0-constants" : "", layout.dim, d_out, batch, tokens,
      err, naive_err, ref_max);
  CHECK(ref_max > 0.5);
  CHECK(err < 2e-4 * std::max(1.0, ref_max));
  CHECK(naive_err > 0.0);
  CHECK(err <= 2.0 * naive_err);  // the flash-attention rule, as for every GPU kernel

  // Capture run() in a graph and replay: bit-identical to the eager result.
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  gpu.run(xd.as<float>(), batch, tokens, yd.as<float>(), stream);
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  REQUIRE(cudaMemset(yd.data(), 0xFF, out_elems * 4) == cudaSuccess);
  REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  std::vector<float> y2(out_elems);
  REQUIRE(cudaMemcpy(y2.data(), yd.data(), out_elems * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  std::size_t differing = 0;
  for (std::size_t i = 0; i < out_elems; ++i)
    differing += std::memcmp(&y[i], &y2[i], 4) != 0 ? 1 : 0;
  CHECK(differing == 0);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace

TEST_CASE("GPU Resampler matches fp64 (reduced sizes, cond+uncond and concat batches)",
          "[cuda][resampler]") {
  const ModelLayout layout = ModelLayout::reduced(10, 64, 128, 2);
  check_resampler(layout, 96, 2, 1);
  check_resampler(layout, 96, 6, 1);  // concat of 3 images: 3 cond + 3 uncond rows
  check_resampler(layout, 64, 2, 3);
}

TEST_CASE("GPU Resampler matches fp64 at SDXL sizes (random weights)", "[cuda][resampler]") {
  check_resampler(ModelLayout::sdxl(), 2048, 2, 1);
  check_resampler(ModelLayout::sdxl(), 2048, 2, 1, instantid::cuda::GemmPath::kCublas);
  // Plain launches instead of programmatic dependent ones.
  check_resampler(ModelLayout::sdxl(), 2048, 2, 1, instantid::cuda::GemmPath::kAuto, false);
  // The skinny GEMM's fp32 FMA multiply (the default is 3xTF32).
  check_resampler(ModelLayout::sdxl(), 2048, 2, 1, instantid::cuda::GemmPath::kAuto, true,
                  instantid::cuda::SkinnyGemmMath::kFp32Fma);
  // Split-K partials summed through the global workspace instead of within clusters (the only
  // way below sm_90).
  check_resampler(ModelLayout::sdxl(), 2048, 2, 1, instantid::cuda::GemmPath::kAuto, true,
                  instantid::cuda::SkinnyGemmMath::kTf32x3, false);
  // The FF LayerNorms as kernels of their own (folded into the FF-in GEMMs by default on sm_90+);
  // layer 0's latent terms computed per run (precomputed by default on sm_90+).
  check_resampler(ModelLayout::sdxl(), 2048, 2, 1, instantid::cuda::GemmPath::kAuto, true,
                  instantid::cuda::SkinnyGemmMath::kTf32x3, true, false);
  check_resampler(ModelLayout::sdxl(), 2048, 2, 1, instantid::cuda::GemmPath::kAuto, true,
                  instantid::cuda::SkinnyGemmMath::kTf32x3, true, true, false);
}

TEST_CASE("GPU Resampler: more tokens, one input and widths off the 64 × 32 tile grid",
          "[cuda][resampler]") {
  // 2 inputs of 4 tokens and 1 input of 24: 40 rows of to_kv input either way.
  check_resampler(ModelLayout::reduced(10, 64, 128, 2), 96, 2, 4);
  check_resampler(ModelLayout::reduced(10, 64, 128, 2), 96, 1, 24);
  // Widths that leave partial 64-column and 32-k tiles: embed 36, dim 192, D_out 100.
  check_resampler(ModelLayout::reduced(10, 36, 192, 3), 100, 2, 1);
  check_resampler(ModelLayout::reduced(10, 36, 192, 3), 100, 2, 1, instantid::cuda::GemmPath::kAuto,
                  true, instantid::cuda::SkinnyGemmMath::kFp32Fma);
  // One input (batch 1): linear layers of 16 and 17 rows.
  check_resampler(ModelLayout::sdxl(), 2048, 1, 1);
}

TEST_CASE("GPU Resampler: batches past the skinny GEMM's 64 rows use cuBLAS", "[cuda][resampler]") {
  // 5 inputs of 3 tokens: kv rows 5 · 19 = 95 > 64 go to cuBLAS, the 80 latent rows as well.
  check_resampler(ModelLayout::reduced(10, 64, 128, 2), 96, 5, 3);
}

TEST_CASE("GPU Resampler refuses bad shapes", "[cuda][resampler]") {
  const ModelLayout layout = ModelLayout::reduced(10, 64, 128, 2);
  Weights w = random_weights(layout, 96, 3);
  w["layers.1.0.to_q.weight"] = HostTensor({128, 127});
  REQUIRE_THROWS_WITH(
      instantid::cuda::GpuResampler(
          layout, 96, [&](const std::string& s) -> const HostTensor& { return w.at(s); }, 2, 1),
      Catch::Contains("image_proj.layers.1.0.to_q.weight") && Catch::Contains("[128, 127]") &&
          Catch::Contains("[128, 128]"));
}
