// The `pod` policy against a dense mixed-key attention written in the test (pod_test_util.h), for
// decode, prefill chunks and mixed batches under several (sink, window) settings; the slots it
// holds against the formula; equality with `full` where nothing is distant; copy-on-write of
// shared prefixes; the state blob; and clean errors.
#include "kvcache/pod_policy.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/full_policy.h"
#include "kvcache/policy.h"
#include "tests/kvcache/pod_test_util.h"

namespace kvasir::kvcache {
namespace {

using testing::LayerData;
using testing::PodReference;
using testing::PodTestGeometry;
using testing::PolicyDriver;
using testing::TrackedSeq;

// Head 0: layers {0, 1, 2} {3}; head 1: {0} {1, 2, 3}. Different per head on purpose.
PodGroups MixedGroups() {
  auto g = PodGroups::FromLists(4, 2, {{{0, 1, 2}, {3}}, {{0}, {1, 2, 3}}});
  EXPECT_TRUE(g.ok()) << g.status();
  return *g;
}

// Slots the policy must hold for `t` tokens, counted table by table.
int64_t ExpectedSlots(const KvGeometry& g, const PodGroups& groups, int64_t t, int32_t sink,
                      int32_t window) {
  int64_t slots = 0;
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      slots += t;  // V
      slots += groups.anchor(l, h) == l ? t : std::min<int64_t>(t, int64_t{sink} + window);
    }
  }
  return slots;
}

// Checks every output row of a step against the reference. rows_of[s] = first row of sequence s.
void ExpectMatchesReference(const KvGeometry& g, const PodGroups& groups, int32_t sink,
                            int32_t window, const std::vector<TrackedSeq*>& seqs,
                            const std::vector<int32_t>& counts, const std::vector<LayerData>& data,
                            double tol) {
  const int32_t hd = g.head_dim, qd = g.n_head * hd;
  for (int32_t l = 0; l < g.n_layer; ++l) {
    int32_t row = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      const int64_t t_end = seqs[s]->seq->n_tokens();  // after the step
      for (int32_t i = 0; i < counts[s]; ++i, ++row) {
        const int64_t t = t_end - counts[s] + i;
        for (int32_t qh = 0; qh < g.n_head; ++qh) {
          const int32_t anchor = groups.anchor(l, qh / g.group());
          const std::vector<double> ref = PodReference(
              g, *seqs[s], l, anchor, qh, t, data[l].q.data() + row * qd + qh * hd, sink, window);
          for (int32_t d = 0; d < hd; ++d) {
            ASSERT_NEAR(data[l].out[row * qd + qh * hd + d], ref[d], tol)
                << "layer " << l << " seq " << s << " token " << t << " head " << qh << " dim "
                << d;
          }
        }
      }
    }
  }
}

struct Case {
  int32_t sink;
  int32_t window;
  std::vector<int32_t> steps;  // tokens per step
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "sink " << c.sink << ", window " << c.window << ", " << c.steps.size() << " steps";
}

class PodReferenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(PodReferenceTest, MatchesDenseMixedKeyAttentionAndHoldsTheFormula) {
  const Case& c = GetParam();
  const KvGeometry g = PodTestGeometry();
  const PodGroups groups = MixedGroups();
  PolicyDriver driver(g, std::make_shared<PodPolicy>(c.sink, c.window, groups, "groups=test"));
  TrackedSeq seq = driver.NewSeq();
  uint32_t seed = 1;
  for (int32_t n : c.steps) {
    std::vector<LayerData> data = driver.RandomInputs({n}, seed++);
    ASSERT_TRUE(driver.Step({&seq}, {n}, data).ok());
    ExpectMatchesReference(g, groups, c.sink, c.window, {&seq}, {n}, data, 2e-5);
    const int64_t t = seq.seq->n_tokens();
    const KvUsage u = driver.cache().Usage(*seq.seq);
    EXPECT_EQ(u.slots, ExpectedSlots(g, groups, t, c.sink, c.window)) << "after " << t;
    EXPECT_EQ(u.bytes, u.slots * g.head_dim * 4);
    EXPECT_EQ(u.slots, static_cast<const PodPolicy&>(driver.policy()).HeldSlots(t));
  }
  driver.cache().FreeSequence(seq.seq->id());
  EXPECT_EQ(driver.cache().pool().pages_used(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Settings, PodReferenceTest,
    ::testing::Values(Case{4, 8, std::vector<int32_t>(40, 1)},        // decode only
                      Case{4, 8, {45}},                               // one prefill chunk
                      Case{4, 8, {13, 1, 1, 7, 20, 1, 3}},            // mixed chunks
                      Case{0, 5, {3, 17, 1, 1, 9}},                   // no sink
                      Case{2, 1, {10, 1, 5, 1}},                      // window = the query only
                      Case{16, 4, {10, 20, 1, 2}},                    // sink longer than window
                      Case{3, 6, {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}},  // ring wraps mid-step
                      Case{4, 1000, {30, 1, 1}}));                    // window >= length: full

TEST(PodPolicyTest, SequencesOfOneBatchEachGetTheirOwnBands) {
  const KvGeometry g = PodTestGeometry();
  const PodGroups groups = MixedGroups();
  PolicyDriver driver(g, std::make_shared<PodPolicy>(2, 5, groups, "groups=test"));
  TrackedSeq a = driver.NewSeq(), b = driver.NewSeq(), c = driver.NewSeq();
  uint32_t seed = 100;
  const std::vector<std::vector<int32_t>> steps = {{9, 1, 14}, {1, 12, 1}, {6, 1, 1}, {1, 1, 20}};
  for (const auto& counts : steps) {
    std::vector<LayerData> data = driver.RandomInputs(counts, seed++);
    ASSERT_TRUE(driver.Step({&a, &b, &c}, counts, data).ok());
    ExpectMatchesReference(g, groups, 2, 5, {&a, &b, &c}, counts, data, 2e-5);
  }
}

TEST(PodPolicyTest, HalfPrecisionCacheStaysCloseToTheReference) {
  const KvGeometry g = PodTestGeometry();
  const PodGroups groups = MixedGroups();
  PolicyDriver driver(g, std::make_shared<PodPolicy>(2, 6, groups, "groups=test"), 4, DType::kF16);
  TrackedSeq seq = driver.NewSeq();
  uint32_t seed = 7;
  for (int32_t n : {20, 1, 1, 9}) {
    std::vector<LayerData> data = driver.RandomInputs({n}, seed++);
    ASSERT_TRUE(driver.Step({&seq}, {n}, data).ok());
    ExpectMatchesReference(g, groups, 2, 6, {&seq}, {n}, data, 1e-2);
  }
}

// Runs the same random inputs through two drivers in different step patterns and returns the
// outputs of each token (by layer), in token order.
std::vector<std::vector<float>> RunPattern(PolicyDriver& driver, const std::vector<int32_t>& steps,
                                           const std::vector<LayerData>& all, int32_t rows) {
  const KvGeometry& g = driver.cache().geometry();
  const int32_t qd = g.n_head * g.head_dim, kvd = g.n_head_kv * g.head_dim;
  TrackedSeq seq = driver.NewSeq();
  std::vector<std::vector<float>> out(g.n_layer);
  int32_t at = 0;
  for (int32_t n : steps) {
    std::vector<LayerData> data(g.n_layer);
    for (int32_t l = 0; l < g.n_layer; ++l) {
      data[l].q.assign(all[l].q.begin() + at * qd, all[l].q.begin() + (at + n) * qd);
      data[l].k.assign(all[l].k.begin() + at * kvd, all[l].k.begin() + (at + n) * kvd);
      data[l].v.assign(all[l].v.begin() + at * kvd, all[l].v.begin() + (at + n) * kvd);
      data[l].out.assign(static_cast<size_t>(n) * qd, 0.0f);
    }
    EXPECT_TRUE(driver.Step({&seq}, {n}, data).ok());
    for (int32_t l = 0; l < g.n_layer; ++l) {
      out[l].insert(out[l].end(), data[l].out.begin(), data[l].out.end());
    }
    at += n;
  }
  EXPECT_EQ(at, rows);
  return out;
}

TEST(PodPolicyTest, ChunkedPrefillIsBitwiseTokenByToken) {
  const KvGeometry g = PodTestGeometry();
  const int32_t rows = 50;
  PolicyDriver source(g, std::make_shared<FullPolicy>());
  const std::vector<LayerData> all = source.RandomInputs({rows}, 42);
  for (const auto& [sink, window] : std::vector<std::pair<int, int>>{{4, 8}, {0, 3}, {4, 100}}) {
    SCOPED_TRACE(::testing::Message() << "sink " << sink << " window " << window);
    auto policy = std::make_shared<PodPolicy>(sink, window, MixedGroups(), "groups=test");
    PolicyDriver one(g, policy), chunks(g, policy);
    const auto a = RunPattern(one, std::vector<int32_t>(rows, 1), all, rows);
    const auto b = RunPattern(chunks, {17, 1, 25, 7}, all, rows);
    for (int32_t l = 0; l < g.n_layer; ++l) {
      ASSERT_EQ(a[l].size(), b[l].size());
      EXPECT_EQ(0, std::memcmp(a[l].data(), b[l].data(), a[l].size() * sizeof(float)))
          << "layer " << l;
    }
  }
}

TEST(PodPolicyTest, EqualsFullBitwiseWhenNothingIsDistant) {
  const KvGeometry g = PodTestGeometry();
  const int32_t rows = 40;
  PolicyDriver source(g, std::make_shared<FullPolicy>());
  const std::vector<LayerData> all = source.RandomInputs({rows}, 9);
  const std::vector<int32_t> steps = {11, 1, 1, 20, 1, 6};
  PolicyDriver full(g, std::make_shared<FullPolicy>());
  const auto expected = RunPattern(full, steps, all, rows);
  // A window longer than the sequence, and (with a short window) every layer its own anchor.
  for (auto policy :
       {std::make_shared<PodPolicy>(4, 64, MixedGroups(), "groups=test"),
        std::make_shared<PodPolicy>(2, 3, PodGroups::FixedSize(4, 2, 1), "group_size=1")}) {
    SCOPED_TRACE(policy->spec());
    PolicyDriver pod(g, policy);
    const auto got = RunPattern(pod, steps, all, rows);
    for (int32_t l = 0; l < g.n_layer; ++l) {
      EXPECT_EQ(0,
                std::memcmp(expected[l].data(), got[l].data(), expected[l].size() * sizeof(float)))
          << "layer " << l;
    }
  }
}

TEST(PodPolicyTest, RingWritesDoNotLeakIntoASharedPrefix) {
  const KvGeometry g = PodTestGeometry();
  const PodGroups groups = MixedGroups();
  const int32_t sink = 2, window = 5;
  PolicyDriver driver(g, std::make_shared<PodPolicy>(sink, window, groups, "groups=test"));
  TrackedSeq a = driver.NewSeq();
  std::vector<LayerData> data = driver.RandomInputs({12}, 1);
  ASSERT_TRUE(driver.Step({&a}, {12}, data).ok());
  // b shares every page of a (what a prefix cache does), then both go on differently.
  TrackedSeq b = driver.NewSeq();
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      driver.cache().ShareTable(a.seq->k(l, h), a.seq->k(l, h).length, b.seq->k(l, h));
      driver.cache().ShareTable(a.seq->v(l, h), a.seq->v(l, h).length, b.seq->v(l, h));
    }
  }
  b.seq->set_n_tokens(a.seq->n_tokens());
  b.k = a.k;
  b.v = a.v;
  uint32_t seed = 10;
  for (const std::vector<int32_t>& counts :
       std::vector<std::vector<int32_t>>{{1, 3}, {1, 1}, {4, 1}, {1, 9}}) {
    std::vector<LayerData> d = driver.RandomInputs(counts, seed++);
    ASSERT_TRUE(driver.Step({&a, &b}, counts, d).ok());
    ExpectMatchesReference(g, groups, sink, window, {&a, &b}, counts, d, 2e-5);
  }
}

TEST(PodPolicyTest, AttendRefusesToWriteSharedPagesThatWereNotReserved) {
  const KvGeometry g = PodTestGeometry();
  auto policy = std::make_shared<PodPolicy>(2, 3, MixedGroups(), "groups=test");
  PolicyDriver driver(g, policy);
  TrackedSeq a = driver.NewSeq();
  std::vector<LayerData> data = driver.RandomInputs({5}, 1);
  ASSERT_TRUE(driver.Step({&a}, {5}, data).ok());
  TrackedSeq b = driver.NewSeq();
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      driver.cache().ShareTable(a.seq->k(l, h), a.seq->k(l, h).length, b.seq->k(l, h));
      driver.cache().ShareTable(a.seq->v(l, h), a.seq->v(l, h).length, b.seq->v(l, h));
    }
  }
  b.seq->set_n_tokens(5);
  std::vector<LayerData> one = driver.RandomInputs({1}, 2);
  std::vector<int32_t> pos = {5};
  SeqSpan span{b.seq, 0, 1};
  LayerInputs in;
  in.seqs = {&span, 1};
  in.q = one[0].q.data();
  in.q_stride = g.n_head * g.head_dim;
  in.k = one[0].k.data();
  in.k_stride = g.n_head_kv * g.head_dim;
  in.v = one[0].v.data();
  in.v_stride = g.n_head_kv * g.head_dim;
  in.pos = pos.data();
  in.out = one[0].out.data();
  in.out_stride = g.n_head * g.head_dim;
  // Slot 5 fits in the shared second page: writing it would change `a`.
  EXPECT_EQ(policy->Attend(driver.cache(), in, driver.backend()).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(policy->Reserve(driver.cache(), *b.seq, 1).ok());
  EXPECT_TRUE(policy->Attend(driver.cache(), in, driver.backend()).ok());
}

// Copies a sequence's tables into a sequence of another cache, slot by slot.
void CopyTables(const KvCache& from, const SequenceKv& src, KvCache& to, SequenceKv& dst) {
  const KvGeometry& g = from.geometry();
  std::vector<float> slot(g.head_dim);
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      for (auto [s, d] :
           {std::pair(&src.k(l, h), &dst.k(l, h)), std::pair(&src.v(l, h), &dst.v(l, h))}) {
        ASSERT_TRUE(to.Reserve(*d, s->length, 0).ok());
        d->length = s->length;
        for (int32_t i = 0; i < s->length; ++i) {
          from.ReadSlot(*s, i, slot.data());
          to.WriteSlot(*d, i, slot.data());
        }
      }
    }
  }
}

TEST(PodPolicyTest, SavedAndLoadedSequenceContinuesBitwise) {
  const KvGeometry g = PodTestGeometry();
  auto policy = std::make_shared<PodPolicy>(3, 6, MixedGroups(), "groups=test");
  PolicyDriver first(g, policy), second(g, policy);
  TrackedSeq a = first.NewSeq();
  std::vector<LayerData> prefill = first.RandomInputs({23}, 5);
  ASSERT_TRUE(first.Step({&a}, {23}, prefill).ok());
  std::vector<LayerData> decode = first.RandomInputs({1}, 6);
  ASSERT_TRUE(first.Step({&a}, {1}, decode).ok());

  std::string state;
  ASSERT_TRUE(policy->SaveState(*a.seq, state).ok());
  TrackedSeq b = second.NewSeq();
  CopyTables(first.cache(), *a.seq, second.cache(), *b.seq);
  b.seq->set_n_tokens(a.seq->n_tokens());
  ASSERT_TRUE(policy->LoadState(state, *b.seq).ok());

  uint32_t seed = 50;
  for (int32_t n : {1, 1, 1, 8, 1, 1, 1, 1, 1}) {
    std::vector<LayerData> da = first.RandomInputs({n}, seed), db = da;
    ++seed;
    ASSERT_TRUE(first.Step({&a}, {n}, da).ok());
    ASSERT_TRUE(second.Step({&b}, {n}, db).ok());
    for (int32_t l = 0; l < g.n_layer; ++l) {
      ASSERT_EQ(0, std::memcmp(da[l].out.data(), db[l].out.data(), da[l].out.size() * 4))
          << "layer " << l << " at token " << a.seq->n_tokens();
    }
  }
  EXPECT_EQ(first.cache().Usage(*a.seq).slots, second.cache().Usage(*b.seq).slots);
}

TEST(PodPolicyTest, LoadStateRefusesForeignOrDamagedBytes) {
  const KvGeometry g = PodTestGeometry();
  auto policy = std::make_shared<PodPolicy>(3, 6, MixedGroups(), "groups=test");
  PolicyDriver driver(g, policy);
  TrackedSeq a = driver.NewSeq();
  std::vector<LayerData> data = driver.RandomInputs({10}, 1);
  ASSERT_TRUE(driver.Step({&a}, {10}, data).ok());
  std::string state;
  ASSERT_TRUE(policy->SaveState(*a.seq, state).ok());
  EXPECT_TRUE(policy->LoadState(state, *a.seq).ok()) << "its own state fits";

  TrackedSeq fresh = driver.NewSeq();
  EXPECT_TRUE(policy->LoadState(state, *fresh.seq).ok()) << "tables not restored yet";

  auto expect_invalid = [&](const std::string& bytes, const PodPolicy& p, SequenceKv& seq,
                            const char* what) {
    absl::Status s = p.LoadState(bytes, seq);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
  };
  expect_invalid("", *policy, *fresh.seq, "empty");
  expect_invalid(state.substr(0, 10), *policy, *fresh.seq, "truncated header");
  expect_invalid(state.substr(0, state.size() - 1), *policy, *fresh.seq, "truncated");
  expect_invalid(state + "x", *policy, *fresh.seq, "trailing byte");
  std::string bad = state;
  bad[0] = 'X';
  expect_invalid(bad, *policy, *fresh.seq, "magic");
  bad = state;
  bad[4] = 2;
  expect_invalid(bad, *policy, *fresh.seq, "version");
  expect_invalid(state, PodPolicy(4, 6, MixedGroups(), "groups=test"), *fresh.seq, "sink");
  expect_invalid(state, PodPolicy(3, 7, MixedGroups(), "groups=test"), *fresh.seq, "window");
  expect_invalid(state, PodPolicy(3, 6, PodGroups::FixedSize(4, 2, 2), "group_size=2"), *fresh.seq,
                 "groups");
  // Tables whose lengths do not fit the saved token count.
  TrackedSeq other = driver.NewSeq();
  std::vector<LayerData> d2 = driver.RandomInputs({4}, 2);
  ASSERT_TRUE(driver.Step({&other}, {4}, d2).ok());
  other.seq->set_n_tokens(0);
  expect_invalid(state, *policy, *other.seq, "table lengths");
  // Any single corrupted byte is refused or accepted, never a crash.
  for (size_t i = 0; i < state.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string m = state;
      m[i] = static_cast<char>(m[i] ^ (1 << bit));
      (void)policy->LoadState(m, *fresh.seq);
    }
  }
}

TEST(PodPolicyTest, ErrorsInsteadOfCrashes) {
  const KvGeometry g = PodTestGeometry();
  auto policy = std::make_shared<PodPolicy>(2, 4, MixedGroups(), "groups=test");
  {  // A pool of two pages cannot hold a step.
    PolicyDriver driver(g, policy, 4, DType::kF32, 2 * 4 * 8 * 4);
    TrackedSeq a = driver.NewSeq();
    std::vector<LayerData> data = driver.RandomInputs({8}, 1);
    EXPECT_EQ(driver.Step({&a}, {8}, data).code(), absl::StatusCode::kResourceExhausted);
    driver.cache().FreeSequence(a.seq->id());
    EXPECT_EQ(driver.cache().pool().pages_used(), 0);
  }
  PolicyDriver driver(g, policy);
  TrackedSeq a = driver.NewSeq();
  std::vector<LayerData> data = driver.RandomInputs({3}, 1);
  const int32_t qd = g.n_head * g.head_dim, kvd = g.n_head_kv * g.head_dim;
  std::vector<int32_t> pos = {0, 1, 2};
  SeqSpan span{a.seq, 0, 3};
  LayerInputs in;
  in.seqs = {&span, 1};
  in.q = data[0].q.data();
  in.q_stride = qd;
  in.k = data[0].k.data();
  in.k_stride = kvd;
  in.v = data[0].v.data();
  in.v_stride = kvd;
  in.pos = pos.data();
  in.out = data[0].out.data();
  in.out_stride = qd;
  // Not reserved.
  EXPECT_EQ(policy->Attend(driver.cache(), in, driver.backend()).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(policy->Reserve(driver.cache(), *a.seq, 3).ok());
  // Layer 1 of head 0 needs its anchor (layer 0) to have run first.
  in.layer = 1;
  EXPECT_EQ(policy->Attend(driver.cache(), in, driver.backend()).code(),
            absl::StatusCode::kFailedPrecondition);
  in.layer = 7;
  EXPECT_EQ(policy->Attend(driver.cache(), in, driver.backend()).code(),
            absl::StatusCode::kInvalidArgument);
  in.layer = 0;
  EXPECT_TRUE(policy->Attend(driver.cache(), in, driver.backend()).ok());
  EXPECT_EQ(policy->Attend(driver.cache(), in, driver.backend()).code(),
            absl::StatusCode::kFailedPrecondition)
      << "the same layer twice in a step";
}

// ---- Spec strings ----------------------------------------------------------------------------

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kvasir_pod_" + std::to_string(::getpid()) + "_" + name))
                               .string();
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(PodSpecTest, ParsesGroupSizeAndFileSpecs) {
  const KvGeometry g = PodTestGeometry();
  auto p = ParsePolicy("pod", g);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->spec(), "pod:sink=4,window=252,group_size=2");
  const auto& pod = static_cast<const PodPolicy&>(**p);
  EXPECT_EQ(pod.groups(), PodGroups::FixedSize(4, 2, 2));
  EXPECT_EQ(pod.groups().anchor(3, 1), 2);

  p = ParsePolicy("pod:sink=0,window=16,group_size=3", g);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->spec(), "pod:sink=0,window=16,group_size=3");
  EXPECT_EQ(static_cast<const PodPolicy&>(**p).groups().anchor(3, 0), 3);

  const std::string path = WriteTemp("groups.json", R"({
    "n_layer": 4, "n_head_kv": 2, "sink": 8, "window": 32,
    "groups": [[[0, 1, 2], [3]], [[0], [1, 2, 3]]]})");
  p = ParsePolicy("pod:groups=" + path, g);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->spec(), "pod:sink=8,window=32,groups=" + path) << "defaults from the file";
  EXPECT_EQ(static_cast<const PodPolicy&>(**p).groups(), MixedGroups());
  p = ParsePolicy("pod:window=10,groups=" + path, g);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->spec(), "pod:sink=8,window=10,groups=" + path) << "the spec wins";
  // The canonical spec parses back to the same policy.
  auto again = ParsePolicy((*p)->spec(), g);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->spec(), (*p)->spec());
  std::filesystem::remove(path);
}

TEST(PodSpecTest, RefusesBadSpecsWithAMessage) {
  const KvGeometry g = PodTestGeometry();
  const std::string wrong_model = WriteTemp("wrong.json", R"({"n_layer": 5, "n_head_kv": 2,
    "groups": [[[0, 1, 2, 3, 4]], [[0], [1], [2], [3], [4]]]})");
  const std::string broken = WriteTemp("broken.json", R"({"n_layer": 4, "n_head_kv": 2,
    "groups": [[[0, 1], [2, 3]], [[0, 2], [1, 3]]]})");
  for (const std::string& spec :
       {std::string("pod:sink=-1"), std::string("pod:window=0"), std::string("pod:group_size=0"),
        std::string("pod:windw=4"), std::string("pod:groups="),
        std::string("pod:groups=/nonexistent/groups.json"), "pod:group_size=2,groups=" + broken,
        "pod:groups=" + wrong_model, "pod:groups=" + broken}) {
    auto p = ParsePolicy(spec, g);
    EXPECT_FALSE(p.ok()) << spec;
    if (!p.ok()) {
      EXPECT_EQ(std::string(p.status().message()).find('\n'), std::string::npos)
          << "one line: " << p.status();
    }
  }
  auto p = ParsePolicy("pod:groups=" + wrong_model, g);
  EXPECT_NE(std::string(p.status().message()).find("5 layers"), std::string::npos) << p.status();
  std::filesystem::remove(wrong_model);
  std::filesystem::remove(broken);
}

}  // namespace
}  // namespace kvasir::kvcache
