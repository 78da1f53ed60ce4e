// The CUDA backend through the public AttentionPatch API against the CPU backend (the reference)
// on a reduced random model: GPU Resampler tokens, every embeds_scaling mode, stacked identities,
// a padded mask, add_image_attention, device_bytes(), a whole step captured in a CUDA graph, and
// the errors a CUDA patch raises.

#include <catch2/catch.hpp>

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attention_problem.hpp"
#include "instantid/model.hpp"
#include "instantid/patch.hpp"
#include "instantid/reference.hpp"

namespace {

using namespace instantid;
using test::round_to;

constexpr int kDOut = 128;

ModelLayout small_layout() { return ModelLayout::reduced(10, 64, 128, 2); }  // widths 64 / 128

const InstantIDModel& small_model() {
  static const InstantIDModel model = InstantIDModel::synthetic(small_layout(), kDOut, 42);
  return model;
}

HostTensor random_tensor(std::vector<std::int64_t> shape, std::uint32_t seed, DType round, float sd = 1.0f) {
  HostTensor t(std::move(shape));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, sd);
  for (float& x : t.values()) x = round_to(round, normal(rng));
  return t;
}

// Device copy of a host tensor in dtype.
struct DeviceTensor {
  cuda::DeviceBuffer buffer;
  TensorView view;
  DeviceTensor(const HostTensor& t, DType dtype) : buffer(static_cast<std::size_t>(t.numel()) * 2) {
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(t.numel()));
    for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = test::bits_of(dtype, t.data()[i]);
    cuda::check_cuda(cudaMemcpy(buffer.data(), bits.data(), buffer.bytes(), cudaMemcpyHostToDevice), "upload");
    view = TensorView::contiguous(buffer.data(), dtype, Device{DeviceType::kCuda, 0}, t.shape());
  }
  HostTensor download(const std::vector<std::int64_t>& shape) const {
    HostTensor t(shape);
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(t.numel()));
    cuda::check_cuda(cudaMemcpy(bits.data(), buffer.data(), buffer.bytes(), cudaMemcpyDeviceToHost), "download");
    for (std::size_t i = 0; i < bits.size(); ++i) t.data()[i] = test::from_bits(view.dtype, bits[i]);
    return t;
  }
};

double max_abs_diff(const HostTensor& a, const HostTensor& b) {
  REQUIRE(a.numel() == b.numel());
  double m = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) m = std::max(m, static_cast<double>(std::abs(a.data()[i] - b.data()[i])));
  return m;
}
double max_abs(const HostTensor& a) {
  double m = 0;
  for (float x : a.values()) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

struct CallShape {
  int layer;
  std::int64_t batch, tokens, text;
};

// Runs one attn2 call on both patches with the same (rounded) inputs; returns max |gpu - cpu|
// relative to max |cpu| (and checks it against tol).
void compare_call(AttentionPatch& cpu, AttentionPatch& gpu, const CallShape& s, DType dtype,
                  bool add_only, int oh, int ow, double tol, std::uint32_t seed) {
  const ModelLayout& layout = cpu.layout();
  const LayerInfo& info = layout.layers[static_cast<std::size_t>(s.layer)];
  const std::int64_t c = info.width;
  HostTensor q = random_tensor({s.batch, s.tokens, c}, seed, dtype);
  HostTensor k = random_tensor({s.batch, s.text, c}, seed + 1, dtype);
  HostTensor v = random_tensor({s.batch, s.text, c}, seed + 2, dtype);
  HostTensor out0 = random_tensor({s.batch, s.tokens, c}, seed + 3, dtype);
  const int cond_or_uncond[2] = {0, 1};
  const int chunks = s.batch >= 2 ? 2 : 1;

  HostTensor cpu_out = out0;
  AttentionCall call;
  call.q = q.view();
  call.k = k.view();
  call.v = v.view();
  call.out = cpu_out.view();
  call.layer = info.id;
  call.cond_or_uncond = cond_or_uncond;
  call.num_chunks = chunks;
  call.original_height = oh;
  call.original_width = ow;
  if (add_only) cpu.add_image_attention(call); else cpu.attention(call);

  DeviceTensor dq(q, dtype), dk(k, dtype), dv(v, dtype), dout(out0, dtype);
  AttentionCall gcall = call;
  gcall.q = dq.view;
  gcall.k = dk.view;
  gcall.v = dv.view;
  gcall.out = dout.view;
  if (add_only) gpu.add_image_attention(gcall); else gpu.attention(gcall);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const HostTensor gpu_out = dout.download(cpu_out.shape());
  const double err = max_abs_diff(gpu_out, cpu_out);
  std::printf("backend %-5s layer %-12s B%lld N%lld L%lld %s: max|gpu - cpu| %.3e (|cpu| <= %.2f)\n",
              dtype_name(dtype), layer_id_string(info.id).c_str(), static_cast<long long>(s.batch),
              static_cast<long long>(s.tokens), static_cast<long long>(s.text),
              add_only ? "add_image_attention" : "attention", err, max_abs(cpu_out));
  CHECK(err <= tol * std::max(1.0, max_abs(cpu_out)));
}

HostTensor face_embeds(std::uint32_t seed) { return random_tensor({1, 64}, seed, DType::kF16, 3.0f); }

}  // namespace

TEST_CASE("CUDA patch: GPU Resampler tokens match the CPU reference", "[cuda][backend]") {
  const InstantIDModel& model = small_model();
  PatchOptions options;
  options.noise = 0.35f;
  AttentionPatch cpu(model, face_embeds(1), options);
  AttentionPatch gpu(model, face_embeds(1), options, BackendOptions{Backend::kCuda, 0, DType::kF16});
  CHECK(gpu.backend() == Backend::kCuda);
  const ImageTokens& a = cpu.tokens(0);
  const ImageTokens& b = gpu.tokens(0);
  REQUIRE(a.cond.shape() == b.cond.shape());
  const double err_c = max_abs_diff(a.cond, b.cond), err_u = max_abs_diff(a.uncond, b.uncond);
  std::printf("backend resampler: cond max|gpu - cpu| %.3e, uncond %.3e (|cpu| <= %.2f)\n", err_c,
              err_u, max_abs(a.cond));
  CHECK(err_c < 1e-4 * std::max(1.0, max_abs(a.cond)));
  CHECK(err_u < 1e-4 * std::max(1.0, max_abs(a.uncond)));
  CHECK(max_abs_diff(a.uncond_input, b.uncond_input) == 0.0);
}

TEST_CASE("CUDA patch: attention matches the CPU backend in every embeds_scaling mode",
          "[cuda][backend]") {
  const InstantIDModel& model = small_model();
  for (EmbedsScaling scaling : {EmbedsScaling::kVOnly, EmbedsScaling::kKV, EmbedsScaling::kKVCPenalty,
                                EmbedsScaling::kKMeanVCPenalty}) {
    for (DType dtype : {DType::kF16, DType::kBF16}) {
      INFO(embeds_scaling_name(scaling) << " " << dtype_name(dtype));
      PatchOptions options;
      options.weight = 0.7f;
      options.embeds_scaling = scaling;
      AttentionPatch cpu(model, face_embeds(2), options);
      AttentionPatch gpu(model, face_embeds(2), options, BackendOptions{Backend::kCuda, 0, dtype});
      const double tol = dtype == DType::kF16 ? 4e-3 : 3e-2;
      compare_call(cpu, gpu, {0, 2, 1024, 77}, dtype, false, 0, 0, tol, 10);     // width 64
      compare_call(cpu, gpu, {20, 2, 113, 77}, dtype, false, 0, 0, tol, 20);    // width 128
      compare_call(cpu, gpu, {69, 1, 256, 154}, dtype, false, 0, 0, tol, 30);
      compare_call(cpu, gpu, {35, 4, 64, 77}, dtype, true, 0, 0, tol, 40);      // add-ip only
    }
  }
}

TEST_CASE("CUDA patch: stacked identities with masks (pad case) and prepare_resolution",
          "[cuda][backend]") {
  const InstantIDModel& model = small_model();
  PatchOptions first;
  first.weight = 0.9f;
  first.mask = HostTensor({2, 40, 40});
  for (std::int64_t i = 0; i < first.mask->numel(); ++i) first.mask->data()[i] = (i % 40) < 20 ? 1.0f : 0.25f;
  PatchOptions second;
  second.weight = 0.6f;
  second.embeds_scaling = EmbedsScaling::kKVCPenalty;
  second.mask = HostTensor({1, 40, 40}, 0.5f);
  AttentionPatch cpu(model, face_embeds(3), first);
  AttentionPatch gpu(model, face_embeds(3), first, BackendOptions{Backend::kCuda, 0, DType::kF16});
  cpu.stack(model, face_embeds(4), second);
  gpu.stack(model, face_embeds(4), second);
  REQUIRE(gpu.num_identities() == 2);

  // Per identity: 70 layers × (K_c, V_c, K_u, V_u) × 16 tokens × C × 2 bytes.
  std::size_t table = 0;
  for (const LayerInfo& l : model.layout().layers) table += 4u * 16u * static_cast<std::size_t>(l.width) * 2u;
  CHECK(gpu.device_bytes() == 2 * table);
  gpu.prepare_resolution(20, 20);  // latent 20x20: N = 100 (width 64) and 25 (width 128)
  const std::size_t masks = (2 * 100 + 2 * 25 + 1 * 100 + 1 * 25) * sizeof(float);
  CHECK(gpu.device_bytes() == 2 * table + masks);

  // N = 113 at latent 20x20: mask_h 11, mask_w 10 → 110 tokens, zero-padded by 1 before and 2 after.
  const HostTensor m = ref::layer_mask(*first.mask, 20, 20, 113);
  CHECK(m.data()[0] == 0.0f);
  CHECK(m.data()[112] == 0.0f);
  CHECK(m.data()[111] == 0.0f);
  compare_call(cpu, gpu, {0, 4, 113, 77}, DType::kF16, false, 20, 20, 4e-3, 50);
  compare_call(cpu, gpu, {0, 2, 100, 77}, DType::kF16, false, 20, 20, 4e-3, 60);
  compare_call(cpu, gpu, {30, 2, 25, 77}, DType::kF16, true, 20, 20, 4e-3, 70);
}

TEST_CASE("CUDA patch: a 70-layer step captured in a CUDA graph replays bit-identically",
          "[cuda][backend][graph]") {
  const InstantIDModel& model = small_model();
  PatchOptions options;
  options.weight = 0.8f;
  options.mask = HostTensor({1, 32, 32}, 0.75f);
  AttentionPatch gpu(model, face_embeds(5), options, BackendOptions{Backend::kCuda, 0, DType::kF16});
  gpu.prepare_resolution(16, 16);  // N = 64 (width 64), 16 (width 128)
  const std::size_t bytes_before = gpu.device_bytes();
  const ModelLayout& layout = gpu.layout();
  const int cond_or_uncond[2] = {0, 1};
  struct Layer {
    std::unique_ptr<DeviceTensor> q, k, v, out;
    AttentionCall call;
  };
  std::vector<Layer> layers;
  for (int i = 0; i < layout.num_layers(); ++i) {
    const LayerInfo& info = layout.layers[static_cast<std::size_t>(i)];
    const std::int64_t n = info.width == 64 ? 64 : 16;
    Layer l;
    l.q = std::make_unique<DeviceTensor>(random_tensor({2, n, info.width}, 100 + i, DType::kF16), DType::kF16);
    l.k = std::make_unique<DeviceTensor>(random_tensor({2, 77, info.width}, 200 + i, DType::kF16), DType::kF16);
    l.v = std::make_unique<DeviceTensor>(random_tensor({2, 77, info.width}, 300 + i, DType::kF16), DType::kF16);
    l.out = std::make_unique<DeviceTensor>(HostTensor({2, n, info.width}), DType::kF16);
    l.call.q = l.q->view;
    l.call.k = l.k->view;
    l.call.v = l.v->view;
    l.call.out = l.out->view;
    l.call.layer = info.id;
    l.call.cond_or_uncond = cond_or_uncond;
    l.call.num_chunks = 2;
    l.call.original_height = 16;
    l.call.original_width = 16;
    layers.push_back(std::move(l));
  }
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  for (Layer& l : layers) {
    l.call.stream = stream;
    gpu.attention(l.call);
  }
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  std::vector<HostTensor> eager;
  for (Layer& l : layers) eager.push_back(l.out->download(l.call.out.shape_vector()));

  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  gpu.begin_step();
  for (Layer& l : layers) gpu.attention(l.call);
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  CHECK(gpu.unreached_layers().empty());
  std::size_t nodes = 0;
  REQUIRE(cudaGraphGetNodes(graph, nullptr, &nodes) == cudaSuccess);
  CHECK(nodes == 70);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (Layer& l : layers) REQUIRE(cudaMemset(l.out->buffer.data(), 0xFF, l.out->buffer.bytes()) == cudaSuccess);
  REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  std::size_t differing = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const HostTensor now = layers[i].out->download(layers[i].call.out.shape_vector());
    for (std::int64_t e = 0; e < now.numel(); ++e) {
      differing += std::memcmp(&now.data()[e], &eager[i].data()[e], 4) != 0 ? 1 : 0;
    }
  }
  CHECK(differing == 0);
  CHECK(gpu.device_bytes() == bytes_before);  // nothing was allocated by the calls
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_CASE("CUDA patch: errors name the value and what is supported", "[cuda][backend]") {
  const InstantIDModel& model = small_model();
  REQUIRE_THROWS_WITH(AttentionPatch(model, face_embeds(6), PatchOptions{},
                                     BackendOptions{Backend::kCuda, 0, DType::kF32}),
                      Catch::Contains("f32") && Catch::Contains("f16, bf16"));
  REQUIRE_THROWS_WITH(AttentionPatch(model, face_embeds(6), PatchOptions{},
                                     BackendOptions{Backend::kCuda, 999, DType::kF16}),
                      Catch::Contains("999"));
  AttentionPatch gpu(model, face_embeds(6), PatchOptions{}, BackendOptions{Backend::kCuda, 0, DType::kF16});
  const HostTensor q = random_tensor({1, 64, 64}, 1, DType::kBF16);
  DeviceTensor dq(q, DType::kBF16), dout(q, DType::kBF16);
  AttentionCall call;
  call.q = dq.view;
  call.k = dq.view;
  call.v = dq.view;
  call.out = dout.view;
  call.layer = gpu.layout().layers[0].id;
  REQUIRE_THROWS_WITH(gpu.attention(call), Catch::Contains("q dtype") && Catch::Contains("bf16") &&
                                               Catch::Contains("f16"));
  // Row strides that are not multiples of 8 elements are refused before anything is enqueued.
  const HostTensor wide = random_tensor({1, 64, 68}, 2, DType::kF16);
  DeviceTensor dw(wide, DType::kF16), dw_out(wide, DType::kF16);
  AttentionCall strided;
  strided.q = dw.view;
  strided.q.shape[2] = 64;
  strided.q.strides = {64 * 68, 68, 1};
  strided.k = strided.q;
  strided.v = strided.q;
  strided.out = dw_out.view;
  strided.out.shape[2] = 64;
  strided.out.strides = {64 * 68, 68, 1};
  strided.layer = gpu.layout().layers[0].id;
  REQUIRE_THROWS_WITH(gpu.attention(strided), Catch::Contains("multiples of 8"));
}
