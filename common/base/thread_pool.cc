#include "common/base/thread_pool.h"

#include <algorithm>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVASIR_CPU_RELAX() _mm_pause()
#else
#define KVASIR_CPU_RELAX() \
  do {                     \
  } while (0)
#endif

namespace kvasir {
namespace {

// Spin iterations before a worker sleeps; about 100 microseconds on a modern core.
constexpr int kSpinIterations = 20000;

int DefaultThreadCount() {
  if (const char* env = std::getenv("KVASIR_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

ThreadPool::ThreadPool(int num_threads)
    : num_threads_(num_threads > 0 ? num_threads : DefaultThreadCount()) {
  workers_.reserve(num_threads_ - 1);
  for (int t = 1; t < num_threads_; ++t) {
    workers_.emplace_back([this, t] { WorkerLoop(t); });
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

ThreadPool& ThreadPool::Default() {
  static ThreadPool* pool = new ThreadPool(0);  // never destroyed: outlives static users
  return *pool;
}

void ThreadPool::Work(int thread) {
  const int64_t n = num_tasks_;
  const int64_t chunk = chunk_;
  for (;;) {
    const int64_t begin = next_task_.fetch_add(chunk, std::memory_order_relaxed);
    if (begin >= n) break;
    const int64_t end = std::min(n, begin + chunk);
    for (int64_t t = begin; t < end; ++t) fn_(ctx_, t, thread);
  }
}

void ThreadPool::Run(int64_t num_tasks, TaskFn fn, void* ctx) {
  fn_ = fn;
  ctx_ = ctx;
  num_tasks_ = num_tasks;
  // Small chunks balance uneven tasks; at most ~4 chunks per thread keeps the counter cold.
  chunk_ = std::max<int64_t>(1, num_tasks / (num_threads_ * 4));
  next_task_.store(0, std::memory_order_relaxed);
  pending_workers_.store(num_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  Work(0);
  // Wait for the workers to leave the job before its state can be reused.
  int spins = 0;
  while (pending_workers_.load(std::memory_order_acquire) != 0) {
    if (++spins < kSpinIterations) {
      KVASIR_CPU_RELAX();
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::WorkerLoop(int thread) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t gen = generation_.load(std::memory_order_acquire);
    for (int spins = 0; gen == seen && spins < kSpinIterations; ++spins) {
      KVASIR_CPU_RELAX();
      gen = generation_.load(std::memory_order_acquire);
    }
    while (gen == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    if (stop_.load(std::memory_order_acquire)) return;
    Work(thread);
    pending_workers_.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace kvasir
