// bench_onnx: latency of one Executor::run (host input → host outputs, synchronous) for a model
// and input shape, on the CPU backend or the CUDA backend (f32 / f16). Correctness is checked
// before timing against the CPU backend (--check). Prints one JSON row.
//
//   bench_onnx --model m.onnx --shape 1x3x640x640 --device cuda --dtype f16 --iters 50 --check

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifdef INSTANTID_BENCH_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

#include "instantid/error.hpp"
#include "instantid/onnx/executor.hpp"

namespace {

std::vector<std::int64_t> parse_shape(const std::string& s) {
  std::vector<std::int64_t> dims;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, 'x')) dims.push_back(std::stoll(part));
  return dims;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "cpu";
}

std::string card_name(const instantid::Device& d) {
#ifdef INSTANTID_BENCH_HAS_CUDA
  if (d.type == instantid::DeviceType::kCuda) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, d.index) == cudaSuccess) return prop.name;
  }
#endif
  return cpu_name();
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, shape_text = "1x3x640x640", device = "cpu", dtype = "f32", label;
  int iters = 20, warmup = 3;
  bool check = false;
  bool graph = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--model") model = next();
    else if (a == "--shape") shape_text = next();
    else if (a == "--device") device = next();
    else if (a == "--dtype") dtype = next();
    else if (a == "--iters") iters = std::stoi(next());
    else if (a == "--warmup") warmup = std::stoi(next());
    else if (a == "--label") label = next();
    else if (a == "--check") check = true;
    else if (a == "--no-graph") graph = false;
    else {
      std::cerr << "bench_onnx: unknown argument " << a << "\n";
      return 2;
    }
  }
  if (model.empty()) {
    std::cerr << "usage: bench_onnx --model PATH [--shape 1x3x640x640] [--device cpu|cuda] "
                 "[--dtype f32|f16] [--no-graph] [--iters N] [--warmup N] [--check] [--label NAME]\n";
    return 2;
  }
  try {
    instantid::onnx::ExecutorOptions options;
    if (device == "cuda") options.device = instantid::Device{instantid::DeviceType::kCuda, 0};
    options.cuda_dtype = dtype == "f16" ? instantid::DType::kF16 : instantid::DType::kF32;
    options.cuda_graph = graph;
    const auto shape = parse_shape(shape_text);
    instantid::HostTensor x(shape);
    std::mt19937 rng(123);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (auto& v : x.values()) v = dist(rng);

    const auto t_load = std::chrono::steady_clock::now();
    auto exec = instantid::onnx::Executor::load(model, options);
    auto first = exec.run({x});  // plans (CUDA: buffers, cuDNN algorithm search)
    const double first_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_load).count();
    double rel_l2 = -1.0;
    if (check && device == "cuda") {
      auto cpu = instantid::onnx::Executor::load(model);
      const auto want = cpu.run({x});
      double num = 0.0, den = 0.0;
      for (std::size_t k = 0; k < want.size(); ++k) {
        for (std::int64_t i = 0; i < want[k].numel(); ++i) {
          const double e = static_cast<double>(first[k].data()[i]) - want[k].data()[i];
          num += e * e;
          den += static_cast<double>(want[k].data()[i]) * want[k].data()[i];
        }
      }
      rel_l2 = std::sqrt(num / std::max(den, 1e-30));
    }
    for (int i = 0; i < warmup; ++i) exec.run({x});
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      auto out = exec.run({x});
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    const double p90 = ms[std::min(ms.size() - 1, ms.size() * 9 / 10)];
    const std::string backend =
        device == "cuda" ? "ours-cuda-" + dtype + (graph ? "-graph" : "-launches") : "ours-cpu";
    std::string base = model.substr(model.find_last_of('/') + 1);
    std::printf(
        "{\"bench\": \"onnx\", \"label\": \"%s\", \"model\": \"%s\", \"input\": \"%s\", "
        "\"backend\": \"%s\", \"card\": \"%s\", \"host_threads\": %u, \"iters\": %d, "
        "\"median_ms\": %.4f, \"min_ms\": %.4f, \"p90_ms\": %.4f, \"first_run_ms\": %.1f, "
        "\"rel_l2_vs_cpu\": %.3g, \"timing\": \"wall clock of Executor::run incl. H2D/D2H\"}\n",
        json_escape(label).c_str(), json_escape(base).c_str(), shape_text.c_str(), backend.c_str(),
        json_escape(card_name(options.device)).c_str(), std::thread::hardware_concurrency(), iters,
        median, ms.front(), p90, first_ms, rel_l2);
  } catch (const instantid::Error& e) {
    std::cerr << "bench_onnx: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
