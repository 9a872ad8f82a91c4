#include "worker/step_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvasir::worker {

absl::Status CheckRunnerModel(const model::ModelConfig& config, const LlamaWeights& weights) {
  KVASIR_RETURN_IF_ERROR(config.Validate());
  if (config.rope_scale != 1.0f) {
    return absl::UnimplementedError(
        absl::StrCat("linear RoPE scaling (factor ", config.rope_scale, ") is not supported yet"));
  }
  if (static_cast<int32_t>(weights.layers.size()) != config.n_layer) {
    return absl::InvalidArgumentError("weights and config disagree on the number of layers");
  }
  return absl::OkStatus();
}

absl::Status CheckStep(const model::ModelConfig& c, std::span<const StepSequence> batch) {
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
  return absl::OkStatus();
}

absl::Status ReserveStep(kvcache::KvCache& cache, std::span<const StepSequence> batch) {
  for (const StepSequence& s : batch) {
    KVASIR_RETURN_IF_ERROR(
        s.seq->policy().Reserve(cache, *s.seq, static_cast<int32_t>(s.tokens.size())));
  }
  return absl::OkStatus();
}

void PlanStep(std::span<const StepSequence> batch, StepPlan& plan) {
  plan.tokens.clear();
  plan.pos.clear();
  plan.logit_rows.clear();
  plan.spans.clear();
  plan.groups.clear();
  for (const StepSequence& s : batch) {
    const int32_t begin = static_cast<int32_t>(plan.tokens.size());
    const int32_t count = static_cast<int32_t>(s.tokens.size());
    plan.spans.push_back({s.seq, begin, count});
    for (int32_t i = 0; i < count; ++i) {
      plan.tokens.push_back(s.tokens[i]);
      plan.pos.push_back(static_cast<int32_t>(s.seq->n_tokens()) + i);
      if (s.all_logits || i == count - 1) plan.logit_rows.push_back(begin + i);
    }
  }
  for (const kvcache::SeqSpan& span : plan.spans) {
    const kvcache::KvPolicy* p = &span.seq->policy();
    auto it = std::find_if(plan.groups.begin(), plan.groups.end(),
                           [&](const auto& g) { return g.first == p; });
    if (it == plan.groups.end()) {
      plan.groups.push_back({p, {span}});
    } else {
      it->second.push_back(span);
    }
  }
}

kvcache::LayerInputs LayerInputsOf(const StepPlan& plan, std::span<const kvcache::SeqSpan> spans,
                                   int32_t layer, float* q, float* k, float* v, float* out,
                                   int64_t q_stride, int64_t kv_stride,
                                   kvcache::BackendScratch* scratch) {
  kvcache::LayerInputs in;
  in.layer = layer;
  in.seqs = spans;
  in.q = q;
  in.q_stride = q_stride;
  in.k = k;
  in.k_stride = kv_stride;
  in.v = v;
  in.v_stride = kv_stride;
  in.pos = plan.pos.data();
  in.out = out;
  in.out_stride = q_stride;
  in.scratch = scratch;
  return in;
}

absl::Status FinishStep(kvcache::KvCache& cache, const StepPlan& plan) {
  for (const kvcache::SeqSpan& span : plan.spans) {
    KVASIR_RETURN_IF_ERROR(span.seq->policy().EndStep(cache, *span.seq, span.count));
    span.seq->set_n_tokens(span.seq->n_tokens() + span.count);
  }
  return absl::OkStatus();
}

}  // namespace kvasir::worker
