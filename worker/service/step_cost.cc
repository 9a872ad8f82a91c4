// StepCostModel (see step_cost.h).
#include "worker/service/step_cost.h"

#include <algorithm>
#include <cmath>

namespace kvasir::worker::service {

StepCostModel::StepCostModel(double forget) : forget_(forget) {
  // A large initial covariance: the first observations decide the weights.
  for (int i = 0; i < kDims; ++i) p_[i][i] = 1e4;
}

void StepCostModel::Observe(const Features& f, double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return;
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
  if (!ready() || target_seconds <= 0) return max_tokens;
  Features f = base;
  f.prefill_tokens = 0;
  const double left = target_seconds - Predict(f);
  const double tokens = left / w_[2];
  if (!(tokens > static_cast<double>(min_tokens))) return std::min(min_tokens, max_tokens);
  return std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens));
}

}  // namespace kvasir::worker::service
