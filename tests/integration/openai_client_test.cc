// The official `openai` Python client (from PyPI) against a real cluster: a completion, a chat
// completion and a streamed chat completion (tests/integration/openai_client_check.py). The
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

TEST(OpenAiClientTest, CompletionChatAndStreamedChat) {
  const std::string deps = testing::RepoPath(".deps/python");
  const std::string local = std::string(KVASIR_BINARY_DIR) + "/pydeps";
  const std::string pythonpath = deps + ":" + local;
  if (!Importable(pythonpath)) {
    const std::string install =
        "timeout 300 python3 -m pip install --quiet --disable-pip-version-check "
        "--target '" +
        local + "' openai >/dev/null 2>&1";
    if (std::system(install.c_str()) != 0 || !Importable(pythonpath)) {
      GTEST_SKIP() << "the openai Python package is not installed and cannot be installed "
                      "(no network?): python3 -m pip install --target "
                   << local << " openai";
    }
  }
  auto cluster = Cluster::Start({});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto check = transport::ChildProcess::Spawn(
      {"/usr/bin/env", "python3", testing::RepoPath("tests/integration/openai_client_check.py"),
       "http://127.0.0.1:" + std::to_string((*cluster)->port()) + "/v1", (*cluster)->model_name()},
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

}  // namespace
}  // namespace kvasir::integration
