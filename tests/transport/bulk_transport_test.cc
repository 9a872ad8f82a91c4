// BulkTransport conformance: the same tests against every implementation (loopback, UCX over
// tcp, UCX over shared memory). Each ctest case runs in its own process; the two sides are two
// transports of this process (the multiprocess suite puts them in different processes).
#include "transport/bulk_transport.h"

#include <atomic>
#include <numeric>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "transport/loopback_transport.h"
#include "transport/ucx/ucx_transport.h"

namespace kvasir::transport {
namespace {

std::unique_ptr<BulkTransport> Make(const std::string& kind) {
  if (kind == "loopback") return std::make_unique<LoopbackTransport>();
  auto t = ucx::UcxTransport::Create({.tls = kind});
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::unique_ptr<BulkTransport>(std::move(*t)) : nullptr;
}

std::vector<std::byte> Pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed) & 0xff);
  return v;
}

class BulkTransportTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    a_ = Make(GetParam());
    b_ = Make(GetParam());
    ASSERT_TRUE(a_ && b_);
  }
  std::unique_ptr<BulkTransport> a_, b_;
};

TEST_P(BulkTransportTest, PutAndGetMoveExactBytes) {
  constexpr size_t kSize = 3 << 20;
  auto [b_region, b_mem] = *b_->AllocateMemory(kSize);
  std::fill(b_mem.begin(), b_mem.end(), std::byte{0});
  auto remote = b_->ExportRegion(b_region);
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ(remote->size_bytes, kSize);
  auto peer = a_->Connect(b_->address());
  ASSERT_TRUE(peer.ok()) << peer.status();

  // Several ops of different sizes (short, medium, above UCX's zero-copy thresholds).
  std::vector<std::byte> src = Pattern(kSize, 7);
  ASSERT_TRUE(a_->RegisterMemory(src).ok());
  std::vector<RmaOp> ops = {{std::span(src).subspan(0, 8), 0},
                            {std::span(src).subspan(100, 5000), 100},
                            {std::span(src).subspan(1 << 20, 2 << 20), 1 << 20}};
  ASSERT_TRUE(a_->Put(*peer, *remote, ops, absl::Seconds(10)).ok());
  EXPECT_TRUE(std::equal(b_mem.begin(), b_mem.begin() + 8, src.begin()));
  EXPECT_TRUE(std::equal(b_mem.begin() + 100, b_mem.begin() + 5100, src.begin() + 100));
  EXPECT_EQ(b_mem[8], std::byte{0});
  EXPECT_EQ(b_mem[99], std::byte{0});
  EXPECT_TRUE(std::equal(b_mem.begin() + (1 << 20), b_mem.end(), src.begin() + (1 << 20)));

  // Get it back into unregistered memory.
  std::vector<std::byte> back(kSize);
  std::vector<RmaOp> gets = {{std::span(back).subspan(1 << 20, 2 << 20), 1 << 20},
                             {std::span(back).subspan(0, 4096), 0}};
  ASSERT_TRUE(a_->Get(*peer, *remote, gets, absl::Seconds(10)).ok());
  EXPECT_TRUE(std::equal(back.begin() + (1 << 20), back.end(), src.begin() + (1 << 20)));
  EXPECT_TRUE(std::equal(back.begin(), back.begin() + 8, src.begin()));
}

TEST_P(BulkTransportTest, CallerRegisteredMemoryIsReachableToo) {
  std::vector<std::byte> target(64 << 10);
  auto region = b_->RegisterMemory(target);
  ASSERT_TRUE(region.ok()) << region.status();
  auto remote = *b_->ExportRegion(*region);
  auto peer = *a_->Connect(b_->address());
  std::vector<std::byte> src = Pattern(target.size(), 3);
  RmaOp op{src, 0};
  ASSERT_TRUE(a_->Put(peer, remote, {&op, 1}, absl::Seconds(10)).ok());
  EXPECT_EQ(target, src);
}

TEST_P(BulkTransportTest, OpsOutsideTheRegionAreRejected) {
  auto [region, mem] = *b_->AllocateMemory(4096);
  auto remote = *b_->ExportRegion(region);
  auto peer = *a_->Connect(b_->address());
  std::vector<std::byte> buf(8192);
  RmaOp too_long{std::span(buf).subspan(0, 4097), 0};
  RmaOp past_end{std::span(buf).subspan(0, 16), 4090};
  RmaOp huge_offset{std::span(buf).subspan(0, 16), ~uint64_t{0} - 4};
  for (const RmaOp& op : {too_long, past_end, huge_offset}) {
    EXPECT_EQ(a_->Put(peer, remote, {&op, 1}, absl::Seconds(1)).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(a_->Get(peer, remote, {&op, 1}, absl::Seconds(1)).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST_P(BulkTransportTest, MalformedAddressesAndKeysAreRejected) {
  for (std::string bad : {std::string(), std::string("garbage"), std::string(300, '\x01'),
                          b_->address().substr(0, b_->address().size() / 2)}) {
    EXPECT_EQ(a_->Connect(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad.size();
  }
  std::string flipped = b_->address();
  flipped.back() ^= 0x40;
  EXPECT_EQ(a_->Connect(flipped).status().code(), absl::StatusCode::kInvalidArgument);

  auto [region, mem] = *b_->AllocateMemory(4096);
  RemoteRegion remote = *b_->ExportRegion(region);
  remote.key = remote.key.substr(0, remote.key.size() - 1);
  auto peer = *a_->Connect(b_->address());
  std::vector<std::byte> buf(16);
  RmaOp op{buf, 0};
  const absl::Status s = a_->Put(peer, remote, {&op, 1}, absl::Seconds(1));
  EXPECT_TRUE(absl::IsInvalidArgument(s) || absl::IsNotFound(s)) << s;
  EXPECT_EQ(a_->Put(peer + 1000, *b_->ExportRegion(region), {&op, 1}, absl::Seconds(1)).code(),
            absl::StatusCode::kNotFound);
}

TEST_P(BulkTransportTest, MessagesArriveWithHeaderAndPayload) {
  absl::Mutex mu;
  std::vector<std::pair<std::string, std::string>> received;
  ASSERT_TRUE(b_->SetMessageHandler(7, [&](std::string_view header, std::string payload) {
                  absl::MutexLock lock(&mu);
                  received.emplace_back(std::string(header), std::move(payload));
                }).ok());
  auto peer = *a_->Connect(b_->address());
  const std::string big(2 << 20, 'p');  // far above UCX's rendezvous threshold
  ASSERT_TRUE(a_->SendMessage(peer, 7, "small", "payload", absl::Seconds(10)).ok());
  ASSERT_TRUE(a_->SendMessage(peer, 7, "big", big, absl::Seconds(10)).ok());
  ASSERT_TRUE(a_->SendMessage(peer, 7, "", "", absl::Seconds(10)).ok());
  absl::MutexLock lock(&mu);
  auto all = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return received.size() >= 3; };
  ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(10)));
  std::sort(received.begin(), received.end());
  EXPECT_EQ(received[0].first, "");
  EXPECT_EQ(received[1].first, "big");
  EXPECT_EQ(received[1].second, big);
  EXPECT_EQ(received[2].first, "small");
  EXPECT_EQ(received[2].second, "payload");
}

TEST_P(BulkTransportTest, DeregisteredRegionsAreGone) {
  auto [region, mem] = *b_->AllocateMemory(4096);
  EXPECT_TRUE(b_->DeregisterMemory(region).ok());
  EXPECT_EQ(b_->DeregisterMemory(region).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b_->ExportRegion(region).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b_->RegisterMemory({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(b_->SupportsMemory(MemoryKind::kHost));
}

INSTANTIATE_TEST_SUITE_P(Impls, BulkTransportTest, ::testing::Values("loopback", "tcp", "shm"),
                         [](const auto& info) { return info.param; });

TEST(UcxTransportTest, CudaSupportIsDetectedAtRunTime) {
  auto t = *ucx::UcxTransport::Create({.tls = "tcp"});
  // Debian's UCX is built without CUDA; a CUDA-enabled UCX reports it, and registration of CUDA
  // memory is refused cleanly where it is not supported.
  if (!t->SupportsMemory(MemoryKind::kCuda)) {
    std::vector<std::byte> fake(64);
    EXPECT_EQ(t->RegisterMemory(fake, MemoryKind::kCuda).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_NE(t->name().find("tcp"), std::string::npos);
  t->Stop();
  t->Stop();  // idempotent
  EXPECT_EQ(t->Connect("x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->AllocateMemory(64).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(UcxTransportTest, ShmUsesSharedMemoryLanes) {
  auto a = *ucx::UcxTransport::Create({.tls = "shm"});
  auto b = *ucx::UcxTransport::Create({.tls = "shm"});
  auto peer = *a->Connect(b->address());
  auto lanes = a->DescribePeer(peer);
  ASSERT_TRUE(lanes.ok()) << lanes.status();
  EXPECT_EQ(lanes->find("tcp"), std::string::npos) << *lanes;
  EXPECT_TRUE(lanes->find("posix") != std::string::npos || lanes->find("sysv") != std::string::npos)
      << *lanes;
}

}  // namespace
}  // namespace kvasir::transport
