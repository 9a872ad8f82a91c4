// A persistent fork-join pool for the compute kernels (the role of ggml's threadpool).
//
// The calling thread takes part in every job, so ThreadPool(2) starts one extra thread. Between
// jobs the workers spin for a short while (a decode step issues hundreds of small jobs, and waking
// a sleeping thread costs tens of microseconds), then sleep on a futex so an idle process uses no
// CPU.
//
//   ThreadPool pool(0);                            // 0: one thread per core
//   pool.ParallelFor(rows, [&](int64_t r, int thread) { y[r] = Dot(w + r * n, x, n); });
//
// Thread contract: one job at a time. Call ParallelFor/RunOnAll from one thread (the owner); the
// function must not call back into the pool. Destruction joins the workers.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

namespace kvasir {

class ThreadPool {
 public:
  // num_threads <= 0 means std::thread::hardware_concurrency() (or KVASIR_NUM_THREADS if set).
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Threads that run a job, the caller included.
  int num_threads() const { return num_threads_; }

  // Calls fn(task, thread) for every task in [0, num_tasks), spread over the threads in chunks
  // taken from a shared counter. Returns when all tasks have run.
  template <typename F>
  void ParallelFor(int64_t num_tasks, F&& fn) {
    if (num_tasks <= 0) return;
    if (num_threads_ == 1 || num_tasks == 1) {
      for (int64_t t = 0; t < num_tasks; ++t) fn(t, 0);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    Run(
        num_tasks,
        [](void* ctx, int64_t task, int thread) { (*static_cast<Fn*>(ctx))(task, thread); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

  // Calls fn(thread, num_threads) once on each thread; for kernels that split work themselves.
  template <typename F>
  void RunOnAll(F&& fn) {
    const int n = num_threads_;
    ParallelFor(n, [&](int64_t task, int) { fn(static_cast<int>(task), n); });
  }

  // The pool of the calling process for code without one at hand (tests, tools). Created on
  // first use with the default thread count.
  static ThreadPool& Default();

 private:
  using TaskFn = void (*)(void* ctx, int64_t task, int thread);
  void Run(int64_t num_tasks, TaskFn fn, void* ctx);
  void WorkerLoop(int thread);

  // A job lives in one of two slots, chosen by the parity of its generation, so that a worker
  // that wakes up late can never read a slot while the owner rewrites it (see Run and Join).
  struct Slot {
    TaskFn fn = nullptr;
    void* ctx = nullptr;
    int64_t num_tasks = 0;
    int64_t chunk = 1;
    alignas(64) std::atomic<int64_t> next_task{0};
    alignas(64) std::atomic<int64_t> done_tasks{0};
    alignas(64) std::atomic<uint64_t> job{~uint64_t{0}};  // generation it holds; ~0 while rewritten
    alignas(64) std::atomic<int> readers{0};              // workers inside this slot
  };
  // Runs tasks of `slot` until none is left. Returns the number of tasks run.
  static int64_t Work(Slot& slot, int thread);
  // Worker side: enters the slot of `generation` if it still holds that job.
  void Join(uint64_t generation, int thread);

  int num_threads_;
  std::vector<std::thread> workers_;
  Slot slots_[2];
  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<bool> stop_{false};
};

}  // namespace kvasir
