#include "worker/engine_bench.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/membw.h"
#include "kernels/cpu/ops.h"
#include "worker/bench_util.h"

namespace kvasir::worker {
namespace {

using bench::Median;
using bench::Now;
using bench::Prefill;
using bench::Prompt;
using bench::Sequences;

// Decodes `steps` tokens for every sequence at once (greedy); returns aggregate tokens/s.
absl::StatusOr<double> DecodeBatch(Engine& e, const std::vector<kvcache::SequenceKv*>& seqs,
                                   int32_t steps, std::vector<float>& logits) {
  const int32_t vocab = e.config().n_vocab;
  std::vector<int32_t> next(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) next[i] = 300 + static_cast<int32_t>(i);
  std::vector<StepSequence> batch(seqs.size());
  const double t0 = Now();
  for (int32_t step = 0; step < steps; ++step) {
    for (size_t i = 0; i < seqs.size(); ++i) {
      batch[i] = {seqs[i], std::span<const int32_t>(&next[i], 1), false};
    }
    KVASIR_RETURN_IF_ERROR(e.runner().Forward(batch, logits));
    for (size_t i = 0; i < seqs.size(); ++i) {
      next[i] = ArgMax(std::span<const float>(logits.data() + i * vocab, vocab));
    }
  }
  return static_cast<double>(steps) * seqs.size() / (Now() - t0);
}

}  // namespace

absl::StatusOr<EngineBenchResult> RunEngineBench(Engine& e, const EngineBenchOptions& o) {
  const model::ModelConfig& c = e.config();
  EngineBenchResult r;
  r.model = e.files().path();
  r.isa = kernels::cpu::ActiveIsa();
  r.repacked_weight_bytes = e.runner().repacked_weight_bytes();
  r.device = e.backend() != nullptr ? e.backend()->Describe() : "cpu";
  r.threads = e.runner().num_threads();
  KVASIR_ASSIGN_OR_RETURN(auto policy, e.Policy(o.kv_policy));
  r.kv_policy = policy->spec();
  std::vector<float> logits;
  const int runs = std::max(1, o.repeats) + 1;  // the first run warms up and is not counted

  // Prefill.
  if (o.prefill_tokens + 1 > c.context_length) {
    return absl::InvalidArgumentError("the prefill prompt is longer than the model's context");
  }
  std::vector<double> samples;
  for (int run = 0; run < runs; ++run) {
    Sequences seqs(e);
    kvcache::SequenceKv* s = seqs.Add(policy);
    const std::vector<int32_t> prompt = Prompt(o.prefill_tokens, c.n_vocab, run);
    const double t0 = Now();
    KVASIR_RETURN_IF_ERROR(Prefill(e, s, prompt, logits));
    if (run > 0) samples.push_back(o.prefill_tokens / (Now() - t0));
  }
  r.prefill_tps = Median(samples);

  // Decode at batch 1, 4, 16 after prompts of batch_prompt tokens.
  for (int32_t streams : o.batches) {
    samples.clear();
    for (int run = 0; run < runs; ++run) {
      Sequences seqs(e);
      for (int32_t i = 0; i < streams; ++i) {
        KVASIR_RETURN_IF_ERROR(
            Prefill(e, seqs.Add(policy), Prompt(o.batch_prompt, c.n_vocab, 100 + i), logits));
      }
      KVASIR_ASSIGN_OR_RETURN(double tps, DecodeBatch(e, seqs.all(), o.decode_tokens, logits));
      if (run > 0) samples.push_back(tps);
    }
    if (streams == 1) {
      r.decode_tps_b1 = Median(samples);
    } else {
      r.decode_tps_batched.push_back({streams, Median(samples)});
    }
  }

  // Long contexts: decode speed and KV held.
  for (int32_t context : o.long_contexts) {
    if (context + o.decode_tokens > c.context_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("a context of ", context, " plus ", o.decode_tokens,
                       " tokens exceeds the model's ", c.context_length));
    }
    samples.clear();
    double ratio = 1;
    for (int run = 0; run < std::max(2, runs - 1); ++run) {
      Sequences seqs(e);
      kvcache::SequenceKv* s = seqs.Add(policy);
      KVASIR_RETURN_IF_ERROR(Prefill(e, s, Prompt(context, c.n_vocab, 7), logits));
      KVASIR_ASSIGN_OR_RETURN(double tps, DecodeBatch(e, seqs.all(), o.decode_tokens, logits));
      ratio = e.cache().Usage(*s).ratio();
      if (run > 0) samples.push_back(tps);
    }
    r.decode_tps_at_context.push_back({context, Median(samples)});
    r.kv_ratio_at_context.push_back({context, ratio});
  }
  if (o.capacity_budget_bytes > 0 && !o.long_contexts.empty()) {
    // Sequences that fit: the budget over the pages one sequence of that context holds.
    Sequences seqs(e);
    kvcache::SequenceKv* s = seqs.Add(policy);
    KVASIR_RETURN_IF_ERROR(Prefill(e, s, Prompt(o.long_contexts[0], c.n_vocab, 9), logits));
    const kvcache::KvUsage u = e.cache().Usage(*s);
    const int64_t page_size = e.cache().pool().page_size();
    const int64_t full_tables = 2LL * c.n_layer * c.n_head_kv;
    const int64_t full_page_bytes = full_tables * ((u.tokens + page_size - 1) / page_size) *
                                    static_cast<int64_t>(e.cache().pool().page_bytes());
    r.sequences_in_budget = u.page_bytes > 0 ? o.capacity_budget_bytes / u.page_bytes : 0;
    r.full_sequences_in_budget =
        full_page_bytes > 0 ? o.capacity_budget_bytes / full_page_bytes : 0;
  }

  // Bytes read by one batch-1 decode step: every weight matrix once (the tied LM head is read
  // once as the output projection; the embedding lookup reads one row).
  const LlamaWeights& w = e.weights();
  int64_t bytes = w.output.rows * w.output.row_bytes;
  for (const LayerWeights& l : w.layers) {
    for (const auto* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) {
      bytes += m->rows * m->row_bytes;
    }
  }
  r.decode_bytes_per_token = bytes;
  if (o.measure_bandwidth && e.backend() == nullptr) {  // the host's bandwidth bounds the CPU only
    ThreadPool pool(r.threads);
    r.llc_bytes = kernels::cpu::LastLevelCacheBytes();
    // DRAM: a buffer no cache holds (a 480 MiB L3 would hold the usual 256 MiB).
    r.mem_read_gbps = kernels::cpu::MeasureMemoryReadGBps(
        pool, std::max<size_t>(size_t{256} << 20, 2 * static_cast<size_t>(r.llc_bytes)));
    double bound = r.mem_read_gbps;
    if (r.llc_bytes > 0 && bytes <= r.llc_bytes / 4 * 3) {
      r.cache_read_gbps = kernels::cpu::MeasureMemoryReadGBps(pool, static_cast<size_t>(bytes));
      if (r.cache_read_gbps > bound) {
        bound = r.cache_read_gbps;
        r.bound = "cache";
      }
    }
    if (bound > 0) r.decode_bw_fraction = r.decode_tps_b1 * bytes / (bound * 1e9);
  }
  return r;
}

}  // namespace kvasir::worker
