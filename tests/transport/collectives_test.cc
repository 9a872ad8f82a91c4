// Communicator conformance: the same checks against the thread group ("local") and Gloo over TCP
// (ranks as threads here; tests/transport/multiprocess runs Gloo ranks as processes), for 2 and 4
// ranks; NCCL where a GPU exists.
#include <functional>
#include <thread>

#include "common/base/half.h"
#include "gtest/gtest.h"
#include "transport/collectives/gloo_communicator.h"
#include "transport/collectives/local_group.h"
#include "transport/collectives/rendezvous.h"
#ifdef KVASIR_TRANSPORT_HAVE_NCCL
#include "transport/collectives/nccl/nccl_communicator.h"
#endif

namespace kvasir::transport::collectives {
namespace {

struct Param {
  std::string impl;
  int size;
};

// Builds `size` communicators (one per thread, built concurrently as Gloo needs).
std::vector<std::unique_ptr<Communicator>> MakeGroup(const Param& p, RendezvousStore& store,
                                                     absl::Duration timeout) {
  if (p.impl == "local") return *CreateLocalGroup(p.size, timeout);
  std::vector<std::unique_ptr<Communicator>> comms(p.size);
  std::vector<std::thread> threads;
  static int group = 0;
  const std::string prefix = "g" + std::to_string(group++);
  for (int r = 0; r < p.size; ++r) {
    threads.emplace_back([&, r] {
      auto c = GlooCommunicator::Create(
          {.rank = r, .size = p.size, .store = &store, .key_prefix = prefix, .timeout = timeout});
      EXPECT_TRUE(c.ok()) << c.status();
      if (c.ok()) comms[r] = std::move(*c);
    });
  }
  for (auto& t : threads) t.join();
  return comms;
}

// Runs fn(comm) on every rank concurrently.
void OnAllRanks(std::vector<std::unique_ptr<Communicator>>& comms,
                const std::function<void(Communicator&)>& fn) {
  std::vector<std::thread> threads;
  for (auto& c : comms) threads.emplace_back([&, ptr = c.get()] { fn(*ptr); });
  for (auto& t : threads) t.join();
}

class CommunicatorTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    comms_ = MakeGroup(GetParam(), store_, absl::Seconds(20));
    for (auto& c : comms_) ASSERT_NE(c, nullptr);
  }
  InMemoryRendezvousStore store_;
  std::vector<std::unique_ptr<Communicator>> comms_;
};

TEST_P(CommunicatorTest, AllReduceF32IsTheExactSum) {
  const int n = GetParam().size;
  OnAllRanks(comms_, [n](Communicator& c) {
    EXPECT_EQ(c.size(), n);
    std::vector<float> x(10007);
    for (size_t i = 0; i < x.size(); ++i) x[i] = float((c.rank() + 1) * (int(i) % 1000 - 500));
    ASSERT_TRUE(c.AllReduceSum(std::as_writable_bytes(std::span(x)), DType::kF32).ok());
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(x[i], float((int(i) % 1000 - 500) * n * (n + 1) / 2)) << i;
    }
  });
}

TEST_P(CommunicatorTest, AllReduceBf16SumsAndRoundsOnce) {
  const int n = GetParam().size;
  OnAllRanks(comms_, [n](Communicator& c) {
    // Each rank adds 1 + 2^-8 (exact in bf16). The true sum n * (1 + 2^-8) needs more than bf16's
    // 8 bits for n = 3..4 and must be rounded once, from the exact f32 sum.
    std::vector<uint16_t> x(513, Fp32ToBf16(1.0f + 1.0f / 256));
    ASSERT_TRUE(c.AllReduceSum(std::as_writable_bytes(std::span(x)), DType::kBF16).ok());
    const uint16_t want = Fp32ToBf16(n * (1.0f + 1.0f / 256));
    for (uint16_t v : x) ASSERT_EQ(v, want);
  });
}

TEST_P(CommunicatorTest, AllGatherBroadcastBarrier) {
  const int n = GetParam().size;
  OnAllRanks(comms_, [n](Communicator& c) {
    std::vector<std::byte> in(1001, std::byte(c.rank() * 3 + 1)), out(1001 * n);
    ASSERT_TRUE(c.AllGather(in, out).ok());
    for (int r = 0; r < n; ++r) ASSERT_EQ(out[r * 1001 + 1000], std::byte(r * 3 + 1));
    std::vector<std::byte> b(777, std::byte(c.rank() == 1 ? 0x5c : 0));
    ASSERT_TRUE(c.Broadcast(b, 1).ok());
    for (std::byte v : b) ASSERT_EQ(v, std::byte{0x5c});
    ASSERT_TRUE(c.Barrier().ok());
  });
}

TEST_P(CommunicatorTest, BadArgumentsAreRejectedLocally) {
  Communicator& c = *comms_[0];
  std::vector<std::byte> odd(7);
  EXPECT_EQ(c.AllReduceSum(odd, DType::kF32).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.AllReduceSum(odd, DType::kQ4_0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.AllGather(odd, odd).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Broadcast(odd, c.size()).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(CommunicatorTest, AMissingRankYieldsAnErrorWithinTheTimeout) {
  // A fresh group with a short timeout; the last rank never calls.
  comms_.clear();
  comms_ = MakeGroup(GetParam(), store_, absl::Milliseconds(500));
  comms_.back().reset();  // the missing rank leaves (Gloo: its sockets close)
  comms_.pop_back();
  const absl::Time start = absl::Now();
  OnAllRanks(comms_, [](Communicator& c) {
    std::vector<float> x(64, 1.0f);
    const absl::Status s = c.AllReduceSum(std::as_writable_bytes(std::span(x)), DType::kF32);
    EXPECT_TRUE(absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s)) << s;
  });
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

INSTANTIATE_TEST_SUITE_P(Impls, CommunicatorTest,
                         ::testing::Values(Param{"local", 2}, Param{"local", 4}, Param{"gloo", 2},
                                           Param{"gloo", 4}),
                         [](const auto& info) {
                           return info.param.impl + std::to_string(info.param.size);
                         });

TEST(RendezvousTest, InMemoryGetWaitsForSetOrTimesOut) {
  InMemoryRendezvousStore store;
  EXPECT_EQ(store.Get("k", absl::Milliseconds(50)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(store.Set("k", "v").ok());
  });
  EXPECT_EQ(*store.Get("k", absl::Seconds(5)), "v");
  setter.join();
}

#ifdef KVASIR_TRANSPORT_HAVE_NCCL
TEST(NcclCommunicatorTest, SingleRankCollectivesOnTheGpu) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  InMemoryRendezvousStore store;
  auto comm = NcclCommunicator::Create({.rank = 0, .size = 1, .device = 0, .store = &store});
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_TRUE((*comm)->Barrier().ok());
}
#endif

}  // namespace
}  // namespace kvasir::transport::collectives
