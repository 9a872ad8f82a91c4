// `kvasir calibrate pod` as a user runs it: the real binary in a child process on stories260K and
// the project's Shakespeare text; exit codes, one-line errors, and a groups file that parses.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/pod_groups.h"
#include "tests/cli/cli_runner.h"
#include "tests/testing/paths.h"

namespace kvasir::cli {
namespace {

using cli_test::Kvasir;
using cli_test::TempDir;
using Result = cli_test::RunResult;

const std::string kStories = testing::SharedPath("models/stories260K.gguf");
const std::string kText = testing::SharedPath("eval/shakespeare-public.txt");

TEST(CalibrateCliTest, HelpAndUsageErrors) {
  Result r = Kvasir({"calibrate", "pod", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--threshold"), std::string::npos);
  r = Kvasir({"calibrate"});
  EXPECT_EQ(r.exit_code, 2);
  r = Kvasir({"calibrate", "h2o"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown policy"), std::string::npos) << r.err;
  r = Kvasir({"calibrate", "pod", "--model", kStories});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--text"), std::string::npos) << r.err;
  r = Kvasir({"calibrate", "pod", "--model", kStories, "--text", kText, "--metric", "kl"});
  EXPECT_EQ(r.exit_code, 2);
  r = Kvasir({"calibrate", "pod", "--model", kStories, "--text", "/nonexistent/text.txt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  // Nothing distant: the window covers every chunk.
  r = Kvasir(
      {"calibrate", "pod", "--model", kStories, "--text", kText, "--quiet", "--window", "2000"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no distant tokens"), std::string::npos) << r.err;
}

TEST(CalibrateCliTest, WritesAGroupsFileThePolicyReads) {
  const std::string out = TempDir() + "/groups.json";
  Result r = Kvasir({"calibrate", "pod", "--model", kStories, "--text", kText, "--out", out,
                     "--window", "32", "--max-tokens", "400", "--chunk-tokens", "200", "--queries",
                     "8", "--threshold", "0.1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.empty()) << "the file goes to --out";
  EXPECT_NE(r.err.find("sequence 2/2"), std::string::npos) << "progress on stderr: " << r.err;
  auto file = kvcache::LoadPodGroupsFile(out);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->groups.n_layer(), 5);
  EXPECT_EQ(file->window, 32);
  EXPECT_EQ(file->calibration->tokens, 400);
  // The policy takes it.
  r = Kvasir({"generate", "--model", kStories, "--prompt", "Once upon a time", "--max-tokens", "20",
              "--temperature", "0", "--quiet", "--kv", "pod:groups=" + out});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // --group-size alone: fixed groups, to stdout.
  r = Kvasir({"calibrate", "pod", "--model", kStories, "--text", kText, "--quiet", "--window", "32",
              "--max-tokens", "200", "--chunk-tokens", "200", "--group-size", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto fixed = kvcache::ParsePodGroupsJson(r.out);
  ASSERT_TRUE(fixed.ok()) << fixed.status() << "\n" << r.out;
  EXPECT_EQ(fixed->groups, kvcache::PodGroups::FixedSize(5, 4, 2));
  std::filesystem::remove_all(TempDir());
}

}  // namespace
}  // namespace kvasir::cli
