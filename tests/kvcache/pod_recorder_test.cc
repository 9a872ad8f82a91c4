// PoD calibration measurements: the Jensen-Shannon similarity on known distributions, and the
// recorder's per-head layer similarities against a direct computation from the rotated queries
// and keys the test keeps (both metrics); the recording policy attends exactly as `full`.
#include "kvcache/pod_recorder.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/full_policy.h"
#include "tests/kvcache/pod_test_util.h"

namespace kvasir::kvcache {
namespace {

using testing::LayerData;
using testing::PodTestGeometry;
using testing::PolicyDriver;
using testing::RotateRef;
using testing::TrackedSeq;

TEST(PodSimilarityOfTest, KnownDistributions) {
  const double a[] = {0.25, 0.25, 0.5}, b[] = {1.0, 0.0}, c[] = {0.0, 1.0}, d[] = {0.5, 0.5};
  EXPECT_DOUBLE_EQ(PodSimilarityOf(a, a, 3), 1.0);
  EXPECT_NEAR(PodSimilarityOf(b, c, 2), 0.0, 1e-15) << "disjoint: JS is one bit";
  // JS((1,0), (1/2,1/2)) = 1/2 log2(4/3) + 1/4 log2(2/3) + 1/4 log2(2) = 0.311278 bits.
  EXPECT_NEAR(PodSimilarityOf(b, d, 2), 1.0 - 0.3112781245, 1e-9);
  EXPECT_DOUBLE_EQ(PodSimilarityOf(b, d, 2), PodSimilarityOf(d, b, 2));
}

TEST(PodMetricTest, ParsesNames) {
  EXPECT_EQ(*ParsePodMetric("attention"), PodMetric::kAttention);
  EXPECT_EQ(*ParsePodMetric("keys"), PodMetric::kKeys);
  EXPECT_FALSE(ParsePodMetric("kl").ok());
  EXPECT_STREQ(PodMetricName(PodMetric::kKeys), "keys");
}

// Softmax over the distant keys [sink, t - window] of query (layer lq, query head qh) at t with
// the keys of layer lk, from the raw inputs the test kept.
std::vector<double> DistantSoftmax(const KvGeometry& g, const TrackedSeq& seq,
                                   const std::vector<std::vector<float>>& q_raw, int32_t lq,
                                   int32_t lk, int32_t qh, int64_t t, int32_t sink,
                                   int32_t window) {
  const int32_t hd = g.head_dim, h = qh / g.group();
  std::vector<double> q(hd), k(hd), p;
  RotateRef(g, t, q_raw[lq].data() + t * g.n_head * hd + qh * hd, q.data());
  for (int64_t j = sink; j <= t - window; ++j) {
    RotateRef(g, j, seq.k[lk][j].data() + h * hd, k.data());
    double dot = 0;
    for (int32_t d = 0; d < hd; ++d) dot += q[d] * k[d];
    p.push_back(dot / std::sqrt(static_cast<double>(hd)));
  }
  double max = -INFINITY, sum = 0;
  for (double x : p) max = std::max(max, x);
  for (double& x : p) sum += (x = std::exp(x - max));
  for (double& x : p) x /= sum;
  return p;
}

class PodRecorderTest : public ::testing::TestWithParam<PodMetric> {};

TEST_P(PodRecorderTest, SimilaritiesMatchADirectComputation) {
  const KvGeometry g = PodTestGeometry();
  PodSimilarityOptions o;
  o.sink = 2;
  o.window = 6;
  o.metric = GetParam();
  PodSimilarity sim(g, o);
  PolicyDriver driver(g, std::make_shared<PodRecordingPolicy>(&sim));
  PolicyDriver full(g, std::make_shared<FullPolicy>());
  const int32_t begin = 20, end = 30;
  std::vector<double> sums(static_cast<size_t>(g.n_head_kv) * g.n_layer * g.n_layer, 0.0);
  // Two sequences, so that the recorder must tell them apart; only the first is measured.
  for (int rep = 0; rep < 2; ++rep) {
    TrackedSeq seq = driver.NewSeq(), other = driver.NewSeq(), ref = full.NewSeq();
    sim.SetQueryRange(seq.seq->id(), begin, end);
    std::vector<std::vector<float>> q_raw(g.n_layer);  // [layer][token * n_head * hd]
    uint32_t seed = 3 + 100 * rep;
    for (int32_t n : {17, 6, 1, 1, 5}) {
      std::vector<LayerData> data = driver.RandomInputs({n, 4}, seed);
      std::vector<LayerData> alone = full.RandomInputs({n}, seed++);
      for (int32_t l = 0; l < g.n_layer; ++l) {
        const size_t row = static_cast<size_t>(n) * g.n_head * g.head_dim;
        q_raw[l].insert(q_raw[l].end(), data[l].q.begin(), data[l].q.begin() + row);
        // The same tokens alone through `full`: the recording policy attends exactly like it.
        alone[l].q.assign(data[l].q.begin(), data[l].q.begin() + row);
        alone[l].k.assign(data[l].k.begin(), data[l].k.begin() + n * g.n_head_kv * g.head_dim);
        alone[l].v.assign(data[l].v.begin(), data[l].v.begin() + n * g.n_head_kv * g.head_dim);
      }
      ASSERT_TRUE(driver.Step({&seq, &other}, {n, 4}, data).ok());
      ASSERT_TRUE(full.Step({&ref}, {n}, alone).ok());
      for (int32_t l = 0; l < g.n_layer; ++l) {
        EXPECT_EQ(0, std::memcmp(alone[l].out.data(), data[l].out.data(),
                                 alone[l].out.size() * sizeof(float)));
      }
    }
    EXPECT_EQ(sim.queries(), (rep + 1) * (end - begin));
    // Expected after this repetition: the mean over the repetitions so far.
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      for (int32_t a = 0; a < g.n_layer; ++a) {
        for (int32_t b = a + 1; b < g.n_layer; ++b) {
          for (int64_t t = begin; t < end; ++t) {
            for (int32_t gq = 0; gq < g.group(); ++gq) {
              const int32_t qh = h * g.group() + gq;
              std::vector<double> p, q;
              if (GetParam() == PodMetric::kAttention) {
                p = DistantSoftmax(g, seq, q_raw, a, a, qh, t, o.sink, o.window);
                q = DistantSoftmax(g, seq, q_raw, b, b, qh, t, o.sink, o.window);
              } else {
                p = DistantSoftmax(g, seq, q_raw, b, b, qh, t, o.sink, o.window);
                q = DistantSoftmax(g, seq, q_raw, b, a, qh, t, o.sink, o.window);
              }
              double js = 0;
              for (size_t j = 0; j < p.size(); ++j) {
                const double m = (p[j] + q[j]) / 2;
                if (p[j] > 0) js += p[j] / 2 * std::log(p[j] / m) / std::log(2.0);
                if (q[j] > 0) js += q[j] / 2 * std::log(q[j] / m) / std::log(2.0);
              }
              sums[(h * g.n_layer + a) * g.n_layer + b] += 1 - js;
            }
          }
          const double expected =
              sums[(h * g.n_layer + a) * g.n_layer + b] / ((rep + 1) * (end - begin) * g.group());
          EXPECT_NEAR(sim.Similarity(h, a, b), expected, 1e-5)
              << "head " << h << " layers " << a << "," << b;
          EXPECT_EQ(sim.Similarity(h, b, a), sim.Similarity(h, a, b));
        }
        EXPECT_EQ(sim.Similarity(h, a, a), 1.0);
      }
    }
  }
  const auto m = sim.Matrices();
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1][0][3], sim.Similarity(1, 0, 3));
}

INSTANTIATE_TEST_SUITE_P(Metrics, PodRecorderTest,
                         ::testing::Values(PodMetric::kAttention, PodMetric::kKeys));

TEST(PodRecorderTest, NothingMeasuredGivesNaN) {
  const KvGeometry g = PodTestGeometry();
  PodSimilarity sim(g, PodSimilarityOptions{});
  EXPECT_TRUE(std::isnan(sim.Similarity(0, 0, 1)));
  EXPECT_EQ(sim.queries(), 0);
}

}  // namespace
}  // namespace kvasir::kvcache
