// The CPU ModelRunner: the Llama forward pass of docs/architecture.md with the kernels of
// kernels/cpu. Activations of a step live in buffers that grow to the largest step and are then
// reused, so steady-state decoding does not allocate.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model_runner.h"

namespace kvasir::worker {
namespace {

namespace cpu = kernels::cpu;

class CpuModelRunner : public ModelRunner {
 public:
  CpuModelRunner(const model::ModelConfig& config, const LlamaWeights& weights,
                 kvcache::KvCache& cache, int num_threads)
      : config_(config), weights_(weights), cache_(cache), pool_(num_threads) {
    ctx_.pool = &pool_;
  }

  const model::ModelConfig& config() const override { return config_; }
  int num_threads() const override { return pool_.num_threads(); }

  using ModelRunner::Forward;
  absl::Status Forward(std::span<const StepSequence> batch, std::vector<float>& logits,
                       const LayerDoneHook& on_layer_done) override;

 private:
  void Resize(int64_t n_tokens);

  model::ModelConfig config_;
  const LlamaWeights& weights_;
  kvcache::KvCache& cache_;
  ThreadPool pool_;
  cpu::CpuContext ctx_;

  // Step buffers, [n_tokens, width].
  std::vector<int32_t> tokens_, pos_;
  std::vector<float> x_, xn_, q_, k_, v_, attn_, ffn_a_, ffn_b_;
  std::vector<float> out_rows_;
  std::vector<int32_t> logit_rows_;
  std::vector<kvcache::SeqSpan> spans_;
};

void CpuModelRunner::Resize(int64_t n) {
  const int64_t d = config_.n_embd;
  const int64_t qd = static_cast<int64_t>(config_.n_head) * config_.head_dim;
  const int64_t kvd = static_cast<int64_t>(config_.n_head_kv) * config_.head_dim;
  const int64_t ff = config_.n_ff;
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
  // Gather tokens and positions, and reserve KV room for every sequence first.
  tokens_.clear();
  pos_.clear();
  spans_.clear();
  logit_rows_.clear();
  for (const StepSequence& s : batch) {
    if (s.seq == nullptr || s.tokens.empty()) {
      return absl::InvalidArgumentError("a step sequence has no tokens");
    }
    if (s.seq->n_tokens() + static_cast<int64_t>(s.tokens.size()) > c.context_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence would reach ", s.seq->n_tokens() + s.tokens.size(),
                       " tokens, over the model's context length of ", c.context_length));
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= c.n_vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", t, " out of range [0, ", c.n_vocab, ")"));
      }
    }
  }
  for (const StepSequence& s : batch) {
    KVASIR_RETURN_IF_ERROR(
        s.seq->policy().Reserve(cache_, *s.seq, static_cast<int32_t>(s.tokens.size())));
  }
  for (const StepSequence& s : batch) {
    const int32_t begin = static_cast<int32_t>(tokens_.size());
    const int32_t count = static_cast<int32_t>(s.tokens.size());
    spans_.push_back({s.seq, begin, count});
    for (int32_t i = 0; i < count; ++i) {
      tokens_.push_back(s.tokens[i]);
      pos_.push_back(static_cast<int32_t>(s.seq->n_tokens()) + i);
      if (s.all_logits || i == count - 1) logit_rows_.push_back(begin + i);
    }
  }
  const int64_t n = static_cast<int64_t>(tokens_.size());
  Resize(n);
  const int64_t d = c.n_embd;
  const int64_t qd = static_cast<int64_t>(c.n_head) * c.head_dim;
  const int64_t kvd = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  const int64_t ff = c.n_ff;

  cpu::GetRows(weights_.tok_embd, tokens_.data(), n, x_.data());

  // Group the spans by policy: each policy attends over its own sequences.
  std::vector<std::pair<const kvcache::KvPolicy*, std::vector<kvcache::SeqSpan>>> groups;
  for (const kvcache::SeqSpan& span : spans_) {
    const kvcache::KvPolicy* p = &span.seq->policy();
    auto it = std::find_if(groups.begin(), groups.end(), [&](auto& g) { return g.first == p; });
    if (it == groups.end()) {
      groups.push_back({p, {span}});
    } else {
      it->second.push_back(span);
    }
  }

  for (int32_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = weights_.layers[l];
    cpu::RmsNorm(x_.data(), w.attn_norm, n, d, c.rms_eps, xn_.data());
    const cpu::MatMulTarget qkv[3] = {
        {w.wq, q_.data(), qd}, {w.wk, k_.data(), kvd}, {w.wv, v_.data(), kvd}};
    cpu::MatMulShared(ctx_, qkv, 3, xn_.data(), n, d);
    for (auto& [policy, spans] : groups) {
      kvcache::LayerInputs in;
      in.layer = l;
      in.seqs = spans;
      in.q = q_.data();
      in.q_stride = qd;
      in.k = k_.data();
      in.k_stride = kvd;
      in.v = v_.data();
      in.v_stride = kvd;
      in.pos = pos_.data();
      in.out = attn_.data();
      in.out_stride = qd;
      KVASIR_RETURN_IF_ERROR(policy->Attend(cache_, in, ctx_));
    }
    if (on_layer_done) on_layer_done(l);
    cpu::MatMul(ctx_, w.wo, attn_.data(), n, qd, xn_.data(), d);
    cpu::Add(x_.data(), xn_.data(), n * d);
    cpu::RmsNorm(x_.data(), w.ffn_norm, n, d, c.rms_eps, xn_.data());
    const cpu::MatMulTarget gate_up[2] = {{w.gate, ffn_a_.data(), ff}, {w.up, ffn_b_.data(), ff}};
    cpu::MatMulShared(ctx_, gate_up, 2, xn_.data(), n, d);
    cpu::SiluMul(ffn_a_.data(), ffn_b_.data(), n * ff, ffn_a_.data());
    cpu::MatMul(ctx_, w.down, ffn_a_.data(), n, ff, xn_.data(), d);
    cpu::Add(x_.data(), xn_.data(), n * d);
  }

  // Logits of the rows asked for.
  const int64_t rows = static_cast<int64_t>(logit_rows_.size());
  if (static_cast<int64_t>(out_rows_.size()) < rows * d) out_rows_.resize(rows * d);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(out_rows_.data() + r * d, x_.data() + logit_rows_[r] * d, sizeof(float) * d);
  }
  cpu::RmsNorm(out_rows_.data(), weights_.output_norm, rows, d, c.rms_eps, out_rows_.data());
  logits.resize(rows * c.n_vocab);
  cpu::MatMul(ctx_, weights_.output, out_rows_.data(), rows, d, logits.data(), c.n_vocab);

  for (const kvcache::SeqSpan& span : spans_) {
    KVASIR_RETURN_IF_ERROR(span.seq->policy().EndStep(cache_, *span.seq, span.count));
    span.seq->set_n_tokens(span.seq->n_tokens() + span.count);
  }
  return absl::OkStatus();
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
  KVASIR_RETURN_IF_ERROR(config.Validate());
  if (config.rope_scale != 1.0f) {
    return absl::UnimplementedError(
        absl::StrCat("linear RoPE scaling (factor ", config.rope_scale, ") is not supported yet"));
  }
  if (static_cast<int32_t>(weights.layers.size()) != config.n_layer) {
    return absl::InvalidArgumentError("weights and config disagree on the number of layers");
  }
  return std::unique_ptr<ModelRunner>(
      new CpuModelRunner(config, weights, cache, options.num_threads));
}

}  // namespace kvasir::worker
