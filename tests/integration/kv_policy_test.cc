// KV policies are server configuration: a request can select a policy the workers were started
// with (by name) or give a spec without files, but a spec that names a file is refused with one
// fixed message, whatever the path (absolute, relative, "..", a symlink, a FIFO that would block
// whoever opened it), and nothing of the file ever reaches the client. /v1/models lists the
// configured policies without their paths; a worker whose configured file is bad does not start.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

namespace kvasir::integration {
namespace {

namespace fs = std::filesystem;

// The content of the "secret" file: what a leak would show.
constexpr char kSecret[] = "root:*:20000:0:99999:7:::\nkvasir-secret-marker\n";

class KvPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvasir-kvpolicy-" + std::to_string(getpid()));
    fs::create_directories(dir_);
    secret_ = (dir_ / "secret.txt").string();
    std::ofstream(secret_) << kSecret;
    link_ = (dir_ / "link.json").string();
    fs::create_symlink(secret_, link_);
    fifo_ = (dir_ / "fifo").string();
    ASSERT_EQ(mkfifo(fifo_.c_str(), 0600), 0);
    // A valid groups file for stories260K (5 layers, 4 KV heads), configured by the operator.
    groups_ = (dir_ / "groups.json").string();
    std::ofstream(groups_) << R"({"n_layer": 5, "n_head_kv": 4, "groups": [)"
                           << R"([[0, 1], [2, 3], [4]], [[0, 1], [2, 3], [4]],)"
                           << R"([[0, 1, 2], [3, 4]], [[0], [1, 2, 3, 4]]]})";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  fs::path dir_;
  std::string secret_, link_, fifo_, groups_;
};

TEST_F(KvPolicyTest, RequestsNeverNameFilesAndSelectConfiguredPolicies) {
  auto started = Cluster::Start(
      {.worker_args = {"--kv-policy", "calibrated=pod:groups=" + groups_, "--kv-policy",
                       "short=streaming:sink=4,window=28", "--default-kv-policy", "full"}});
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& c = **started;
  const std::string rel = fs::relative(secret_, fs::current_path()).string();
  const std::vector<std::string> refused = {
      "lococo:weights=/etc/shadow",
      "pod:groups=/etc/shadow",
      "lococo:weights=" + secret_,
      "pod:groups=" + secret_,
      "pod:groups=" + rel,                              // relative to the test's directory
      "pod:groups=secret.txt",                          // relative to the worker's
      "pod:groups=../../../../../../../../etc/passwd",  // climbing out
      "pod:groups=" + (dir_ / ".." / dir_.filename() / "secret.txt").string(),
      "pod:groups=" + link_,  // a symlink to the secret
      "pod:groups=" + fifo_,  // opening it would block
      "lococo:slots=16,chunk=8,weights=" + fifo_,
      "pod: groups = " + secret_,                     // spaces
      "pod:sink=4,groups=" + secret_ + ",window=20",  // among other parameters
      "pod:groups=",                                  // empty
      "nonsense:weights=" + secret_,                  // an unknown policy
      "lococo:weights=" + secret_ + ",bogus=1",       // an unknown parameter too
  };
  std::string first_message;
  for (const std::string& spec : refused) {
    SCOPED_TRACE(spec);
    const HttpResult r = c.Post(
        "/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 2}, {"kv_policy", spec}},
        {}, absl::Seconds(10));
    ASSERT_EQ(r.status, 400) << r.body;
    ASSERT_TRUE(r.j.is_object() && r.j.contains("error")) << r.body;
    EXPECT_EQ(r.j["error"]["code"], "invalid_kv_policy") << r.body;
    EXPECT_EQ(r.j["error"]["param"], "kv_policy") << r.body;
    const std::string message = r.j["error"]["message"];
    // Nothing of the file: not its path, its name, its contents or its size.
    EXPECT_EQ(r.body.find("secret"), std::string::npos) << r.body;
    EXPECT_EQ(r.body.find("root:"), std::string::npos) << r.body;
    EXPECT_EQ(r.body.find("shadow"), std::string::npos) << r.body;
    EXPECT_EQ(r.body.find("passwd"), std::string::npos) << r.body;
    EXPECT_EQ(r.body.find("fifo"), std::string::npos) << r.body;
    EXPECT_EQ(r.body.find(dir_.filename().string()), std::string::npos) << r.body;
    EXPECT_EQ(r.body.find(std::to_string(sizeof(kSecret) - 1)), std::string::npos) << r.body;
    // One fixed message per parameter name.
    const std::string expected_param =
        spec.find("weights") != std::string::npos ? "'weights'" : "'groups'";
    EXPECT_NE(message.find(expected_param), std::string::npos) << message;
    EXPECT_NE(message.find("server configuration"), std::string::npos) << message;
    if (expected_param == "'groups'") {
      if (first_message.empty()) first_message = message;
      EXPECT_EQ(message, first_message);
    }
  }
  // Configured policies by name, file-less specs, the default; unknown names are refused.
  for (const char* ok : {"calibrated", "short", "", "full", "h2o:budget=24,recent=4"}) {
    SCOPED_TRACE(ok);
    const HttpResult r = c.Post(
        "/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 4}, {"kv_policy", ok}});
    EXPECT_EQ(r.status, 200) << r.body;
  }
  const HttpResult unknown =
      c.Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"kv_policy", "nope"}});
  EXPECT_EQ(unknown.status, 400) << unknown.body;
  EXPECT_EQ(unknown.j["error"]["code"], "invalid_kv_policy") << unknown.body;
  EXPECT_NE(unknown.body.find("calibrated"), std::string::npos) << unknown.body;

  // The listing: names, kinds and specs, never the path of the groups file.
  const HttpResult models = c.Get("/v1/models");
  ASSERT_EQ(models.status, 200) << models.body;
  EXPECT_EQ(models.body.find(groups_), std::string::npos) << models.body;
  EXPECT_EQ(models.body.find("groups.json"), std::string::npos) << models.body;
  const json& policies = models.j["data"][0]["kv_policies"];
  ASSERT_TRUE(policies.is_array()) << models.body;
  std::map<std::string, json> by_name;
  for (const json& p : policies) by_name[p["name"]] = p;
  ASSERT_TRUE(by_name.count("calibrated")) << models.body;
  EXPECT_EQ(by_name["calibrated"]["kind"], "pod");
  EXPECT_NE(by_name["calibrated"]["spec"].get<std::string>().find("groups=<file>"),
            std::string::npos);
  ASSERT_TRUE(by_name.count("short")) << models.body;
  EXPECT_EQ(by_name["short"]["spec"], "streaming:sink=4,window=28");
  ASSERT_TRUE(by_name.count("full")) << models.body;
  EXPECT_EQ(by_name["full"]["default"], true);
  EXPECT_EQ(by_name["short"]["default"], false);
}

TEST_F(KvPolicyTest, AWorkerWithABadConfiguredFileDoesNotStart) {
  for (const std::string& spec : {"pod:groups=" + secret_, "lococo:weights=" + secret_,
                                  "pod:groups=" + (dir_ / "missing.json").string()}) {
    SCOPED_TRACE(spec);
    auto child = transport::ChildProcess::Spawn({Bin("kvasir-worker"), "--model", StoriesModel(),
                                                 "--threads", "1", "--kv-policy", "bad=" + spec});
    ASSERT_TRUE(child.ok()) << child.status();
    // It never prints its serving line: it stops at start-up with an error (on stderr).
    auto line = child->ReadLine(absl::Seconds(60));
    EXPECT_FALSE(line.ok()) << *line;
    auto code = child->Wait(absl::Seconds(60));
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_NE(*code, 0);
  }
}

}  // namespace
}  // namespace kvasir::integration
