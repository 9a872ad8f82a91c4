// The single-process engine: a model, its tokenizer, a KV cache and a runner, loaded together,
// and generation on top of them. `kvasir generate`, `kvasir eval` and `kvasir bench engine` use it
// directly; the worker service wraps the same pieces with a scheduler.
//
//   KVASIR_ASSIGN_OR_RETURN(auto engine, Engine::Load({.model = "default"}));
//   GenerateRequest req;
//   req.prompt = engine->tokenizer().Encode("Once upon a time", true, false);
//   KVASIR_ASSIGN_OR_RETURN(GenerateResult r, Generate(*engine, req, [](std::string_view t) {
//     std::cout << t << std::flush;
//   }));
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"
#include "model/model_files.h"
#include "model/tokenizer/tokenizer.h"
#include "worker/adapter.h"
#include "worker/llama_weights.h"
#include "worker/model_runner.h"
#include "worker/sampler.h"

namespace kvasir::worker {

struct EngineOptions {
  std::string model = "default";  // .gguf, Hugging Face folder, or "default"
  int num_threads = 0;            // 0: all cores
  int64_t kv_cache_bytes = 0;     // 0: room for 4 sequences of the full context, at most 4 GiB
  DType kv_dtype = DType::kF32;   // kF32 or kF16
  int32_t kv_page_size = 16;
  bool prefault = true;   // read the weights in at load time, with progress
  LoadProgress progress;  // optional
  // Tensor parallelism (docs/parallelism.md): this engine is rank `tp_rank` of a group of
  // `tp_size` that runs every step together through `comm` (which must outlive the engine). It
  // holds the rank's part of the weights (model::PlanShard) and a KV cache of its KV heads.
  int32_t tp_size = 1;
  int32_t tp_rank = 0;
  bool tp_replicate_vocab = false;  // ShardPlan::vocab_replicated
  transport::collectives::Communicator* comm = nullptr;
  // A retrofit adapter (worker/adapter.h) merged into the weights at load: the model then runs
  // only the policies that name this file (learned dmc's weights=FILE). "" for none.
  std::string adapter;
  // "cpu", or "cuda": the backend runner (worker/backend_model_runner.h) over the CUDA kernels,
  // weights and KV cache in GPU memory, one GPU, no tensor parallelism (worker/device.h).
  std::string device = "cpu";
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Load(const EngineOptions& options);

  const model::ModelConfig& config() const { return files_->config(); }
  const model::ModelFiles& files() const { return *files_; }
  const model::Tokenizer& tokenizer() const { return *tokenizer_; }
  kvcache::KvCache& cache() { return *cache_; }
  ModelRunner& runner() { return *runner_; }
  // Replaces the runner with `wrap(runner)` (the leader of a tensor-parallel group wraps it).
  void WrapRunner(
      const std::function<std::unique_ptr<ModelRunner>(std::unique_ptr<ModelRunner>)>& wrap) {
    runner_ = wrap(std::move(runner_));
  }
  const LlamaWeights& weights() const { return weights_; }
  const model::ShardPlan& shard() const { return shard_; }
  // "cpu" or "cuda" (EngineOptions::device).
  const std::string& device() const { return device_; }
  // The GPU backend of a GPU engine; null on the CPU.
  kernels::Backend* backend() const { return backend_.get(); }
  // A policy for this model's geometry, from a spec string (docs/compression.md).
  // FailedPrecondition when the policy needs a model adapted otherwise than this one (an adapted
  // engine runs only the policies that name its adapter).
  absl::StatusOr<std::shared_ptr<const kvcache::KvPolicy>> Policy(std::string_view spec) const;
  // Checks that `policy` may run on this engine's weights (see Policy).
  absl::Status CheckAdapter(const kvcache::KvPolicy& policy) const;
  // The merged adapter (nullptr for none).
  const Adapter* adapter() const { return adapter_.get(); }

 private:
  Engine() = default;
  // Declared first so that it goes last: the cache and the runner hold its memory.
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::ModelFiles> files_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
  model::ShardPlan shard_;
  LlamaWeights weights_;
  std::unique_ptr<Adapter> adapter_;
  std::string adapter_path_;  // canonical
  std::unique_ptr<kvcache::KvCache> cache_;
  std::unique_ptr<ModelRunner> runner_;
  std::string device_ = "cpu";
};

struct GenerateRequest {
  std::vector<int32_t> prompt;  // token ids, BOS included when the model wants it
  SamplingParams sampling;
  int32_t max_tokens = 128;
  std::vector<std::string> stop;  // stop strings (not part of the output)
  std::vector<int32_t> stop_ids;  // stop tokens besides the tokenizer's end-of-generation ids
  bool ignore_eos = false;
  std::string kv_policy = "full";
  int32_t prefill_chunk = 512;  // prompt tokens per forward step
};

struct GenerateResult {
  std::vector<int32_t> ids;   // generated tokens, without the stop token
  std::string text;           // generated text, up to a stop string
  std::string finish_reason;  // "stop" (stop token or string) or "length"
  std::string kv_policy;
  kvcache::KvUsage kv;  // what the cache held at the end
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double prefill_tps() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  double decode_tps() const {
    return decode_seconds > 0 && ids.size() > 1 ? (ids.size() - 1) / decode_seconds : 0;
  }
  int32_t prompt_tokens = 0;
};

// Streams text as it becomes final: never half a UTF-8 character, never a piece that could still
// turn out to start a stop string.
using TextCallback = std::function<void(std::string_view text)>;
// Sees the logits before every sampling step (step 0 is the prompt's last position).
using LogitsCallback = std::function<void(int step, std::span<const float> logits)>;

absl::StatusOr<GenerateResult> Generate(Engine& engine, const GenerateRequest& request,
                                        const TextCallback& on_text = nullptr,
                                        const LogitsCallback& on_logits = nullptr);

// Holds back text that might be the beginning of a stop string, and cuts the text at the first
// complete one. Used by Generate and by the services that stream.
class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Adds text; returns what can be emitted now. After a stop string was found, stopped() is true
  // and nothing more is emitted.
  std::string Push(std::string_view text);
  // What is held back, at the end of generation.
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace kvasir::worker
