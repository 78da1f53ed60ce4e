// The fused decoupled attention kernel against an fp64 reference, with the flash-attention
// tolerance rule: its max error may be at most twice that of a naive unfused pipeline in the same
// low precision (attention_problem.hpp). Plus poisoned outputs, strided views, the "add ip only"
// mode, argument checks and a 70-layer step under CUDA-graph capture.

#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <vector>

#include "attention_problem.hpp"

namespace {

using instantid::DType;
using instantid::test::AttentionCase;
using instantid::test::AttentionProblem;
using instantid::test::IdentityCase;
namespace kernels = instantid::kernels;

kernels::AttentionDType kdtype(DType d) {
  return d == DType::kF16 ? kernels::AttentionDType::kF16 : kernels::AttentionDType::kBF16;
}

std::string describe(const AttentionCase& c) {
  std::ostringstream s;
  s << instantid::dtype_name(c.dtype) << " d" << c.head_dim << " B" << c.batch << " N" << c.queries
    << " L" << c.text_len << " H" << c.heads << " P" << c.images_per_chunk << " ids "
    << c.identities.size() << (c.include_text ? "" : " add-ip-only") << " pad " << c.row_pad;
  for (const IdentityCase& i : c.identities)
    s << " [T" << i.tokens << " s" << i.scale << " M" << i.mask_rows << "]";
  return s.str();
}

// Runs one case; checks tolerance vs fp64, that every written value is finite and that the row
// padding of out still holds its poison.
// variant / max_ctas: which kernel variant runs (kAuto: the launcher's choice) and the persistent
// grid cap.
void check_case(const AttentionCase& c, bool poison = true,
                kernels::AttentionVariant variant = kernels::AttentionVariant::kAuto,
                int max_ctas = 0) {
  INFO(describe(c) << " variant " << static_cast<int>(variant) << " max_ctas " << max_ctas);
  AttentionProblem p(c);
  p.prepare(poison && c.include_text);
  REQUIRE(kernels::decoupled_attention_variant(kdtype(c.dtype), c.head_dim, variant, p.params,
                                               max_ctas, nullptr) == cudaSuccess);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const std::vector<std::uint16_t> bits = p.download_bits();
  const std::vector<double> ref = p.expected(false);
  const std::vector<double> naive = p.expected(true);
  double err = 0.0, naive_err = 0.0, ref_max = 0.0;
  std::size_t non_finite = 0, pad_touched = 0;
  for (int b = 0; b < c.batch; ++b) {
    for (int n = 0; n < c.queries; ++n) {
      for (std::int64_t e = 0; e < p.q_stride; ++e) {
        const std::size_t i = (static_cast<std::size_t>(b) * c.queries + n) * p.q_stride + e;
        const float got = instantid::test::from_bits(c.dtype, bits[i]);
        if (e >= p.width) {
          pad_touched += std::isnan(got) ? 0 : 1;
          continue;
        }
        const std::size_t r = (static_cast<std::size_t>(b) * c.queries + n) * p.width + e;
        if (!std::isfinite(got)) {
          ++non_finite;
          continue;
        }
        err = std::max(err, std::abs(got - ref[r]));
        naive_err = std::max(naive_err, std::abs(naive[r] - ref[r]));
        ref_max = std::max(ref_max, std::abs(ref[r]));
      }
    }
  }
  std::printf("attention %-70s v%d/%d max|err| %.3e naive %.3e ratio %.2f (|ref| <= %.2f)\n",
              describe(c).c_str(), static_cast<int>(variant), max_ctas, err, naive_err,
              naive_err > 0 ? err / naive_err : 0.0, ref_max);
  CHECK(non_finite == 0);
  CHECK(pad_touched == 0);
  CHECK(naive_err > 0.0);
  CHECK(err <= 2.0 * naive_err);
}

}  // namespace

TEST_CASE("decoupled attention: shapes of the brief, f16 and bf16", "[cuda][attention]") {
  const int queries[] = {4096, 1024, 1000, 113};
  const int text[] = {77, 154};
  const int batches[] = {1, 2, 4};
  int seed = 0;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int n : queries) {
      for (int l : text) {
        for (int b : batches) {
          // Keep host fp64 time bounded: the largest N only with the smaller batch.
          if (n == 4096 && b == 4) continue;
          AttentionCase c;
          c.dtype = dtype;
          c.batch = b;
          c.queries = n;
          c.text_len = l;
          c.heads = n >= 4096 ? 1 : 2;
          c.images_per_chunk = b >= 2 ? b / 2 : 1;
          c.uncond_chunks = b >= 2 ? 0b10 : 0;  // cond then uncond, as ComfyUI batches
          c.identities = {IdentityCase{16, 0.8f, 0}};
          if ((seed % 2) == 1) c.identities.push_back(IdentityCase{32, 0.5f, b >= 2 ? 2 : 1});
          c.seed = static_cast<std::uint32_t>(++seed);
          check_case(c);
        }
      }
    }
  }
}

TEST_CASE("decoupled attention: head dim 128, odd text lengths, many tokens", "[cuda][attention]") {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int head_dim : {64, 128}) {
      for (int l : {1, 13, 77, 231, 300}) {
        AttentionCase c;
        c.dtype = dtype;
        c.head_dim = head_dim;
        c.batch = 2;
        c.queries = 203;
        c.text_len = l;
        c.heads = 2;
        c.images_per_chunk = 1;
        c.uncond_chunks = 0b01;  // uncond first
        c.identities = {IdentityCase{16, 1.0f, 1}, IdentityCase{48, 0.7f, 0},
                        IdentityCase{16, -0.3f, 2}, IdentityCase{80, 1.2f, 0}};
        c.seed = static_cast<std::uint32_t>(l * 7 + head_dim);
        check_case(c);
      }
    }
  }
}

TEST_CASE("decoupled attention: text only, add-ip-only, strided rows", "[cuda][attention]") {
  AttentionCase c;
  c.batch = 2;
  c.queries = 1000;
  c.heads = 3;
  c.images_per_chunk = 1;
  c.uncond_chunks = 0b10;
  check_case(c);  // no identity: plain attention

  c.identities = {IdentityCase{16, 0.9f, 1}, IdentityCase{16, 0.4f, 0}};
  c.include_text = false;  // out += ip terms
  check_case(c);

  c.include_text = true;
  c.row_pad = 24;  // q and out rows 24 elements wider than H·d
  check_case(c);
  c.dtype = DType::kBF16;
  c.head_dim = 128;
  check_case(c);
}

// The persistent variant needs up to ~190 KB of shared memory per CTA in these cases (sm_80 and
// sm_90 allow 227 KB; sm_86 / sm_89 99 KB, where the launcher uses the resident variant instead).
bool persistent_available() {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  const cudaError_t e =
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return e == cudaSuccess && optin >= 200 * 1024;
}

TEST_CASE("decoupled attention: persistent and resident variants on their own, capped grids",
          "[cuda][attention]") {
  using kernels::AttentionVariant;
  const bool persistent = persistent_available();
  if (!persistent) WARN("device shared memory < 200 KB per CTA: persistent-variant checks skipped");
  const bool warpgroup = persistent && kernels::warpgroup_attention_available();
  if (!warpgroup) WARN("no sm_90a code for this device: warpgroup-MMA variant checks skipped");
  struct Shape {
    int batch, queries, heads;
  };
  // Capped grids make each warp walk many tiles through its q ring and make CTA ranges start
  // inside one (batch, head) pair and end in the next (113: 8 tiles per pair, 1000: 63).
  const Shape shapes[] = {{1, 113, 3}, {2, 1000, 3}, {4, 113, 2}, {2, 4096, 1}, {4, 1000, 1}};
  int seed = 500;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (const Shape& sh : shapes) {
      AttentionCase c;
      c.dtype = dtype;
      c.batch = sh.batch;
      c.queries = sh.queries;
      c.heads = sh.heads;
      c.images_per_chunk = sh.batch >= 2 ? sh.batch / 2 : 1;
      c.uncond_chunks = sh.batch >= 2 ? 0b10 : 0;
      c.identities = {IdentityCase{16, 0.8f, sh.batch >= 2 ? 2 : 1}, IdentityCase{16, 0.5f, 0}};
      c.seed = static_cast<std::uint32_t>(++seed);
      check_case(c, true, AttentionVariant::kResident);
      for (int max_ctas : {0, 1, 5, 7}) {
        if (persistent) check_case(c, true, AttentionVariant::kPersistent, max_ctas);
        if (warpgroup) check_case(c, true, AttentionVariant::kPersistentWarpGroup, max_ctas);
      }
    }
  }
  if (!persistent) return;
  // add-ip-only, strided rows, one identity with the largest one-pass token count.
  AttentionCase c;
  c.batch = 2;
  c.queries = 1000;
  c.heads = 2;
  c.uncond_chunks = 0b01;
  c.identities = {IdentityCase{80, 0.9f, 1}, IdentityCase{16, -0.4f, 0}};
  c.include_text = false;
  c.seed = 77;
  const std::vector<AttentionVariant> variants =
      warpgroup ? std::vector<AttentionVariant>{AttentionVariant::kPersistent,
                                                AttentionVariant::kPersistentWarpGroup}
                : std::vector<AttentionVariant>{AttentionVariant::kPersistent};
  for (AttentionVariant v : variants) {
    for (int max_ctas : {0, 3}) check_case(c, true, v, max_ctas);
  }
  c.include_text = true;
  c.row_pad = 24;
  for (AttentionVariant v : variants) {
    for (int max_ctas : {0, 3}) check_case(c, true, v, max_ctas);
  }
  // Text lengths of every key-block count (1 .. 5 blocks of 16), each with a partial last block.
  for (int text_len : {7, 20, 40, 64, 77}) {
    AttentionCase t;
    t.batch = 2;
    t.queries = 300;
    t.heads = 2;
    t.text_len = text_len;
    t.uncond_chunks = 0b10;
    t.images_per_chunk = 1;
    t.identities = {IdentityCase{16, 0.7f, 1}};
    t.seed = static_cast<std::uint32_t>(900 + text_len);
    for (AttentionVariant v : variants) check_case(t, true, v, 0);
  }
}

TEST_CASE("decoupled attention: the persistent variants refuse what they do not cover",
          "[cuda][attention]") {
  AttentionCase c;
  c.text_len = 81;  // one phase past 80 keys
  c.identities = {IdentityCase{16, 1.0f, 0}};
  AttentionProblem p(c);
  p.prepare(true);
  for (auto variant :
       {kernels::AttentionVariant::kPersistent, kernels::AttentionVariant::kPersistentWarpGroup}) {
    INFO("variant " << static_cast<int>(variant));
    CHECK(kernels::decoupled_attention_variant(kernels::AttentionDType::kF16, 64, variant, p.params,
                                               0, nullptr) == cudaErrorInvalidValue);
    CHECK(kernels::decoupled_attention_variant(kernels::AttentionDType::kF16, 128, variant,
                                               p.params, 0, nullptr) == cudaErrorInvalidValue);
  }
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto bits = p.download_bits();
  std::size_t finite = 0;
  for (std::uint16_t b : bits) finite += std::isfinite(instantid::half_to_float(b)) ? 1 : 0;
  CHECK(finite == 0);
}

TEST_CASE("decoupled attention: unsupported arguments are refused", "[cuda][attention]") {
  AttentionCase c;
  c.identities = {IdentityCase{16, 1.0f, 0}};
  AttentionProblem p(c);
  p.prepare(true);
  CHECK(kernels::decoupled_attention(kernels::AttentionDType::kF16, 96, p.params, nullptr) ==
        cudaErrorInvalidValue);
  kernels::DecoupledAttentionParams bad = p.params;
  bad.q_row_stride = p.params.q_row_stride + 1;  // not a multiple of 8
  CHECK(kernels::decoupled_attention(kernels::AttentionDType::kF16, 64, bad, nullptr) ==
        cudaErrorInvalidValue);
  bad = p.params;
  bad.q = static_cast<const char*>(p.params.q) + 2;  // misaligned
  CHECK(kernels::decoupled_attention(kernels::AttentionDType::kF16, 64, bad, nullptr) ==
        cudaErrorInvalidValue);
  bad = p.params;
  bad.num_identities = kernels::kMaxIdentities + 1;
  CHECK(kernels::decoupled_attention(kernels::AttentionDType::kF16, 64, bad, nullptr) ==
        cudaErrorInvalidValue);
  bad = p.params;
  bad.ip[0].tokens = 0;
  CHECK(kernels::decoupled_attention(kernels::AttentionDType::kF16, 64, bad, nullptr) ==
        cudaErrorInvalidValue);
  // Nothing was launched by the refused calls: out still holds its poison.
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto bits = p.download_bits();
  std::size_t finite = 0;
  for (std::uint16_t b : bits) finite += std::isfinite(instantid::half_to_float(b)) ? 1 : 0;
  CHECK(finite == 0);
}

TEST_CASE("decoupled attention: a 70-layer step replays bit-identically from a CUDA graph",
          "[cuda][attention][graph]") {
  // SDXL's 70 attn2 layers at a reduced resolution (N 1024 / 256 instead of 4096 / 1024), batch
  // 2 (cond + uncond), 77 text + 16 ip tokens.
  std::vector<AttentionProblem> layers;
  layers.reserve(70);
  for (int i = 0; i < 70; ++i) {
    const bool wide = !(i < 4 || i >= 64);  // 4 + 6 layers at 640, 60 at 1280 (order as SDXL)
    AttentionCase c;
    c.batch = 2;
    c.queries = wide ? 256 : 1024;
    c.heads = wide ? 20 : 10;
    c.images_per_chunk = 1;
    c.uncond_chunks = 0b10;
    c.identities = {IdentityCase{16, 0.8f, i % 3 == 0 ? 1 : 0}};
    c.seed = static_cast<std::uint32_t>(1000 + i);
    layers.emplace_back(c);
    layers.back().prepare(true);
  }
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  for (auto& l : layers) {
    REQUIRE(kernels::decoupled_attention(kernels::AttentionDType::kF16, 64, l.params, stream) ==
            cudaSuccess);
  }
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  std::vector<std::vector<std::uint16_t>> eager;
  for (auto& l : layers) eager.push_back(l.download_bits());

  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  for (auto& l : layers) {
    REQUIRE(kernels::decoupled_attention(kernels::AttentionDType::kF16, 64, l.params, stream) ==
            cudaSuccess);
  }
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  std::size_t nodes = 0;
  REQUIRE(cudaGraphGetNodes(graph, nullptr, &nodes) == cudaSuccess);
  CHECK(nodes == 70);  // one kernel per layer
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (int replay = 0; replay < 2; ++replay) {
    for (auto& l : layers) REQUIRE(cudaMemset(l.out_device, 0xFF, l.out_elems * 2) == cudaSuccess);
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    std::size_t differing = 0;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const auto bits = layers[i].download_bits();
      for (std::size_t e = 0; e < bits.size(); ++e) {
        // Row padding is 0 here (out == NaN-initialised only where written), so compare all.
        differing += bits[e] != eager[i][e] ? 1 : 0;
      }
    }
    CHECK(differing == 0);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}
