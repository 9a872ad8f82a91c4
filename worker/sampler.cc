#include "worker/sampler.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace kvasir::worker {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0 && top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (!(min_p >= 0 && min_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", min_p));
  }
  if (!(repetition_penalty > 0) || !std::isfinite(repetition_penalty)) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition penalty must be > 0, got ", repetition_penalty));
  }
  if (repetition_last_n < 0) {
    return absl::InvalidArgumentError("repetition window must be >= 0");
  }
  return absl::OkStatus();
}

int32_t ArgMax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Sample(std::span<const float> logits, std::span<const int32_t> history) {
  std::span<const float> l = logits;
  // Repetition penalty (CTRL style, as llama.cpp): divide positive logits, multiply negative ones.
  if (params_.repetition_penalty != 1.0f && params_.repetition_last_n > 0 && !history.empty()) {
    penalized_.assign(logits.begin(), logits.end());
    const size_t n = std::min<size_t>(history.size(), params_.repetition_last_n);
    absl::flat_hash_set<int32_t> seen(history.end() - n, history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= static_cast<int32_t>(penalized_.size())) continue;
      float& x = penalized_[id];
      x = x > 0 ? x / params_.repetition_penalty : x * params_.repetition_penalty;
    }
    l = penalized_;
  }
  if (params_.temperature <= 0) return ArgMax(l);

  candidates_.resize(l.size());
  for (size_t i = 0; i < l.size(); ++i) candidates_[i] = {static_cast<int32_t>(i), l[i]};
  auto by_logit = [](const Candidate& a, const Candidate& b) {
    return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
  };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = params_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);

  // Softmax over the survivors (before temperature, as llama.cpp's top-p and min-p see it).
  std::vector<double> probs(keep);
  const double max_logit = candidates_[0].logit;
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    probs[i] = std::exp(static_cast<double>(candidates_[i].logit) - max_logit);
    sum += probs[i];
  }
  // Top-p: the smallest prefix whose mass reaches top_p.
  if (params_.top_p < 1.0f) {
    double mass = 0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      mass += probs[i] / sum;
      if (mass >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
  }
  // Min-p: drop tokens under min_p times the top probability.
  if (params_.min_p > 0) {
    size_t cut = 1;
    while (cut < keep && probs[cut] >= params_.min_p * probs[0]) ++cut;
    keep = cut;
  }
  // Temperature, then draw.
  sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    probs[i] =
        std::exp((static_cast<double>(candidates_[i].logit) - max_logit) / params_.temperature);
    sum += probs[i];
  }
  // A uniform double in [0, 1) from 53 random bits: the same on every platform.
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * sum;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (u < acc) return candidates_[i].id;
  }
  return candidates_[keep - 1].id;
}

}  // namespace kvasir::worker
