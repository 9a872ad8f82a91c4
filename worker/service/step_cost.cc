// StepCostModel (see step_cost.h).
#include "worker/service/step_cost.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/status_macros.h"
#include "kvcache/policy.h"

namespace kvasir::worker::service {

StepCostModel::StepCostModel(double forget) : forget_(forget) {
  // A large initial covariance: the first observations decide the weights.
  for (int i = 0; i < kDims; ++i) p_[i][i] = 1e4;
}

void StepCostModel::Observe(const Features& f, double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return;
  if (ready() && f.decodes > 0 && f.prefill_tokens > 0) {
    const double predicted = Predict(f);
    if (predicted > 0) {
      ratios_[static_cast<size_t>(n_ratios_ % kMarginWindow)] = seconds / predicted;
      ++n_ratios_;
      const int64_t have = std::min<int64_t>(n_ratios_, kMarginWindow);
      if (have >= kMarginWindow / 4) {
        std::array<double, kMarginWindow> sorted = ratios_;
        const auto end = sorted.begin() + have;
        const auto q = sorted.begin() + static_cast<int64_t>(kMarginQuantile * (have - 1));
        std::nth_element(sorted.begin(), q, end);
        margin_ = std::clamp(*q, 1.0, 2.0);
      }
    }
  }
  const Vec x = Row(f);
  Vec px{};
  for (int i = 0; i < kDims; ++i) {
    for (int j = 0; j < kDims; ++j) px[i] += p_[i][j] * x[j];
  }
  double denom = forget_;
  for (int i = 0; i < kDims; ++i) denom += x[i] * px[i];
  Vec k;
  for (int i = 0; i < kDims; ++i) k[i] = px[i] / denom;
  double err = seconds;
  for (int i = 0; i < kDims; ++i) err -= w_[i] * x[i];
  for (int i = 0; i < kDims; ++i) w_[i] += k[i] * err;
  // P = (P - k (P x)^T) / forget  (P stays symmetric: P x = x^T P).
  for (int i = 0; i < kDims; ++i) {
    for (int j = 0; j < kDims; ++j) p_[i][j] = (p_[i][j] - k[i] * px[j]) / forget_;
  }
  ++n_;
}

double StepCostModel::Predict(const Features& f) const {
  const Vec x = Row(f);
  double t = 0;
  for (int i = 0; i < kDims; ++i) t += w_[i] * x[i];
  return std::max(0.0, t);
}

int64_t StepCostModel::PrefillBudget(const Features& base, double target_seconds,
                                     int64_t min_tokens, int64_t max_tokens) const {
  if (target_seconds <= 0) return max_tokens;
  // Untrained: a small chunk, not a guess. Whole chunks beside running decodes while the model
  // learned held those decodes for 400 ms at a 79 ms target (the tail of the ITL).
  if (!ready()) return std::min(max_tokens, std::max(min_tokens, kColdPrefillTokens));
  Features f = base;
  f.prefill_tokens = 0;
  const double left = target_seconds / margin_ - Predict(f);
  const double tokens = left / w_[2];
  if (!(tokens > static_cast<double>(min_tokens))) return std::min(min_tokens, max_tokens);
  return std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens));
}

absl::StatusOr<absl::Duration> CalibrateTargetItl(Engine& engine, int32_t max_num_seqs,
                                                  double* step_seconds, int64_t* context) {
  const int32_t n = std::max(1, max_num_seqs);
  // The full cache times the step on any model, a retrofitted one too (whose engine serves only
  // its own policy: hence the policy is parsed here, not through Engine::Policy).
  KVASIR_ASSIGN_OR_RETURN(auto policy, kvcache::ParsePolicy("full", engine.cache().geometry()));
  kvcache::KvCache& cache = engine.cache();
  const kvcache::KvGeometry& g = cache.geometry();
  // Token ids of the vocabulary's middle: ordinary tokens, whatever the model.
  const int32_t token = engine.config().n_vocab / 2;
  std::vector<kvcache::SequenceKv*> seqs = {&cache.CreateSequence(policy)};
  std::vector<float> logits;
  absl::Status status;
  // A prompt in the first sequence, 32 tokens a step (the first step also warms the weights up),
  // up to kCalibrationContext tokens or about a second. The ranks of a tensor-parallel group
  // cannot share pages (worker/tensor_parallel.h): a group measures at a context of one token.
  const int64_t want = engine.shard().sharded() ? 1 : kCalibrationContext;
  const std::vector<int32_t> chunk(want == 1 ? 1 : 32, token);
  int64_t ctx = 0;
  const absl::Time start = absl::Now();
  while (status.ok() && ctx < want && (ctx == 0 || absl::Now() - start < absl::Seconds(1))) {
    const StepSequence step{seqs[0], chunk, false};
    status = engine.runner().Forward({&step, 1}, logits);
    ctx += static_cast<int64_t>(chunk.size());
  }
  // The other sequences share the first one's KV (or start empty in a group).
  for (int32_t i = 1; i < n && status.ok(); ++i) {
    kvcache::SequenceKv& seq = cache.CreateSequence(policy);
    seqs.push_back(&seq);
    if (engine.shard().sharded()) continue;
    for (int32_t l = 0; l < g.n_layer; ++l) {
      for (int32_t h = 0; h < g.n_head_kv; ++h) {
        cache.ShareTable(seqs[0]->k(l, h), static_cast<int32_t>(ctx), seq.k(l, h));
        cache.ShareTable(seqs[0]->v(l, h), static_cast<int32_t>(ctx), seq.v(l, h));
      }
    }
    seq.set_n_tokens(ctx);
  }
  // 5 steps that decode one token of every sequence; the fastest is the machine's cost (the
  // others add what else ran on it then, which measured 48-74 ms for one step on a shared host).
  const std::vector<int32_t> one = {token};
  std::vector<StepSequence> batch;
  for (kvcache::SequenceKv* seq : seqs) batch.push_back({seq, one, false});
  std::vector<double> times;
  for (int step = 0; step < 5 && status.ok(); ++step) {
    const absl::Time t0 = absl::Now();
    status = engine.runner().Forward(batch, logits);
    times.push_back(absl::ToDoubleSeconds(absl::Now() - t0));
  }
  for (kvcache::SequenceKv* seq : seqs) cache.FreeSequence(seq->id());
  KVASIR_RETURN_IF_ERROR(status);
  const double fastest = *std::min_element(times.begin(), times.end());
  if (step_seconds != nullptr) *step_seconds = fastest;
  if (context != nullptr) *context = ctx;
  const double target = std::clamp(kDefaultTargetFactor * fastest, 0.020, 2.0);
  return absl::Milliseconds(std::round(target * 1000.0));
}

}  // namespace kvasir::worker::service
