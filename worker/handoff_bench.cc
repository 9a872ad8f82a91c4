// The hand-off benchmark (see handoff_bench.h).
#include "worker/handoff_bench.h"

#include <cstring>

#include "common/status_macros.h"
#include "worker/bench_util.h"
#include "worker/kv_transfer.h"

namespace kvasir::worker {

absl::StatusOr<HandoffBenchResult> RunHandoffBench(Engine& e, cachestore::StoreClient& store,
                                                   const HandoffBenchOptions& o) {
  if (o.prompt_tokens < 2 || o.prompt_tokens + 1 > e.config().context_length) {
    return absl::InvalidArgumentError("the prompt must have 2 tokens and fit the model's context");
  }
  HandoffBenchResult r;
  r.model = e.files().path();
  r.data_path = store.data_path();
  const int32_t vocab = e.config().n_vocab;
  const uint64_t fingerprint = e.files().fingerprint();
  std::vector<float> logits, original, pulled;
  uint64_t seed = 1000;
  for (const std::string& spec : o.policies) {
    KVASIR_ASSIGN_OR_RETURN(auto policy, e.Policy(spec));
    HandoffBenchRow row;
    row.policy = policy->spec();
    std::vector<double> push, pull;
    for (int run = 0; run < std::max(1, o.repeats); ++run) {
      bench::Sequences seqs(e);
      kvcache::SequenceKv* s = seqs.Add(policy);
      const std::vector<int32_t> prompt = bench::Prompt(o.prompt_tokens, vocab, ++seed);
      KVASIR_RETURN_IF_ERROR(bench::Prefill(e, s, prompt, logits));
      const kvcache::KvUsage usage = e.cache().Usage(*s);
      KVASIR_ASSIGN_OR_RETURN(KvTransferStats sent,
                              PushSequence(store, e.cache(), *s, prompt, fingerprint));
      KvTransferStats got;
      KVASIR_ASSIGN_OR_RETURN(
          kvcache::SequenceKv * copy,
          PullSequence(store, e.cache(), policy, prompt, fingerprint, absl::Seconds(10), &got));
      seqs.Adopt(copy);
      if (got.bytes != sent.bytes) {
        return absl::InternalError("the pulled snapshot differs in size from the pushed one");
      }
      push.push_back(sent.seconds);
      pull.push_back(got.seconds);
      // One decode step on each: the same token after the same KV must give the same logits.
      const int32_t next = prompt.back();
      StepSequence a{s, std::span<const int32_t>(&next, 1), false};
      KVASIR_RETURN_IF_ERROR(e.runner().Forward({&a, 1}, original));
      StepSequence b{copy, std::span<const int32_t>(&next, 1), false};
      KVASIR_RETURN_IF_ERROR(e.runner().Forward({&b, 1}, pulled));
      const bool same =
          original.size() == pulled.size() &&
          std::memcmp(original.data(), pulled.data(), original.size() * sizeof(float)) == 0;
      row.exact = run == 0 ? same : row.exact && same;
      row.tokens = o.prompt_tokens;
      row.kv_bytes = usage.bytes;
      row.full_bytes = usage.full_bytes;
      row.wire_bytes = sent.bytes;
      row.blocks = sent.blocks;
    }
    row.push_s = bench::Median(push);
    row.pull_s = bench::Median(pull);
    r.rows.push_back(row);
  }
  return r;
}

}  // namespace kvasir::worker
