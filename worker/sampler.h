// Token sampling from logits, in llama.cpp's order: repetition penalty, top-k, top-p, min-p,
// temperature, then a draw from the distribution (or the arg-max when temperature is 0).
// The same seed and the same logits give the same token on every machine: the random source is
// a fixed algorithm (std::mt19937_64) and the draw uses doubles in a fixed order.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace kvasir::worker {

struct SamplingParams {
  float temperature = 0.8f;         // 0: greedy
  int32_t top_k = 40;               // 0: off
  float top_p = 0.95f;              // 1: off
  float min_p = 0.05f;              // 0: off
  float repetition_penalty = 1.0f;  // 1: off; > 1 discourages tokens seen in the last_n
  int32_t repetition_last_n = 64;
  uint64_t seed = 0;

  // InvalidArgument for values out of range (negative temperature, top_p outside (0, 1], ...).
  absl::Status Validate() const;
  static SamplingParams Greedy() {
    SamplingParams p;
    p.temperature = 0;
    return p;
  }
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks the next token. `history` holds the tokens so far (prompt and output), for the
  // repetition penalty. Not thread-safe (it owns the random state).
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> history);
  // Advances the random state past `n` samples, as if Sample had been called n times: a request
  // resumed elsewhere after n tokens draws what the original would have drawn next.
  void Skip(int64_t n) {
    if (params_.temperature > 0 && n > 0) rng_.discard(static_cast<unsigned long long>(n));
  }

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  struct Candidate {
    int32_t id;
    float logit;
  };
  std::vector<Candidate> candidates_;
  std::vector<float> penalized_;
};

// Arg-max with the lowest id winning ties (what llama.cpp's greedy sampler does).
int32_t ArgMax(std::span<const float> logits);

}  // namespace kvasir::worker
