// The `h2o` policy against a scalar reference that runs its definition token by token per head
// (kept set, accumulated scores, outputs), chunked prefill against one token at a time (bit for
// bit), `full` when the budget covers the sequence, memory bounds, and save/restore.
#include "kvcache/h2o_policy.h"

#include <map>
#include <set>

#include "gtest/gtest.h"
#include "tests/kvcache/eviction_test_util.h"

namespace kvasir::kvcache {
namespace {

using testing_util::BitwiseEqual;
using testing_util::DenseAttention;
using testing_util::Driver;
using testing_util::ExpectEqualsFull;
using testing_util::ExpectHeadOutputsNear;
using testing_util::ExpectRestoredContinuesBitForBit;
using testing_util::Inputs;
using testing_util::Parse;
using testing_util::RandomInputs;
using testing_util::RefK;
using testing_util::RefQ;
using testing_util::RefV;
using testing_util::TestGeometry;

// The definition, one (layer, KV head) at a time: append, attend, add the group's probabilities,
// evict the lowest score outside the `recent` newest (ties: oldest).
struct Reference {
  std::vector<int32_t> kept;  // token indices, in arrival order
  std::vector<double> score;
  std::vector<std::vector<double>> out;  // [token * group + g][head_dim]
};

Reference RunReference(const Inputs& in, int32_t l, int32_t h, int32_t budget, int32_t recent) {
  const KvGeometry& g = in.g;
  Reference r;
  for (int32_t t = 0; t < in.n_tokens; ++t) {
    r.kept.push_back(t);
    r.score.push_back(0.0);
    std::vector<std::vector<float>> keys, values;
    for (int32_t j : r.kept) {
      keys.push_back(RefK(in, l, j, h));
      values.push_back(RefV(in, l, j, h));
    }
    for (int32_t gi = 0; gi < g.group(); ++gi) {
      std::vector<double> p;
      r.out.push_back(DenseAttention(RefQ(in, l, t, h * g.group() + gi), keys, values, &p));
      for (size_t j = 0; j < p.size(); ++j) r.score[j] += p[j];
    }
    if (static_cast<int32_t>(r.kept.size()) <= budget) continue;
    int victim = -1;
    for (size_t j = 0; j < r.kept.size(); ++j) {
      if (r.kept[j] > t - recent) continue;
      if (victim < 0 || r.score[j] < r.score[victim]) victim = static_cast<int>(j);
    }
    r.kept.erase(r.kept.begin() + victim);
    r.score.erase(r.score.begin() + victim);
  }
  return r;
}

// Token of each slot of a table, found by its value (values are stored as given).
std::vector<int32_t> TokensOfSlots(Driver& d, int s, const Inputs& in, int32_t l, int32_t h) {
  std::vector<int32_t> tokens;
  for (const auto& v : d.Slots(d.seq(s).v(l, h))) {
    int32_t token = -1;
    for (int32_t t = 0; t < in.n_tokens && token < 0; ++t) {
      if (v == RefV(in, l, t, h)) token = t;
    }
    tokens.push_back(token);
  }
  return tokens;
}

TEST(H2oPolicyTest, ParsesAndRefusesBadParameters) {
  const KvGeometry g = TestGeometry();
  auto d = ParsePolicy("h2o", g);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->spec(), "h2o:budget=256,recent=32");
  auto p = ParsePolicy("h2o:budget=10,recent=10", g);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->spec(), "h2o:budget=10,recent=10");
  for (const char* bad : {"h2o:budget=0", "h2o:budget=8,recent=9", "h2o:recent=-1",
                          "h2o:budget=8,window=2", "h2o:budget=1.5"}) {
    EXPECT_EQ(ParsePolicy(bad, g).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(H2oPolicyTest, MatchesTheTokenByTokenReference) {
  const KvGeometry g = TestGeometry(2, 4, 2, 8);
  const int32_t n = 48;
  struct Case {
    int32_t budget, recent;
    std::vector<int32_t> chunks;
  };
  for (const Case& c :
       {Case{10, 3, {5, 1, 13, 2}}, Case{7, 0, {48}}, Case{6, 6, {1}}, Case{12, 1, {2, 9}}}) {
    SCOPED_TRACE(::testing::Message() << "budget " << c.budget << " recent " << c.recent);
    const Inputs in = RandomInputs(g, n, 10 + c.budget);
    auto policy = std::make_shared<H2oPolicy>(c.budget, c.recent);
    Driver d(g, policy);
    d.AddSequence(&in);
    ASSERT_TRUE(d.Feed(0, n, c.chunks).ok());
    const auto* state = dynamic_cast<const H2oState*>(d.seq(0).state());
    ASSERT_NE(state, nullptr);
    for (int32_t l = 0; l < g.n_layer; ++l) {
      for (int32_t h = 0; h < g.n_head_kv; ++h) {
        SCOPED_TRACE(::testing::Message() << "layer " << l << " head " << h);
        const Reference ref = RunReference(in, l, h, c.budget, c.recent);
        // Kept set, found by value, and the state's token indices agree with it.
        const std::vector<int32_t> tokens = TokensOfSlots(d, 0, in, l, h);
        const H2oState::Head& head = state->head(l, h);
        ASSERT_EQ(head.token, tokens);
        EXPECT_EQ(std::set<int32_t>(tokens.begin(), tokens.end()),
                  std::set<int32_t>(ref.kept.begin(), ref.kept.end()));
        ASSERT_EQ(tokens.size(), static_cast<size_t>(c.budget));
        // Keys are the kept tokens' keys rotated at their positions; scores match.
        const auto ks = d.Slots(d.seq(0).k(l, h));
        for (size_t s = 0; s < tokens.size(); ++s) {
          const std::vector<float> k = RefK(in, l, tokens[s], h);
          for (int32_t e = 0; e < g.head_dim; ++e) EXPECT_NEAR(ks[s][e], k[e], 1e-5);
          const size_t j =
              std::find(ref.kept.begin(), ref.kept.end(), tokens[s]) - ref.kept.begin();
          EXPECT_NEAR(head.score[s], ref.score[j], 1e-4 * (1 + ref.score[j]));
        }
        // Every output.
        ASSERT_NO_FATAL_FAILURE(ExpectHeadOutputsNear(d, g, l, h, n, ref.out, 1e-4));
      }
    }
  }
}

TEST(H2oPolicyTest, ChunkedPrefillEqualsOneTokenAtATimeBitForBit) {
  const KvGeometry g = TestGeometry(2, 6, 3, 8);
  const int32_t n = 70;
  const Inputs in = RandomInputs(g, n, 20);
  auto policy = Parse("h2o:budget=16,recent=4", g);
  Driver one(g, policy), chunked(g, policy);
  one.AddSequence(&in);
  chunked.AddSequence(&in);
  // A second sequence sharing the chunked driver's steps.
  const Inputs other = RandomInputs(g, n, 21);
  chunked.AddSequence(&other);
  ASSERT_TRUE(one.Feed(0, n, {1}).ok());
  for (int32_t c : {30, 7, 1, 1, 20, 11}) {
    ASSERT_TRUE(chunked.Step({{0, c}, {1, 3}}).ok());
  }
  EXPECT_TRUE(BitwiseEqual(one.outputs(0), chunked.outputs(0)));
  const auto* s1 = dynamic_cast<const H2oState*>(one.seq(0).state());
  const auto* s2 = dynamic_cast<const H2oState*>(chunked.seq(0).state());
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      EXPECT_EQ(s1->head(l, h).token, s2->head(l, h).token);
      EXPECT_TRUE(BitwiseEqual(s1->head(l, h).score, s2->head(l, h).score));
      EXPECT_EQ(one.Slots(one.seq(0).k(l, h)), chunked.Slots(chunked.seq(0).k(l, h)));
      EXPECT_EQ(one.Slots(one.seq(0).v(l, h)), chunked.Slots(chunked.seq(0).v(l, h)));
    }
  }
}

TEST(H2oPolicyTest, F16CacheGivesTheSameBitsForAnyChunking) {
  const KvGeometry g = TestGeometry();
  const int32_t n = 40;
  const Inputs in = RandomInputs(g, n, 22);
  auto policy = Parse("h2o:budget=12,recent=3", g);
  Driver one(g, policy, 4, DType::kF16), chunked(g, policy, 4, DType::kF16);
  one.AddSequence(&in);
  chunked.AddSequence(&in);
  ASSERT_TRUE(one.Feed(0, n, {1}).ok());
  ASSERT_TRUE(chunked.Feed(0, n, {25, 3}).ok());
  EXPECT_TRUE(BitwiseEqual(one.outputs(0), chunked.outputs(0)));
  EXPECT_EQ(chunked.cache().Usage(chunked.seq(0)).slots, 2 * g.n_layer * g.n_head_kv * 12);
}

TEST(H2oPolicyTest, EqualsFullBitForBitWhenTheBudgetCoversTheSequence) {
  const KvGeometry g = TestGeometry();
  const Inputs in = RandomInputs(g, 40, 30);
  for (const char* spec : {"h2o:budget=64,recent=4", "h2o:budget=40,recent=0"}) {
    ExpectEqualsFull(g, in, spec, {9, 1, 4}, /*same_tables=*/false);
  }
}

TEST(H2oPolicyTest, HoldsAtMostTheBudgetAndFreesTheSpareSlot) {
  const KvGeometry g = TestGeometry();
  const Inputs in = RandomInputs(g, 50, 40);
  Driver d(g, Parse("h2o:budget=8,recent=2", g), /*page_size=*/4);
  d.AddSequence(&in);
  for (int32_t t = 1; t <= 50; t += 3) {
    ASSERT_TRUE(d.Feed(0, t, {3}).ok());
    const int64_t per_table = std::min<int64_t>(t, 8);
    EXPECT_EQ(d.cache().Usage(d.seq(0)).slots, 2 * g.n_layer * g.n_head_kv * per_table);
    EXPECT_EQ(d.cache().pool().pages_used(), 2 * g.n_layer * g.n_head_kv * ((per_table + 3) / 4));
  }
}

TEST(H2oPolicyTest, RecentEqualToBudgetIsASlidingWindow) {
  const KvGeometry g = TestGeometry();
  const Inputs in = RandomInputs(g, 30, 50);
  Driver d(g, Parse("h2o:budget=6,recent=6", g));
  d.AddSequence(&in);
  ASSERT_TRUE(d.Feed(0, 30, {4, 1}).ok());
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      std::vector<int32_t> tokens = TokensOfSlots(d, 0, in, l, h);
      std::sort(tokens.begin(), tokens.end());
      EXPECT_EQ(tokens, (std::vector<int32_t>{24, 25, 26, 27, 28, 29}));
    }
  }
}

TEST(H2oPolicyTest, TiesEvictTheOldest) {
  // Scores of 1e10 absorb a step's probabilities (< 1 ulp), so the old slots tie exactly; the
  // slots hold tokens out of order so that "oldest" differs from "first slot" and "last slot".
  const KvGeometry g = TestGeometry(1, 2, 1, 8);
  const Inputs in = RandomInputs(g, 5, 56);
  auto policy = Parse("h2o:budget=4,recent=1", g);
  Driver d(g, policy);
  d.AddSequence(&in);
  ASSERT_TRUE(d.Feed(0, 4, {4}).ok());
  std::string blob;
  auto u32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) blob.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  u32(0x53324f48);  // "H2OS"
  u32(1);
  u32(1);  // layers
  u32(1);  // kv heads
  u32(4);  // budget
  u32(1);  // recent
  u32(4);  // slots
  for (uint32_t t : {2, 0, 3, 1}) u32(t);
  for (int i = 0; i < 4; ++i) u32(0x501502f9);  // 1e10f
  ASSERT_TRUE(policy->LoadState(blob, d.seq(0)).ok());
  ASSERT_TRUE(d.Feed(0, 5, {1}).ok());
  const auto* state = dynamic_cast<const H2oState*>(d.seq(0).state());
  EXPECT_EQ(state->head(0, 0).token, (std::vector<int32_t>{2, 4, 3, 1}));
}

TEST(H2oPolicyTest, RestoredSequenceContinuesBitForBit) {
  const KvGeometry g = TestGeometry();
  const int32_t n = 45;
  const Inputs in = RandomInputs(g, n, 60);
  auto policy = Parse("h2o:budget=9,recent=3", g);
  ExpectRestoredContinuesBitForBit(g, policy, in, {4, 9, 23}, {5}, {1, 4});
}

TEST(H2oPolicyTest, LoadStateRefusesBytesItDidNotWrite) {
  const KvGeometry g = TestGeometry();
  const Inputs in = RandomInputs(g, 20, 70);
  auto policy = Parse("h2o:budget=9,recent=3", g);
  Driver d(g, policy);
  d.AddSequence(&in);
  d.AddSequence(&in);
  ASSERT_TRUE(d.Feed(0, 20, {20}).ok());
  std::string blob;
  ASSERT_TRUE(policy->SaveState(d.seq(0), blob).ok());
  ASSERT_TRUE(policy->LoadState(blob, d.seq(1)).ok());
  auto refused = [&](std::string bytes) {
    return policy->LoadState(bytes, d.seq(1)).code() == absl::StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(refused(""));
  EXPECT_TRUE(refused(blob.substr(0, blob.size() - 1)));
  EXPECT_TRUE(refused(blob + "x"));
  std::string bad = blob;
  bad[0] ^= 1;
  EXPECT_TRUE(refused(bad)) << "magic";
  bad = blob;
  bad[4] = 9;
  EXPECT_TRUE(refused(bad)) << "version";
  bad = blob;
  bad[16] = 7;
  EXPECT_TRUE(refused(bad)) << "budget";
  bad = blob;
  bad[24] = 100;  // first head's slot count over the budget
  EXPECT_TRUE(refused(bad));
  for (size_t cut = 0; cut < blob.size(); cut += 7) EXPECT_TRUE(refused(blob.substr(0, cut)));
  // Another policy's state is refused too.
  auto other = Parse("h2o:budget=10,recent=3", g);
  EXPECT_EQ(other->LoadState(blob, d.seq(1)).code(), absl::StatusCode::kInvalidArgument);
  // A state that disagrees with the tables is caught by Attend, not trusted.
  Driver e(g, policy);
  e.AddSequence(&in);
  ASSERT_TRUE(policy->LoadState(blob, e.seq(0)).ok());
  EXPECT_EQ(e.Step({{0, 1}}).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kvasir::kvcache
