#include "common/base/thread_pool.h"

#include <atomic>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"

namespace kvasir {
namespace {

TEST(ThreadPoolTest, EveryTaskRunsExactlyOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 7, 100, 10007}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, [&](int64_t t, int thread) {
        ASSERT_GE(thread, 0);
        ASSERT_LT(thread, threads);
        hits[t].fetch_add(1);
      });
      for (int64_t t = 0; t < n; ++t) ASSERT_EQ(hits[t].load(), 1) << "task " << t;
    }
  }
}

TEST(ThreadPoolTest, ManySmallJobsInARow) {
  ThreadPool pool(4);
  std::atomic<int64_t> sum{0};
  for (int job = 0; job < 2000; ++job) {
    pool.ParallelFor(5, [&](int64_t t, int) { sum.fetch_add(t + 1); });
  }
  EXPECT_EQ(sum.load(), 2000 * 15);
}

TEST(ThreadPoolTest, MoreThreadsThanCoresWithVaryingJobs) {
  // Workers that are descheduled wake up late and must neither miss nor repeat a task of a newer
  // job, nor touch a job slot that is being rewritten.
  ThreadPool pool(8);
  int64_t expected = 0;
  std::atomic<int64_t> sum{0};
  for (int job = 0; job < 20000; ++job) {
    const int64_t n = 1 + (job * 7919) % 37;
    pool.ParallelFor(n, [&](int64_t t, int) { sum.fetch_add(t + job, std::memory_order_relaxed); });
    expected += n * (n - 1) / 2 + n * job;
  }
  EXPECT_EQ(sum.load(), expected);
}

TEST(ThreadPoolTest, RunOnAllGivesEachThreadItsIndex) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> seen(3);
  pool.RunOnAll([&](int thread, int n) {
    EXPECT_EQ(n, 3);
    seen[thread].fetch_add(1);
  });
  for (auto& s : seen) EXPECT_EQ(s.load(), 1);
}

TEST(ThreadPoolTest, SurvivesIdleSleepAndWakesUp) {
  ThreadPool pool(2);
  std::atomic<int> count{0};
  pool.ParallelFor(4, [&](int64_t, int) { count++; });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // workers go to sleep
  pool.ParallelFor(4, [&](int64_t, int) { count++; });
  EXPECT_EQ(count.load(), 8);
}

}  // namespace
}  // namespace kvasir
