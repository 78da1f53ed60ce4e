#pragma once
// A minimal fork-join over the machine's cores for the CPU backend (std::thread; no pool, since
// the face models have few, large ops and thread start-up costs ~20 us).

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace instantid::onnx {

// Splits [0, n) into contiguous ranges, one per core; fn(begin, end) must not throw. Work below
// min_chunk items per thread runs inline.
template <typename F>
void parallel_for(std::int64_t n, std::int64_t min_chunk, F&& fn) {
  static const std::int64_t kThreads =
      std::max<std::int64_t>(1, std::min<std::int64_t>(64, std::thread::hardware_concurrency()));
  const std::int64_t chunks = std::min(kThreads, n / std::max<std::int64_t>(1, min_chunk));
  if (chunks <= 1) {
    fn(std::int64_t{0}, n);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(static_cast<std::size_t>(chunks - 1));
  const std::int64_t step = (n + chunks - 1) / chunks;
  for (std::int64_t c = 1; c < chunks; ++c) {
    const std::int64_t b = c * step, e = std::min(n, b + step);
    if (b < e) workers.emplace_back([&fn, b, e] { fn(b, e); });
  }
  fn(std::int64_t{0}, std::min(n, step));
  for (auto& t : workers) t.join();
}

}  // namespace instantid::onnx
