#include "worker/engine.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/backend_model_runner.h"
#include "worker/device.h"

namespace kvasir::worker {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The same file gives the same string however it was named ("" stays "").
std::string CanonicalPath(const std::string& path) {
  if (path.empty()) return path;
  std::error_code ec;
  std::filesystem::path p = std::filesystem::weakly_canonical(path, ec);
  return ec ? path : p.string();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Load(const EngineOptions& options) {
  std::unique_ptr<Engine> e(new Engine());
  KVASIR_RETURN_IF_ERROR(CheckDeviceName(options.device));
  e->device_ = options.device;
  if (options.device != "cpu") {
    if (options.tp_size > 1) {
      return absl::UnimplementedError(
          absl::StrCat("tensor parallelism on --device ", options.device,
                       " is not built yet (planned: NCCL groups); run one engine per GPU"));
    }
    KVASIR_ASSIGN_OR_RETURN(e->backend_, CreateGpuBackend(options.device));
  }
  KVASIR_ASSIGN_OR_RETURN(std::string path, model::ResolveModelPath(options.model));
  KVASIR_ASSIGN_OR_RETURN(e->files_, model::ModelFiles::Open(path));
  if (e->files_->gguf() != nullptr) {
    KVASIR_ASSIGN_OR_RETURN(e->tokenizer_, model::Tokenizer::FromGguf(*e->files_->gguf()));
  } else {
    KVASIR_ASSIGN_OR_RETURN(e->tokenizer_, model::Tokenizer::FromHfDir(path));
  }
  const model::ModelConfig& c = e->files_->config();
  if (e->tokenizer_->n_vocab() > c.n_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the tokenizer has ",
                                                   e->tokenizer_->n_vocab(),
                                                   " tokens, the model only ", c.n_vocab));
  }
  KVASIR_ASSIGN_OR_RETURN(
      e->shard_, model::PlanShard(c, options.tp_size, options.tp_rank, options.tp_replicate_vocab));
  if (e->shard_.sharded() && options.comm == nullptr) {
    return absl::InvalidArgumentError("a tensor-parallel engine needs its group's communicator");
  }
  KVASIR_ASSIGN_OR_RETURN(
      e->weights_, BindLlamaWeights(*e->files_, options.prefault, options.progress, &e->shard_));
  if (!options.adapter.empty()) {
    KVASIR_ASSIGN_OR_RETURN(Adapter adapter, LoadAdapter(options.adapter, c));
    KVASIR_RETURN_IF_ERROR(MergeAdapter(adapter, &e->weights_, e->shard_.sharded()));
    e->adapter_ = std::make_unique<Adapter>(std::move(adapter));
    e->adapter_path_ = CanonicalPath(options.adapter);
  }
  const model::ModelConfig local = model::ShardConfig(c, e->shard_);
  int64_t kv_bytes = options.kv_cache_bytes;
  if (kv_bytes <= 0) {
    const int bytes_per_elem = options.kv_dtype == DType::kF16 ? 2 : 4;
    kv_bytes = std::min<int64_t>(int64_t{4} << 30,
                                 4 * local.KvBytesPerToken(bytes_per_elem) * c.context_length);
  }
  kvcache::KvCacheOptions kv;
  kv.page_size = options.kv_page_size;
  kv.dtype = options.kv_dtype;
  kv.capacity_bytes = kv_bytes;
  kv.memory = e->backend_.get();  // GPU memory on a GPU; null: a host mapping
  kvcache::KvGeometry geometry = GeometryOf(local);
  if (e->shard_.sharded()) {
    geometry.kv_head_offset = e->shard_.kv_head_begin;
    geometry.model_n_head_kv = c.n_head_kv;
  }
  KVASIR_ASSIGN_OR_RETURN(e->cache_, kvcache::KvCache::Create(geometry, kv));
  CpuRunnerOptions ro;
  ro.num_threads = options.num_threads;
  ro.shard = &e->shard_;
  ro.comm = options.comm;
  if (e->backend_ != nullptr) {
    KVASIR_ASSIGN_OR_RETURN(e->runner_,
                            CreateBackendRunner(c, e->weights_, *e->cache_, *e->backend_));
  } else {
    KVASIR_ASSIGN_OR_RETURN(e->runner_, CreateCpuRunner(c, e->weights_, *e->cache_, ro));
  }
  return e;
}

absl::StatusOr<std::shared_ptr<const kvcache::KvPolicy>> Engine::Policy(
    std::string_view spec) const {
  KVASIR_ASSIGN_OR_RETURN(auto policy, kvcache::ParsePolicy(spec, cache_->geometry()));
  KVASIR_RETURN_IF_ERROR(CheckAdapter(*policy));
  return policy;
}

absl::Status Engine::CheckAdapter(const kvcache::KvPolicy& policy) const {
  const std::string wanted = policy.model_adapter();
  if (wanted.empty() && adapter_ == nullptr) return absl::OkStatus();
  if (!wanted.empty() && CanonicalPath(wanted) == adapter_path_) return absl::OkStatus();
  if (adapter_ == nullptr) {
    return absl::FailedPreconditionError(
        "the KV policy needs the model merged with its adapter (weights=FILE); this engine "
        "was loaded without one");
  }
  return absl::FailedPreconditionError(
      "this engine runs a model merged with a retrofit adapter; it serves only the KV policy "
      "that names that adapter");
}

std::string StopStringFilter::Push(std::string_view text) {
  if (stopped_) return "";
  held_.append(text);
  // A complete stop string: cut there.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) {
    if (s.empty()) continue;
    const size_t at = held_.find(s);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Hold back the longest suffix that is a prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > hold; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopStringFilter::Flush() {
  std::string out;
  if (!stopped_) out.swap(held_);
  held_.clear();
  return out;
}

absl::StatusOr<GenerateResult> Generate(Engine& engine, const GenerateRequest& req,
                                        const TextCallback& on_text,
                                        const LogitsCallback& on_logits) {
  KVASIR_RETURN_IF_ERROR(req.sampling.Validate());
  const model::ModelConfig& c = engine.config();
  if (req.prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  if (req.max_tokens < 0) return absl::InvalidArgumentError("max tokens must be >= 0");
  if (static_cast<int64_t>(req.prompt.size()) + req.max_tokens > c.context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt (", req.prompt.size(), " tokens) plus max tokens (",
                     req.max_tokens, ") exceeds the model's context length of ", c.context_length));
  }
  if (req.prefill_chunk <= 0) return absl::InvalidArgumentError("prefill chunk must be > 0");
  KVASIR_ASSIGN_OR_RETURN(auto policy, engine.Policy(req.kv_policy));

  kvcache::KvCache& cache = engine.cache();
  kvcache::SequenceKv& seq = cache.CreateSequence(policy);
  const kvcache::SeqId seq_id = seq.id();
  struct Release {
    kvcache::KvCache& cache;
    kvcache::SeqId id;
    ~Release() { cache.FreeSequence(id); }
  } release{cache, seq_id};

  GenerateResult result;
  result.kv_policy = policy->spec();
  result.prompt_tokens = static_cast<int32_t>(req.prompt.size());
  std::vector<float> logits;
  std::vector<int32_t> history(req.prompt.begin(), req.prompt.end());

  // Prefill in chunks; logits of the last prompt token.
  const double t0 = Now();
  for (size_t begin = 0; begin < req.prompt.size(); begin += req.prefill_chunk) {
    const size_t count = std::min<size_t>(req.prefill_chunk, req.prompt.size() - begin);
    StepSequence step{&seq, std::span<const int32_t>(req.prompt).subspan(begin, count), false};
    KVASIR_RETURN_IF_ERROR(engine.runner().Forward({&step, 1}, logits));
  }
  const double t1 = Now();
  result.prefill_seconds = t1 - t0;

  Sampler sampler(req.sampling);
  model::StreamingDecoder decoder(engine.tokenizer());
  StopStringFilter filter(req.stop);
  const model::Tokenizer& tok = engine.tokenizer();
  auto emit = [&](const std::string& text) {
    if (text.empty()) return;
    result.text += text;
    if (on_text) on_text(text);
  };
  result.finish_reason = "length";
  for (int32_t step = 0; step < req.max_tokens; ++step) {
    if (step > 0) {
      StepSequence s{&seq, std::span<const int32_t>(&history.back(), 1), false};
      KVASIR_RETURN_IF_ERROR(engine.runner().Forward({&s, 1}, logits));
    }
    std::span<const float> row(logits.data(), c.n_vocab);
    if (on_logits) on_logits(step, row);
    const int32_t id = sampler.Sample(row, history);
    const bool stop_token =
        (!req.ignore_eos && tok.IsEog(id)) ||
        std::find(req.stop_ids.begin(), req.stop_ids.end(), id) != req.stop_ids.end();
    if (stop_token) {  // as llama.cpp: the stop token ends the output and is not part of it
      result.finish_reason = "stop";
      break;
    }
    result.ids.push_back(id);
    history.push_back(id);
    emit(filter.Push(decoder.Push(id)));
    if (filter.stopped()) {
      result.finish_reason = "stop";
      break;
    }
  }
  if (!filter.stopped()) emit(filter.Push(decoder.Flush()));
  emit(filter.Flush());
  result.decode_seconds = Now() - t1;
  result.kv = cache.Usage(seq);
  return result;
}

}  // namespace kvasir::worker
