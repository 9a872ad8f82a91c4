// PoD layer groups: construction, validation of the groups JSON file (clear errors for every kind
// of damage, no crash on any truncation), the JSON round trip, and the greedy grouping rule.
#include "kvcache/pod_groups.h"

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvasir::kvcache {
namespace {

TEST(PodGroupsTest, FixedSizeGroupsConsecutiveLayersAlike) {
  const PodGroups g = PodGroups::FixedSize(7, 3, 3);
  for (int32_t h = 0; h < 3; ++h) {
    EXPECT_EQ(g.Groups(h), (std::vector<std::vector<int32_t>>{{0, 1, 2}, {3, 4, 5}, {6}}));
  }
  EXPECT_EQ(g.anchor(5, 2), 3);
  EXPECT_TRUE(g.is_anchor(6, 0));
  EXPECT_EQ(g.num_anchors(), 9);
  EXPECT_EQ(PodGroups::FixedSize(4, 1, 1).num_anchors(), 4);
  EXPECT_EQ(PodGroups::FixedSize(4, 1, 100).num_anchors(), 1);
}

TEST(PodGroupsTest, FromListsValidatesEveryLayerOnceInOrder) {
  auto ok = PodGroups::FromLists(4, 2, {{{0, 1}, {2, 3}}, {{0}, {1, 2, 3}}});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->anchor(3, 0), 2);
  EXPECT_EQ(ok->anchor(3, 1), 1);
  EXPECT_EQ(ok->Groups(1), (std::vector<std::vector<int32_t>>{{0}, {1, 2, 3}}));
  const std::vector<std::pair<std::vector<std::vector<std::vector<int32_t>>>, const char*>> bad = {
      {{{{0, 1, 2, 3}}}, "one head missing"},
      {{{{0, 1}, {2, 3}}, {{0, 1}, {3, 2}}}, "out of order"},
      {{{{0, 1}, {2, 3}}, {{0, 2}, {1, 3}}}, "not consecutive"},
      {{{{0, 1}, {2}}, {{0, 1, 2, 3}}}, "layer 3 missing"},
      {{{{0, 1}, {1, 2, 3}}, {{0, 1, 2, 3}}}, "layer 1 twice"},
      {{{{0, 1, 2, 3, 4}}, {{0, 1, 2, 3}}}, "layer out of range"},
      {{{{-1, 0, 1, 2, 3}}, {{0, 1, 2, 3}}}, "negative layer"},
      {{{{0, 1}, {}, {2, 3}}, {{0, 1, 2, 3}}}, "empty group"},
      {{{{1, 2, 3}}, {{0, 1, 2, 3}}}, "does not start at layer 0"},
  };
  for (const auto& [lists, what] : bad) {
    auto g = PodGroups::FromLists(4, 2, lists);
    EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << what;
  }
}

constexpr const char* kValid = R"({
  "format": "kvasir.pod.groups", "version": 1, "model": "tiny", "n_layer": 4, "n_head_kv": 2,
  "sink": 4, "window": 60,
  "groups": [[[0, 1, 2], [3]], [[0], [1, 2, 3]]],
  "similarity": [
    [[1, 0.9, 0.8, 0.2], [0.9, 1, 0.7, 0.3], [0.8, 0.7, 1, 0.6], [0.2, 0.3, 0.6, 1]],
    [[1, null, 0.1, 0.2], [null, 1, 0.9, 0.8], [0.1, 0.9, 1, 0.95], [0.2, 0.8, 0.95, 1]]],
  "calibration": {"text": "t.txt", "metric": "attention", "tokens": 100, "chunks": 1,
                  "queries": 10, "threshold": 0.5, "max_group": 0}
})";

TEST(PodGroupsFileTest, ParsesAValidFileAndRoundTrips) {
  auto f = ParsePodGroupsJson(kValid);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->model, "tiny");
  EXPECT_EQ(f->sink, 4);
  EXPECT_EQ(f->window, 60);
  EXPECT_EQ(f->groups.anchor(2, 0), 0);
  EXPECT_EQ(f->groups.anchor(2, 1), 1);
  ASSERT_EQ(f->similarity.size(), 2u);
  EXPECT_TRUE(std::isnan(f->similarity[1][0][1]));
  EXPECT_DOUBLE_EQ(f->similarity[1][2][3], 0.95);
  ASSERT_TRUE(f->calibration.has_value());
  EXPECT_EQ(f->calibration->tokens, 100);

  const std::string text = PodGroupsToJson(*f);
  auto back = ParsePodGroupsJson(text);
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << text;
  EXPECT_EQ(back->groups, f->groups);
  EXPECT_EQ(back->model, f->model);
  EXPECT_EQ(back->sink, f->sink);
  EXPECT_EQ(back->window, f->window);
  for (int h = 0; h < 2; ++h) {
    for (int a = 0; a < 4; ++a) {
      for (int b = 0; b < 4; ++b) {
        const double x = f->similarity[h][a][b], y = back->similarity[h][a][b];
        EXPECT_TRUE((std::isnan(x) && std::isnan(y)) || x == y) << h << " " << a << " " << b;
      }
    }
  }
  EXPECT_EQ(back->calibration->text, "t.txt");
  EXPECT_EQ(back->calibration->queries, 10);

  // The minimal form.
  auto minimal = ParsePodGroupsJson(R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1]]]})");
  ASSERT_TRUE(minimal.ok()) << minimal.status();
  EXPECT_FALSE(minimal->sink.has_value());
  EXPECT_TRUE(minimal->similarity.empty());
}

TEST(PodGroupsFileTest, RefusesDamagedFilesWithOneLine) {
  const std::vector<std::pair<std::string, const char*>> bad = {
      {"", "empty"},
      {"[1, 2]", "not an object"},
      {"{\"n_layer\": 2, \"n_head_kv\": 1}", "no groups"},
      {R"({"n_head_kv": 1, "groups": [[[0, 1]]]})", "no n_layer"},
      {R"({"n_layer": 2.5, "n_head_kv": 1, "groups": [[[0, 1]]]})", "fractional n_layer"},
      {R"({"n_layer": -2, "n_head_kv": 1, "groups": [[[0, 1]]]})", "negative n_layer"},
      {R"({"n_layer": "2", "n_head_kv": 1, "groups": [[[0, 1]]]})", "string n_layer"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1]]], "version": 2})", "version"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1]]], "format": "x"})", "format"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": {"0": [0, 1]}})", "groups not an array"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[0, 1]]})", "head not nested"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[["0", 1]]]})", "string layer"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1.0]]]})", "float layer"},
      {R"({"n_layer": 2, "n_head_kv": 2, "groups": [[[0, 1]]]})", "head missing"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0]]]})", "layer missing"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1, 2]]]})", "layer out of range"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 18446744073709551615]]]})", "huge"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1]]], "sink": -1})", "sink"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1]]], "window": 0})", "window"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1]]], "model": 3})", "model"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1]]], "similarity": [[1, 2]]})",
       "similarity shape"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1]]],
           "similarity": [[[1, "a"], [1, 1]]]})",
       "similarity type"},
      {R"({"n_layer": 2, "n_head_kv": 1, "groups": [[[0, 1]]], "calibration": 5})", "calibration"},
  };
  for (const auto& [text, what] : bad) {
    auto f = ParsePodGroupsJson(text);
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << what;
    EXPECT_EQ(std::string(f.status().message()).find('\n'), std::string::npos) << what;
  }
  // Every truncation and every single-byte change of a valid file: an error or a valid result.
  const std::string valid = kValid;
  for (size_t n = 0; n < valid.size(); ++n) (void)ParsePodGroupsJson(valid.substr(0, n));
  for (size_t i = 0; i < valid.size(); ++i) {
    for (char c : {'0', '9', '[', ']', '"', '-', ' '}) {
      std::string m = valid;
      m[i] = c;
      auto f = ParsePodGroupsJson(m);
      if (f.ok()) {
        EXPECT_EQ(f->groups.n_layer(), 4);
      }
    }
  }
  EXPECT_EQ(LoadPodGroupsFile("/nonexistent/pod.json").status().code(),
            absl::StatusCode::kNotFound);
}

std::vector<std::vector<std::vector<double>>> Uniform(int32_t heads, int32_t layers, double v) {
  return std::vector<std::vector<std::vector<double>>>(
      heads, std::vector<std::vector<double>>(layers, std::vector<double>(layers, v)));
}

TEST(PodGreedyTest, LayersJoinTheirAnchorWhileSimilarEnough) {
  auto sim = Uniform(2, 5, 0.0);
  // Head 0: layers 1 and 2 resemble layer 0; layer 3 does not (though it resembles layer 2);
  // layer 4 resembles layer 3.
  sim[0][0][1] = 0.8;
  sim[0][0][2] = 0.6;
  sim[0][2][3] = 0.99;
  sim[0][0][3] = 0.4;
  sim[0][3][4] = 0.5;
  // Head 1: unmeasured pairs (NaN) never join.
  sim[1][0][1] = std::nan("");
  sim[1][1][2] = 0.7;
  sim[1][1][3] = 0.7;
  sim[1][1][4] = 0.7;
  const PodGroups g = GreedyPodGroups(sim, 0.5, 0);
  EXPECT_EQ(g.Groups(0), (std::vector<std::vector<int32_t>>{{0, 1, 2}, {3, 4}}));
  EXPECT_EQ(g.Groups(1), (std::vector<std::vector<int32_t>>{{0}, {1, 2, 3, 4}}));
  // A cap on the group size.
  const PodGroups capped = GreedyPodGroups(sim, 0.5, 2);
  EXPECT_EQ(capped.Groups(0), (std::vector<std::vector<int32_t>>{{0, 1}, {2, 3}, {4}}));
  EXPECT_EQ(capped.Groups(1), (std::vector<std::vector<int32_t>>{{0}, {1, 2}, {3}, {4}}));
  // Nothing similar enough: every layer alone; everything similar: one group.
  EXPECT_EQ(GreedyPodGroups(sim, 1.5, 0).num_anchors(), 10);
  EXPECT_EQ(GreedyPodGroups(Uniform(2, 5, 0.9), 0.5, 0).num_anchors(), 2);
}

}  // namespace
}  // namespace kvasir::kvcache
