// `dmc`: Dynamic Memory Compression (arXiv 2403.09636) as NVIDIA's released code runs it: per
// (sequence, layer, KV head) a token appends a slot or merges into the tail slot, a windowed
// weighted mean kept as running sums. mode=learned reads the decision and weight from element D-1
// of k and q (DMC checkpoints); mode=free (training-free) merges keys close to the tail's mean,
// steered to a target ratio. Details and equations: docs/compression.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {

// Constants of the released code (megatron/contrib/dmc, arguments.py and triton.py).
inline constexpr float kDmcInitVal = 5.0f;          // α = [k[D-1] - 5 > 0]; ω = σ(q[D-1] + 5)
inline constexpr float kDmcWeightEps = 0.0078125f;  // 2^-7 = torch.finfo(bfloat16).eps, added to ω
inline constexpr int32_t kDmcDefaultWindow = 12;    // accumulation window of the Triton kernel
inline constexpr double kDmcDefaultThreshold = 0.8;  // free mode: initial cosine threshold
inline constexpr double kDmcDefaultGain = 0.02;      // free mode: threshold controller step

enum class DmcMode {
  kLearned,  // α and ω from element D-1 of k and q (needs a DMC-trained checkpoint)
  kFree,     // training-free: cosine similarity to the tail's mean, threshold steered to `ratio`
};

enum class DmcPrefill {
  kParallel,  // prompt chunks: one scan, then one attention with the run-end-or-self mask
  kSerial,    // prompt chunks token by token, as the released code runs prefill
};

// The defaults are the released code's (no recent window, no sinks, pre-RoPE sums); the spec
// parser's free mode defaults to sink=4, recent=64, space=post instead.
struct DmcOptions {
  DmcMode mode = DmcMode::kFree;
  // Tokens merged per slot that the free mode steers to (>= 1; 1 never merges). Unused by the
  // learned mode, whose ratio is the checkpoint's.
  double ratio = 4.0;
  // Tokens of a run that the tail slot averages (the oldest leaves when a run grows past it);
  // 0 averages the whole run (the released code's window-less kernel).
  int32_t window = kDmcDefaultWindow;
  // The first `sink` slots of every head hold one token each: a token merges only into a tail
  // slot at index >= sink. The first token of a sequence always appends whatever `sink` is.
  int32_t sink = 0;
  // Free mode: the threshold starts at `threshold` and moves by gain * (1/ratio - [appended])
  // after every decision it makes.
  double threshold = kDmcDefaultThreshold;
  double gain = kDmcDefaultGain;
  // Free mode: merge keys after RoPE (the slot is the mean of the rotated keys, not re-rotated)
  // instead of DMC's pre-RoPE sums re-rotated at the newest position.
  bool post_rope = false;
  // Learned mode: the adapter (LoRA) that retrofits the model for DMC (train/retrofit.py); the
  // engine merges it into the weights, the policy only names it (model_adapter()).
  std::string adapter;
  // Free mode: the last `recent` tokens of every head keep their own slots (a ring after the
  // sinks); a token enters the merge machinery when it leaves that window. 0: tokens merge on
  // arrival, as in DMC. Needs post_rope (the ring holds rotated keys).
  int32_t recent = 0;
  DmcPrefill prefill = DmcPrefill::kParallel;
};

// What one (sequence, layer, KV head) holds, for tests, stats and docs.
struct DmcHeadStats {
  int32_t slots = 0;       // slots in the K table (= in the V table)
  int64_t tokens = 0;      // tokens the head has seen
  int32_t run_len = 0;     // tokens in the tail slot's run (all of them, not only the window)
  double threshold = 0.0;  // free mode: current cosine threshold
  int64_t decisions = 0;   // free mode: merge/append decisions the threshold made
  int64_t appends = 0;     // free mode: how many of those appended
};

class DmcPolicy : public KvPolicy {
 public:
  // InvalidArgument for options out of range or a geometry the mode cannot serve.
  static absl::StatusOr<std::shared_ptr<const DmcPolicy>> Create(const DmcOptions& options,
                                                                 const KvGeometry& geometry);

  const DmcOptions& options() const { return options_; }

  // "dmc:mode=learned,window=12,sink=0" or "dmc:mode=free,ratio=4,window=12,sink=4,...": every
  // parameter, so that equal specs mean equal behaviour (the block codec compares them).
  std::string spec() const override;
  std::unique_ptr<PolicyState> NewState(const KvGeometry& geometry) const override;
  // Room for n_new appends in every table, with the tail slot's page made private (it is
  // rewritten by merges). EndStep gives back the pages the step did not fill.
  absl::Status Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  int64_t PlannedPages(const KvGeometry& geometry, int32_t page_size,
                       int64_t n_tokens) const override;
  absl::Status Attend(KvCache& cache, const LayerInputs& in,
                      kernels::Backend& backend) const override;
  absl::Status EndStep(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  // Versioned little-endian bytes of every head's accumulators, ring, run length, window pointer
  // and threshold state. LoadState needs the tables restored first (it checks their lengths) and
  // refuses bytes of another version, mode, window or geometry (InvalidArgument).
  absl::Status SaveState(const SequenceKv& seq, std::string& out) const override;
  absl::Status LoadState(std::string_view in, SequenceKv& seq) const override;
  bool reads_whole_query_group() const override { return options_.mode == DmcMode::kLearned; }
  std::string model_adapter() const override { return options_.adapter; }

 protected:
  std::optional<StateLayout> state_layout() const override;

 public:
  // The state of one head of `seq` (which must use this policy).
  DmcHeadStats HeadStats(const SequenceKv& seq, int32_t layer, int32_t kv_head) const;

 private:
  DmcPolicy(const DmcOptions& options, const KvGeometry& geometry)
      : options_(options), geometry_(geometry) {}

  DmcOptions options_;
  KvGeometry geometry_;
};

}  // namespace kvasir::kvcache
