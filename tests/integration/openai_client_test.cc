// The official `openai` Python client (from PyPI) against a real cluster: a completion, a chat
// completion and a streamed chat completion (tests/integration/openai_client_check.py); against
// a cluster of one worker, and against the topology of `make serve` (kvasir up with a prefill
// worker, a decode worker and the cachestore between them). The
// client is taken from .deps/python (scripts/install-deps.sh) or installed into the build folder
// with pip --target; without network the test skips.
#include <cstdlib>
#include <filesystem>

#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

namespace kvasir::integration {
namespace {

bool Importable(const std::string& pythonpath) {
  const std::string cmd =
      "PYTHONPATH='" + pythonpath + "' timeout 60 python3 -c 'import openai' >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

// The client's PYTHONPATH, or "" when the openai package cannot be had.
std::string OpenAiPythonPath() {
  const std::string deps = testing::RepoPath(".deps/python");
  const std::string local = std::string(KVASIR_BINARY_DIR) + "/pydeps";
  const std::string pythonpath = deps + ":" + local;
  if (!Importable(pythonpath)) {
    const std::string install =
        "timeout 300 python3 -m pip install --quiet --disable-pip-version-check "
        "--target '" +
        local + "' openai >/dev/null 2>&1";
    if (std::system(install.c_str()) != 0 || !Importable(pythonpath)) return "";
  }
  return pythonpath;
}

void CheckWithOpenAi(const std::string& pythonpath, uint16_t port, const std::string& model) {
  auto check = transport::ChildProcess::Spawn(
      {"/usr/bin/env", "python3", testing::RepoPath("tests/integration/openai_client_check.py"),
       "http://127.0.0.1:" + std::to_string(port) + "/v1", model},
      {{"PYTHONPATH", pythonpath}});
  ASSERT_TRUE(check.ok()) << check.status();
  auto line = check->ReadLine(absl::Seconds(120));
  auto code = check->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << "openai_client_check.py failed (its traceback is on stderr)";
  ASSERT_TRUE(line.ok()) << line.status();
  json seen = json::parse(*line, nullptr, false);
  ASSERT_TRUE(seen.is_object()) << *line;
  EXPECT_FALSE(seen["completion"].get<std::string>().empty());
  EXPECT_EQ(seen["chat"], seen["streamed"]);
  std::printf("openai %s: ok\n", seen["openai_version"].get<std::string>().c_str());
}

TEST(OpenAiClientTest, CompletionChatAndStreamedChat) {
  const std::string pythonpath = OpenAiPythonPath();
  if (pythonpath.empty()) {
    GTEST_SKIP() << "the openai Python package is not installed and cannot be installed "
                    "(no network?): python3 -m pip install openai";
  }
  {
    auto cluster = Cluster::Start({});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    ASSERT_NO_FATAL_FAILURE(
        CheckWithOpenAi(pythonpath, (*cluster)->port(), (*cluster)->model_name()));
  }
  Up up;
  ASSERT_NO_FATAL_FAILURE(StartUp(up, {"--prefill-workers", "1", "--decode-workers", "1"}));
  auto models = Fetch(up.port, "GET", "/v1/models");
  ASSERT_TRUE(models.ok()) << models.status();
  const json m = json::parse(models->body, nullptr, false);
  ASSERT_TRUE(m.is_object() && m.contains("data")) << models->body;
  ASSERT_NO_FATAL_FAILURE(CheckWithOpenAi(pythonpath, up.port, m["data"][0]["id"]));
  auto metrics = Fetch(up.port, "GET", "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_GT(MetricValue(metrics->body, "kvasir_kv_transfer_bytes_total").value_or(0), 0);
  up.process->Signal(SIGTERM);
  auto code = up.process->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
}

}  // namespace
}  // namespace kvasir::integration
