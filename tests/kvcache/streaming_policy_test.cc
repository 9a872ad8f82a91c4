// The `streaming` policy against its definition: exactly the sinks and the window are kept (found
// by their values), outputs equal a dense attention that masks everything else, any chunking
// gives the same bits, a window covering the sequence is `full` bit for bit, and a sequence
// restored from its tables continues bit for bit.
#include "kvcache/streaming_policy.h"

#include <set>

#include "gtest/gtest.h"
#include "tests/kvcache/eviction_test_util.h"

namespace kvasir::kvcache {
namespace {

using testing_util::BitwiseEqual;
using testing_util::DenseAttention;
using testing_util::Driver;
using testing_util::ExpectEqualsFull;
using testing_util::ExpectRestoredContinuesBitForBit;
using testing_util::Inputs;
using testing_util::Parse;
using testing_util::RandomInputs;
using testing_util::RefK;
using testing_util::RefQ;
using testing_util::RefV;
using testing_util::TestGeometry;

// Tokens visible to token t: the sinks and the window ending at t.
std::vector<int32_t> Visible(int32_t t, int32_t sink, int32_t window) {
  std::vector<int32_t> out;
  for (int32_t j = 0; j <= t; ++j) {
    if (j < sink || j > t - window) out.push_back(j);
  }
  return out;
}

TEST(StreamingPolicyTest, ParsesAndRefusesBadParameters) {
  const KvGeometry g = TestGeometry();
  auto p = ParsePolicy("streaming:sink=2,window=5", g);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->spec(), "streaming:sink=2,window=5");
  auto d = ParsePolicy("streaming", g);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->spec(), "streaming:sink=4,window=252");
  for (const char* bad :
       {"streaming:window=0", "streaming:sink=-1", "streaming:sinks=4", "streaming:window=x"}) {
    auto r = ParsePolicy(bad, g);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(StreamingPolicyTest, KeepsExactlyTheSinksAndTheWindow) {
  const KvGeometry g = TestGeometry();
  const int32_t sink = 3, window = 5, n = 23;
  const Inputs in = RandomInputs(g, n, 1);
  Driver d(g, Parse("streaming:sink=3,window=5", g));
  d.AddSequence(&in);
  for (int32_t end : {2, 8, 9, 14, 23}) {
    ASSERT_TRUE(d.Feed(0, end, {4, 1, 7, 2}).ok());
    const std::vector<int32_t> expected = Visible(end - 1, sink, window);
    for (int32_t l = 0; l < g.n_layer; ++l) {
      for (int32_t h = 0; h < g.n_head_kv; ++h) {
        SCOPED_TRACE(::testing::Message() << "after " << end << " layer " << l << " head " << h);
        const auto ks = d.Slots(d.seq(0).k(l, h));
        const auto vs = d.Slots(d.seq(0).v(l, h));
        ASSERT_EQ(vs.size(), expected.size());
        ASSERT_EQ(ks.size(), expected.size());
        // Identify each slot's token by its value (values are stored as given), then check the
        // key is that token's key rotated at its own position.
        std::set<int32_t> found;
        for (size_t s = 0; s < vs.size(); ++s) {
          int32_t token = -1;
          for (int32_t t = 0; t < n && token < 0; ++t) {
            if (vs[s] == RefV(in, l, t, h)) token = t;
          }
          ASSERT_GE(token, 0) << "slot " << s << " holds no token's value";
          EXPECT_TRUE(found.insert(token).second) << "token " << token << " twice";
          const std::vector<float> k = RefK(in, l, token, h);
          for (int32_t e = 0; e < g.head_dim; ++e) EXPECT_NEAR(ks[s][e], k[e], 1e-5);
        }
        EXPECT_EQ(std::vector<int32_t>(found.begin(), found.end()), expected);
      }
    }
    const KvUsage u = d.cache().Usage(d.seq(0));
    EXPECT_EQ(u.slots, 2 * g.n_layer * g.n_head_kv * static_cast<int64_t>(expected.size()));
    EXPECT_EQ(u.tokens, end);
  }
}

TEST(StreamingPolicyTest, OutputsEqualADenseAttentionOverSinksAndWindow) {
  const KvGeometry g = TestGeometry(2, 6, 2, 8);
  const int32_t sink = 2, window = 6, n = 40;
  const Inputs a = RandomInputs(g, n, 2), b = RandomInputs(g, n, 3);
  Driver d(g, Parse("streaming:sink=2,window=6", g));
  d.AddSequence(&a);
  d.AddSequence(&b);
  // Two sequences in the same steps, with different chunkings.
  const std::vector<int32_t> ca = {5, 1, 9, 1, 1, 3, 20}, cb = {1, 12, 2, 25};
  for (size_t step = 0; d.seq(0).n_tokens() < n || d.seq(1).n_tokens() < n; ++step) {
    std::vector<std::pair<int, int32_t>> parts;
    for (int s : {0, 1}) {
      const int32_t left = n - static_cast<int32_t>(d.seq(s).n_tokens());
      const auto& c = s == 0 ? ca : cb;
      if (left > 0) parts.push_back({s, std::min(left, c[step % c.size()])});
    }
    ASSERT_TRUE(d.Step(parts).ok());
  }
  for (int s : {0, 1}) {
    const Inputs& in = s == 0 ? a : b;
    for (int32_t l = 0; l < g.n_layer; ++l) {
      for (int32_t t = 0; t < n; ++t) {
        for (int32_t qh = 0; qh < g.n_head; ++qh) {
          const int32_t h = qh / g.group();
          std::vector<std::vector<float>> keys, values;
          for (int32_t j : Visible(t, sink, window)) {
            keys.push_back(RefK(in, l, j, h));
            values.push_back(RefV(in, l, j, h));
          }
          const std::vector<double> ref = DenseAttention(RefQ(in, l, t, qh), keys, values);
          const float* out = d.Out(s, l, t) + int64_t{qh} * g.head_dim;
          for (int32_t e = 0; e < g.head_dim; ++e) {
            ASSERT_NEAR(out[e], ref[e], 1e-4)
                << "seq " << s << " layer " << l << " token " << t << " head " << qh;
          }
        }
      }
    }
  }
}

TEST(StreamingPolicyTest, AnyChunkingGivesTheSameBits) {
  const KvGeometry g = TestGeometry();
  const int32_t n = 37;
  const Inputs in = RandomInputs(g, n, 4);
  auto policy = Parse("streaming:sink=4,window=9", g);
  Driver one(g, policy), big(g, policy), mixed(g, policy);
  for (Driver* d : {&one, &big, &mixed}) d->AddSequence(&in);
  ASSERT_TRUE(one.Feed(0, n, {1}).ok());
  ASSERT_TRUE(big.Feed(0, n, {n}).ok());
  ASSERT_TRUE(mixed.Feed(0, n, {3, 10, 1, 6}).ok());
  EXPECT_TRUE(BitwiseEqual(one.outputs(0), big.outputs(0)));
  EXPECT_TRUE(BitwiseEqual(one.outputs(0), mixed.outputs(0)));
}

TEST(StreamingPolicyTest, EqualsFullBitForBitWhenTheWindowCoversTheSequence) {
  const KvGeometry g = TestGeometry();
  const Inputs in = RandomInputs(g, 40, 5);
  for (const char* spec : {"streaming:sink=4,window=100", "streaming:sink=4,window=36",
                           "streaming:sink=0,window=40"}) {
    ExpectEqualsFull(g, in, spec, {7, 1, 3}, /*same_tables=*/true);
  }
}

TEST(StreamingPolicyTest, RestoredSequenceContinuesBitForBit) {
  const KvGeometry g = TestGeometry();
  const int32_t n = 40;
  const Inputs in = RandomInputs(g, n, 6);
  auto policy = Parse("streaming:sink=2,window=7", g);
  ExpectRestoredContinuesBitForBit(g, policy, in, {5, 9, 17}, {4}, {1, 3});
  // The policy keeps no state: a non-empty blob is refused.
  Driver d(g, policy);
  d.AddSequence(&in);
  EXPECT_EQ(policy->LoadState("x", d.seq(0)).code(), absl::StatusCode::kInvalidArgument);
}

TEST(StreamingPolicyTest, MemoryStaysFixedOnceFull) {
  const KvGeometry g = TestGeometry();
  const Inputs in = RandomInputs(g, 60, 7);
  Driver d(g, Parse("streaming:sink=4,window=12", g), /*page_size=*/4);
  d.AddSequence(&in);
  ASSERT_TRUE(d.Feed(0, 16, {16}).ok());
  const int32_t pages = d.cache().pool().pages_used();
  EXPECT_EQ(pages, 2 * g.n_layer * g.n_head_kv * 4);
  for (int32_t t = 17; t <= 60; ++t) {
    ASSERT_TRUE(d.Feed(0, t, {1}).ok());
    EXPECT_EQ(d.cache().pool().pages_used(), pages);
    EXPECT_EQ(d.cache().Usage(d.seq(0)).slots, 2 * g.n_layer * g.n_head_kv * 16);
  }
}

TEST(StreamingPolicyTest, AttendWithoutReserveFailsCleanly) {
  const KvGeometry g = TestGeometry();
  auto policy = Parse("streaming:sink=1,window=3", g);
  KvCacheOptions o;
  o.page_size = 4;
  auto cache = KvCache::Create(g, o);
  ASSERT_TRUE(cache.ok());
  SequenceKv& seq = (*cache)->CreateSequence(policy);
  std::vector<float> q(g.n_head * g.head_dim), k(g.n_head_kv * g.head_dim), v(k.size()),
      out(q.size());
  int32_t pos = 0;
  SeqSpan span{&seq, 0, 1};
  LayerInputs in;
  in.seqs = {&span, 1};
  in.q = q.data();
  in.k = k.data();
  in.v = v.data();
  in.out = out.data();
  in.pos = &pos;
  ThreadPool pool(1);
  kernels::cpu::CpuBackend backend(&pool);
  EXPECT_EQ(policy->Attend(**cache, in, backend).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kvasir::kvcache
