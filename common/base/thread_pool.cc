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

// Spin iterations before a worker sleeps; on the order of 100 microseconds.
constexpr int kSpinIterations = 20000;
constexpr uint64_t kInvalidJob = ~uint64_t{0};

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
  stop_.store(true, std::memory_order_seq_cst);
  generation_.fetch_add(1, std::memory_order_seq_cst);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

ThreadPool& ThreadPool::Default() {
  static ThreadPool* pool = new ThreadPool(0);  // never destroyed: outlives static users
  return *pool;
}

int64_t ThreadPool::Work(Slot& slot, int thread) {
  const int64_t n = slot.num_tasks;
  const int64_t chunk = slot.chunk;
  int64_t ran = 0;
  for (;;) {
    const int64_t begin = slot.next_task.fetch_add(chunk, std::memory_order_relaxed);
    if (begin >= n) break;
    const int64_t end = std::min(n, begin + chunk);
    for (int64_t t = begin; t < end; ++t) slot.fn(slot.ctx, t, thread);
    slot.done_tasks.fetch_add(end - begin, std::memory_order_release);
    ran += end - begin;
  }
  return ran;
}

void ThreadPool::Run(int64_t num_tasks, TaskFn fn, void* ctx) {
  const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
  Slot& slot = slots_[gen & 1];
  // Take the slot back from workers that may still be inside it from two jobs ago (Dekker-style
  // with Join: every access here is sequentially consistent). A worker that reads `job` after the
  // store below sees it invalid and stays out; one that read it before is counted in `readers`.
  slot.job.store(kInvalidJob, std::memory_order_seq_cst);
  while (slot.readers.load(std::memory_order_seq_cst) != 0) KVASIR_CPU_RELAX();
  slot.fn = fn;
  slot.ctx = ctx;
  slot.num_tasks = num_tasks;
  // Small chunks balance uneven tasks; at most ~4 chunks per thread keeps the counter cold.
  slot.chunk = std::max<int64_t>(1, num_tasks / (num_threads_ * 4));
  slot.next_task.store(0, std::memory_order_relaxed);
  slot.done_tasks.store(0, std::memory_order_relaxed);
  slot.job.store(gen, std::memory_order_seq_cst);
  generation_.store(gen, std::memory_order_seq_cst);
  generation_.notify_all();
  Work(slot, 0);
  // Wait for the tasks other threads took, not for the threads themselves.
  int spins = 0;
  while (slot.done_tasks.load(std::memory_order_acquire) != num_tasks) {
    if (++spins < kSpinIterations) {
      KVASIR_CPU_RELAX();
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::Join(uint64_t gen, int thread) {
  Slot& slot = slots_[gen & 1];
  slot.readers.fetch_add(1, std::memory_order_seq_cst);
  if (slot.job.load(std::memory_order_seq_cst) == gen) Work(slot, thread);
  slot.readers.fetch_sub(1, std::memory_order_seq_cst);
}

void ThreadPool::WorkerLoop(int thread) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
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
    Join(gen, thread);
  }
}

}  // namespace kvasir
