// The skinny fp32 GEMM (src/cuda/skinny_gemm.hpp) against fp64, with the flash-attention tolerance
// rule: its max error may be at most twice that of a naive fp32 implementation (one sequential
// fp32 dot product per output, then bias, GELU and beta·C in fp32). Plus exact small-integer
// problems for every split count (indexing, tails, the split-K reduction), determinism, poisoned
// outputs and guard cells, the cuBLAS fallback for shapes the kernel refuses, argument checks and
// CUDA-graph replay.

#include <cuda_runtime_api.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "cuda/skinny_gemm.hpp"

namespace {

using instantid::cuda::DeviceBuffer;
using instantid::cuda::GemmPath;
using instantid::cuda::LinearGemm;
using instantid::cuda::LinearGemmOptions;
using instantid::cuda::SkinnyGemmMath;
using instantid::cuda::SkinnyGemmParams;
using instantid::cuda::SkinnyGemmWorkspace;

constexpr int kGuard = 64;  // poisoned floats after C that nothing may write

struct Problem {
  int m = 1, n = 1, k = 4;
  bool bias = false;
  float beta = 0.0f;
  bool gelu = false;
  std::vector<float> a, w, b, c0;  // [m, k], [n, k], [n], [m, n]
};

Problem random_problem(int m, int n, int k, bool bias, float beta, bool gelu, std::uint32_t seed) {
  Problem p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.bias = bias;
  p.beta = beta;
  p.gelu = gelu;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  p.a.resize(static_cast<std::size_t>(m) * k);
  p.w.resize(static_cast<std::size_t>(n) * k);
  p.b.resize(static_cast<std::size_t>(n));
  p.c0.resize(static_cast<std::size_t>(m) * n);
  const float w_sd = 1.0f / std::sqrt(static_cast<float>(k));  // a Linear layer's scale
  for (float& e : p.a) e = 2.0f * normal(rng);
  for (float& e : p.w) e = w_sd * normal(rng);
  for (float& e : p.b) e = 0.5f * normal(rng);
  for (float& e : p.c0) e = normal(rng);
  return p;
}

// Small integers: every product and partial sum is exact in fp32, so any order gives one answer.
Problem integer_problem(int m, int n, int k, std::uint32_t seed) {
  Problem p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.bias = true;
  p.beta = 1.0f;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(-3, 3);
  p.a.resize(static_cast<std::size_t>(m) * k);
  p.w.resize(static_cast<std::size_t>(n) * k);
  p.b.resize(static_cast<std::size_t>(n));
  p.c0.resize(static_cast<std::size_t>(m) * n);
  for (float& e : p.a) e = static_cast<float>(small(rng));
  for (float& e : p.w) e = static_cast<float>(small(rng));
  for (float& e : p.b) e = static_cast<float>(small(rng) * 100);
  for (float& e : p.c0) e = static_cast<float>(small(rng) * 1000);
  return p;
}

double gelu64(double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }
float gelu32(float v) { return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f)); }

std::vector<double> expected_fp64(const Problem& p) {
  std::vector<double> y(static_cast<std::size_t>(p.m) * p.n);
  for (int r = 0; r < p.m; ++r) {
    for (int o = 0; o < p.n; ++o) {
      double acc = 0.0;
      const float* ar = p.a.data() + static_cast<std::size_t>(r) * p.k;
      const float* wr = p.w.data() + static_cast<std::size_t>(o) * p.k;
      for (int i = 0; i < p.k; ++i) acc += static_cast<double>(ar[i]) * wr[i];
      if (p.bias) acc += p.b[static_cast<std::size_t>(o)];
      if (p.gelu) acc = gelu64(acc);
      const std::size_t idx = static_cast<std::size_t>(r) * p.n + o;
      if (p.beta != 0.0f) acc += static_cast<double>(p.beta) * p.c0[idx];
      y[idx] = acc;
    }
  }
  return y;
}

// The naive fp32 implementation the tolerance is stated against.
std::vector<float> naive_fp32(const Problem& p) {
  std::vector<float> y(static_cast<std::size_t>(p.m) * p.n);
  for (int r = 0; r < p.m; ++r) {
    for (int o = 0; o < p.n; ++o) {
      float acc = 0.0f;
      const float* ar = p.a.data() + static_cast<std::size_t>(r) * p.k;
      const float* wr = p.w.data() + static_cast<std::size_t>(o) * p.k;
      for (int i = 0; i < p.k; ++i) {
        const float prod = ar[i] * wr[i];
        acc = acc + prod;
      }
      if (p.bias) acc = acc + p.b[static_cast<std::size_t>(o)];
      if (p.gelu) acc = gelu32(acc);
      const std::size_t idx = static_cast<std::size_t>(r) * p.n + o;
      if (p.beta != 0.0f) acc = acc + p.beta * p.c0[idx];
      y[idx] = acc;
    }
  }
  return y;
}

DeviceBuffer upload(const std::vector<float>& v) {
  DeviceBuffer d(v.size() * 4);
  REQUIRE(cudaMemcpy(d.data(), v.data(), d.bytes(), cudaMemcpyHostToDevice) == cudaSuccess);
  return d;
}

std::vector<float> download_all(const DeviceBuffer& d) {
  std::vector<float> v(d.bytes() / 4);
  REQUIRE(cudaMemcpy(v.data(), d.data(), d.bytes(), cudaMemcpyDeviceToHost) == cudaSuccess);
  return v;
}

// Device copies of a problem; c has kGuard poisoned floats after it, and is poisoned (NaN) itself
// when beta == 0 (the kernel must not read it then).
struct DeviceProblem {
  DeviceBuffer a, w, b, c;
  explicit DeviceProblem(const Problem& p)
      : a(upload(p.a)), w(upload(p.w)), b(upload(p.b)), c((p.c0.size() + kGuard) * 4) {
    reset(p);
  }
  void reset(const Problem& p) {
    REQUIRE(cudaMemset(c.data(), 0xFF, c.bytes()) == cudaSuccess);
    if (p.beta != 0.0f) {
      REQUIRE(cudaMemcpy(c.data(), p.c0.data(), p.c0.size() * 4, cudaMemcpyHostToDevice) ==
              cudaSuccess);
    }
  }
  // C, then checks the guard cells still hold the poison.
  std::vector<float> download(const Problem& p) const {
    std::vector<float> all(p.c0.size() + kGuard);
    REQUIRE(cudaMemcpy(all.data(), c.data(), c.bytes(), cudaMemcpyDeviceToHost) == cudaSuccess);
    std::size_t touched = 0;
    for (std::size_t i = p.c0.size(); i < all.size(); ++i) {
      std::uint32_t bits = 0;
      std::memcpy(&bits, &all[i], 4);
      touched += bits != 0xFFFFFFFFu ? 1 : 0;
    }
    CHECK(touched == 0);
    all.resize(p.c0.size());
    return all;
  }
};

// Max |err| of got and of naive against ref; checks the 2× rule and finiteness.
void check_against(const Problem& p, const std::vector<double>& ref,
                   const std::vector<float>& naive, const std::vector<float>& got, const char* what,
                   double factor = 2.0) {
  double err = 0.0, naive_err = 0.0, ref_max = 0.0;
  std::size_t non_finite = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    non_finite += std::isfinite(got[i]) ? 0 : 1;
    err = std::max(err, std::abs(got[i] - ref[i]));
    naive_err = std::max(naive_err, std::abs(naive[i] - ref[i]));
    ref_max = std::max(ref_max, std::abs(ref[i]));
  }
  std::printf(
      "%-8s M %2d N %4d K %4d bias %d beta %.1f gelu %d: max|err| %.3e naive %.3e ratio %.2f "
      "(|ref| <= %.2f)\n",
      what, p.m, p.n, p.k, p.bias ? 1 : 0, p.beta, p.gelu ? 1 : 0, err, naive_err,
      naive_err > 0 ? err / naive_err : 0.0, ref_max);
  CHECK(non_finite == 0);
  CHECK(ref_max > 0.5);
  CHECK(naive_err > 0.0);
  CHECK(err <= factor * naive_err);
}

// The same against the problem's fp64 and naive fp32 results.
void check_accuracy(const Problem& p, const std::vector<float>& got, const char* what,
                    double factor = 2.0) {
  check_against(p, expected_fp64(p), naive_fp32(p), got, what, factor);
}

std::vector<float> run_linear(LinearGemm& gemm, const Problem& p, DeviceProblem& d,
                              cudaStream_t stream, int a_offset = 0) {
  d.reset(p);
  gemm.run(d.a.as<float>() + a_offset, d.w.as<float>(), p.bias ? d.b.as<float>() : nullptr,
           d.c.as<float>(), p.m, p.n, p.k, p.beta, p.gelu, stream);
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  return d.download(p);
}

int sm_count() {
  int device = 0, sms = 0;
  REQUIRE(cudaGetDevice(&device) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess);
  return sms;
}

// Thread-block clusters (the cluster split-K reduction) exist from sm_90.
bool has_clusters() {
  int device = 0, major = 0;
  REQUIRE(cudaGetDevice(&device) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess);
  return major >= 9;
}

LinearGemmOptions gemm_options(SkinnyGemmMath math, bool cluster_reduce = true, int lane_rows = 0,
                               int ctas_per_sm = instantid::cuda::kSkinnyGemmCtasPerSm) {
  LinearGemmOptions o;
  o.math = math;
  o.cluster_reduce = cluster_reduce;
  o.lane_rows = lane_rows;
  o.ctas_per_sm = ctas_per_sm;
  return o;
}

// One problem's kernel parameters on d's buffers.
SkinnyGemmParams kernel_params(const Problem& p, DeviceProblem& d, int splits, SkinnyGemmMath math,
                               bool cluster_reduce, int lane_rows = 0) {
  SkinnyGemmParams params;
  params.a = d.a.as<float>();
  params.w = d.w.as<float>();
  params.bias = p.bias ? d.b.as<float>() : nullptr;
  params.c = d.c.as<float>();
  params.m = p.m;
  params.n = p.n;
  params.k = p.k;
  params.beta = p.beta;
  params.gelu = p.gelu;
  params.splits = splits;
  params.math = math;
  params.cluster_reduce = cluster_reduce;
  params.lane_rows = lane_rows;
  return params;
}

// Zeroed tickets for `tiles` output tiles, room for `partials` partial sums plus `slack` floats
// that no launch may use, and the workspace that points at them.
struct TestWorkspace {
  DeviceBuffer tickets, sums;
  SkinnyGemmWorkspace ws;

  TestWorkspace(int tiles, std::size_t partials, std::size_t slack = 0)
      : tickets(static_cast<std::size_t>(tiles) * 4), sums((partials + slack) * 4) {
    REQUIRE(cudaMemset(tickets.data(), 0, tickets.bytes()) == cudaSuccess);
    ws.tickets = tickets.as<unsigned>();
    ws.tickets_count = tiles;
    ws.partials = sums.as<float>();
    ws.partials_count = partials;
  }

  // Every launch leaves its tickets at zero.
  void check_tickets_zero() const {
    std::vector<unsigned> left(static_cast<std::size_t>(ws.tickets_count));
    REQUIRE(cudaMemcpy(left.data(), tickets.data(), tickets.bytes(), cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    for (unsigned t : left) CHECK(t == 0u);
  }
};

}  // namespace

TEST_CASE("skinny GEMM matches fp64 within 2x naive fp32 (M 1..64, K 512 / 1280 / 5120)",
          "[cuda][skinny_gemm]") {
  LinearGemm gemm(64);  // lane grid 4 × 8 up to M = 40, then 8 × 4
  LinearGemm gemm8(64, gemm_options(SkinnyGemmMath::kFp32Fma, true, 8));  // 8 × 4 always
  LinearGemm tf32(64, gemm_options(SkinnyGemmMath::kTf32x3));
  // Split-K partials summed through the global workspace (the cluster reduction's alternative).
  LinearGemm tickets(64, gemm_options(SkinnyGemmMath::kTf32x3, false));
  INFO("cluster reduction " << tf32.cluster_reduce());
  CHECK(tf32.cluster_reduce() == has_clusters());
  CHECK(gemm.cluster_reduce() == has_clusters());
  CHECK_FALSE(tickets.cluster_reduce());
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  std::uint32_t seed = 100;
  for (int k : {512, 1280, 5120}) {
    // N: a tail tile (1000), the Resampler widths (1280, 2560), a short one for K = 5120.
    const int n = k == 512 ? 1000 : k == 1280 ? 2560 : 1288;
    for (int m : {1, 17, 34, 64}) {
      const bool bias = m % 2 == 1;
      const float beta = m == 34 ? 1.0f : 0.0f;
      const bool gelu = m == 64;
      INFO("M " << m << " N " << n << " K " << k);
      const Problem p = random_problem(m, n, k, bias, beta, gelu, ++seed);
      DeviceProblem d(p);
      REQUIRE(gemm.uses_skinny(m, n, k, d.a.as<float>(), d.w.as<float>()));
      const std::vector<float> got = run_linear(gemm, p, d, stream);
      check_accuracy(p, got, "skinny");
      // Deterministic: a second run gives the same bits.
      const std::vector<float> again = run_linear(gemm, p, d, stream);
      CHECK(std::memcmp(got.data(), again.data(), got.size() * 4) == 0);
      if (m <= 40) check_accuracy(p, run_linear(gemm8, p, d, stream), "skinny8");
      const std::vector<float> tensor = run_linear(tf32, p, d, stream);
      check_accuracy(p, tensor, "3xtf32");
      const std::vector<float> tensor_again = run_linear(tf32, p, d, stream);
      CHECK(std::memcmp(tensor.data(), tensor_again.data(), tensor.size() * 4) == 0);
      check_accuracy(p, run_linear(tickets, p, d, stream), "3xtf32-tickets");
    }
  }
  cudaStreamDestroy(stream);
}

TEST_CASE("skinny GEMM is exact on small integers for every split count", "[cuda][skinny_gemm]") {
  // M 37 (5 rows per lane), N 131 (three tiles, the last 3 wide), K 1028 (33 k tiles, the last 4
  // deep): every tail at once; plus M 1 and M 64 at other tails.
  const int shapes[][3] = {
      {37, 131, 1028}, {1, 70, 36}, {64, 200, 260}, {8, 64, 4}, {34, 2560, 1280}};
  std::uint32_t seed = 7;
  for (const auto& s : shapes) {
    const Problem p = integer_problem(s[0], s[1], s[2], ++seed);
    const std::vector<double> ref = expected_fp64(p);
    DeviceProblem d(p);
    const int k_tiles = (p.k + 31) / 32;
    std::vector<int> splits = {1, 2, 3, k_tiles / 2, k_tiles - 1, k_tiles};
    splits.push_back(instantid::cuda::skinny_gemm_splits(p.n, p.k, sm_count()));
    for (int sp : splits) {
      // FMA lane grids 4 × 8 and 8 × 4, 3xTF32; then both multiplies with cluster reduction.
      for (int variant = 0; variant < 5; ++variant) {
        if (sp < 1 || sp > k_tiles) continue;
        const bool cluster = variant >= 3;
        if (cluster && (sp > instantid::cuda::kSkinnyGemmMaxClusterSplits || !has_clusters())) {
          continue;
        }
        const int lane_rows = variant == 1 ? 8 : 4;
        const SkinnyGemmMath math =
            variant == 2 || variant == 4 ? SkinnyGemmMath::kTf32x3 : SkinnyGemmMath::kFp32Fma;
        INFO("M " << p.m << " N " << p.n << " K " << p.k << " splits " << sp << " lane rows "
                  << lane_rows << " 3xTF32 " << (math == SkinnyGemmMath::kTf32x3) << " cluster "
                  << cluster);
        const std::size_t partials = instantid::cuda::skinny_gemm_partials_count(p.m, p.n, sp);
        CHECK((partials > 0) == (sp > 1));
        const TestWorkspace workspace(instantid::cuda::skinny_gemm_tiles(p.n), partials);
        for (int rep = 0; rep < 2; ++rep) {  // the second launch reuses the tickets the first reset
          d.reset(p);
          REQUIRE(instantid::cuda::skinny_gemm(kernel_params(p, d, sp, math, cluster, lane_rows),
                                               cluster ? SkinnyGemmWorkspace{} : workspace.ws,
                                               nullptr) == cudaSuccess);
          REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
          const std::vector<float> got = d.download(p);
          std::size_t wrong = 0;
          for (std::size_t i = 0; i < ref.size(); ++i) wrong += got[i] != ref[i] ? 1 : 0;
          CHECK(wrong == 0);
        }
        workspace.check_tickets_zero();
      }
    }
  }
}

TEST_CASE("skinny GEMM pair: each problem bit-identical to its own launch, run_pair accuracy",
          "[cuda][skinny_gemm]") {
  // The Resampler's to_q / to_kv shapes, and two problems with different tails, K and rows.
  const int shapes[][2][3] = {{{32, 1280, 1280}, {34, 2560, 1280}}, {{5, 131, 1028}, {37, 70, 36}}};
  std::uint32_t seed = 40;
  for (const auto& pair : shapes) {
    Problem p[2];
    for (int i = 0; i < 2; ++i) {
      p[i] = random_problem(pair[i][0], pair[i][1], pair[i][2], false, 0.0f, false, ++seed);
    }
    DeviceProblem d0(p[0]), d1(p[1]);
    DeviceProblem* d[2] = {&d0, &d1};
    const int k_tiles[2] = {(p[0].k + 31) / 32, (p[1].k + 31) / 32};
    for (const auto& [sp, math] :
         {std::make_pair(std::pair<int, int>{1, 1}, SkinnyGemmMath::kFp32Fma),
          std::make_pair(std::pair<int, int>{3, 1}, SkinnyGemmMath::kFp32Fma),
          std::make_pair(std::pair<int, int>{2, k_tiles[1]}, SkinnyGemmMath::kFp32Fma),
          std::make_pair(std::pair<int, int>{1, 1}, SkinnyGemmMath::kTf32x3),
          std::make_pair(std::pair<int, int>{3, k_tiles[1]}, SkinnyGemmMath::kTf32x3)}) {
      const int splits[2] = {std::min(sp.first, k_tiles[0]), std::min(sp.second, k_tiles[1])};
      INFO("M " << p[0].m << "/" << p[1].m << " splits " << splits[0] << "/" << splits[1]
                << " 3xTF32 " << (math == SkinnyGemmMath::kTf32x3));
      int tiles = 0;
      std::size_t partials = 0;
      for (int i = 0; i < 2; ++i) {
        tiles += instantid::cuda::skinny_gemm_tiles(p[i].n);
        partials += instantid::cuda::skinny_gemm_partials_count(p[i].m, p[i].n, splits[i]);
      }
      const TestWorkspace workspace(tiles, partials, 4);
      const SkinnyGemmWorkspace& ws = workspace.ws;
      SkinnyGemmParams params[2];
      std::vector<float> alone[2];
      for (int i = 0; i < 2; ++i) {
        d[i]->reset(p[i]);
        params[i] = kernel_params(p[i], *d[i], splits[i], math, false);
        REQUIRE(instantid::cuda::skinny_gemm(params[i], ws, nullptr) == cudaSuccess);
        REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
        alone[i] = d[i]->download(p[i]);
        d[i]->reset(p[i]);
      }
      REQUIRE(instantid::cuda::skinny_gemm_pair(params[0], params[1], ws, nullptr) == cudaSuccess);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      for (int i = 0; i < 2; ++i) {
        const std::vector<float> together = d[i]->download(p[i]);  // also checks the guard cells
        std::size_t differing = 0;
        for (std::size_t e = 0; e < together.size(); ++e) {
          differing += std::memcmp(&together[e], &alone[i][e], 4) != 0 ? 1 : 0;
        }
        CHECK(differing == 0);
      }
      workspace.check_tickets_zero();
      // The two problems must multiply the same way.
      SkinnyGemmParams mixed = params[1];
      mixed.math =
          math == SkinnyGemmMath::kTf32x3 ? SkinnyGemmMath::kFp32Fma : SkinnyGemmMath::kTf32x3;
      CHECK(instantid::cuda::skinny_gemm_pair(params[0], mixed, ws, nullptr) ==
            cudaErrorInvalidValue);
      // Too small a workspace for the second problem: refused, nothing launched.
      if (partials > 0) {
        SkinnyGemmWorkspace small = ws;
        small.partials_count = partials - 1;
        CHECK(instantid::cuda::skinny_gemm_pair(params[0], params[1], small, nullptr) ==
              cudaErrorInvalidValue);
      }
    }
    // With cluster reduction (one split count for both): the same bits as each alone.
    if (has_clusters()) {
      const int sp = std::min({6, k_tiles[0], k_tiles[1]});
      INFO("cluster pair, splits " << sp);
      SkinnyGemmParams params[2];
      std::vector<float> alone[2];
      for (int i = 0; i < 2; ++i) {
        d[i]->reset(p[i]);
        params[i] = kernel_params(p[i], *d[i], sp, SkinnyGemmMath::kTf32x3, true);
        REQUIRE(instantid::cuda::skinny_gemm(params[i], SkinnyGemmWorkspace{}, nullptr) ==
                cudaSuccess);
        REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
        alone[i] = d[i]->download(p[i]);
        d[i]->reset(p[i]);
      }
      REQUIRE(instantid::cuda::skinny_gemm_pair(params[0], params[1], SkinnyGemmWorkspace{},
                                                nullptr) == cudaSuccess);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      for (int i = 0; i < 2; ++i) {
        const std::vector<float> together = d[i]->download(p[i]);
        CHECK(std::memcmp(together.data(), alone[i].data(), together.size() * 4) == 0);
      }
    }
    // LinearGemm::run_pair (its own split counts) against fp64, the 2× naive fp32 rule.
    for (SkinnyGemmMath math : {SkinnyGemmMath::kFp32Fma, SkinnyGemmMath::kTf32x3}) {
      LinearGemm gemm(64, gemm_options(math));
      for (int i = 0; i < 2; ++i) d[i]->reset(p[i]);
      gemm.run_pair({d0.a.as<float>(), d0.w.as<float>(), d0.c.as<float>(), p[0].m, p[0].n, p[0].k},
                    {d1.a.as<float>(), d1.w.as<float>(), d1.c.as<float>(), p[1].m, p[1].n, p[1].k},
                    nullptr);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      for (int i = 0; i < 2; ++i) {
        check_accuracy(p[i], d[i]->download(p[i]),
                       math == SkinnyGemmMath::kTf32x3 ? "pair-tf32" : "pair");
      }
    }
  }
}

TEST_CASE("skinny GEMM: cluster reduction gives the workspace reduction's bits",
          "[cuda][skinny_gemm]") {
  if (!has_clusters()) {
    WARN("skipped: the device has no thread-block clusters (sm_90+)");
    return;
  }
  // The Resampler's FF out (16 splits: the largest cluster), its to_kv with bias and beta · C,
  // and a problem with every tail; each split count the same for both reductions.
  const int shapes[][4] = {{32, 1280, 5120, 16}, {34, 2560, 1280, 6}, {37, 131, 1028, 5}};
  std::uint32_t seed = 70;
  for (const auto& s : shapes) {
    const bool epilogue = s[0] == 34;
    const Problem p =
        random_problem(s[0], s[1], s[2], epilogue, epilogue ? 1.0f : 0.0f, false, ++seed);
    DeviceProblem d(p);
    const TestWorkspace workspace(instantid::cuda::skinny_gemm_tiles(p.n),
                                  instantid::cuda::skinny_gemm_partials_count(p.m, p.n, s[3]));
    for (SkinnyGemmMath math : {SkinnyGemmMath::kFp32Fma, SkinnyGemmMath::kTf32x3}) {
      INFO("M " << p.m << " N " << p.n << " K " << p.k << " splits " << s[3] << " 3xTF32 "
                << (math == SkinnyGemmMath::kTf32x3));
      std::vector<float> got[2];
      for (int cluster = 0; cluster < 2; ++cluster) {
        d.reset(p);
        REQUIRE(instantid::cuda::skinny_gemm(kernel_params(p, d, s[3], math, cluster == 1),
                                             cluster == 1 ? SkinnyGemmWorkspace{} : workspace.ws,
                                             nullptr) == cudaSuccess);
        REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
        got[cluster] = d.download(p);  // also checks the guard cells
      }
      check_accuracy(p, got[1], "cluster");
      CHECK(std::memcmp(got[0].data(), got[1].data(), got[0].size() * 4) == 0);
    }
  }
  // Every core's largest cluster fits on this device (H100 / H200: 16 CTAs in one GPC).
  for (int m = 1; m <= 64; ++m) {
    INFO("M " << m);
    CHECK(instantid::cuda::skinny_gemm_clusters_fit(m, SkinnyGemmMath::kTf32x3));
    CHECK(instantid::cuda::skinny_gemm_clusters_fit(m, SkinnyGemmMath::kFp32Fma));
    CHECK(instantid::cuda::skinny_gemm_clusters_fit(m, SkinnyGemmMath::kFp32Fma, 8));
  }
  CHECK_FALSE(instantid::cuda::skinny_gemm_clusters_fit(65, SkinnyGemmMath::kTf32x3));
  CHECK(cudaGetLastError() == cudaSuccess);
  // More splits than a cluster holds, or pair problems with different splits: refused.
  const Problem p = random_problem(8, 64, 1280, false, 0.0f, false, 80);
  DeviceProblem d(p);
  SkinnyGemmParams too_many = kernel_params(p, d, 17, SkinnyGemmMath::kTf32x3, true);
  CHECK(instantid::cuda::skinny_gemm(too_many, SkinnyGemmWorkspace{}, nullptr) ==
        cudaErrorInvalidValue);
  SkinnyGemmParams four = kernel_params(p, d, 4, SkinnyGemmMath::kTf32x3, true);
  SkinnyGemmParams five = kernel_params(p, d, 5, SkinnyGemmMath::kTf32x3, true);
  CHECK(instantid::cuda::skinny_gemm_pair(four, five, SkinnyGemmWorkspace{}, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("skinny GEMM: shapes it refuses fall back to cuBLAS", "[cuda][skinny_gemm]") {
  LinearGemm gemm(128);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  // M 65 (> 64 rows), K 510 (not a multiple of 4), bias and GELU through the fallback epilogue.
  for (const auto& s : {std::make_pair(65, 1280), std::make_pair(17, 510)}) {
    const Problem p = random_problem(s.first, 700, s.second, true, 0.0f, s.first == 17, 55);
    DeviceProblem d(p);
    CHECK_FALSE(gemm.uses_skinny(p.m, p.n, p.k, d.a.as<float>(), d.w.as<float>()));
    CHECK_FALSE(
        instantid::cuda::skinny_gemm_supported(p.m, p.n, p.k, d.a.as<float>(), d.w.as<float>()));
    // cuBLAS's summation order is not ours; it must still be within 4× of naive fp32.
    check_accuracy(p, run_linear(gemm, p, d, stream), "cublas", 4.0);
  }
  // A rows pointer that is not 16-byte aligned (one float in) also goes to cuBLAS.
  {
    Problem p = random_problem(9, 300, 256, false, 1.0f, false, 56);
    DeviceProblem d(p);
    CHECK_FALSE(gemm.uses_skinny(p.m, p.n, p.k, d.a.as<float>() + 1, d.w.as<float>()));
    // The device A starts one float later: shift the host copy the same way for the reference.
    Problem shifted = p;
    shifted.a.assign(p.a.begin() + 1, p.a.end());
    shifted.a.push_back(0.0f);
    shifted.m = p.m - 1;  // the last row would read past the end
    shifted.c0.resize(static_cast<std::size_t>(shifted.m) * p.n);
    d.reset(p);
    gemm.run(d.a.as<float>() + 1, d.w.as<float>(), nullptr, d.c.as<float>(), shifted.m, p.n, p.k,
             p.beta, false, stream);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    std::vector<float> got(shifted.c0.size());
    REQUIRE(cudaMemcpy(got.data(), d.c.data(), got.size() * 4, cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    check_accuracy(shifted, got, "cublas", 4.0);
  }
  // Forcing cuBLAS for a shape the kernel takes.
  LinearGemmOptions cublas;
  cublas.path = GemmPath::kCublas;
  LinearGemm forced(64, cublas);
  const Problem p = random_problem(32, 1280, 1280, true, 1.0f, false, 57);
  DeviceProblem d(p);
  CHECK_FALSE(forced.uses_skinny(p.m, p.n, p.k, d.a.as<float>(), d.w.as<float>()));
  check_accuracy(p, run_linear(forced, p, d, stream), "cublas", 4.0);
  cudaStreamDestroy(stream);
}

namespace {

// A LayerNorm (biased variance, eps 1e-5, affine) of each row of p.a, in T with two passes (the
// naive fp32 form is the Resampler's LayerNorm kernel's arithmetic).
template <typename T>
std::vector<float> layer_norm_rows(const Problem& p, const std::vector<float>& gamma,
                                   const std::vector<float>& beta, std::vector<double>* exact) {
  std::vector<float> y(p.a.size());
  if (exact != nullptr) exact->resize(p.a.size());
  for (int r = 0; r < p.m; ++r) {
    const float* x = p.a.data() + static_cast<std::size_t>(r) * p.k;
    T mean = 0, var = 0;
    for (int c = 0; c < p.k; ++c) mean += x[c];
    mean /= static_cast<T>(p.k);
    for (int c = 0; c < p.k; ++c) var += (x[c] - mean) * (x[c] - mean);
    const T inv = T(1) / std::sqrt(var / static_cast<T>(p.k) + T(1e-5));
    for (int c = 0; c < p.k; ++c) {
      const T v = (x[c] - mean) * inv * gamma[c] + beta[c];
      y[static_cast<std::size_t>(r) * p.k + c] = static_cast<float>(v);
      if (exact != nullptr) (*exact)[static_cast<std::size_t>(r) * p.k + c] = v;
    }
  }
  return y;
}

}  // namespace

TEST_CASE("skinny GEMM with a folded LayerNorm matches fp64 within 2x naive fp32",
          "[cuda][skinny_gemm]") {
  if (!has_clusters()) {
    WARN("skipped: the row sums of a folded LayerNorm meet in clusters (sm_90+)");
    return;
  }
  // {M, N, K, splits, row offset}: the Resampler's FF in (5120 × 1280, 4 splits); one row, a
  // partial k tile and one CTA per tile (a cluster of one); every tail; 64 rows (two rows per
  // thread in the row sums) in the largest cluster; rows far from zero (the shifted sums).
  const int shapes[][5] = {{32, 5120, 1280, 4, 0}, {1, 64, 36, 1, 0},
                           {17, 131, 1028, 5, 0},  {64, 256, 512, 16, 0},
                           {34, 100, 1280, 7, 30}, {16, 320, 1280, 10, -200}};
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  std::uint32_t seed = 300;
  for (const auto& s : shapes) {
    const bool gelu = s[0] != 17, bias = s[0] != 1;
    Problem p = random_problem(s[0], s[1], s[2], bias, 0.0f, gelu, ++seed);
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int r = 0; r < p.m; ++r) {  // rows with their own offsets and spreads
      const float offset = static_cast<float>(s[4]) + normal(rng), spread = 0.5f + r % 3;
      for (int c = 0; c < p.k; ++c) {
        float& e = p.a[static_cast<std::size_t>(r) * p.k + c];
        e = offset + spread * e;
      }
    }
    std::vector<float> gamma(static_cast<std::size_t>(p.k)), beta(gamma.size());
    for (float& g : gamma) g = 1.0f + 0.3f * normal(rng);
    for (float& b : beta) b = 0.2f * normal(rng);
    INFO("M " << p.m << " N " << p.n << " K " << p.k << " splits " << s[3] << " offset " << s[4]);

    // References: LayerNorm then the product, in fp64 and naively in fp32.
    std::vector<double> normed_exact;
    Problem normed = p;
    layer_norm_rows<double>(p, gamma, beta, &normed_exact);
    std::vector<double> ref(static_cast<std::size_t>(p.m) * p.n);
    for (int r = 0; r < p.m; ++r) {
      for (int o = 0; o < p.n; ++o) {
        double acc = p.bias ? p.b[static_cast<std::size_t>(o)] : 0.0;
        for (int c = 0; c < p.k; ++c)
          acc += normed_exact[static_cast<std::size_t>(r) * p.k + c] *
                 p.w[static_cast<std::size_t>(o) * p.k + c];
        ref[static_cast<std::size_t>(r) * p.n + o] = gelu ? gelu64(acc) : acc;
      }
    }
    normed.a = layer_norm_rows<float>(p, gamma, beta, nullptr);
    const std::vector<float> naive = naive_fp32(normed);

    // The fold on the device: W·diag(γ) exactly, its row sums and W·β + b to fp64 sums.
    DeviceProblem d(p);
    DeviceBuffer gamma_d(gamma.size() * 4), beta_d(beta.size() * 4), colsum_d(p.b.size() * 4),
        bias_d(p.b.size() * 4);
    REQUIRE(cudaMemcpy(gamma_d.data(), gamma.data(), gamma_d.bytes(), cudaMemcpyHostToDevice) ==
            cudaSuccess);
    REQUIRE(cudaMemcpy(beta_d.data(), beta.data(), beta_d.bytes(), cudaMemcpyHostToDevice) ==
            cudaSuccess);
    REQUIRE(instantid::cuda::fold_layer_norm_into_linear(
                d.w.as<float>(), gamma_d.as<float>(), beta_d.as<float>(),
                p.bias ? d.b.as<float>() : nullptr, p.n, p.k, colsum_d.as<float>(),
                bias_d.as<float>(), stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    std::vector<float> w_folded(p.w.size()), colsum(p.b.size()), bias_folded(p.b.size());
    REQUIRE(cudaMemcpy(w_folded.data(), d.w.data(), d.w.bytes(), cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    REQUIRE(cudaMemcpy(colsum.data(), colsum_d.data(), colsum_d.bytes(), cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    REQUIRE(cudaMemcpy(bias_folded.data(), bias_d.data(), bias_d.bytes(), cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    std::size_t fold_mismatches = 0;
    double colsum_err = 0.0, bias_err = 0.0;
    for (int o = 0; o < p.n; ++o) {
      double sw = 0.0, sb = p.bias ? p.b[static_cast<std::size_t>(o)] : 0.0;
      for (int c = 0; c < p.k; ++c) {
        const std::size_t i = static_cast<std::size_t>(o) * p.k + c;
        const float want = p.w[i] * gamma[static_cast<std::size_t>(c)];
        fold_mismatches += std::memcmp(&want, &w_folded[i], 4) != 0 ? 1 : 0;
        sw += want;
        sb += static_cast<double>(p.w[i]) * beta[static_cast<std::size_t>(c)];
      }
      colsum_err = std::max(colsum_err, std::abs(colsum[static_cast<std::size_t>(o)] - sw) /
                                            std::max(1.0, std::abs(sw)));
      bias_err = std::max(bias_err, std::abs(bias_folded[static_cast<std::size_t>(o)] - sb) /
                                        std::max(1.0, std::abs(sb)));
    }
    CHECK(fold_mismatches == 0);
    CHECK(colsum_err < 1e-7);  // one fp32 rounding of an fp64 sum
    CHECK(bias_err < 1e-7);

    // The kernel at the given split count, twice (same bits), for both cores.
    for (SkinnyGemmMath math : {SkinnyGemmMath::kTf32x3, SkinnyGemmMath::kFp32Fma}) {
      INFO("3xTF32 " << (math == SkinnyGemmMath::kTf32x3));
      SkinnyGemmParams params = kernel_params(p, d, s[3], math, true);
      params.bias = bias_d.as<float>();
      params.row_norm_colsum = colsum_d.as<float>();
      std::vector<float> got[2];
      for (int rep = 0; rep < 2; ++rep) {
        d.reset(p);
        REQUIRE(instantid::cuda::skinny_gemm(params, SkinnyGemmWorkspace{}, stream) == cudaSuccess);
        REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
        got[rep] = d.download(p);  // also checks the guard cells
      }
      check_against(p, ref, naive, got[0], "folded-LN");
      CHECK(std::memcmp(got[0].data(), got[1].data(), got[0].size() * 4) == 0);
    }
    // LinearGemm's entry point (its own split count).
    LinearGemm gemm(64, gemm_options(SkinnyGemmMath::kTf32x3));
    REQUIRE(gemm.row_norm_supported(p.m));
    d.reset(p);
    gemm.run_row_normalized(d.a.as<float>(), d.w.as<float>(), colsum_d.as<float>(),
                            bias_d.as<float>(), d.c.as<float>(), p.m, p.n, p.k, 1e-5f, gelu,
                            stream);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    check_against(p, ref, naive, d.download(p), "folded-LN (LinearGemm)");
  }

  // Refused: without cluster sums, in a pair, eps not above zero; LinearGemm without clusters or
  // with too many rows.
  const Problem p = random_problem(8, 64, 128, false, 0.0f, false, 90);
  DeviceProblem d(p);
  SkinnyGemmParams ok = kernel_params(p, d, 2, SkinnyGemmMath::kTf32x3, true);
  ok.row_norm_colsum = d.b.as<float>();
  REQUIRE(instantid::cuda::skinny_gemm(ok, SkinnyGemmWorkspace{}, nullptr) == cudaSuccess);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const TestWorkspace workspace(1, instantid::cuda::skinny_gemm_partials_count(p.m, p.n, 2));
  SkinnyGemmParams bad = ok;
  bad.cluster_reduce = false;
  CHECK(instantid::cuda::skinny_gemm(bad, workspace.ws, nullptr) == cudaErrorInvalidValue);
  for (float eps : {0.0f, -1.0f, std::nanf("")}) {
    bad = ok;
    bad.row_norm_eps = eps;
    CHECK(instantid::cuda::skinny_gemm(bad, SkinnyGemmWorkspace{}, nullptr) ==
          cudaErrorInvalidValue);
  }
  SkinnyGemmParams plain = ok;
  plain.row_norm_colsum = nullptr;
  CHECK(instantid::cuda::skinny_gemm_pair(ok, plain, SkinnyGemmWorkspace{}, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(instantid::cuda::skinny_gemm_pair(plain, ok, SkinnyGemmWorkspace{}, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaSuccess);
  LinearGemm no_clusters(64, gemm_options(SkinnyGemmMath::kTf32x3, false));
  CHECK_FALSE(no_clusters.row_norm_supported(8));
  REQUIRE_THROWS_WITH(no_clusters.run_row_normalized(ok.a, ok.w, ok.row_norm_colsum, nullptr, ok.c,
                                                     8, 64, 128, 1e-5f, false, nullptr),
                      Catch::Contains("rows: got 8") && Catch::Contains("cluster sums"));
  LinearGemm small(8, gemm_options(SkinnyGemmMath::kTf32x3));
  REQUIRE_THROWS_WITH(small.run_row_normalized(ok.a, ok.w, ok.row_norm_colsum, nullptr, ok.c, 9, 64,
                                               128, 1e-5f, false, nullptr),
                      Catch::Contains("rows: got 9") && Catch::Contains("expected 1..8"));
  REQUIRE_THROWS_WITH(small.run_row_normalized(ok.a, ok.w, ok.row_norm_colsum, nullptr, ok.c, 8, 64,
                                               128, 0.0f, false, nullptr),
                      Catch::Contains("eps: got 0"));
  cudaStreamDestroy(stream);
}

TEST_CASE("skinny GEMM and its cuBLAS fallback read beta·C from c_in", "[cuda][skinny_gemm]") {
  for (int m : {32, 80}) {  // the skinny kernel; past its 64 rows, cuBLAS
    INFO("M " << m);
    const Problem p = random_problem(m, 200, 256, true, 1.0f, false, 77 + m);
    DeviceProblem d(p);
    const DeviceBuffer c_in = upload(p.c0);
    for (const bool cublas : {false, true}) {
      LinearGemmOptions o = gemm_options(SkinnyGemmMath::kTf32x3);
      if (cublas) o.path = GemmPath::kCublas;
      LinearGemm gemm(64, o);
      REQUIRE(cudaMemset(d.c.data(), 0xFF, d.c.bytes()) == cudaSuccess);  // C itself is not read
      gemm.run(d.a.as<float>(), d.w.as<float>(), d.b.as<float>(), d.c.as<float>(), p.m, p.n, p.k,
               p.beta, false, nullptr, c_in.as<float>());
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      check_accuracy(p, d.download(p), cublas ? "c_in cuBLAS" : "c_in");
      CHECK(download_all(c_in) == p.c0);
    }
  }
}

TEST_CASE("skinny GEMM argument checks", "[cuda][skinny_gemm]") {
  using instantid::cuda::skinny_gemm;
  const Problem p = random_problem(4, 64, 64, false, 0.0f, false, 3);
  DeviceProblem d(p);
  SkinnyGemmParams ok;
  ok.a = d.a.as<float>();
  ok.w = d.w.as<float>();
  ok.c = d.c.as<float>();
  ok.m = 4;
  ok.n = 64;
  ok.k = 64;
  ok.splits = 1;
  REQUIRE(skinny_gemm(ok, SkinnyGemmWorkspace{}, nullptr) == cudaSuccess);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  SkinnyGemmParams bad = ok;
  bad.m = 65;
  CHECK(skinny_gemm(bad, SkinnyGemmWorkspace{}, nullptr) == cudaErrorInvalidValue);
  bad = ok;
  bad.k = 62;
  CHECK(skinny_gemm(bad, SkinnyGemmWorkspace{}, nullptr) == cudaErrorInvalidValue);
  bad = ok;
  bad.splits = 0;
  CHECK(skinny_gemm(bad, SkinnyGemmWorkspace{}, nullptr) == cudaErrorInvalidValue);
  bad = ok;
  bad.splits = 3;  // 2 k tiles
  CHECK(skinny_gemm(bad, SkinnyGemmWorkspace{}, nullptr) == cudaErrorInvalidValue);
  bad = ok;
  bad.splits = 2;  // needs a workspace
  CHECK(skinny_gemm(bad, SkinnyGemmWorkspace{}, nullptr) == cudaErrorInvalidValue);
  bad = ok;
  bad.lane_rows = 5;
  CHECK(skinny_gemm(bad, SkinnyGemmWorkspace{}, nullptr) == cudaErrorInvalidValue);
  bad = ok;
  bad.w = ok.w + 2;  // 8-byte aligned
  CHECK(skinny_gemm(bad, SkinnyGemmWorkspace{}, nullptr) == cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaSuccess);

  LinearGemm gemm(8);
  REQUIRE_THROWS_WITH(gemm.run(ok.a, ok.w, nullptr, ok.c, 4, 64, 64, 1.0f, true, nullptr),
                      Catch::Contains("beta with gelu") && Catch::Contains("got 1") &&
                          Catch::Contains("expected 0"));
  REQUIRE_THROWS_WITH(gemm.run(ok.a, ok.w, nullptr, ok.c, 0, 64, 64, 0.0f, false, nullptr),
                      Catch::Contains("shape") && Catch::Contains("got [0, 64]"));
  REQUIRE_THROWS_WITH(LinearGemm(0), Catch::Contains("max_rows: got 0"));
  REQUIRE_THROWS_WITH(LinearGemm(8, gemm_options(SkinnyGemmMath::kFp32Fma, true, 6)),
                      Catch::Contains("lane_rows: got 6") && Catch::Contains("expected 0, 4 or 8"));
}

TEST_CASE("skinny GEMM replays from a CUDA graph bit-identically (programmatic launches)",
          "[cuda][skinny_gemm]") {
  const SkinnyGemmMath math = GENERATE(SkinnyGemmMath::kFp32Fma, SkinnyGemmMath::kTf32x3);
  INFO("3xTF32 " << (math == SkinnyGemmMath::kTf32x3));
  // 8 CTAs per SM: both launches split K
  LinearGemm gemm(34, gemm_options(math, true, 0, 8));
  gemm.set_programmatic(true);  // the second launch starts early and waits for the first
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  // Split-K launches in a row with different tile counts sharing one workspace, as in the
  // Resampler: 20 tiles, then 80 (whose tickets lie past the first one's partial sums' start).
  const Problem p1 = random_problem(32, 1280, 1280, false, 0.0f, false, 21);
  const Problem p2 = random_problem(32, 5120, 1280, true, 0.0f, true, 22);
  DeviceProblem d1(p1), d2(p2);
  const std::vector<float> eager1 = run_linear(gemm, p1, d1, stream);
  const std::vector<float> eager2 = run_linear(gemm, p2, d2, stream);
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  gemm.run(d1.a.as<float>(), d1.w.as<float>(), nullptr, d1.c.as<float>(), p1.m, p1.n, p1.k, 0.0f,
           false, stream);
  gemm.run(d2.a.as<float>(), d2.w.as<float>(), d2.b.as<float>(), d2.c.as<float>(), p2.m, p2.n, p2.k,
           0.0f, true, stream);
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (int rep = 0; rep < 3; ++rep) {
    d1.reset(p1);
    d2.reset(p2);
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    const std::vector<float> g1 = d1.download(p1), g2 = d2.download(p2);
    CHECK(std::memcmp(g1.data(), eager1.data(), g1.size() * 4) == 0);
    CHECK(std::memcmp(g2.data(), eager2.data(), g2.size() * 4) == 0);
  }
  check_accuracy(p1, eager1, "graph");
  check_accuracy(p2, eager2, "graph");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}
