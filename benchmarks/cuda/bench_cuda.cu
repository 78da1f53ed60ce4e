// bench_cuda: GPU time of the fused decoupled attention over one SDXL 1024² step, per layer and
// text-only, the GPU Resampler, the ip K/V preparation and the resident memory of a prepared
// identity. Prints one JSON object per line. The ceiling is a large device-to-device copy measured
// in the same run; µs-scale work is timed as CUDA graphs; every layer reads its own buffers (the
// step moves ~0.90 GB, far beyond L2) and per-layer rows rotate over 8 buffer sets.
//
//   bench_cuda [--reps N] [--tune] [--profile] [--resampler] [--resampler-ctas N]   (--tune: also
//   compare the resident and persistent tiles and more copy kernels; --profile: only one launch of
//   each variant per layer shape, for Nsight Compute; --resampler: only the copy ceiling and the
//   Resampler rows; --resampler-ctas: the skinny GEMMs' CTA target per SM,
//   LinearGemmOptions::ctas_per_sm)

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "cuda/ip_projection.hpp"
#include "cuda/resampler.hpp"
#include "instantid/kernels/decoupled_attention.cuh"
#include "instantid/model.hpp"

namespace {

using instantid::HostTensor;
using instantid::cuda::check_cuda;
using instantid::cuda::DeviceBuffer;
namespace kernels = instantid::kernels;

int g_reps = 30;
bool g_tune = false;
int g_resampler_ctas_per_sm = 0;  // --resampler-ctas N: skinny GEMM CTA target (0: default)
std::string g_card;

__global__ void fill_kernel(__half* x, std::int64_t n, std::uint32_t seed) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
  h ^= h >> 15;
  h *= 2246822519u;
  h ^= h >> 13;
  x[i] = __float2half((static_cast<float>(h & 0xFFFF) / 32768.0f - 1.0f) * 1.7f);
}

void fill(DeviceBuffer& b, std::uint32_t seed) {
  const std::int64_t n = static_cast<std::int64_t>(b.bytes() / 2);
  fill_kernel<<<static_cast<unsigned>((n + 255) / 256), 256>>>(b.as<__half>(), n, seed);
  check_cuda(cudaGetLastError(), "fill");
}

struct Stats {
  double median_ms = 0, min_ms = 0, max_ms = 0;
};

// Times `work` (enqueued on stream) with events: warm-up, then g_reps runs; per-run times.
Stats time_it(cudaStream_t stream, const std::function<void()>& work, int inner = 1) {
  for (int i = 0; i < 3; ++i) work();
  check_cuda(cudaStreamSynchronize(stream), "warm-up");
  std::vector<double> ms;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int r = 0; r < g_reps; ++r) {
    cudaEventRecord(a, stream);
    work();
    cudaEventRecord(b, stream);
    check_cuda(cudaEventSynchronize(b), "timing");
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(static_cast<double>(t) / inner);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return Stats{ms[ms.size() / 2], ms.front(), ms.back()};
}

double g_copy_gbs = 0;

void row(const std::string& name, const Stats& s, double bytes, const std::string& extra = "") {
  const double gbs = bytes / (s.median_ms * 1e-3) / 1e9;
  std::printf(
      "{\"bench\": \"%s\", \"card\": \"%s\", \"median_ms\": %.5f, \"min_ms\": %.5f, \"max_ms\": "
      "%.5f, \"reps\": %d, \"bytes\": %.0f, \"GB_s\": %.1f, \"pct_of_copy\": %.1f%s}\n",
      name.c_str(), g_card.c_str(), s.median_ms, s.min_ms, s.max_ms, g_reps, bytes, gbs,
      g_copy_gbs > 0 ? 100.0 * gbs / g_copy_gbs : 0.0, extra.c_str());
  std::fflush(stdout);
}

// A graph of whatever `enqueue` puts on the stream.
cudaGraphExec_t capture(cudaStream_t stream, const std::function<void()>& enqueue) {
  cudaGraph_t graph;
  check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "capture");
  enqueue();
  check_cuda(cudaStreamEndCapture(stream, &graph), "capture end");
  cudaGraphExec_t exec;
  check_cuda(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  cudaGraphDestroy(graph);
  return exec;
}

// time_it over launches of a graph of whatever `enqueue` puts on the stream.
Stats time_graph(cudaStream_t stream, const std::function<void()>& enqueue, int inner = 1) {
  cudaGraphExec_t exec = capture(stream, enqueue);
  const Stats s = time_it(
      stream, [&] { check_cuda(cudaGraphLaunch(exec, stream), "graph"); }, inner);
  cudaGraphExecDestroy(exec);
  return s;
}

// One attn2 layer call with its own buffers.
struct Layer {
  int n = 0, c = 0;
  DeviceBuffer q, k, v, out, ip;  // ip: K_c, V_c, K_u, V_u [16, C]
  kernels::DecoupledAttentionParams params;
  double bytes(bool with_ip) const {
    return static_cast<double>(q.bytes() + out.bytes() + k.bytes() + v.bytes()) +
           (with_ip ? 2.0 * 16 * c * 2 * 2 : 0.0);  // batch rows read cond or uncond K/V once
  }
};

Layer make_layer(int n, int c, int batch, int text, std::uint32_t seed) {
  Layer l;
  l.n = n;
  l.c = c;
  const std::size_t qb = static_cast<std::size_t>(batch) * n * c * 2;
  const std::size_t kb = static_cast<std::size_t>(batch) * text * c * 2;
  l.q = DeviceBuffer(qb);
  l.out = DeviceBuffer(qb);
  l.k = DeviceBuffer(kb);
  l.v = DeviceBuffer(kb);
  l.ip = DeviceBuffer(static_cast<std::size_t>(4) * 16 * c * 2);
  fill(l.q, seed);
  fill(l.k, seed + 1);
  fill(l.v, seed + 2);
  fill(l.ip, seed + 3);
  kernels::DecoupledAttentionParams& p = l.params;
  p.q = l.q.data();
  p.q_batch_stride = static_cast<std::int64_t>(n) * c;
  p.q_row_stride = c;
  p.out = l.out.data();
  p.out_batch_stride = p.q_batch_stride;
  p.out_row_stride = c;
  p.k = l.k.data();
  p.v = l.v.data();
  p.k_batch_stride = p.v_batch_stride = static_cast<std::int64_t>(text) * c;
  p.k_row_stride = p.v_row_stride = c;
  p.batch = batch;
  p.queries = n;
  p.text_len = text;
  p.heads = c / 64;
  p.images_per_chunk = batch / 2 > 0 ? batch / 2 : 1;
  p.uncond_chunks = 0b10;
  p.num_identities = 1;
  const __half* ip = l.ip.as<__half>();
  const std::int64_t tc = 16LL * c;
  p.ip[0].k[0] = ip;
  p.ip[0].v[0] = ip + tc;
  p.ip[0].k[1] = ip + 2 * tc;
  p.ip[0].v[1] = ip + 3 * tc;
  p.ip[0].row_stride = c;
  p.ip[0].tokens = 16;
  p.ip[0].scale = 0.8f;
  return l;
}

void launch(const Layer& l, bool with_ip, cudaStream_t stream) {
  kernels::DecoupledAttentionParams p = l.params;
  if (!with_ip) p.num_identities = 0;
  check_cuda(kernels::decoupled_attention(kernels::AttentionDType::kF16, 64, p, stream), "launch");
}

// SDXL's attn2 layers in call order: input 4,5 (2 × 2 at 640), input 7,8 (2 × 10 at 1280),
// middle (10 at 1280), output 0,1,2 (3 × 10 at 1280), output 3,4,5 (3 × 2 at 640).
std::vector<int> sdxl_widths() {
  std::vector<int> w;
  for (int i = 0; i < 4; ++i) w.push_back(640);
  for (int i = 0; i < 60; ++i) w.push_back(1280);
  for (int i = 0; i < 6; ++i) w.push_back(640);
  return w;
}

void bench_copy(cudaStream_t stream) {
  const std::size_t bytes = std::size_t{1} << 30;
  DeviceBuffer a(bytes), b(bytes);
  check_cuda(cudaMemset(a.data(), 1, bytes), "memset");
  const Stats s = time_it(stream, [&] {
    check_cuda(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, stream),
               "copy");
  });
  g_copy_gbs = 2.0 * bytes / (s.median_ms * 1e-3) / 1e9;
  row("d2d_copy_1GiB", s, 2.0 * bytes, ", \"note\": \"ceiling: bytes read + written\"");
}

// Copies count 16-byte words; with kWaitForPrevious it first waits for the previous grid in the
// stream (programmatic dependent launch), as the attention kernel does.
template <bool kWaitForPrevious>
__global__ void copy_rows_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst,
                                 std::size_t count) {
  if constexpr (kWaitForPrevious) {
    kernels::wait_for_previous_grid();
    kernels::allow_next_grid();
  }
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < count;
       i += std::size_t{gridDim.x} * blockDim.x) {
    dst[i] = src[i];
  }
}

// The same copy with kWords words per thread, all loaded before any is stored (more bytes in
// flight per thread), one pass over a grid that covers count; kStreaming: evict-first loads and
// stores (__ldcs / __stcs), since nothing is read twice.
template <int kWords, bool kStreaming>
__global__ void copy_words_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst,
                                  std::size_t count) {
  kernels::wait_for_previous_grid();
  kernels::allow_next_grid();
  const std::size_t base = blockIdx.x * std::size_t{blockDim.x} * kWords + threadIdx.x;
  uint4 w[kWords];
#pragma unroll
  for (int j = 0; j < kWords; ++j) {
    const std::size_t i = base + static_cast<std::size_t>(j) * blockDim.x;
    if (i < count) w[j] = kStreaming ? __ldcs(src + i) : src[i];
  }
#pragma unroll
  for (int j = 0; j < kWords; ++j) {
    const std::size_t i = base + static_cast<std::size_t>(j) * blockDim.x;
    if (i < count) {
      if (kStreaming) {
        __stcs(dst + i, w[j]);
      } else {
        dst[i] = w[j];
      }
    }
  }
}

template <int kWords>
using WordsPerThread = std::integral_constant<int, kWords>;

// The bytes of one fused layer call moved by a copy: the first read_blocks blocks read the text K/V
// and the ip K/V once (kept alive by a data-dependent store to `sink` that never happens for the
// benchmark's data), the others copy q to out one 16-byte word per thread. The K/V blocks come
// first, as the attention kernel requests K/V before q.
struct ReadSegments {
  const uint4* data[3];
  std::size_t words[3];
};

__global__ void move_layer_bytes_kernel(const uint4* __restrict__ q, uint4* __restrict__ out,
                                        std::size_t q_words, ReadSegments reads,
                                        unsigned read_blocks, unsigned* sink) {
  kernels::wait_for_previous_grid();
  kernels::allow_next_grid();
  if (blockIdx.x < read_blocks) {
    std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x;
    for (int seg = 0; seg < 3; ++seg) {
      if (i < reads.words[seg]) {
        const uint4 w = reads.data[seg][i];
        if ((w.x & w.y & w.z & w.w) == 0xFFFFFFFFu) *sink = w.x;
        return;
      }
      i -= reads.words[seg];
    }
    return;
  }
  const std::size_t i = (blockIdx.x - read_blocks) * std::size_t{blockDim.x} + threadIdx.x;
  if (i < q_words) out[i] = q[i];
}

// The floor of the step's shape: every layer's q copied to its out by its own kernel (70 kernels
// in one graph), no attention; plain launches and early (programmatic dependent) launches. What
// separates it from the one-kernel copy ceiling is the cost of 70 kernel boundaries, which the
// fused step pays too. The grid-stride copy (4 CTAs of 512 threads per SM) is the probe of the
// earlier measurements; a grid of one word per thread is the faster copy, and with the K/V reads
// added it moves exactly the fused step's bytes. --tune adds more words per thread. Returns that
// probe's median (0 where it does not run: below sm_90).
double bench_copy_step(const std::vector<Layer>& layers, cudaStream_t stream) {
  int device = 0, sms = 0, major = 0;
  check_cuda(cudaGetDevice(&device), "device");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "sms");
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cc");
  double q_out_bytes = 0, fused_bytes = 0;
  for (const Layer& l : layers) {
    q_out_bytes += 2.0 * l.q.bytes();
    fused_bytes += l.bytes(true);
  }
  const auto time_row = [&](const std::string& name, double bytes,
                            const std::function<void()>& enqueue) {
    const Stats s = time_graph(stream, enqueue);
    row(name, s, bytes, ", \"layers\": 70");
    return s.median_ms;
  };
  const auto words_of = [](const DeviceBuffer& b) { return b.bytes() / sizeof(uint4); };
  const std::string name = "probe_sdxl_step_q_to_out_copy_70_kernels";
  for (bool early : {false, true}) {
    if (early && major < 9) continue;  // programmatic dependent launch needs sm_90
    time_row(name + (early ? "_early_launch" : ""), q_out_bytes, [&] {
      for (const Layer& l : layers) {
        const auto* src = static_cast<const uint4*>(l.q.data());
        auto* dst = static_cast<uint4*>(l.out.data());
        const dim3 grid(static_cast<unsigned>(sms) * 4), block(512);
        check_cuda(early ? kernels::launch_kernel(true, copy_rows_kernel<true>, grid, block, 0,
                                                  stream, src, dst, words_of(l.q))
                         : kernels::launch_kernel(false, copy_rows_kernel<false>, grid, block, 0,
                                                  stream, src, dst, words_of(l.q)),
                   "copy launch");
      }
    });
  }
  if (major < 9) return 0;
  const auto blocks = [](std::size_t words, std::size_t per_block) {
    return static_cast<unsigned>((words + per_block - 1) / per_block);
  };
  // copy_words_kernel<kWords, kStreaming> with `threads` per CTA (WordsPerThread<kWords>,
  // std::true_type / std::false_type), so that the grid follows the kernel's words per thread.
  const auto words_probe = [&](auto words, auto streaming, int threads, const std::string& suffix) {
    constexpr int kWords = decltype(words)::value;
    const auto kernel = copy_words_kernel<kWords, decltype(streaming)::value>;
    time_row(name + "_early_launch_" + suffix, q_out_bytes, [&] {
      for (const Layer& l : layers) {
        const std::size_t per_block = static_cast<std::size_t>(threads) * kWords;
        check_cuda(
            kernels::launch_kernel(true, kernel, dim3(blocks(words_of(l.q), per_block)),
                                   dim3(threads), 0, stream, static_cast<const uint4*>(l.q.data()),
                                   static_cast<uint4*>(l.out.data()), words_of(l.q)),
            "copy launch");
      }
    });
  };
  words_probe(WordsPerThread<1>{}, std::false_type{}, 256, "one_word_per_thread");
  DeviceBuffer sink(sizeof(unsigned));
  const auto move_step_bytes = [&] {
    for (const Layer& l : layers) {
      // The ip K/V rows of cond and uncond, 16 tokens each, as the fused step counts them.
      const ReadSegments reads{
          {static_cast<const uint4*>(l.k.data()), static_cast<const uint4*>(l.v.data()),
           static_cast<const uint4*>(l.ip.data())},
          {words_of(l.k), words_of(l.v), words_of(l.ip)}};
      const unsigned read_blocks = blocks(words_of(l.k) + words_of(l.v) + words_of(l.ip), 256);
      check_cuda(kernels::launch_kernel(true, move_layer_bytes_kernel,
                                        dim3(read_blocks + blocks(words_of(l.q), 256)), dim3(256),
                                        0, stream, static_cast<const uint4*>(l.q.data()),
                                        static_cast<uint4*>(l.out.data()), words_of(l.q), reads,
                                        read_blocks, sink.as<unsigned>()),
                 "copy launch");
    }
  };
  const double bytes_moved_ms =
      time_row("probe_sdxl_step_fused_bytes_70_kernels_early_launch", fused_bytes, move_step_bytes);
  if (!g_tune) return bytes_moved_ms;
  words_probe(WordsPerThread<1>{}, std::false_type{}, 128, "one_word_per_thread_t128");
  words_probe(WordsPerThread<1>{}, std::false_type{}, 512, "one_word_per_thread_t512");
  words_probe(WordsPerThread<2>{}, std::false_type{}, 256, "two_words_per_thread");
  words_probe(WordsPerThread<4>{}, std::false_type{}, 256, "four_words_per_thread");
  words_probe(WordsPerThread<8>{}, std::false_type{}, 256, "eight_words_per_thread");
  words_probe(WordsPerThread<1>{}, std::true_type{}, 256, "one_word_per_thread_streaming");
  words_probe(WordsPerThread<4>{}, std::true_type{}, 256, "four_words_per_thread_streaming");
  return bytes_moved_ms;
}

void bench_step(cudaStream_t stream) {
  const int batch = 2, text = 77;
  std::vector<Layer> layers;
  std::uint32_t seed = 1;
  for (int w : sdxl_widths())
    layers.push_back(make_layer(w == 640 ? 4096 : 1024, w, batch, text, seed += 7));
  check_cuda(cudaDeviceSynchronize(), "fill");
  const double bytes_moved_ms = bench_copy_step(layers, stream);
  for (bool with_ip : {true, false}) {
    double bytes = 0;
    for (const Layer& l : layers) bytes += l.bytes(with_ip);
    const Stats s = time_graph(stream, [&] {
      for (const Layer& l : layers) launch(l, with_ip, stream);
    });
    const double floor_ms = bytes / (g_copy_gbs * 1e9) * 1e3;
    char extra[320];
    std::snprintf(extra, sizeof extra,
                  ", \"layers\": 70, \"batch\": 2, \"text_tokens\": 77, \"ip_tokens\": %d, "
                  "\"dtype\": \"f16\", \"copy_floor_ms\": %.4f",
                  with_ip ? 16 : 0, floor_ms);
    if (with_ip && bytes_moved_ms > 0) {  // the same bytes moved by 70 copy kernels
      const std::size_t used = std::strlen(extra);
      std::snprintf(extra + used, sizeof extra - used,
                    ", \"bytes_moved_probe_ms\": %.4f, \"x_bytes_moved_probe\": %.2f",
                    bytes_moved_ms, s.median_ms / bytes_moved_ms);
    }
    row(with_ip ? "sdxl_step_attn2_fused" : "sdxl_step_attn2_text_only", s, bytes, extra);
  }
}

// Resident-variant tiles (warps per CTA × 16-row blocks per warp) on the whole step.
template <int kWarps, int kGroups, bool kSingle = true, int kSmWarps = 16>
void tune_step(const std::vector<Layer>& layers, cudaStream_t stream, double bytes) {
  const Stats s = time_graph(stream, [&] {
    for (const Layer& l : layers) {
      check_cuda(kernels::launch_resident_attention<__half, 64, kWarps, kGroups, kSingle, kSmWarps>(
                     l.params, stream),
                 "tune launch");
    }
  });
  char extra[96];
  std::snprintf(extra, sizeof extra,
                ", \"warps\": %d, \"row_blocks_per_warp\": %d, \"one_pass\": %s, \"sm_warps\": %d",
                kWarps, kGroups, kSingle ? "true" : "false", kSmWarps);
  row("tune_sdxl_step_fused_w" + std::to_string(kWarps) + "_g" + std::to_string(kGroups) +
          (kSingle ? "_onepass" : "_online") + "_occ" + std::to_string(kSmWarps),
      s, bytes, extra);
}

// Persistent-variant tiles (warps per CTA × q tiles in flight per warp × CTAs per SM; kWarpGroup:
// wgmma on 64-row warpgroup tiles, sm_90a only, skipped elsewhere).
// kProbe 1: memory pattern only (q read, out written, no math); 2: math only. early: launch
// each layer before the previous one has finished (programmatic dependent launch, sm_90+).
template <int kWarps, int kStages, int kCtasPerSm, int kMmaTiles, int kProbe = 0,
          bool kWarpGroup = false>
void tune_persistent(const std::vector<Layer>& layers, cudaStream_t stream, double bytes,
                     bool early = true, const std::string& suffix = "") {
  using Tile = kernels::PersistentTile<64, kWarps, kStages, kCtasPerSm, kMmaTiles, kWarpGroup>;
  if (kWarpGroup && !kernels::warpgroup_attention_available()) return;
  const Stats s = time_graph(stream, [&] {
    for (const Layer& l : layers) {
      check_cuda(
          kernels::launch_persistent_attention<__half, Tile, kProbe>(l.params, stream, 0, early),
          "tune launch");
    }
  });
  char extra[160];
  std::snprintf(extra, sizeof extra,
                ", \"warps\": %d, \"stages\": %d, \"ctas_per_sm\": %d, \"rows_per_warp\": %d, "
                "\"early_launch\": %s",
                kWarps, kStages, kCtasPerSm, 16 * kMmaTiles, early ? "true" : "false");
  row(std::string("tune_sdxl_step_fused_persistent") + (kWarpGroup ? "_wgmma" : "") + "_w" +
          std::to_string(kWarps) + "_s" + std::to_string(kStages) + "_c" +
          std::to_string(kCtasPerSm) + "_r" + std::to_string(16 * kMmaTiles) +
          (kProbe == 1   ? "_probe_memory_only"
           : kProbe == 2 ? "_probe_math_only"
           : kProbe == 3 ? "_probe_prologue_only"
                         : "") +
          (early ? "" : "_no_early_launch") + suffix,
      s, bytes, extra);
}

// Timeline of the default persistent kernel over the 70-layer step (probe 4: every warp records
// %globaltimer at entry, after griddepcontrol.wait, after the K/V barrier, after its last tile's
// math and at exit). Per layer shape, medians over layers of: the layer's span (first wait
// released → last warp exited), the boundary (last exit of the previous layer → first wait
// released), and per warp the prologue (K/V barrier), math, and store/drain phases. Runs last:
// it overwrites the first rows of every q.
template <typename Tile>
void bench_timeline(const std::vector<Layer>& layers, cudaStream_t stream) {
  if (Tile::kWarpGroup && !kernels::warpgroup_attention_available()) return;
  cudaGraphExec_t exec = capture(stream, [&] {
    for (const Layer& l : layers) {
      check_cuda(kernels::launch_persistent_attention<__half, Tile, 4>(l.params, stream),
                 "timeline launch");
    }
  });
  for (int i = 0; i < 4; ++i) check_cuda(cudaGraphLaunch(exec, stream), "graph");
  check_cuda(cudaStreamSynchronize(stream), "timeline");
  int device = 0, sms = 0;
  check_cuda(cudaGetDevice(&device), "device");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "sms");
  struct Layout {
    std::vector<double> span, boundary, prologue, math, drain, end_spread;
  };
  std::map<int, Layout> by_width;
  auto median = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  double previous_end = 0;
  for (std::size_t li = 0; li < layers.size(); ++li) {
    const Layer& l = layers[li];
    const int tiles_per_pair = (l.n + Tile::kTileRows - 1) / Tile::kTileRows;
    const long long total = 2LL * (l.c / 64) * tiles_per_pair;
    const long long per_cta = std::min<long long>((total + sms - 1) / sms, tiles_per_pair);
    const long long grid = (total + per_cta - 1) / per_cta;
    std::vector<std::uint64_t> rec(static_cast<std::size_t>(grid) * Tile::kWarps * 8);
    check_cuda(cudaMemcpy(rec.data(), l.q.data(), rec.size() * 8, cudaMemcpyDeviceToHost),
               "timeline copy");
    double first_run = 1e300, last_end = 0, first_end = 1e300;
    Layout& out = by_width[l.c];
    std::vector<double> prologue, math, drain;
    for (std::size_t w = 0; w < rec.size() / 8; ++w) {
      const std::uint64_t* r = &rec[w * 8];
      first_run = std::min(first_run, static_cast<double>(r[1]));
      last_end = std::max(last_end, static_cast<double>(r[4]));
      first_end = std::min(first_end, static_cast<double>(r[4]));
      prologue.push_back(static_cast<double>(r[2] - r[1]));
      if (r[5] > 0) {
        math.push_back(static_cast<double>(r[3] - r[2]));
        drain.push_back(static_cast<double>(r[4] - r[3]));
      }
    }
    out.span.push_back(last_end - first_run);
    if (li > 0) out.boundary.push_back(first_run - previous_end);
    out.prologue.push_back(median(prologue));
    out.math.push_back(median(math));
    out.drain.push_back(median(drain));
    out.end_spread.push_back(last_end - first_end);
    previous_end = last_end;
  }
  for (const auto& [width, t] : by_width) {
    std::printf(
        "{\"bench\": \"timeline_persistent%s_%s\", \"card\": \"%s\", \"layers\": %zu, "
        "\"span_us\": %.2f, \"boundary_us\": %.2f, \"warp_prologue_us\": %.2f, "
        "\"warp_math_us\": %.2f, \"warp_store_drain_us\": %.2f, \"exit_spread_us\": %.2f, "
        "\"note\": \"medians over layers; span = first wait released to last exit; boundary = "
        "previous layer's last exit to this layer's first wait released\"}\n",
        Tile::kWarpGroup ? "_wgmma" : "", width == 640 ? "4096x640" : "1024x1280", g_card.c_str(),
        t.span.size(), median(t.span) * 1e-3, median(t.boundary) * 1e-3, median(t.prologue) * 1e-3,
        median(t.math) * 1e-3, median(t.drain) * 1e-3, median(t.end_spread) * 1e-3);
  }
  cudaGraphExecDestroy(exec);
}

void bench_tune(cudaStream_t stream) {
  std::vector<Layer> layers;
  std::uint32_t seed = 3;
  for (int w : sdxl_widths())
    layers.push_back(make_layer(w == 640 ? 4096 : 1024, w, 2, 77, seed += 7));
  check_cuda(cudaDeviceSynchronize(), "fill");
  double bytes = 0;
  for (const Layer& l : layers) bytes += l.bytes(true);
  tune_step<4, 1, true, 20>(layers, stream, bytes);  // the resident variant's default
  // mma.sync tiles: the default (one q tile in flight per warp), then alternatives
  tune_persistent<12, 1, 1, 1>(layers, stream, bytes);
  tune_persistent<12, 1, 1, 1>(layers, stream, bytes, false);
  tune_persistent<12, 2, 1, 1>(layers, stream, bytes);
  tune_persistent<16, 1, 1, 1>(layers, stream, bytes);
  tune_persistent<8, 1, 1, 1>(layers, stream, bytes);
  tune_persistent<12, 1, 1, 2>(layers, stream, bytes);
  tune_persistent<8, 1, 2, 1>(layers, stream, bytes);
  tune_persistent<12, 1, 1, 1, 1>(layers, stream, bytes);
  tune_persistent<12, 1, 1, 1, 2>(layers, stream, bytes);
  tune_persistent<12, 1, 1, 1, 3>(layers, stream, bytes);
  // wgmma tiles (sm_90a)
  tune_persistent<12, 1, 1, 1, 0, true>(layers, stream, bytes);
  tune_persistent<12, 2, 1, 1, 0, true>(layers, stream, bytes);
  tune_persistent<8, 1, 1, 1, 0, true>(layers, stream, bytes);
  tune_persistent<16, 1, 1, 1, 0, true>(layers, stream, bytes);
  tune_persistent<8, 1, 2, 1, 0, true>(layers, stream, bytes);
  tune_persistent<12, 1, 1, 1, 1, true>(layers, stream, bytes);
  tune_persistent<12, 1, 1, 1, 2, true>(layers, stream, bytes);
  tune_persistent<12, 1, 1, 1, 3, true>(layers, stream, bytes);
  // The two layer shapes apart (per-shape tile choice): the step's layers of one width only.
  for (int width : {640, 1280}) {
    std::vector<Layer> some;
    std::vector<std::size_t> from;
    double some_bytes = 0;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      if (layers[i].c != width) continue;
      from.push_back(i);
      some.push_back(std::move(layers[i]));
      some_bytes += some.back().bytes(true);
    }
    const std::string shape = width == 640 ? "_only_4096x640" : "_only_1024x1280";
    tune_persistent<12, 1, 1, 1>(some, stream, some_bytes, true, shape);
    tune_persistent<16, 1, 1, 1>(some, stream, some_bytes, true, shape);
    tune_persistent<12, 1, 1, 1, 0, true>(some, stream, some_bytes, true, shape);
    tune_persistent<16, 1, 1, 1, 0, true>(some, stream, some_bytes, true, shape);
    tune_persistent<8, 1, 1, 1, 0, true>(some, stream, some_bytes, true, shape);
    for (std::size_t j = 0; j < from.size(); ++j) layers[from[j]] = std::move(some[j]);
  }
  bench_timeline<kernels::DefaultPersistentTile>(layers, stream);
  bench_timeline<kernels::WarpGroupPersistentTile>(layers, stream);
}

void bench_layers(cudaStream_t stream) {
  const int batch = 2, text = 77, sets = 8;
  for (int w : {640, 1280}) {
    const int n = w == 640 ? 4096 : 1024;
    std::vector<Layer> layers;
    for (int i = 0; i < sets; ++i) layers.push_back(make_layer(n, w, batch, text, 100 + 13 * i));
    check_cuda(cudaDeviceSynchronize(), "fill");
    for (bool with_ip : {true, false}) {
      const Stats s = time_graph(
          stream,
          [&] {
            for (const Layer& l : layers) launch(l, with_ip, stream);
          },
          sets);
      char extra[160];
      std::snprintf(extra, sizeof extra, ", \"N\": %d, \"C\": %d, \"batch\": 2, \"ip_tokens\": %d",
                    n, w, with_ip ? 16 : 0);
      row(std::string("layer_") + (w == 640 ? "4096x640" : "1024x1280") +
              (with_ip ? "_fused" : "_text_only"),
          s, layers[0].bytes(with_ip), extra);
    }
  }
}

// The Resampler's tensors of InstantIDModel::synthetic (a layout without layers has no
// ip_adapter.* projections).
instantid::InstantIDModel resampler_weights(const instantid::ModelLayout& layout, int d_out) {
  instantid::ModelLayout resampler_only = layout;
  resampler_only.layers.clear();
  return instantid::InstantIDModel::synthetic(resampler_only, d_out, 5);
}

// The Resampler with its default GEMMs (skinny kernel, programmatic launches, split-K sums in
// clusters on sm_90+, FF LayerNorms folded into the FF-in GEMMs, layer 0's latent terms
// precomputed), with those terms computed per run, with the FF LayerNorms as kernels of their own
// as well, with the split-K sums through the global workspace instead, with the skinny kernel's
// other multiply and with the cuBLAS SGEMM path, in the same process.
void bench_resampler(cudaStream_t stream) {
  const instantid::ModelLayout layout = instantid::ModelLayout::sdxl();
  const int d_out = 2048, batch = 2;
  const instantid::InstantIDModel w = resampler_weights(layout, d_out);
  double weight_bytes = 0;
  for (const auto& kv : w.tensors()) weight_bytes += static_cast<double>(kv.second.numel()) * 4;
  using instantid::cuda::SkinnyGemmMath;
  const instantid::cuda::GpuResamplerOptions defaults;
  const SkinnyGemmMath other = defaults.gemm.math == SkinnyGemmMath::kTf32x3
                                   ? SkinnyGemmMath::kFp32Fma
                                   : SkinnyGemmMath::kTf32x3;
  const auto math_name = [](SkinnyGemmMath m) {
    return m == SkinnyGemmMath::kTf32x3 ? "3xTF32 tensor cores" : "fp32 FMA";
  };
  for (int variant = 0; variant < 6; ++variant) {
    instantid::cuda::GpuResamplerOptions options;
    if (g_resampler_ctas_per_sm > 0) options.gemm.ctas_per_sm = g_resampler_ctas_per_sm;
    std::string name = "resampler_cond_uncond", dtype;
    if (variant == 1) {
      options.gemm.cluster_reduce = false;
      name += "_workspace_split_sums";
    }
    if (variant == 2) {
      options.gemm.math = other;
      name += other == SkinnyGemmMath::kTf32x3 ? "_tf32x3" : "_fp32_fma";
    }
    if (variant == 4) {
      options.first_layer_constants = false;
      name += "_first_layer_per_run";
    }
    if (variant == 5) {
      options.first_layer_constants = false;
      options.fold_layer_norms = false;
      name += "_first_layer_per_run_ff_norm_kernels";
    }
    if (variant == 3) {
      options.gemm.path = instantid::cuda::GemmPath::kCublas;
      options.programmatic = false;
      name += "_cublas_path";
      dtype = "f32 (cuBLAS SGEMM, no TF32, plain launches)";
    }
    instantid::cuda::GpuResampler gpu(
        layout, d_out, [&](const std::string& s) -> const HostTensor& { return w.image_proj(s); },
        batch, 1, options);
    if (variant != 3) {
      dtype = std::string("f32 (skinny GEMM, ") + math_name(options.gemm.math) + ", split-K sums " +
              (gpu.cluster_reduce() ? "in clusters" : "through global memory") +
              (gpu.folds_layer_norms() ? ", FF LayerNorms folded" : ", FF LayerNorm kernels") +
              (gpu.first_layer_constants() ? ", layer 0's latent terms precomputed"
                                           : ", layer 0 computed per run") +
              ", programmatic launches)";
    }
    DeviceBuffer x(static_cast<std::size_t>(batch) * layout.embed_dim * 4);
    DeviceBuffer y(static_cast<std::size_t>(batch) * 16 * d_out * 4);
    check_cuda(cudaMemset(x.data(), 0, x.bytes()), "memset");
    const Stats s =
        time_graph(stream, [&] { gpu.run(x.as<float>(), batch, 1, y.as<float>(), stream); });
    row(name, s, weight_bytes,
        ", \"batch\": 2, \"dtype\": \"" + dtype + "\", \"note\": \"bytes = weights read\"");
  }
}

void bench_prepare(cudaStream_t stream) {
  const std::vector<int> widths = sdxl_widths();
  const int d_out = 2048, tokens = 16;
  std::vector<HostTensor> kw, vw;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-0.02f, 0.02f);
  for (int c : widths) {
    HostTensor a({c, d_out}), b({c, d_out});
    for (float& e : a.values()) e = u(rng);
    for (float& e : b.values()) e = u(rng);
    kw.push_back(std::move(a));
    vw.push_back(std::move(b));
  }
  std::vector<float> cond(static_cast<std::size_t>(tokens) * d_out, 0.5f),
      uncond(cond.size(), -0.5f);
  double weight_bytes = 0;
  for (const auto& t : kw) weight_bytes += 2.0 * t.numel() * 4;
  std::vector<double> ms;
  std::size_t table_bytes = 0;
  for (int r = 0; r < 3; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    auto table = instantid::cuda::compute_ip_key_values(
        widths, cond.data(), uncond.data(), tokens, d_out,
        [&](int n) -> const HostTensor& { return kw[static_cast<std::size_t>(n)]; },
        [&](int n) -> const HostTensor& { return vw[static_cast<std::size_t>(n)]; },
        instantid::EmbedsScaling::kVOnly, 0.8f, instantid::DType::kF16, stream);
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    table_bytes = table.storage.bytes();
  }
  std::sort(ms.begin(), ms.end());
  std::printf(
      "{\"bench\": \"prepare_ip_kv_70_layers\", \"card\": \"%s\", \"median_ms\": %.2f, \"min_ms\": "
      "%.2f, \"max_ms\": %.2f, \"reps\": 3, \"bytes\": %.0f, \"note\": \"wall time incl. "
      "host-to-device upload of the float32 projection weights (pageable)\"}\n",
      g_card.c_str(), ms[1], ms[0], ms[2], weight_bytes);
  // A prepared identity holds its ip K/V table, plus one [M, N] float mask per token count when
  // masked (1024²: 4096 + 1024 floats for M = 1).
  const double mask_bytes = (4096.0 + 1024.0) * 4;
  std::printf(
      "{\"bench\": \"prepared_patch_gpu_memory\", \"card\": \"%s\", \"bytes\": %zu, "
      "\"bytes_with_mask_1024\": %.0f, \"MB\": %.2f, \"note\": \"1 identity, f16, 16 tokens, 70 "
      "layers; resampler and projection weights freed\"}\n",
      g_card.c_str(), table_bytes, static_cast<double>(table_bytes) + mask_bytes,
      table_bytes / 1e6);
  std::fflush(stdout);
}

// --profile: one eager launch of each variant per layer shape, nothing timed (for Nsight Compute).
void run_profile(cudaStream_t stream) {
  for (int w : {1280, 640}) {
    const Layer l = make_layer(w == 640 ? 4096 : 1024, w, 2, 77, 11);
    for (auto v : {kernels::AttentionVariant::kResident, kernels::AttentionVariant::kPersistent,
                   kernels::AttentionVariant::kPersistentWarpGroup}) {
      if (v == kernels::AttentionVariant::kPersistentWarpGroup &&
          !kernels::warpgroup_attention_available()) {
        continue;
      }
      for (int r = 0; r < 2; ++r) {
        check_cuda(kernels::decoupled_attention_variant(kernels::AttentionDType::kF16, 64, v,
                                                        l.params, 0, stream),
                   "profile launch");
      }
    }
    check_cuda(cudaStreamSynchronize(stream), "profile");
  }
}

constexpr const char* kUsage =
    "usage: bench_cuda [--reps N] [--tune] [--resampler] [--resampler-ctas N] [--profile]\n"
    "\n"
    "Benchmarks of the CUDA backend on SDXL 1024^2 shapes (batch 2, fp16); one JSON row per\n"
    "measurement with the card's name, median / min / max ms, bytes, GB/s and % of the copy\n"
    "bandwidth measured in the same run (docs/performance.md).\n"
    "  --reps N            timed repetitions per row (default 30, at least 3)\n"
    "  --tune              also the kernel tiles, probes, per-shape rows and the timeline\n"
    "  --resampler         only the copy ceiling and the Resampler rows\n"
    "  --resampler-ctas N  skinny-GEMM CTAs per SM for the Resampler (default 3)\n"
    "  --profile           one launch per attention variant and layer shape, nothing timed\n"
    "                      (for Nsight Compute)\n"
    "  --help              this text\n";

// A count option's value: a whole number >= minimum, else -1.
int parse_count(const char* text, int minimum) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < minimum || value > 1000000) return -1;
  return static_cast<int>(value);
}

int usage_error(const std::string& what) {
  std::fprintf(stderr, "bench_cuda: %s\n\n", what.c_str());
  std::fputs(kUsage, stderr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  bool profile = false, resampler_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (arg == "--reps" || arg == "--resampler-ctas") {
      const int minimum = arg == "--reps" ? 3 : 1;
      const int value = i + 1 < argc ? parse_count(argv[i + 1], minimum) : -1;
      if (value < 0) {
        return usage_error(
            arg + ": got " + (i + 1 < argc ? "\"" + std::string(argv[i + 1]) + "\"" : "no value") +
            ", expected a whole number from " + std::to_string(minimum) + " to 1000000");
      }
      (arg == "--reps" ? g_reps : g_resampler_ctas_per_sm) = value;
      ++i;
    } else if (arg == "--tune") {
      g_tune = true;
    } else if (arg == "--profile") {
      profile = true;
    } else if (arg == "--resampler") {
      resampler_only = true;
    } else {
      return usage_error("argument " + std::to_string(i) + ": got \"" + arg +
                         "\", expected one of the options below");
    }
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("{\"bench\": \"none\", \"note\": \"no CUDA device\"}\n");
    return 0;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  g_card = prop.name;
  cudaStream_t stream;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  try {
    if (profile) {
      run_profile(stream);
      return 0;
    }
    bench_copy(stream);
    if (!resampler_only) {
      bench_step(stream);
      bench_layers(stream);
      if (g_tune) bench_tune(stream);
    }
    bench_resampler(stream);
    if (!resampler_only) bench_prepare(stream);
  } catch (const std::exception& e) {
    std::printf("{\"bench\": \"error\", \"note\": \"%s\"}\n", e.what());
    return 1;
  }
  cudaStreamDestroy(stream);
  return 0;
}
