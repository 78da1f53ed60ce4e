#pragma once
// Fork-join over the machine's cores for the CPU backend: one process-wide pool of worker
// threads, created on first use. A call from inside a parallel region, or while another thread
// owns the pool, runs inline, so nesting and concurrent executors are safe.

#include <algorithm>
#include <cstdint>
#include <functional>

namespace instantid::onnx {

// Number of threads a parallel region uses (the caller included).
std::int64_t parallel_threads();

// Runs job(i) for every i in [0, count), spread over the pool (dynamic scheduling); blocks until
// all are done. job must not throw.
void parallel_run(std::int64_t count, const std::function<void(std::int64_t)>& job);

// Splits [0, n) into one contiguous range per thread; ranges below min_chunk items run inline.
template <typename F>
void parallel_for(std::int64_t n, std::int64_t min_chunk, F&& fn) {
  const std::int64_t chunks =
      std::min(parallel_threads(), n / std::max<std::int64_t>(1, min_chunk));
  if (chunks <= 1) {
    fn(std::int64_t{0}, n);
    return;
  }
  const std::int64_t step = (n + chunks - 1) / chunks;
  parallel_run(chunks, [&](std::int64_t c) {
    const std::int64_t b = c * step, e = std::min(n, b + step);
    if (b < e) fn(b, e);
  });
}

}  // namespace instantid::onnx
