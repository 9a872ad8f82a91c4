// The `lococo` policy: the compression step against a plain-loop reference (same tie-breaking),
// λ = 0 against an H2O-style top-M selection, chunk-by-chunk prefill against a reference loop,
// engine chunking and save/restore bit for bit, `full` when the slots cover the sequence, and the
// weights file (written here with random values) loaded, used, and refused when malformed.
#include "kvcache/lococo_policy.h"

#include <functional>
#include <random>

#include "gtest/gtest.h"
#include "tests/kvcache/eviction_test_util.h"
#include "tests/testing/safetensors_builder.h"

namespace kvasir::kvcache {
namespace {

using testing_util::BitwiseEqual;
using testing_util::DenseAttention;
using testing_util::Driver;
using testing_util::ExpectEqualsFull;
using testing_util::ExpectHeadOutputsNear;
using testing_util::ExpectRestoredContinuesBitForBit;
using testing_util::ExpectSameTables;
using testing_util::Inputs;
using testing_util::Parse;
using testing_util::RandomInputs;
using testing_util::RefK;
using testing_util::RefQ;
using testing_util::RefV;
using testing_util::TestGeometry;

// Random compressor weights, as the tests write them to a file and as the reference reads them.
struct RefWeights {
  int32_t m_c = 0, in_ch = 0, kernel = 0;
  std::vector<std::vector<float>> w, b;  // per layer
  std::vector<float> lambda;
};

RefWeights RandomWeights(int32_t n_layer, int32_t m_c, int32_t head_dim, int32_t kernel,
                         uint64_t seed) {
  RefWeights r;
  r.m_c = m_c;
  r.in_ch = 2 * head_dim;
  r.kernel = kernel;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-0.3f, 0.3f);
  std::uniform_real_distribution<float> lam(0.2f, 0.8f);
  for (int32_t l = 0; l < n_layer; ++l) {
    std::vector<float> w(static_cast<size_t>(m_c) * r.in_ch * kernel), b(m_c);
    for (float& x : w) x = dist(rng);
    for (float& x : b) x = dist(rng);
    r.w.push_back(std::move(w));
    r.b.push_back(std::move(b));
    r.lambda.push_back(lam(rng));
  }
  return r;
}

// The test's own way to make a weights file: the documented tensor names and shapes.
testing::SafetensorsBuilder WeightsFile(const RefWeights& r) {
  testing::SafetensorsBuilder b;
  b.AddMetadata("format", "pt");
  for (size_t l = 0; l < r.w.size(); ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    b.AddF32(p + "conv.weight", {r.m_c, r.in_ch, r.kernel}, r.w[l]);
    b.AddF32(p + "conv.bias", {r.m_c}, r.b[l]);
    b.AddF32(p + "lambda", {}, {r.lambda[l]});
  }
  return b;
}

std::string WriteWeights(const testing::ScopedTempDir& dir, const std::string& name,
                         const std::vector<uint8_t>& bytes) {
  const std::string path = dir.File(name);
  EXPECT_TRUE(testing::GgufBuilder::WriteFile(path, bytes));
  return path;
}

// Positions (into idx) of the k largest score[idx[i]], ties to the earlier i, by k passes of
// argmax; returned in increasing order.
std::vector<int32_t> LoopTopK(const std::vector<int32_t>& idx, const float* score, int32_t k) {
  std::vector<bool> taken(idx.size(), false);
  for (int32_t r = 0; r < k; ++r) {
    int32_t best = -1;
    for (int32_t i = 0; i < static_cast<int32_t>(idx.size()); ++i) {
      if (!taken[i] && (best < 0 || score[idx[i]] > score[idx[best]])) best = i;
    }
    taken[best] = true;
  }
  std::vector<int32_t> out;
  for (int32_t i = 0; i < static_cast<int32_t>(idx.size()); ++i) {
    if (taken[i]) out.push_back(i);
  }
  return out;
}

// The compression step with plain loops in double: keys/values [n][hd] -> [M][hd].
void RefCompress(int32_t slots, const RefWeights* w, float lambda, int32_t layer, int32_t hd,
                 const std::vector<std::vector<float>>& keys,
                 const std::vector<std::vector<float>>& values, const std::vector<float>& hh,
                 std::vector<std::vector<float>>& out_k, std::vector<std::vector<float>>& out_v) {
  const int32_t n = static_cast<int32_t>(keys.size());
  const int32_t m_c = slots / 2, m_h = slots - m_c;
  std::vector<int32_t> all(n);
  for (int32_t i = 0; i < n; ++i) all[i] = i;
  const std::vector<int32_t> heavy = LoopTopK(all, hh.data(), m_h);
  std::vector<int32_t> rest;
  for (int32_t i = 0; i < n; ++i) {
    if (std::find(heavy.begin(), heavy.end(), i) == heavy.end()) rest.push_back(i);
  }
  out_k.clear();
  out_v.clear();
  for (int32_t i : heavy) {
    out_k.push_back(keys[i]);
    out_v.push_back(values[i]);
  }
  const std::vector<int32_t> sel = LoopTopK(rest, hh.data(), m_c);
  const int32_t sp = static_cast<int32_t>(rest.size());
  for (int32_t m = 0; m < m_c; ++m) {
    std::vector<double> weight(sp, 0.0);
    weight[sel[m]] = 1.0 - lambda;
    if (w != nullptr && lambda != 0.0f) {
      const int32_t pad = (w->kernel - 1) / 2;
      std::vector<double> y(sp);
      for (int32_t s = 0; s < sp; ++s) {
        double acc = w->b[layer][m];
        for (int32_t c = 0; c < w->in_ch; ++c) {
          for (int32_t t = 0; t < w->kernel; ++t) {
            const int32_t src = s + t - pad;
            if (src < 0 || src >= sp) continue;
            const double x = c < hd ? keys[rest[src]][c] : values[rest[src]][c - hd];
            acc += static_cast<double>(w->w[layer][(m * w->in_ch + c) * w->kernel + t]) * x;
          }
        }
        y[s] = std::max(acc, 0.0);
      }
      double max = 0, sum = 0;
      for (double v : y) max = std::max(max, v);
      for (double& v : y) sum += (v = std::exp(v - max));
      for (int32_t s = 0; s < sp; ++s) weight[s] += lambda * y[s] / sum;
    }
    std::vector<float> k(hd), v(hd);
    for (int32_t d = 0; d < hd; ++d) {
      double ak = 0, av = 0;
      for (int32_t s = 0; s < sp; ++s) {
        ak += weight[s] * keys[rest[s]][d];
        av += weight[s] * values[rest[s]][d];
      }
      k[d] = static_cast<float>(ak);
      v[d] = static_cast<float>(av);
    }
    out_k.push_back(k);
    out_v.push_back(v);
  }
}

// The whole policy for one (layer, KV head), chunk by chunk, with the reference compression.
struct RefRun {
  std::vector<std::vector<float>> k, v;  // the slots at the end
  std::vector<float> hh;                 // the pending chunk's partial scores
  std::vector<std::vector<double>> out;  // [token * group + g]
};

RefRun RunReference(const Inputs& in, int32_t l, int32_t h, int32_t slots, int32_t chunk,
                    const RefWeights* w, float lambda) {
  const KvGeometry& g = in.g;
  RefRun r;
  for (int32_t t = 0; t < in.n_tokens; ++t) {
    r.k.push_back(RefK(in, l, t, h));
    r.v.push_back(RefV(in, l, t, h));
    r.hh.resize(r.k.size(), 0.0f);
    for (int32_t gi = 0; gi < g.group(); ++gi) {
      std::vector<double> p;
      r.out.push_back(DenseAttention(RefQ(in, l, t, h * g.group() + gi), r.k, r.v, &p));
      for (size_t j = 0; j < p.size(); ++j) r.hh[j] += static_cast<float>(p[j]);
    }
    if ((t + 1) % chunk != 0) continue;
    if (static_cast<int32_t>(r.k.size()) > slots) {
      std::vector<std::vector<float>> nk, nv;
      RefCompress(slots, w, lambda, l, g.head_dim, r.k, r.v, r.hh, nk, nv);
      r.k = nk;
      r.v = nv;
    }
    r.hh.clear();
  }
  return r;
}

void ExpectNear(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b,
                double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), b[i].size());
    for (size_t d = 0; d < a[i].size(); ++d) {
      ASSERT_NEAR(a[i][d], b[i][d], tol * (1 + std::fabs(b[i][d]))) << "slot " << i << " dim " << d;
    }
  }
}

TEST(LococoPolicyTest, ParsesAndRefusesBadParameters) {
  const KvGeometry g = TestGeometry();
  auto d = ParsePolicy("lococo", g);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->spec(), "lococo:slots=128,chunk=16");
  auto z = ParsePolicy("lococo:slots=9,chunk=3,lambda=0", g);
  ASSERT_TRUE(z.ok()) << z.status();
  for (const char* bad : {"lococo:slots=1", "lococo:chunk=0", "lococo:lambda=0.5", "lococo:slot=4",
                          "lococo:weights=/nonexistent/w.safetensors"}) {
    EXPECT_FALSE(ParsePolicy(bad, g).ok()) << bad;
  }
}

TEST(LococoPolicyTest, CompressionMatchesThePlainLoopReference) {
  const KvGeometry g = TestGeometry(2, 4, 2, 8);
  testing::ScopedTempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> dist(-1.5f, 1.5f);
  for (int32_t slots : {8, 9, 24}) {
    const RefWeights w = RandomWeights(g.n_layer, slots / 2, g.head_dim, 21, 100 + slots);
    const std::string path =
        WriteWeights(dir, "w" + std::to_string(slots) + ".safetensors", WeightsFile(w).Build());
    for (const std::string extra : {"", ",lambda=0.7", ",lambda=0"}) {
      auto policy =
          Parse("lococo:slots=" + std::to_string(slots) + ",chunk=5,weights=" + path + extra, g);
      ASSERT_NE(policy, nullptr);
      const auto& lp = static_cast<const LococoPolicy&>(*policy);
      for (int32_t layer = 0; layer < g.n_layer; ++layer) {
        const float lambda = extra.empty() ? w.lambda[layer] : (extra == ",lambda=0" ? 0 : 0.7f);
        EXPECT_EQ(lp.lambda(layer), lambda);
        for (int32_t n : {slots, slots + 1, slots + 5, slots + 30}) {
          SCOPED_TRACE(::testing::Message()
                       << "slots " << slots << extra << " layer " << layer << " n " << n);
          std::vector<std::vector<float>> keys(n, std::vector<float>(g.head_dim)), values = keys;
          std::vector<float> flat_k, flat_v, hh(n);
          for (int32_t i = 0; i < n; ++i) {
            for (float& x : keys[i]) x = dist(rng);
            for (float& x : values[i]) x = dist(rng);
            flat_k.insert(flat_k.end(), keys[i].begin(), keys[i].end());
            flat_v.insert(flat_v.end(), values[i].begin(), values[i].end());
            // Scores with many exact ties, to check the tie-breaking.
            hh[i] = static_cast<float>(rng() % 4) * 0.25f;
          }
          std::vector<float> out_k(slots * g.head_dim), out_v(out_k.size());
          lp.Compress(layer, g.head_dim, n, flat_k.data(), flat_v.data(), hh.data(), out_k.data(),
                      out_v.data());
          std::vector<std::vector<float>> ref_k, ref_v;
          RefCompress(slots, &w, lambda, layer, g.head_dim, keys, values, hh, ref_k, ref_v);
          std::vector<std::vector<float>> got_k, got_v;
          for (int32_t s = 0; s < slots; ++s) {
            got_k.emplace_back(out_k.begin() + s * g.head_dim,
                               out_k.begin() + (s + 1) * g.head_dim);
            got_v.emplace_back(out_v.begin() + s * g.head_dim,
                               out_v.begin() + (s + 1) * g.head_dim);
          }
          ExpectNear(got_k, ref_k, 1e-5);
          ExpectNear(got_v, ref_v, 1e-5);
          if (lambda == 0.0f) {
            EXPECT_EQ(got_k, ref_k) << "selection copies slots exactly";
          }
        }
      }
    }
  }
}

TEST(LococoPolicyTest, WithoutWeightsItIsTopMSelectionByScore) {
  // λ = 0 against an H2O-style selection: the M slots of largest score (ties: lower slot), the
  // M_h best first in slot order, then the next M_c in slot order.
  const KvGeometry g = TestGeometry(1, 2, 1, 4);
  auto policy = Parse("lococo:slots=6,chunk=4", g);
  const auto& lp = static_cast<const LococoPolicy&>(*policy);
  const int32_t n = 10;
  const std::vector<float> hh = {0.5f, 2.0f, 0.5f, 1.0f, 3.0f, 0.5f, 0.25f, 1.0f, 0.5f, 0.0f};
  std::vector<float> keys(n * 4), values(n * 4);
  for (int32_t i = 0; i < n * 4; ++i) {
    keys[i] = static_cast<float>(i);
    values[i] = static_cast<float>(-i);
  }
  // Ranking: 4 (3.0), 1 (2.0), 3 (1.0), 7 (1.0), 0 (0.5), 2 (0.5), 5, 8, 6, 9.
  // Heavy hitters (3): {1, 3, 4} in slot order; the next 3 of the rest: {0, 2, 7}.
  const std::vector<int32_t> expected = {1, 3, 4, 0, 2, 7};
  std::vector<float> out_k(6 * 4), out_v(6 * 4);
  lp.Compress(0, 4, n, keys.data(), values.data(), hh.data(), out_k.data(), out_v.data());
  for (int32_t s = 0; s < 6; ++s) {
    for (int32_t d = 0; d < 4; ++d) {
      EXPECT_EQ(out_k[s * 4 + d], keys[expected[s] * 4 + d]) << "slot " << s;
      EXPECT_EQ(out_v[s * 4 + d], values[expected[s] * 4 + d]) << "slot " << s;
    }
  }
}

TEST(LococoPolicyTest, ChunkByChunkPrefillEqualsTheReferenceLoop) {
  const KvGeometry g = TestGeometry(2, 4, 2, 8);
  const int32_t n = 61, slots = 10, chunk = 6;
  testing::ScopedTempDir dir;
  const RefWeights w = RandomWeights(g.n_layer, slots / 2, g.head_dim, 5, 7);
  const std::string path = WriteWeights(dir, "w.safetensors", WeightsFile(w).Build());
  for (bool with_weights : {false, true}) {
    SCOPED_TRACE(with_weights ? "weights" : "no weights");
    const Inputs in = RandomInputs(g, n, with_weights ? 11 : 12);
    std::string spec = "lococo:slots=10,chunk=6";
    if (with_weights) spec += ",weights=" + path;
    Driver d(g, Parse(spec, g));
    d.AddSequence(&in);
    ASSERT_TRUE(d.Feed(0, n, {4, 1, 13, 6, 2}).ok());
    const auto* state = dynamic_cast<const LococoState*>(d.seq(0).state());
    ASSERT_NE(state, nullptr);
    for (int32_t l = 0; l < g.n_layer; ++l) {
      for (int32_t h = 0; h < g.n_head_kv; ++h) {
        SCOPED_TRACE(::testing::Message() << "layer " << l << " head " << h);
        const RefRun ref = RunReference(in, l, h, slots, chunk, with_weights ? &w : nullptr,
                                        with_weights ? w.lambda[l] : 0.0f);
        ExpectNear(d.Slots(d.seq(0).k(l, h)), ref.k, 1e-4);
        ExpectNear(d.Slots(d.seq(0).v(l, h)), ref.v, 1e-4);
        ASSERT_EQ(state->hh(l, h).size(), ref.hh.size());
        for (size_t j = 0; j < ref.hh.size(); ++j) EXPECT_NEAR(state->hh(l, h)[j], ref.hh[j], 1e-4);
        ASSERT_NO_FATAL_FAILURE(ExpectHeadOutputsNear(d, g, l, h, n, ref.out, 1e-4));
      }
    }
  }
}

TEST(LococoPolicyTest, EngineChunkingDoesNotChangeABit) {
  const KvGeometry g = TestGeometry(2, 6, 3, 8);
  const int32_t n = 75;
  testing::ScopedTempDir dir;
  const RefWeights w = RandomWeights(g.n_layer, 8, g.head_dim, 21, 8);
  const std::string path = WriteWeights(dir, "w.safetensors", WeightsFile(w).Build());
  const Inputs in = RandomInputs(g, n, 13), other = RandomInputs(g, n, 14);
  auto policy = Parse("lococo:slots=16,chunk=8,weights=" + path, g);
  Driver one(g, policy), chunked(g, policy);
  one.AddSequence(&in);
  chunked.AddSequence(&in);
  chunked.AddSequence(&other);
  ASSERT_TRUE(one.Feed(0, n, {1}).ok());
  for (int32_t c : {37, 3, 1, 16, 18}) ASSERT_TRUE(chunked.Step({{1, 2}, {0, c}}).ok());
  EXPECT_TRUE(BitwiseEqual(one.outputs(0), chunked.outputs(0)));
  ExpectSameTables(g, one, chunked);
}

TEST(LococoPolicyTest, F16CacheGivesTheSameBitsForAnyChunking) {
  const KvGeometry g = TestGeometry();
  const int32_t n = 45;
  testing::ScopedTempDir dir;
  const RefWeights w = RandomWeights(g.n_layer, 5, g.head_dim, 21, 12);
  const std::string path = WriteWeights(dir, "w.safetensors", WeightsFile(w).Build());
  const Inputs in = RandomInputs(g, n, 19);
  auto policy = Parse("lococo:slots=10,chunk=4,weights=" + path, g);
  Driver one(g, policy, 4, DType::kF16), chunked(g, policy, 4, DType::kF16);
  one.AddSequence(&in);
  chunked.AddSequence(&in);
  ASSERT_TRUE(one.Feed(0, n, {1}).ok());
  ASSERT_TRUE(chunked.Feed(0, n, {17, 2, 9}).ok());
  EXPECT_TRUE(BitwiseEqual(one.outputs(0), chunked.outputs(0)));
  EXPECT_EQ(chunked.cache().Usage(chunked.seq(0)).slots,
            2 * g.n_layer * g.n_head_kv * static_cast<const LococoPolicy&>(*policy).SlotsAfter(n));
}

TEST(LococoPolicyTest, EqualsFullBitForBitWhenTheSlotsCoverTheSequence) {
  const KvGeometry g = TestGeometry();
  const Inputs in = RandomInputs(g, 40, 15);
  testing::ScopedTempDir dir;
  const RefWeights w = RandomWeights(g.n_layer, 24, g.head_dim, 21, 9);
  const std::string path = WriteWeights(dir, "w.safetensors", WeightsFile(w).Build());
  for (const std::string& spec :
       std::vector<std::string>{"lococo:slots=48,chunk=16", "lococo:slots=40,chunk=5",
                                "lococo:slots=48,weights=" + path}) {
    ExpectEqualsFull(g, in, spec, {9, 1, 4}, /*same_tables=*/false);
  }
}

TEST(LococoPolicyTest, HoldsTheSlotsItPromises) {
  const KvGeometry g = TestGeometry();
  const int32_t slots = 12, chunk = 5;
  const Inputs in = RandomInputs(g, 80, 16);
  auto policy = Parse("lococo:slots=12,chunk=5", g);
  const auto& lp = static_cast<const LococoPolicy&>(*policy);
  Driver d(g, policy, /*page_size=*/4);
  d.AddSequence(&in);
  int64_t len = 0;  // the definition, token by token
  for (int32_t t = 1; t <= 80; ++t) {
    ASSERT_TRUE(d.Feed(0, t, {1}).ok());
    ++len;
    if (t % chunk == 0 && len > slots) len = slots;
    ASSERT_EQ(lp.SlotsAfter(t), len) << t;
    EXPECT_EQ(d.cache().Usage(d.seq(0)).slots, 2 * g.n_layer * g.n_head_kv * len);
    EXPECT_EQ(d.cache().pool().pages_used(), 2 * g.n_layer * g.n_head_kv * ((len + 3) / 4));
    EXPECT_LE(len, slots + chunk - 1);
  }
}

TEST(LococoPolicyTest, RestoredSequenceContinuesBitForBit) {
  const KvGeometry g = TestGeometry();
  const int32_t n = 50;
  testing::ScopedTempDir dir;
  const RefWeights w = RandomWeights(g.n_layer, 4, g.head_dim, 21, 10);
  const std::string path = WriteWeights(dir, "w.safetensors", WeightsFile(w).Build());
  const Inputs in = RandomInputs(g, n, 17);
  auto policy = Parse("lococo:slots=8,chunk=6,weights=" + path, g);
  // Cuts mid-chunk, on a boundary, after compressions.
  ExpectRestoredContinuesBitForBit(g, policy, in, {4, 12, 20, 27}, {5}, {1, 7});
}

TEST(LococoPolicyTest, LoadStateRefusesBytesItDidNotWrite) {
  const KvGeometry g = TestGeometry();
  const Inputs in = RandomInputs(g, 20, 18);
  auto policy = Parse("lococo:slots=8,chunk=6", g);
  Driver d(g, policy);
  d.AddSequence(&in);
  d.AddSequence(&in);
  ASSERT_TRUE(d.Feed(0, 15, {15}).ok());  // 3 tokens of a chunk pending
  std::string blob;
  ASSERT_TRUE(policy->SaveState(d.seq(0), blob).ok());
  ASSERT_TRUE(policy->LoadState(blob, d.seq(1)).ok());
  auto refused = [&](const std::string& bytes) {
    return policy->LoadState(bytes, d.seq(1)).code() == absl::StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(refused(""));
  EXPECT_TRUE(refused(blob + "abcd"));
  std::string bad = blob;
  bad[1] ^= 1;
  EXPECT_TRUE(refused(bad)) << "magic";
  bad = blob;
  bad[4] = 2;
  EXPECT_TRUE(refused(bad)) << "version";
  bad = blob;
  bad[20] = 7;
  EXPECT_TRUE(refused(bad)) << "chunk";
  bad = blob;
  bad[27] = 0x40;  // first count negative/huge
  EXPECT_TRUE(refused(bad));
  bad = blob;
  bad[31] = 0x7f;  // a NaN score
  bad[30] = static_cast<char>(0xc0);
  EXPECT_TRUE(refused(bad));
  for (size_t cut = 0; cut < blob.size(); cut += 5) EXPECT_TRUE(refused(blob.substr(0, cut)));
  EXPECT_EQ(Parse("lococo:slots=8,chunk=5", g)->LoadState(blob, d.seq(1)).code(),
            absl::StatusCode::kInvalidArgument);
  // Scores that disagree with the tables are caught by Attend.
  Driver e(g, policy);
  e.AddSequence(&in);
  ASSERT_TRUE(policy->LoadState(blob, e.seq(0)).ok());
  EXPECT_EQ(e.Step({{0, 1}}).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(LococoPolicyTest, WeightsFileIsValidated) {
  const KvGeometry g = TestGeometry();  // 2 layers, head_dim 8
  testing::ScopedTempDir dir;
  const RefWeights w = RandomWeights(g.n_layer, 4, g.head_dim, 21, 11);
  auto load = [&](const std::vector<uint8_t>& bytes) {
    return ParsePolicy("lococo:slots=8,weights=" + WriteWeights(dir, "x.safetensors", bytes), g)
        .status();
  };
  ASSERT_TRUE(load(WeightsFile(w).Build()).ok());
  // F16 and BF16 tensors load too.
  {
    testing::SafetensorsBuilder b = WeightsFile(w);
    testing::SafetensorsBuilder::Entry* e = b.Find("layers.1.conv.bias");
    e->dtype = "BF16";
    e->data = testing::SafetensorsBuilder::Bf16Bytes(w.b[1]);
    EXPECT_TRUE(load(b.Build()).ok());
  }
  struct Bad {
    const char* what;
    std::function<void(testing::SafetensorsBuilder&)> edit;
  };
  const std::vector<Bad> bads = {
      {"wrong M_c",
       [&](auto& b) {
         b.Find("layers.0.conv.weight")->shape = {2, 16, 42};
       }},
      {"even kernel",
       [&](auto& b) {
         auto* e = b.Find("layers.0.conv.weight");
         e->shape = {4, 16, 20};
         e->data.resize(4 * 16 * 20 * 4);
       }},
      {"missing lambda", [&](auto& b) { b.Find("layers.1.lambda")->name = "layers.1.lambada"; }},
      {"short data", [&](auto& b) { b.Find("layers.1.conv.bias")->data.resize(8); }},
      {"bad dtype", [&](auto& b) { b.Find("layers.0.conv.bias")->dtype = "I32"; }},
      {"NaN",
       [&](auto& b) {
         const float nan = NAN;
         std::memcpy(b.Find("layers.0.conv.weight")->data.data() + 8, &nan, 4);
       }},
      {"offsets out of the file",
       [&](auto& b) {
         b.Find("layers.0.lambda")->offsets_override = {{0, 1u << 30}};
       }},
      {"header not JSON", [&](auto& b) { b.SetRawHeader("{not json"); }},
      {"header length", [&](auto& b) { b.OverrideHeaderLength(1ull << 40); }},
  };
  for (const Bad& bad : bads) {
    testing::SafetensorsBuilder b = WeightsFile(w);
    bad.edit(b);
    const absl::Status st = load(b.Build());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad.what << ": " << st;
  }
  EXPECT_FALSE(load({1, 2, 3}).ok());
}

}  // namespace
}  // namespace kvasir::kvcache
