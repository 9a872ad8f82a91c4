// transport/http: the Beast-based server and the blocking client, over loopback. Requests are
// also written by hand on raw sockets, to cover keep-alive, pipelining, limits, timeouts and
// malformed input.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "transport/http/client.h"
#include "transport/http/server.h"

namespace kvasir::transport::http {
namespace {

// A connected loopback socket with a receive timeout.
class RawConnection {
 public:
  explicit RawConnection(uint16_t port, int timeout_ms = 3000) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return connected_; }
  bool Send(std::string_view bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return false;
      done += n;
    }
    return true;
  }
  // Reads until the peer closes or the receive timeout passes.
  std::string ReadUntilClose(bool* closed = nullptr) {
    std::string out;
    char buf[4096];
    while (true) {
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n == 0) {
        if (closed) *closed = true;
        return out;
      }
      if (n < 0) {
        if (closed) *closed = errno == ECONNRESET;
        return out;
      }
      out.append(buf, n);
    }
  }
  // Reads until `out` contains `marker` (or the timeout / close).
  std::string ReadUntil(std::string_view marker) {
    std::string out;
    char buf[4096];
    while (out.find(marker) == std::string::npos) {
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) break;
      out.append(buf, n);
    }
    return out;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

int CountOf(const std::string& s, std::string_view needle) {
  int n = 0;
  for (size_t at = s.find(needle); at != std::string::npos; at = s.find(needle, at + 1)) ++n;
  return n;
}

// Echoes method, path, query, a header and the body.
void Echo(HttpRequest request, std::shared_ptr<HttpResponder> responder) {
  const std::string* test = request.header("x-test");
  HttpResponse r;
  r.content_type = "text/plain";
  r.body = request.method + " " + request.path + " " + request.query + " " +
           (test ? *test : std::string("-")) + " " + request.body;
  responder->Send(std::move(r));
}

std::unique_ptr<HttpServer> StartServer(HttpHandler handler, HttpServer::Options options = {}) {
  auto server = HttpServer::Start(options, std::move(handler));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

TEST(HttpServerTest, AnswersGetAndPost) {
  auto server = StartServer(Echo);
  ASSERT_NE(server, nullptr);
  HttpClientRequest get;
  get.target = "/a/b?x=1&y=2";
  get.headers.push_back({"X-Test", "hello"});
  auto r = HttpFetch("127.0.0.1", server->port(), get, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "GET /a/b x=1&y=2 hello ");
  ASSERT_NE(r->header("content-type"), nullptr);
  EXPECT_EQ(*r->header("content-type"), "text/plain");

  HttpClientRequest post;
  post.method = "POST";
  post.target = "/echo";
  post.body = std::string(10000, 'z');
  // By name where the machine resolves "localhost" (a bare chroot may have no /etc/hosts).
  addrinfo* found = nullptr;
  const bool resolves = getaddrinfo("localhost", nullptr, nullptr, &found) == 0;
  if (found != nullptr) freeaddrinfo(found);
  r = HttpFetch(resolves ? "localhost" : "127.0.0.1", server->port(), post, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "POST /echo  - " + post.body);
}

TEST(HttpServerTest, KeepAliveAndPipelining) {
  auto server = StartServer(Echo);
  ASSERT_NE(server, nullptr);
  RawConnection c(server->port());
  ASSERT_TRUE(c.connected());
  // Two requests one after the other on the same connection.
  ASSERT_TRUE(c.Send("GET /one HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string first = c.ReadUntil("GET /one  - ");
  EXPECT_NE(first.find("HTTP/1.1 200 OK"), std::string::npos) << first;
  ASSERT_TRUE(c.Send("GET /two HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string second = c.ReadUntil("GET /two  - ");
  EXPECT_NE(second.find("GET /two  - "), std::string::npos) << second;
  // Three pipelined in one write; the last asks to close.
  ASSERT_TRUE(
      c.Send("GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: "
             "3\r\n\r\nabcGET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  bool closed = false;
  std::string all = c.ReadUntilClose(&closed);
  EXPECT_TRUE(closed);
  const size_t p1 = all.find("GET /p1  - ");
  const size_t p2 = all.find("POST /p2  - abc");
  const size_t p3 = all.find("GET /p3  - ");
  ASSERT_NE(p1, std::string::npos) << all;
  ASSERT_NE(p2, std::string::npos) << all;
  ASSERT_NE(p3, std::string::npos) << all;
  EXPECT_LT(p1, p2);
  EXPECT_LT(p2, p3);
  EXPECT_EQ(CountOf(all, "HTTP/1.1 200 OK"), 3);
  EXPECT_NE(all.find("Connection: close"), std::string::npos);
}

TEST(HttpServerTest, AnswersLaterFromAnotherThread) {
  std::shared_ptr<HttpResponder> kept;
  absl::Notification got;
  auto server = StartServer([&](HttpRequest, std::shared_ptr<HttpResponder> responder) {
    kept = std::move(responder);
    got.Notify();
  });
  ASSERT_NE(server, nullptr);
  std::thread answer([&] {
    ASSERT_TRUE(got.WaitForNotificationWithTimeout(absl::Seconds(5)));
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_TRUE(kept->Send({.status = 202, .body = "later"}));
    EXPECT_FALSE(kept->Send({.status = 200, .body = "twice"}));  // only the first counts
  });
  auto r = HttpFetch("127.0.0.1", server->port(), {}, absl::Seconds(5));
  answer.join();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 202);
  EXPECT_EQ(r->body, "later");
}

TEST(HttpServerTest, StreamsChunks) {
  std::thread writer;
  auto server = StartServer([&](HttpRequest, std::shared_ptr<HttpResponder> responder) {
    writer = std::thread([responder] {
      ASSERT_TRUE(
          responder->StartStream(200, "text/event-stream", {{"Cache-Control", "no-cache"}}));
      for (int i = 0; i < 5; ++i) {
        EXPECT_TRUE(responder->Write("data: " + std::to_string(i) + "\n\n"));
        absl::SleepFor(absl::Milliseconds(5));
      }
      EXPECT_TRUE(responder->Write(""));  // skipped, not a terminating chunk
      responder->End();
      EXPECT_FALSE(responder->Write("late"));
    });
  });
  ASSERT_NE(server, nullptr);
  auto stream = HttpClientStream::Open("127.0.0.1", server->port(), {}, absl::Seconds(5));
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->status(), 200);
  ASSERT_NE((*stream)->header("transfer-encoding"), nullptr);
  EXPECT_EQ(*(*stream)->header("transfer-encoding"), "chunked");
  EXPECT_EQ(*(*stream)->header("cache-control"), "no-cache");
  auto body = (*stream)->ReadAll(absl::Seconds(5));
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n");
  writer.join();
}

TEST(HttpServerTest, NoticesAClientThatGoesAwayMidStream) {
  std::shared_ptr<HttpResponder> kept;
  absl::Notification started, closed;
  auto server = StartServer([&](HttpRequest, std::shared_ptr<HttpResponder> responder) {
    responder->OnClose([&] { closed.Notify(); });
    responder->StartStream(200, "text/event-stream");
    responder->Write("data: first\n\n");
    kept = std::move(responder);
    started.Notify();
  });
  ASSERT_NE(server, nullptr);
  auto stream = HttpClientStream::Open("127.0.0.1", server->port(), {}, absl::Seconds(5));
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto piece = (*stream)->Read(absl::Seconds(5));
  ASSERT_TRUE(piece.ok()) << piece.status();
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_FALSE(kept->closed());
  (*stream)->Close();
  ASSERT_TRUE(closed.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_TRUE(kept->closed());
  EXPECT_FALSE(kept->Write("data: nobody listens\n\n"));
  // OnClose registered after the fact runs at once.
  bool ran = false;
  kept->OnClose([&] { ran = true; });
  EXPECT_TRUE(ran);
}

TEST(HttpServerTest, NoticesAClientThatGoesAwayBeforeTheAnswer) {
  std::shared_ptr<HttpResponder> kept;
  absl::Notification got, closed;
  auto server = StartServer([&](HttpRequest, std::shared_ptr<HttpResponder> responder) {
    responder->OnClose([&] { closed.Notify(); });
    kept = std::move(responder);
    got.Notify();
  });
  ASSERT_NE(server, nullptr);
  {
    RawConnection c(server->port());
    ASSERT_TRUE(c.Send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"));
    ASSERT_TRUE(got.WaitForNotificationWithTimeout(absl::Seconds(5)));
  }  // hangs up
  ASSERT_TRUE(closed.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_FALSE(kept->Send({.body = "too late"}));
}

TEST(HttpServerTest, CompletedResponseNeverRunsOnClose) {
  std::atomic<int> on_close_runs{0};
  auto server = StartServer([&](HttpRequest, std::shared_ptr<HttpResponder> responder) {
    responder->OnClose([&] { ++on_close_runs; });
    responder->Send({.body = "ok"});
  });
  ASSERT_NE(server, nullptr);
  auto r = HttpFetch("127.0.0.1", server->port(), {}, absl::Seconds(5));
  ASSERT_TRUE(r.ok());
  server->Stop();
  EXPECT_EQ(on_close_runs.load(), 0);
}

TEST(HttpServerTest, BodyOverTheLimitGets413) {
  HttpServer::Options options;
  options.max_body_bytes = 1000;
  auto server = StartServer(Echo, options);
  ASSERT_NE(server, nullptr);
  HttpClientRequest post;
  post.method = "POST";
  post.body = std::string(1000, 'a');
  auto ok = HttpFetch("127.0.0.1", server->port(), post, absl::Seconds(5));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->status, 200);
  post.body = std::string(1001, 'a');
  auto big = HttpFetch("127.0.0.1", server->port(), post, absl::Seconds(5));
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(big->status, 413);
  EXPECT_NE(big->body.find("\"error\""), std::string::npos);
  // The same with a chunked body, which has no length up front.
  RawConnection c(server->port());
  std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 3; ++i) chunked += "190\r\n" + std::string(400, 'b') + "\r\n";
  chunked += "0\r\n\r\n";
  ASSERT_TRUE(c.Send(chunked));
  std::string reply = c.ReadUntilClose();
  EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply;
}

TEST(HttpServerTest, HeaderOverTheLimitGets431) {
  HttpServer::Options options;
  options.max_header_bytes = 1024;
  auto server = StartServer(Echo, options);
  ASSERT_NE(server, nullptr);
  RawConnection c(server->port());
  ASSERT_TRUE(c.Send("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(2000, 'h') + "\r\n\r\n"));
  std::string reply = c.ReadUntilClose();
  EXPECT_EQ(reply.rfind("HTTP/1.1 431", 0), 0u) << reply;
}

TEST(HttpServerTest, MalformedRequestsGet400AndTheServerCarriesOn) {
  auto server = StartServer(Echo);
  ASSERT_NE(server, nullptr);
  const std::vector<std::string> bad = {
      "GARBAGE\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n",
      "GET / HTTP/1.1\r\nBad Header Name: 1\r\n\r\n",
      std::string("GET /\0 HTTP/1.1\r\n\r\n", 20),
      "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n",
  };
  for (const std::string& request : bad) {
    RawConnection c(server->port());
    ASSERT_TRUE(c.connected());
    c.Send(request);
    std::string reply = c.ReadUntilClose();
    EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << "request: " << request << "\nreply: " << reply;
  }
  auto r = HttpFetch("127.0.0.1", server->port(), {}, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, RandomBytesNeverCrashTheServer) {
  HttpServer::Options options;
  options.read_timeout = absl::Milliseconds(100);  // truncated requests end quickly
  auto server = StartServer(Echo, options);
  ASSERT_NE(server, nullptr);
  const std::string valid =
      "POST /v1/completions?a=b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      "Content-Length: 11\r\nConnection: close\r\n\r\n{\"a\": true}";
  std::mt19937 rng(1234);
  for (int i = 0; i < 200; ++i) {
    std::string mutated = valid;
    const int edits = 1 + static_cast<int>(rng() % 6);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % mutated.size();
      switch (rng() % 3) {
        case 0:
          mutated[at] = static_cast<char>(rng() % 256);
          break;
        case 1:
          mutated.erase(at, 1 + rng() % 8);
          break;
        default:
          mutated.insert(at, std::string(1 + rng() % 4, static_cast<char>(rng() % 256)));
      }
      if (mutated.empty()) mutated = "x";
    }
    RawConnection c(server->port(), 1000);
    c.Send(mutated);
    std::string reply = c.ReadUntilClose();
    if (!reply.empty()) {
      EXPECT_EQ(reply.rfind("HTTP/1.", 0), 0u) << reply;
    }
  }
  auto r = HttpFetch("127.0.0.1", server->port(), {}, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, SlowOrSilentClientsAreTimedOut) {
  HttpServer::Options options;
  options.read_timeout = absl::Milliseconds(200);
  options.idle_timeout = absl::Milliseconds(200);
  auto server = StartServer(Echo, options);
  ASSERT_NE(server, nullptr);
  const absl::Time start = absl::Now();
  RawConnection silent(server->port(), 5000);
  ASSERT_TRUE(silent.Send("GET / HTTP/1.1\r\nHo"));  // never finishes the header
  bool closed = false;
  silent.ReadUntilClose(&closed);
  EXPECT_TRUE(closed);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));

  RawConnection idle(server->port(), 5000);
  ASSERT_TRUE(idle.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  closed = false;
  std::string reply = idle.ReadUntilClose(&closed);  // answered, then closed when idle
  EXPECT_TRUE(closed);
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
}

TEST(HttpServerTest, ExpectContinue) {
  auto server = StartServer(Echo);
  ASSERT_NE(server, nullptr);
  RawConnection c(server->port());
  ASSERT_TRUE(
      c.Send("POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
             "Connection: close\r\n\r\n"));
  std::string interim = c.ReadUntil("\r\n\r\n");
  EXPECT_EQ(interim.rfind("HTTP/1.1 100 Continue", 0), 0u) << interim;
  ASSERT_TRUE(c.Send("hello"));
  std::string reply = c.ReadUntilClose();
  EXPECT_NE(reply.find("POST /e  - hello"), std::string::npos) << reply;
}

TEST(HttpServerTest, Http10StreamEndsByClosing) {
  auto server = StartServer([](HttpRequest request, std::shared_ptr<HttpResponder> responder) {
    EXPECT_EQ(request.version, 10);
    responder->StartStream(200, "text/plain");
    responder->Write("one ");
    responder->Write("two");
    responder->End();
  });
  ASSERT_NE(server, nullptr);
  RawConnection c(server->port());
  ASSERT_TRUE(c.Send("GET / HTTP/1.0\r\n\r\n"));
  bool closed = false;
  std::string reply = c.ReadUntilClose(&closed);
  EXPECT_TRUE(closed);
  EXPECT_EQ(reply.rfind("HTTP/1.0 200", 0), 0u) << reply;
  EXPECT_EQ(reply.find("chunked"), std::string::npos) << reply;
  EXPECT_EQ(reply.substr(reply.size() - 7), "one two");
}

TEST(HttpServerTest, HeadGetsTheHeaderOnly) {
  auto server = StartServer(Echo);
  ASSERT_NE(server, nullptr);
  RawConnection c(server->port());
  ASSERT_TRUE(
      c.Send("HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n"
             "Connection: close\r\n\r\n"));
  const std::string all = c.ReadUntilClose();
  // The HEAD answer announces its body ("HEAD /h  - ", 11 bytes) but sends none; the next
  // response follows at once.
  EXPECT_EQ(all.rfind("HTTP/1.1 200 OK", 0), 0u) << all;
  EXPECT_NE(all.find("Content-Length: 11\r\n\r\nHTTP/1.1 200 OK"), std::string::npos) << all;
  EXPECT_EQ(all.find("HEAD /h"), std::string::npos) << all;
  EXPECT_NE(all.find("GET /g  - "), std::string::npos) << all;
}

TEST(HttpServerTest, DroppedResponderGives500) {
  auto server = StartServer([](HttpRequest, std::shared_ptr<HttpResponder>) {});
  ASSERT_NE(server, nullptr);
  auto r = HttpFetch("127.0.0.1", server->port(), {}, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 500);
}

TEST(HttpServerTest, StopClosesPendingRequestsAndIsIdempotent) {
  std::shared_ptr<HttpResponder> kept;
  absl::Notification got, closed;
  auto server = StartServer([&](HttpRequest, std::shared_ptr<HttpResponder> responder) {
    responder->OnClose([&] { closed.Notify(); });
    kept = std::move(responder);
    got.Notify();
  });
  ASSERT_NE(server, nullptr);
  const uint16_t port = server->port();
  std::thread client([port] {
    auto r = HttpFetch("127.0.0.1", port, {}, absl::Seconds(5));
    EXPECT_FALSE(r.ok());  // the server went away without answering
  });
  ASSERT_TRUE(got.WaitForNotificationWithTimeout(absl::Seconds(5)));
  server->Stop();
  server->Stop();
  client.join();
  EXPECT_TRUE(closed.HasBeenNotified());
  EXPECT_TRUE(kept->closed());
  EXPECT_FALSE(kept->Send({.body = "after stop"}));
  RawConnection refused(port);
  EXPECT_FALSE(refused.connected());
}

TEST(HttpServerTest, ClientReportsErrors) {
  // Nothing listens on this port once the server is gone.
  uint16_t port;
  {
    auto server = StartServer(Echo);
    ASSERT_NE(server, nullptr);
    port = server->port();
  }
  auto r = HttpFetch("127.0.0.1", port, {}, absl::Seconds(2));
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  // A server that never answers: the deadline holds.
  std::shared_ptr<HttpResponder> kept;
  auto server =
      StartServer([&](HttpRequest, std::shared_ptr<HttpResponder> responder) { kept = responder; });
  ASSERT_NE(server, nullptr);
  const absl::Time start = absl::Now();
  r = HttpFetch("127.0.0.1", server->port(), {}, absl::Milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(r.status())) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(HttpServerTest, LoopbackHosts) {
  EXPECT_TRUE(IsLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackHost("127.1.2.3"));
  EXPECT_TRUE(IsLoopbackHost("localhost"));
  EXPECT_TRUE(IsLoopbackHost("::1"));
  EXPECT_FALSE(IsLoopbackHost("0.0.0.0"));
  EXPECT_FALSE(IsLoopbackHost("10.0.0.7"));
  EXPECT_FALSE(IsLoopbackHost("example.com"));
}

TEST(HttpServerTest, RefusesBadOptions) {
  HttpServer::Options options;
  options.host = "no such host.invalid";
  EXPECT_FALSE(HttpServer::Start(options, Echo).ok());
  options = {};
  options.threads = 0;
  EXPECT_FALSE(HttpServer::Start(options, Echo).ok());
  EXPECT_FALSE(HttpServer::Start({}, nullptr).ok());
}

}  // namespace
}  // namespace kvasir::transport::http
