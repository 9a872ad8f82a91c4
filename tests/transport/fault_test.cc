// Fault injection: schedule semantics and the three decorators over real implementations.
#include "gtest/gtest.h"
#include "transport/collectives/local_group.h"
#include "transport/fault/fault_decorators.h"
#include "transport/loopback_transport.h"
#include "transport/peer_service.h"
#include "transport/rpc/client.h"

namespace kvasir::transport::fault {
namespace {

TEST(FaultScheduleTest, AfterCountAndPatterns) {
  FaultSchedule schedule;
  schedule.Add({.op = "put", .after = 2, .count = 2, .action = FaultAction::kFail});
  schedule.Add({.op = "call:*", .action = FaultAction::kDrop});
  std::vector<FaultAction> puts;
  for (int i = 0; i < 6; ++i) puts.push_back(schedule.Next("put").action);
  EXPECT_EQ(puts,
            (std::vector<FaultAction>{FaultAction::kNone, FaultAction::kNone, FaultAction::kFail,
                                      FaultAction::kFail, FaultAction::kNone, FaultAction::kNone}));
  EXPECT_EQ(schedule.Next("get").action, FaultAction::kNone);
  EXPECT_EQ(schedule.Next("call:echo").action, FaultAction::kDrop);
  EXPECT_EQ(schedule.Next("stream:echo").action, FaultAction::kNone);
  EXPECT_EQ(schedule.injected(), 3);
  schedule.Clear();
  EXPECT_EQ(schedule.Next("call:echo").action, FaultAction::kNone);
}

TEST(FaultScheduleTest, ProbabilityIsReproducibleFromTheSeed) {
  auto run = [](uint64_t seed) {
    FaultSchedule s(seed);
    s.Add({.op = "*", .probability = 0.3});
    std::string fired;
    for (int i = 0; i < 200; ++i) fired += s.Next("x").action == FaultAction::kFail ? '1' : '0';
    return fired;
  };
  EXPECT_EQ(run(5), run(5));
  const std::string a = run(5);
  const int ones = std::count(a.begin(), a.end(), '1');
  EXPECT_GT(ones, 30);
  EXPECT_LT(ones, 90);
}

TEST(FaultBulkTransportTest, FailsDelaysAndDropsPuts) {
  LoopbackTransport a, b;
  auto [region, mem] = *b.AllocateMemory(1024);
  auto remote = *b.ExportRegion(region);
  auto schedule = std::make_shared<FaultSchedule>();
  FaultBulkTransport faulty(a, schedule);
  auto peer = *faulty.Connect(b.address());
  std::vector<std::byte> src(1024, std::byte{9});
  RmaOp op{src, 0};

  schedule->Add({.op = "put", .count = 1, .error = absl::ResourceExhaustedError("boom")});
  EXPECT_EQ(faulty.Put(peer, remote, {&op, 1}, absl::Seconds(1)).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(mem[0], std::byte{0}) << "a failed put must not happen";
  EXPECT_TRUE(faulty.Put(peer, remote, {&op, 1}, absl::Seconds(1)).ok());
  EXPECT_EQ(mem[0], std::byte{9});

  schedule->Clear();
  schedule->Add({.op = "get", .action = FaultAction::kDelay, .delay = absl::Milliseconds(100)});
  absl::Time start = absl::Now();
  EXPECT_TRUE(faulty.Get(peer, remote, {&op, 1}, absl::Seconds(1)).ok());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(95));

  schedule->Clear();
  schedule->Add({.op = "put", .action = FaultAction::kDrop});
  start = absl::Now();
  EXPECT_EQ(faulty.Put(peer, remote, {&op, 1}, absl::Milliseconds(150)).code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(145));
}

TEST(FaultRpcChannelTest, DropsAndFailsCallsOnSchedule) {
  auto peer = *PeerService::Start(TransportTestHandshake("s"));
  auto client =
      *rpc::RpcClient::Create({.port = peer->port(), .handshake = TransportTestHandshake("c")});
  auto schedule = std::make_shared<FaultSchedule>();
  schedule->Add({.op = "call:echo", .after = 1, .count = 1, .action = FaultAction::kDrop});
  schedule->Add({.op = "call:echo", .after = 2, .count = 1});
  FaultRpcChannel channel(*client, schedule);
  EXPECT_EQ(*channel.Call("echo", "a"), "a");
  const absl::Time start = absl::Now();
  EXPECT_EQ(channel.Call("echo", "b", {.timeout = absl::Milliseconds(100)}).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(95));
  EXPECT_EQ(channel.Call("echo", "c").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(*channel.Call("echo", "d"), "d");
}

TEST(FaultCommunicatorTest, FailsTheScheduledCollective) {
  auto group = *collectives::CreateLocalGroup(1);
  auto schedule = std::make_shared<FaultSchedule>();
  schedule->Add({.op = "barrier", .after = 1, .count = 1});
  FaultCommunicator comm(*group[0], schedule);
  EXPECT_TRUE(comm.Barrier().ok());
  EXPECT_EQ(comm.Barrier().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(comm.Barrier().ok());
  std::vector<float> x(4, 2.0f);
  EXPECT_TRUE(comm.AllReduceSum(std::as_writable_bytes(std::span(x)), DType::kF32).ok());
  EXPECT_EQ(x[0], 2.0f);
}

}  // namespace
}  // namespace kvasir::transport::fault
