#include "cachestore/config.h"

#include <vector>

#include "gtest/gtest.h"

namespace kvasir::cachestore {
namespace {

absl::StatusOr<CommandLine> Parse(std::vector<const char*> args) {
  args.insert(args.begin(), "kvasir-cachestore");
  return ParseCommandLine(static_cast<int>(args.size()), args.data());
}

TEST(ConfigTest, DefaultsAndValues) {
  auto d = Parse({});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->options.port, 8300);
  EXPECT_EQ(d->options.http_port, 8301);
  EXPECT_EQ(d->options.store.memory_capacity_bytes, 1ull << 30);
  EXPECT_TRUE(d->options.store.disk_dir.empty());
  EXPECT_FALSE(d->help);

  auto c = Parse({"--host",
                  "0.0.0.0",
                  "--port=0",
                  "--http-port",
                  "9",
                  "--capacity=2GiB",
                  "--disk-dir",
                  "/tmp/x",
                  "--disk-capacity=10GB",
                  "--disk-fsync=false",
                  "--lease-ttl=250ms",
                  "--max-leases=7",
                  "--ucx=off",
                  "--ucx-tls=tcp",
                  "--ucx-busy-poll",
                  "--worker-threads=3",
                  "--max-inline-bytes=8KiB",
                  "--max-block-bytes=32MiB",
                  "--name=a",
                  "--no-http"});
  ASSERT_TRUE(c.ok()) << c.status();
  const ServiceOptions& o = c->options;
  EXPECT_EQ(o.host, "0.0.0.0");
  EXPECT_EQ(o.port, 0);
  EXPECT_EQ(o.http_port, 9);
  EXPECT_FALSE(o.http);
  EXPECT_EQ(o.store.memory_capacity_bytes, 2ull << 30);
  EXPECT_EQ(o.store.disk_dir, "/tmp/x");
  EXPECT_EQ(o.store.disk_capacity_bytes, 10000000000ull);
  EXPECT_FALSE(o.store.disk_fsync);
  EXPECT_EQ(o.store.lease_ttl, absl::Milliseconds(250));
  EXPECT_EQ(o.store.max_leases, 7u);
  EXPECT_EQ(o.ucx, UcxMode::kOff);
  EXPECT_EQ(o.ucx_tls, "tcp");
  EXPECT_TRUE(o.ucx_busy_poll);
  EXPECT_EQ(o.worker_threads, 3);
  EXPECT_EQ(o.max_inline_bytes, 8192u);
  EXPECT_EQ(o.store.max_block_bytes, 32ull << 20);
  EXPECT_EQ(o.name, "a");
  // The default block limit shrinks to a small memory tier; an explicit one must fit it.
  auto small = Parse({"--capacity=8MiB"});
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->options.store.max_block_bytes, 8u << 20);
  EXPECT_FALSE(Parse({"--capacity=8MiB", "--max-block-bytes=16MiB"}).ok());
  EXPECT_TRUE(Parse({"--help"})->help);
  EXPECT_TRUE(Parse({"-h"})->help);
  EXPECT_NE(Usage().find("--disk-dir"), std::string::npos);
}

TEST(ConfigTest, ErrorsNameTheOption) {
  const std::vector<std::vector<const char*>> bad = {
      {"--bogus"},
      {"--port=70000"},
      {"--port"},
      {"--capacity=lots"},
      {"--capacity=100"},
      {"--lease-ttl=-1s"},
      {"--lease-ttl=x"},
      {"--ucx=maybe"},
      {"--disk-fsync=2"},
      {"--worker-threads=0"},
      {"positional"},
      {"--"},
      {"--max-block-bytes=2GiB"},
      {"--no-http=perhaps"},
      {"--disk-dir="},
  };
  for (const auto& args : bad) {
    auto r = Parse(args);
    ASSERT_FALSE(r.ok()) << args[0];
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << args[0];
    EXPECT_EQ(std::string(r.status().message()).find('\n'), std::string::npos)
        << "one line: " << r.status();
  }
  EXPECT_NE(std::string(Parse({"--port=70000"}).status().message()).find("--port"),
            std::string::npos);
}

}  // namespace
}  // namespace kvasir::cachestore
