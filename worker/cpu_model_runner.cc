// The CPU ModelRunner: the Llama forward pass of docs/architecture.md with the kernels of
// kernels/cpu. Activations of a step live in buffers that grow to the largest step and are then
// reused, so steady-state decoding does not allocate.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/ops.h"
#include "worker/model_runner.h"
#include "worker/step_plan.h"

namespace kvasir::worker {
namespace {

namespace cpu = kernels::cpu;

class CpuModelRunner : public ModelRunner {
 public:
  CpuModelRunner(const model::ModelConfig& config, const LlamaWeights& weights,
                 kvcache::KvCache& cache, const CpuRunnerOptions& options)
      : config_(config),
        weights_(weights),
        cache_(cache),
        pool_(options.num_threads),
        backend_(&pool_),
        comm_(options.comm) {
    // Without a plan, the whole model (the plan of a group of one).
    shard_ = options.shard != nullptr ? *options.shard : *model::PlanShard(config_, 1, 0);
    local_ = model::ShardConfig(config_, shard_);
    layers_ = weights.layers;
    output_ = weights.output;
    if (options.repack_weights) Repack();
  }

  const model::ModelConfig& config() const override { return config_; }
  int num_threads() const override { return pool_.num_threads(); }
  CollectiveStats collective_stats() const override { return collectives_; }
  int64_t repacked_weight_bytes() const override { return repacked_bytes_; }

  using ModelRunner::Forward;
  absl::Status Forward(std::span<const StepSequence> batch, std::vector<float>& logits,
                       const LayerDoneHook& on_layer_done) override;

 private:
  cpu::CpuContext& ctx() { return backend_.context(); }
  // Replaces the views of layers_ and output_ that the kernels prefer repacked by repacked copies.
  void Repack();
  void Resize(int64_t n_tokens);
  // Tensor parallelism: x = the sum of x over the group.
  absl::Status AllReduce(float* x, int64_t count);
  // The embedding rows of the step's tokens into x_ (this rank's vocabulary slice; summed over the
  // group).
  absl::Status Embed(int64_t n);
  // The logits of `rows` rows of out_rows_ into `logits` (gathered over the group).
  absl::Status Logits(int64_t rows, std::vector<float>& logits);

  model::ModelConfig config_;  // the whole model
  model::ShardPlan shard_;     // this rank's part (size 1: all)
  model::ModelConfig local_;   // its dimensions (ShardConfig)
  const LlamaWeights& weights_;
  // The matrices the forward multiplies by: weights_'s views, or their copies in the kernels'
  // decode layout (Repack), held in repacked_.
  std::vector<LayerWeights> layers_;
  kernels::WeightView output_;
  std::vector<std::unique_ptr<uint8_t[]>> repacked_;
  int64_t repacked_bytes_ = 0;
  kvcache::KvCache& cache_;
  ThreadPool pool_;
  // The KV policies run on backend_; the rest of the pass calls the CPU kernels with its context
  // (ctx()). scratch_ is the policies' backend memory, freed before backend_.
  cpu::CpuBackend backend_;
  kvcache::BackendScratch scratch_;
  transport::collectives::Communicator* comm_ = nullptr;
  CollectiveStats collectives_;
  std::vector<float> gather_in_, gather_out_, embed_rows_;
  std::vector<int32_t> embed_ids_, embed_at_;

  // The step's rows (tokens, positions, spans) and its buffers, [n_tokens, width].
  StepPlan plan_;
  std::vector<float> x_, xn_, q_, k_, v_, attn_, ffn_a_, ffn_b_;
  std::vector<float> out_rows_;
};

void CpuModelRunner::Repack() {
  std::vector<kernels::WeightView*> todo;
  for (LayerWeights& w : layers_) {
    for (kernels::WeightView* m : {&w.wq, &w.wk, &w.wv, &w.wo, &w.gate, &w.up, &w.down}) {
      if (cpu::PrefersRows8(*m)) todo.push_back(m);
    }
  }
  if (cpu::PrefersRows8(output_)) todo.push_back(&output_);
  for (kernels::WeightView* m : todo) {
    repacked_.emplace_back(new uint8_t[static_cast<size_t>(m->rows * m->row_bytes)]);
    repacked_bytes_ += m->rows * m->row_bytes;
  }
  pool_.ParallelFor(static_cast<int64_t>(todo.size()), [&](int64_t i, int) {
    kernels::WeightView& m = *todo[i];
    const kernels::WeightView packed = cpu::RepackRows8(m, repacked_[i].get());
    // A matrix is a view of the mapped file unless the weights own it (a tensor-parallel rank's
    // column slices, an adapter's merged projections): only the mapping's pages are given back.
    const auto* data = static_cast<const uint8_t*>(m.data);
    bool owned = false;
    for (const std::vector<uint8_t>& slice : weights_.owned_slices) {
      owned |= data >= slice.data() && data < slice.data() + slice.size();
    }
    if (!owned) GiveBackMappedPages(m.row(0), m.row(m.rows));
    m = packed;
  });
}

absl::Status CpuModelRunner::AllReduce(float* x, int64_t count) {
  if (!shard_.sharded()) return absl::OkStatus();
  const absl::Time start = absl::Now();
  absl::Status s = comm_->AllReduceSum(
      std::as_writable_bytes(std::span<float>(x, static_cast<size_t>(count))), DType::kF32);
  ++collectives_.calls;
  collectives_.seconds += absl::ToDoubleSeconds(absl::Now() - start);
  return s;
}

absl::Status CpuModelRunner::Embed(int64_t n) {
  const int64_t d = config_.n_embd;
  if (!shard_.sharded() || shard_.vocab_replicated) {
    cpu::GetRows(weights_.tok_embd, plan_.tokens.data(), n, x_.data());
    return absl::OkStatus();
  }
  // The rows of this rank's vocabulary slice; zero for the others, which the sum fills in.
  std::fill(x_.begin(), x_.begin() + n * d, 0.0f);
  embed_ids_.clear();
  embed_at_.clear();
  for (int64_t i = 0; i < n; ++i) {
    if (plan_.tokens[i] >= shard_.vocab_begin && plan_.tokens[i] < shard_.vocab_end) {
      embed_ids_.push_back(plan_.tokens[i] - shard_.vocab_begin);
      embed_at_.push_back(static_cast<int32_t>(i));
    }
  }
  const int64_t found = static_cast<int64_t>(embed_ids_.size());
  if (static_cast<int64_t>(embed_rows_.size()) < found * d) embed_rows_.resize(found * d);
  cpu::GetRows(weights_.tok_embd, embed_ids_.data(), found, embed_rows_.data());
  for (int64_t i = 0; i < found; ++i) {
    std::memcpy(x_.data() + embed_at_[i] * d, embed_rows_.data() + i * d, sizeof(float) * d);
  }
  return AllReduce(x_.data(), n * d);
}

absl::Status CpuModelRunner::Logits(int64_t rows, std::vector<float>& logits) {
  const int64_t d = config_.n_embd;
  const int64_t vocab = config_.n_vocab;
  logits.resize(rows * vocab);
  if (!shard_.sharded() || shard_.vocab_replicated) {
    cpu::MatMul(ctx(), output_, out_rows_.data(), rows, d, logits.data(), vocab);
    return absl::OkStatus();
  }
  // Each rank's slice [rows, vocab_shard] (the last one's padded), gathered rank after rank.
  const int64_t vs = shard_.vocab_shard;
  gather_in_.assign(rows * vs, 0.0f);
  gather_out_.resize(rows * vs * shard_.size);
  if (output_.rows > 0) {
    cpu::MatMul(ctx(), output_, out_rows_.data(), rows, d, gather_in_.data(), vs);
  }
  const absl::Time start = absl::Now();
  KVASIR_RETURN_IF_ERROR(comm_->AllGather(std::as_bytes(std::span<const float>(gather_in_)),
                                          std::as_writable_bytes(std::span<float>(gather_out_))));
  ++collectives_.calls;
  collectives_.seconds += absl::ToDoubleSeconds(absl::Now() - start);
  for (int64_t r = 0; r < rows; ++r) {
    for (int32_t k = 0; k < shard_.size; ++k) {
      const int64_t begin = k * vs;
      const int64_t count = std::min(vs, vocab - begin);
      if (count <= 0) break;
      std::memcpy(logits.data() + r * vocab + begin, gather_out_.data() + (k * rows + r) * vs,
                  sizeof(float) * count);
    }
  }
  return absl::OkStatus();
}

void CpuModelRunner::Resize(int64_t n) {
  const int64_t d = local_.n_embd;
  const int64_t qd = static_cast<int64_t>(local_.n_head) * local_.head_dim;
  const int64_t kvd = static_cast<int64_t>(local_.n_head_kv) * local_.head_dim;
  const int64_t ff = local_.n_ff;
  auto grow = [](std::vector<float>& b, int64_t size) {
    if (static_cast<int64_t>(b.size()) < size) b.resize(size);
  };
  grow(x_, n * d);
  grow(xn_, n * d);
  grow(q_, n * qd);
  grow(k_, n * kvd);
  grow(v_, n * kvd);
  grow(attn_, n * qd);
  grow(ffn_a_, n * ff);
  grow(ffn_b_, n * ff);
}

absl::Status CpuModelRunner::Forward(std::span<const StepSequence> batch,
                                     std::vector<float>& logits,
                                     const LayerDoneHook& on_layer_done) {
  const model::ModelConfig& c = config_;
  KVASIR_RETURN_IF_ERROR(CheckStep(c, batch));
  for (const StepSequence& s : batch) {
    // Every rank checks the same, so all refuse together.
    if (shard_.kv_replicas > 1 && s.seq->policy().reads_whole_query_group()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KV policy '", s.seq->policy().spec(),
          "' chooses by all the query heads of a KV head, which a tensor-parallel group larger "
          "than the model's KV heads splits among replicas: not supported at this size"));
    }
  }
  // Reserve KV room for every sequence first.
  absl::Status reserved = ReserveStep(cache_, batch);
  if (shard_.sharded()) {
    // The ranks' caches hold different heads, which a compressing policy may keep in different
    // numbers of pages: the step runs only if every rank has room.
    float failed = reserved.ok() ? 0.0f : 1.0f;
    KVASIR_RETURN_IF_ERROR(AllReduce(&failed, 1));
    if (failed > 0 && reserved.ok()) {
      reserved = absl::ResourceExhaustedError("another tensor-parallel rank has no KV room");
    }
  }
  KVASIR_RETURN_IF_ERROR(reserved);
  PlanStep(batch, plan_);
  const int64_t n = plan_.n();
  Resize(n);
  const int64_t d = local_.n_embd;
  const int64_t qd = static_cast<int64_t>(local_.n_head) * local_.head_dim;
  const int64_t kvd = static_cast<int64_t>(local_.n_head_kv) * local_.head_dim;
  const int64_t ff = local_.n_ff;

  KVASIR_RETURN_IF_ERROR(Embed(n));

  for (int32_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = layers_[l];
    cpu::RmsNorm(x_.data(), w.attn_norm, n, d, c.rms_eps, xn_.data());
    const cpu::MatMulTarget qkv[3] = {
        {w.wq, q_.data(), qd}, {w.wk, k_.data(), kvd}, {w.wv, v_.data(), kvd}};
    cpu::MatMulShared(ctx(), qkv, 3, xn_.data(), n, d);
    for (auto& [policy, spans] : plan_.groups) {
      const kvcache::LayerInputs in = LayerInputsOf(plan_, spans, l, q_.data(), k_.data(),
                                                    v_.data(), attn_.data(), qd, kvd, &scratch_);
      KVASIR_RETURN_IF_ERROR(policy->Attend(cache_, in, backend_));
    }
    if (on_layer_done) on_layer_done(l);
    cpu::MatMul(ctx(), w.wo, attn_.data(), n, qd, xn_.data(), d);
    KVASIR_RETURN_IF_ERROR(AllReduce(xn_.data(), n * d));
    cpu::Add(x_.data(), xn_.data(), n * d);
    cpu::RmsNorm(x_.data(), w.ffn_norm, n, d, c.rms_eps, xn_.data());
    const cpu::MatMulTarget gate_up[2] = {{w.gate, ffn_a_.data(), ff}, {w.up, ffn_b_.data(), ff}};
    cpu::MatMulShared(ctx(), gate_up, 2, xn_.data(), n, d);
    cpu::SiluMul(ffn_a_.data(), ffn_b_.data(), n * ff, ffn_a_.data());
    cpu::MatMul(ctx(), w.down, ffn_a_.data(), n, ff, xn_.data(), d);
    KVASIR_RETURN_IF_ERROR(AllReduce(xn_.data(), n * d));
    cpu::Add(x_.data(), xn_.data(), n * d);
  }

  // Logits of the rows asked for.
  const int64_t rows = plan_.rows();
  if (static_cast<int64_t>(out_rows_.size()) < rows * d) out_rows_.resize(rows * d);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(out_rows_.data() + r * d, x_.data() + plan_.logit_rows[r] * d, sizeof(float) * d);
  }
  cpu::RmsNorm(out_rows_.data(), weights_.output_norm, rows, d, c.rms_eps, out_rows_.data());
  KVASIR_RETURN_IF_ERROR(Logits(rows, logits));
  return FinishStep(cache_, plan_);
}

}  // namespace

kvcache::KvGeometry GeometryOf(const model::ModelConfig& c) {
  kvcache::KvGeometry g;
  g.n_layer = c.n_layer;
  g.n_head = c.n_head;
  g.n_head_kv = c.n_head_kv;
  g.head_dim = c.head_dim;
  g.n_rot = c.n_rot;
  g.rope_base = c.rope_freq_base;
  g.rope_scale = c.rope_scale;
  g.rope_layout = c.rope_style == model::RopeStyle::kAdjacentPairs
                      ? kernels::RopeLayout::kAdjacentPairs
                      : kernels::RopeLayout::kHalfSplit;
  return g;
}

absl::StatusOr<std::unique_ptr<ModelRunner>> CreateCpuRunner(const model::ModelConfig& config,
                                                             const LlamaWeights& weights,
                                                             kvcache::KvCache& cache,
                                                             const CpuRunnerOptions& options) {
  KVASIR_RETURN_IF_ERROR(CheckRunnerModel(config, weights));
  if (options.shard != nullptr && options.shard->sharded()) {
    if (options.comm == nullptr || options.comm->size() != options.shard->size ||
        options.comm->rank() != options.shard->rank) {
      return absl::InvalidArgumentError(
          "a tensor-parallel runner needs the communicator of its group, at its rank");
    }
    const kvcache::KvGeometry& g = cache.geometry();
    if (g.n_head != options.shard->n_head() || g.n_head_kv != options.shard->n_head_kv()) {
      return absl::InvalidArgumentError("the KV cache does not have the rank's heads");
    }
  }
  return std::unique_ptr<ModelRunner>(new CpuModelRunner(config, weights, cache, options));
}

}  // namespace kvasir::worker
