#include "onnx/cpu_parallel.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace instantid::onnx {

namespace {

thread_local bool tls_in_region = false;

class Pool {
 public:
  Pool() {
    const unsigned hw = std::thread::hardware_concurrency();
    threads_ = std::max<std::int64_t>(1, std::min<std::int64_t>(64, hw == 0 ? 1 : hw));
    for (std::int64_t t = 1; t < threads_; ++t) workers_.emplace_back([this] { work(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }
  std::int64_t threads() const { return threads_; }

  void run(std::int64_t count, const std::function<void(std::int64_t)>& job) {
    std::unique_lock<std::mutex> owner(owner_, std::try_to_lock);
    if (tls_in_region || !owner.owns_lock() || threads_ == 1) {
      for (std::int64_t i = 0; i < count; ++i) job(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      count_ = count;
      next_.store(0);
      pending_ = static_cast<std::int64_t>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    tls_in_region = true;
    drain();
    tls_in_region = false;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void drain() {
    for (std::int64_t i = next_.fetch_add(1); i < count_; i = next_.fetch_add(1)) (*job_)(i);
  }
  void work() {
    std::uint64_t seen = 0;
    tls_in_region = true;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      drain();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  std::int64_t threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex owner_;  // one parallel region at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(std::int64_t)>* job_ = nullptr;
  std::int64_t count_ = 0;
  std::atomic<std::int64_t> next_{0};
  std::int64_t pending_ = 0;
  std::uint64_t generation_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool instance;
  return instance;
}

}  // namespace

std::int64_t parallel_threads() { return pool().threads(); }

void parallel_run(std::int64_t count, const std::function<void(std::int64_t)>& job) {
  if (count <= 0) return;
  if (count == 1) {
    job(0);
    return;
  }
  pool().run(count, job);
}

}  // namespace instantid::onnx
