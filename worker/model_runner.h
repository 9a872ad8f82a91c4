// The Llama forward pass over a batch that mixes prefill chunks and decode tokens of several
// sequences, on top of the paged KV cache. Each sequence's new tokens go through every layer with
// the sequence's own KV policy; logits come out for the rows asked for.
//
// Two implementations: the CPU runner (CreateCpuRunner below, tensor parallelism included) and
// the backend runner (backend_model_runner.h), which runs the pass through kernels::Backend and
// is what --device cuda uses; everything above them (generator, scheduler, services) sees only
// ModelRunner.
//
// Thread contract: one thread calls Forward at a time; the kernels use the runner's thread pool.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/ops.h"
#include "kvcache/codec.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"
#include "model/model_config.h"
#include "model/shard_plan.h"
#include "transport/collectives/communicator.h"
#include "worker/llama_weights.h"

namespace kvasir::worker {

// The new tokens of one sequence in a step.
struct StepSequence {
  kvcache::SequenceKv* seq = nullptr;
  std::span<const int32_t> tokens;  // appended at position seq->n_tokens()
  bool all_logits = false;          // logits for every token (evaluation); else the last only
};

struct ForwardStats {
  int64_t tokens = 0;
  int64_t logit_rows = 0;
};

// Called on Forward's thread once the attention of `layer` has run for every sequence of the
// step: that layer's tables hold what they will hold at the end of the step (kvcache/policy.h:
// Attend writes only its own layer; EndStep only gives back pages beyond the tables' lengths),
// while the later layers are still to compute. The hook must not change the cache.
using LayerDoneHook = std::function<void(int32_t layer)>;

// Time a runner spent in collectives (tensor parallelism), for benchmarks.
struct CollectiveStats {
  int64_t calls = 0;
  double seconds = 0;
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  // Runs the step. Logits are written row after row, in the order of `batch` (all rows of a
  // sequence with all_logits, else one): logits.size() == rows * n_vocab afterwards. Reserves KV
  // room for every sequence first: ResourceExhausted (nothing computed, nothing changed but pages
  // reserved, no hook called) when the cache is full. On success every sequence's n_tokens has
  // advanced. `on_layer_done`, when set, is called after each layer's attention.
  virtual absl::Status Forward(std::span<const StepSequence> batch, std::vector<float>& logits,
                               const LayerDoneHook& on_layer_done) = 0;
  absl::Status Forward(std::span<const StepSequence> batch, std::vector<float>& logits) {
    return Forward(batch, logits, LayerDoneHook());
  }
  virtual const model::ModelConfig& config() const = 0;
  virtual int num_threads() const = 0;
  virtual CollectiveStats collective_stats() const { return {}; }
  // Bytes of weights the runner holds repacked in the kernels' decode layout (0: it multiplies the
  // weights as bound).
  virtual int64_t repacked_weight_bytes() const { return 0; }

  // A sequence's KV as codec blocks (kvcache/codec.h) of every KV head of the model, and the
  // restore of such blocks: by default from and into `cache`, this process's; a tensor-parallel
  // group's rank 0 (TpLeaderRunner) has every rank encode or restore its KV heads, so that the
  // blocks name the model's heads whatever the group's size. Called between steps.
  virtual absl::StatusOr<std::vector<std::string>> EncodeKv(const kvcache::KvCache& cache,
                                                            const kvcache::SequenceKv& seq,
                                                            const kvcache::SnapshotInfo& info) {
    return kvcache::EncodeSequence(cache, seq, info);
  }
  virtual absl::StatusOr<kvcache::SequenceKv*> DecodeKv(
      kvcache::KvCache& cache, std::span<const std::string> blocks,
      std::shared_ptr<const kvcache::KvPolicy> policy, uint64_t model_fingerprint) {
    return kvcache::DecodeSequence(cache, blocks, std::move(policy), model_fingerprint);
  }
  // The model's KV-head bounds of the parts EncodeKv writes: {0, n_head_kv} (one part) by
  // default; a group's ranks' distinct head ranges.
  virtual std::vector<int32_t> KvHeadParts(const kvcache::KvCache& cache) const {
    return {0, cache.geometry().n_head_kv};
  }
};

struct CpuRunnerOptions {
  int num_threads = 0;  // 0: all cores
  // Tensor parallelism (docs/parallelism.md): this rank's part of the model (its weights are bound
  // with the same plan, its cache has the geometry of ShardConfig) and the group's communicator.
  // Every rank runs Forward with the same batch; activations are summed after the attention
  // output and the down projection, the embedding after its lookup, and the logits gathered.
  // Null: the whole model.
  const model::ShardPlan* shard = nullptr;
  transport::collectives::Communicator* comm = nullptr;
  // Repack the matrices the kernels prefer in their decode layout (kernels/cpu/ops.h,
  // PrefersRows8: Q4_0, Q4_1 and Q8_0 at the avx2 and avx512 levels) into memory the runner owns,
  // and give the mapped pages of the originals back. Off: multiply the mapped weights as they are.
  bool repack_weights = true;
};

// The runner borrows `weights`, `cache` and the communicator; they must outlive it. `config` is
// the whole model's.
absl::StatusOr<std::unique_ptr<ModelRunner>> CreateCpuRunner(const model::ModelConfig& config,
                                                             const LlamaWeights& weights,
                                                             kvcache::KvCache& cache,
                                                             const CpuRunnerOptions& options);

// The KV geometry of a model config (RoPE settings included); of a rank's shard with ShardConfig.
kvcache::KvGeometry GeometryOf(const model::ModelConfig& config);

}  // namespace kvasir::worker
