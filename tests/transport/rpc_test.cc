// Control plane: frame decoding, handshake, unary calls, deadlines, cancellation, server streams,
// reconnect with backoff, frame limits and malformed input, all on loopback TCP in one process.
#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/read.hpp"
#include "boost/asio/write.hpp"
#include "gtest/gtest.h"
#include "transport/peer_service.h"
#include "transport/rpc/client.h"
#include "transport/rpc/frame.h"
#include "transport/rpc/server.h"

namespace kvasir::transport::rpc {
namespace {

Frame Request(uint64_t id, std::string method, std::string payload) {
  Frame f;
  f.set_kind(FRAME_KIND_REQUEST);
  f.set_call_id(id);
  f.set_method(std::move(method));
  f.set_payload(std::move(payload));
  return f;
}

TEST(FrameDecoderTest, DecodesFramesFedByteByByte) {
  std::string wire;
  for (int i = 1; i <= 3; ++i) {
    wire += *EncodeFrame(Request(i, "m" + std::to_string(i), std::string(i * 100, 'x')), 1 << 20);
  }
  FrameDecoder decoder(1 << 20);
  std::vector<Frame> frames;
  for (char c : wire) {
    decoder.Append(std::string_view(&c, 1));
    while (true) {
      auto next = decoder.Next();
      ASSERT_TRUE(next.ok()) << next.status();
      if (!next->has_value()) break;
      frames.push_back(**next);
    }
  }
  ASSERT_EQ(frames.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(frames[i].call_id(), uint64_t(i + 1));
    EXPECT_EQ(frames[i].method(), "m" + std::to_string(i + 1));
    EXPECT_EQ(frames[i].payload().size(), size_t(100 * (i + 1)));
  }
  EXPECT_EQ(decoder.buffered_bytes(), 0u);
}

TEST(FrameDecoderTest, RejectsOversizedEmptyMalformedAndInvalidFrames) {
  {
    FrameDecoder decoder(100);
    decoder.Append(std::string("\xff\x00\x00\x00", 4));  // 255 > 100
    auto next = decoder.Next();
    EXPECT_EQ(next.status().code(), absl::StatusCode::kResourceExhausted);
    decoder.Append(*EncodeFrame(Request(1, "m", ""), 100));
    EXPECT_FALSE(decoder.Next().ok()) << "an error must be sticky";
  }
  {
    FrameDecoder decoder(100);
    decoder.Append(std::string(4, '\0'));
    EXPECT_EQ(decoder.Next().status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    FrameDecoder decoder(100);
    decoder.Append(std::string("\x03\x00\x00\x00\xff\xff\xff", 7));  // not a protobuf
    EXPECT_EQ(decoder.Next().status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    FrameDecoder decoder(100);
    decoder.Append(*EncodeFrame(Request(1, "", "x"), 100));  // a request needs a method
    EXPECT_EQ(decoder.Next().status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    FrameDecoder decoder(100);
    decoder.Append(*EncodeFrame(Request(0, "m", "x"), 100));  // and a call id
    EXPECT_EQ(decoder.Next().status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(EncodeFrame(Request(1, "m", std::string(200, 'x')), 100).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(HandshakeTest, ChecksVersionAndPrefixHash) {
  HandshakeInfo local{kProtocolVersion, 0x1234, "worker", "a"};
  EXPECT_TRUE(CheckPeerHello(local, ToHello(local)).ok());
  HandshakeInfo other = local;
  other.prefix_hash_test_vector = 0x1235;
  EXPECT_EQ(CheckPeerHello(local, ToHello(other)).code(), absl::StatusCode::kFailedPrecondition);
  other = local;
  other.protocol_version = kProtocolVersion + 1;
  EXPECT_EQ(CheckPeerHello(local, ToHello(other)).code(), absl::StatusCode::kFailedPrecondition);
}

class RpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto peer = PeerService::Start(TransportTestHandshake("server"));
    ASSERT_TRUE(peer.ok()) << peer.status();
    peer_ = *std::move(peer);
  }

  std::unique_ptr<RpcClient> Client(HandshakeInfo handshake = TransportTestHandshake("client"),
                                    uint16_t port = 0) {
    auto client = RpcClient::Create({.port = port ? port : peer_->port(),
                                     .handshake = std::move(handshake),
                                     .default_timeout = absl::Seconds(5)});
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::unique_ptr<PeerService> peer_;
};

TEST_F(RpcTest, UnaryCallsAndErrors) {
  auto client = Client();
  ASSERT_TRUE(client->WaitConnected(absl::Seconds(5)).ok());
  EXPECT_EQ(client->peer().role, "server");
  auto reply = client->Call("echo", "hello");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(*reply, "hello");
  const std::string big(1 << 20, 'b');
  EXPECT_EQ(*client->Call("echo", big), big);
  EXPECT_EQ(client->Call("nope", "").status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(client->Call("count", "3").status().code(), absl::StatusCode::kInvalidArgument)
      << "a stream method called as unary";
  EXPECT_EQ(client->Call("peer.Checksum", "\xff\xff").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RpcTest, ConcurrentCallsFromManyThreads) {
  // Callers write their requests to the socket themselves once the connection is ready; large
  // requests that the socket takes only in part queue behind for the I/O thread. Frames of
  // different callers must never interleave.
  auto client = Client();
  ASSERT_TRUE(client->WaitConnected(absl::Seconds(5)).ok());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        std::string msg = std::to_string(t * 1000 + i);
        if (t % 2 == 1 && i % 10 == 0) msg.resize(3 << 20, static_cast<char>('a' + t));
        auto r = client->Call("echo", msg);
        if (r.ok() && *r == msg) ok.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 400);
}

TEST_F(RpcTest, HandshakeRefusesADifferentPrefixHash) {
  HandshakeInfo bad = TransportTestHandshake("client");
  bad.prefix_hash_test_vector ^= 1;
  auto client = Client(bad);
  const absl::Status connected = client->WaitConnected(absl::Seconds(5));
  EXPECT_EQ(connected.code(), absl::StatusCode::kFailedPrecondition) << connected;
  EXPECT_NE(connected.message().find("hash"), absl::string_view::npos) << connected;
  EXPECT_EQ(client->Call("echo", "x").status().code(), absl::StatusCode::kFailedPrecondition);

  HandshakeInfo old = TransportTestHandshake("client");
  old.protocol_version = 0;
  auto client2 = Client(old);
  EXPECT_EQ(client2->WaitConnected(absl::Seconds(5)).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RpcTest, DeadlineExceededWhenThePeerDoesNotAnswer) {
  auto client = Client();
  // Twice: the first call may wait for the connection (the I/O thread keeps its deadline), the
  // second is sent by the caller on the ready connection (the caller keeps it).
  for (int round = 0; round < 2; ++round) {
    if (round == 1) ASSERT_TRUE(client->WaitConnected(absl::Seconds(5)).ok());
    const absl::Time start = absl::Now();
    auto r = client->Call("hang", "", {.timeout = absl::Milliseconds(200)});
    const absl::Duration took = absl::Now() - start;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
    EXPECT_GE(took, absl::Milliseconds(190));
    EXPECT_LT(took, absl::Seconds(2));
    EXPECT_EQ(*client->Call("echo", "still works"), "still works");
  }
}

TEST(RpcServerTest, CancellationReachesTheServer) {
  absl::Notification started, server_saw_cancel;
  auto server = *RpcServer::Create({.handshake = TransportTestHandshake("s")});
  server->RegisterUnary("slow", [&](std::shared_ptr<ServerCall> call) {
    call->OnCancel([&] { server_saw_cancel.Notify(); });
    started.Notify();
  });
  ASSERT_TRUE(server->Start().ok());
  auto client =
      *RpcClient::Create({.port = server->port(), .handshake = TransportTestHandshake("c")});
  auto token = std::make_shared<CancelToken>();
  std::thread canceller([&] {
    started.WaitForNotification();
    token->Cancel();
  });
  const absl::Time start = absl::Now();
  auto r = client->Call("slow", "", {.timeout = absl::Seconds(10), .cancel = token});
  canceller.join();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(server_saw_cancel.WaitForNotificationWithTimeout(absl::Seconds(5)));
  // A call started with a cancelled token fails at once.
  EXPECT_EQ(client->Call("slow", "", {.cancel = token}).status().code(),
            absl::StatusCode::kCancelled);
}

TEST_F(RpcTest, ServerStreamDeliversEveryMessageInOrder) {
  auto client = Client();
  auto stream = client->OpenStream("count", "500");
  ASSERT_TRUE(stream.ok()) << stream.status();
  for (int i = 0; i < 500; ++i) {
    auto item = (*stream)->Read();
    ASSERT_TRUE(item.ok()) << item.status();
    ASSERT_TRUE(item->has_value()) << "ended early at " << i;
    ASSERT_EQ(**item, std::to_string(i));
  }
  auto end = (*stream)->Read();
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_FALSE(end->has_value());
  auto bad = client->OpenStream("count", "minus one");
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ((*bad)->Read().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RpcClientTest, ReconnectsWithBackoffAfterTheServerRestarts) {
  auto peer = *PeerService::Start(TransportTestHandshake("server"));
  const uint16_t port = peer->port();
  auto client = *RpcClient::Create({.port = port,
                                    .handshake = TransportTestHandshake("client"),
                                    .backoff_initial = absl::Milliseconds(10),
                                    .backoff_max = absl::Milliseconds(100)});
  EXPECT_EQ(*client->Call("echo", "one"), "one");
  peer->Stop();
  auto down = client->Call("echo", "x", {.timeout = absl::Milliseconds(300)});
  EXPECT_TRUE(absl::IsUnavailable(down.status()) || absl::IsDeadlineExceeded(down.status()))
      << down.status();
  auto fail_fast = client->Call("echo", "x", {.wait_for_ready = false});
  EXPECT_EQ(fail_fast.status().code(), absl::StatusCode::kUnavailable) << fail_fast.status();
  // Same port again (the one the OS chose above).
  peer = *PeerService::Start(TransportTestHandshake("server"), port);
  auto back = client->Call("echo", "two", {.timeout = absl::Seconds(5)});
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, "two");
  EXPECT_EQ(client->num_connects(), 2);
}

TEST(RpcClientTest, NoServerYieldsDeadlineExceededWithinTheDeadline) {
  // Find a port with nothing listening: bind, note it, close.
  uint16_t port = 0;
  {
    auto server = *RpcServer::Create({});
    port = server->port();
  }
  auto client = *RpcClient::Create({.port = port, .handshake = TransportTestHandshake("c")});
  const absl::Time start = absl::Now();
  auto r = client->Call("echo", "x", {.timeout = absl::Milliseconds(300)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

// Writes raw bytes to a server and reports whether the server closed the connection.
bool ServerClosesAfter(uint16_t port, const std::string& bytes) {
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  boost::system::error_code ec;
  socket.connect({boost::asio::ip::make_address("127.0.0.1"), port}, ec);
  if (ec) return false;
  boost::asio::write(socket, boost::asio::buffer(bytes), ec);
  // Read until EOF or error; a 2 s receive timeout keeps this from hanging.
  timeval tv{2, 0};
  setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  while (true) {
    const ssize_t n = recv(socket.native_handle(), buf, sizeof buf, 0);
    if (n == 0) return true;  // orderly close by the server
    if (n < 0) return errno == ECONNRESET;
  }
}

TEST_F(RpcTest, MalformedOrOversizedFramesCloseOnlyThatConnection) {
  // Garbage instead of a handshake.
  EXPECT_TRUE(ServerClosesAfter(peer_->port(), std::string("\x05\x00\x00\x00garbage", 11)));
  // A length over the limit.
  EXPECT_TRUE(ServerClosesAfter(peer_->port(), std::string("\xff\xff\xff\x7f", 4)));
  // A request before the handshake.
  EXPECT_TRUE(ServerClosesAfter(peer_->port(), *EncodeFrame(Request(1, "echo", "x"), 1 << 20)));
  // The server still serves well-behaved clients.
  auto client = Client();
  EXPECT_EQ(*client->Call("echo", "alive"), "alive");
}

TEST(RpcServerTest, ResponsesOverTheFrameLimitBecomeErrors) {
  auto server =
      *RpcServer::Create({.handshake = TransportTestHandshake("s"), .max_frame_bytes = 4096});
  server->RegisterUnary(
      "big", [](std::shared_ptr<ServerCall> call) { call->Finish(std::string(10000, 'z')); });
  ASSERT_TRUE(server->Start().ok());
  auto client = *RpcClient::Create(
      {.port = server->port(), .handshake = TransportTestHandshake("c"), .max_frame_bytes = 4096});
  EXPECT_EQ(client->Call("big", "").status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(client->Call("big", std::string(10000, 'q')).status().code(),
            absl::StatusCode::kResourceExhausted);
  server->Stop();
  server->Stop();  // idempotent
}

}  // namespace
}  // namespace kvasir::transport::rpc
