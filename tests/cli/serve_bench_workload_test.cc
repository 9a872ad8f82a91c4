// The workload `kvasir bench serve` sends: drawn from the seed, and with --shared-prefix-len,
// every prompt starts with one of --num-prefixes prefixes (request i with prefix i mod K).
#include <string>

#include "absl/strings/str_split.h"
#include "cli/serve_bench.h"
#include "gtest/gtest.h"

namespace kvasir::cli {
namespace {

std::vector<std::string> Words(const std::string& text) {
  return absl::StrSplit(text, ' ', absl::SkipEmpty());
}

TEST(ServeBenchWorkloadTest, SharedPrefixesAreSharedAndDistinct) {
  ServeBenchOptions o;
  o.num_prompts = 12;
  o.input_words = 10;
  o.shared_prefix_words = 50;
  o.num_prefixes = 4;
  o.seed = 3;
  const ServeBenchWorkload w = MakeServeBenchWorkload(o);
  ASSERT_EQ(w.prompts.size(), 12u);
  std::vector<std::vector<std::string>> words;
  for (const std::string& p : w.prompts) {
    words.push_back(Words(p));
    EXPECT_EQ(words.back().size(), 60u) << p;
  }
  const auto prefix = [&](int i) {
    return std::vector<std::string>(words[i].begin(), words[i].begin() + 50);
  };
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(prefix(i), prefix(i % 4)) << i;  // the same prefix every 4 requests
    if (i >= 4) {
      EXPECT_NE(words[i], words[i % 4]) << i;  // and a tail of its own
    } else {
      for (int j = 0; j < i; ++j) EXPECT_NE(prefix(i), prefix(j)) << i << " " << j;
    }
  }
  // Deterministic in the seed; another seed, other prompts.
  EXPECT_EQ(MakeServeBenchWorkload(o).prompts, w.prompts);
  o.seed = 4;
  EXPECT_NE(MakeServeBenchWorkload(o).prompts, w.prompts);
  // Without a shared prefix, prompts have --input-len words.
  o.shared_prefix_words = 0;
  for (const std::string& p : MakeServeBenchWorkload(o).prompts) EXPECT_EQ(Words(p).size(), 10u);
  o.num_prefixes = 0;
  o.shared_prefix_words = 5;
  EXPECT_FALSE(CheckServeBenchOptions(o).ok());
}

}  // namespace
}  // namespace kvasir::cli
