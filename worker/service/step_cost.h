// An online model of how long one forward step takes on this machine, for sizing steps to an
// inter-token latency target (stall-free batching as in Sarathi-Serve; docs/serving.md):
//
//   seconds ~ w0 + w1 * decode sequences + w2 * prefill tokens + w3 * thousands of KV tokens
//             the decodes attend to
//
// fit by recursive least squares with a forgetting factor, so that it follows the machine as it
// runs (other load, clock changes). Thread contract: one thread (the scheduler's executor).
#pragma once

#include <array>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/engine.h"

namespace kvasir::worker::service {

class StepCostModel {
 public:
  struct Features {
    double decodes = 0;         // sequences decoding one token in the step
    double prefill_tokens = 0;  // prompt tokens computed in the step
    double context_k = 0;       // KV tokens the decodes attend to, in thousands
  };

  // `forget` in (0, 1]: the weight of an observation falls by this factor per later one.
  explicit StepCostModel(double forget = 0.98);

  void Observe(const Features& f, double seconds);
  // Predicted seconds (0 before the first observation).
  double Predict(const Features& f) const;
  // Steps observed so far; the model is trusted from kMinObservations on.
  int64_t observations() const { return n_; }
  static constexpr int64_t kMinObservations = 8;
  bool ready() const { return n_ >= kMinObservations && w_[2] > 0; }
  // How much the steps that were sized overran the model: the kMarginQuantile quantile of
  // observed / predicted seconds over the last kMarginWindow steps that had decodes and prefill
  // tokens and were observed while ready(), within [1, 2] (1 until there are kMarginWindow / 4 such
  // steps). A linear fit is right on average, so about half of the steps it sizes to the target
  // would overrun it without this.
  double margin() const { return margin_; }
  static constexpr int kMarginWindow = 64;
  static constexpr double kMarginQuantile = 0.9;
  // The most prefill tokens (at most `max_tokens`, at least `min_tokens`) that a step with the
  // decodes of `base` can take and be predicted to stay within `target_seconds` / margin(); until
  // ready(), kColdPrefillTokens (within the same bounds). max_tokens without a target.
  static constexpr int64_t kColdPrefillTokens = 32;
  int64_t PrefillBudget(const Features& base, double target_seconds, int64_t min_tokens,
                        int64_t max_tokens) const;

 private:
  static constexpr int kDims = 4;
  using Vec = std::array<double, kDims>;
  static Vec Row(const Features& f) { return {1.0, f.decodes, f.prefill_tokens, f.context_k}; }

  double forget_;
  Vec w_{};
  std::array<Vec, kDims> p_{};  // the inverse covariance of the fit
  int64_t n_ = 0;
  std::array<double, kMarginWindow> ratios_{};  // a ring of observed / predicted
  int64_t n_ratios_ = 0;
  double margin_ = 1.0;
};

// The default latency target, from a short calibration of this machine at start-up: the time of
// the busiest decode step the scheduler runs at a typical context, `max_num_seqs` sequences
// decoding one token each after kCalibrationContext tokens (one sequence computes them, 32 a
// step, fewer if that takes over a second; the others share its pages), the fastest of 5 steps,
// times kDefaultTargetFactor (room for as much prefill as decode in a step), within [20 ms, 2 s]. A
// tensor-parallel group measures at a context of one token (its ranks cannot share pages). Leaves
// the cache as it found it. `step_seconds` and `context` receive what was measured.
// ResourceExhausted when the cache has no room.
inline constexpr double kDefaultTargetFactor = 2.0;
inline constexpr int64_t kCalibrationContext = 256;
absl::StatusOr<absl::Duration> CalibrateTargetItl(Engine& engine, int32_t max_num_seqs,
                                                  double* step_seconds = nullptr,
                                                  int64_t* context = nullptr);

}  // namespace kvasir::worker::service
