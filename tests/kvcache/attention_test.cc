// AppendAndAttend (kvcache/attention.h): what an AttendObserver gets, for several sequences in one
// step (the column sums come back from backend memory, one range per (sequence, KV head)).
#include "kvcache/attention.h"

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/full_policy.h"
#include "tests/kvcache/eviction_test_util.h"

namespace kvasir::kvcache {
namespace {

using testing_util::DenseAttention;
using testing_util::Driver;
using testing_util::Inputs;
using testing_util::RandomInputs;
using testing_util::RefK;
using testing_util::RefQ;
using testing_util::RefV;
using testing_util::TestGeometry;

// The column sums of the last layer call, by (span index, KV head).
struct Recorder : AttendObserver {
  Recorder() { want_col_sums = true; }
  void OnColumnSums(size_t span, int32_t kv_head, const float* col_sums, int32_t n) override {
    sums[{span, kv_head}] = std::vector<float>(col_sums, col_sums + n);
  }
  std::map<std::pair<size_t, int32_t>, std::vector<float>> sums;
};

// `full`, with the recorder on its AppendAndAttend.
class ObservedFull : public FullPolicy {
 public:
  explicit ObservedFull(Recorder* recorder) : recorder_(recorder) {}
  absl::Status Attend(KvCache& cache, const LayerInputs& in,
                      kernels::Backend& backend) const override {
    recorder_->sums.clear();
    return AppendAndAttend(cache, in, backend, recorder_);
  }

 private:
  Recorder* recorder_;
};

TEST(AppendAndAttendTest, ObserverGetsEveryHeadsColumnSums) {
  const KvGeometry g = TestGeometry(/*n_layer=*/1, /*n_head=*/4, /*n_head_kv=*/2, /*head_dim=*/8);
  const Inputs a = RandomInputs(g, 9, 1), b = RandomInputs(g, 9, 2);
  Recorder recorder;
  Driver d(g, std::make_shared<ObservedFull>(&recorder));
  d.AddSequence(&a);
  d.AddSequence(&b);
  ASSERT_TRUE(d.Step({{0, 5}, {1, 3}}).ok());
  ASSERT_TRUE(d.Step({{0, 4}, {1, 2}}).ok());

  // The second step: a's tokens 5..8 and b's 3..4. Slot j's sum is over the step's queries that
  // see it and the query heads of the group.
  struct Case {
    size_t span;
    const Inputs* in;
    int32_t t0, t1;
  };
  for (const Case& c : {Case{0, &a, 5, 9}, Case{1, &b, 3, 5}}) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      std::vector<double> expect(c.t1, 0.0);
      for (int32_t t = c.t0; t < c.t1; ++t) {
        std::vector<std::vector<float>> keys, values;
        for (int32_t j = 0; j <= t; ++j) {
          keys.push_back(RefK(*c.in, 0, j, h));
          values.push_back(RefV(*c.in, 0, j, h));
        }
        for (int32_t gq = 0; gq < g.group(); ++gq) {
          std::vector<double> p;
          DenseAttention(RefQ(*c.in, 0, t, h * g.group() + gq), keys, values, &p);
          for (int32_t j = 0; j <= t; ++j) expect[j] += p[j];
        }
      }
      ASSERT_EQ(recorder.sums.count({c.span, h}), 1u) << "span " << c.span << " head " << h;
      const std::vector<float>& got = recorder.sums.at({c.span, h});
      ASSERT_EQ(got.size(), expect.size());
      for (size_t j = 0; j < got.size(); ++j) {
        EXPECT_NEAR(got[j], expect[j], 1e-5) << "span " << c.span << " head " << h << " slot " << j;
      }
    }
  }
}

}  // namespace
}  // namespace kvasir::kvcache
