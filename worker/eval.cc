#include "worker/eval.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvasir::worker {
namespace {

// One sequence that frees itself.
class ScopedSequence {
 public:
  ScopedSequence(Engine& e, std::shared_ptr<const kvcache::KvPolicy> p)
      : e_(e), seq_(&e.cache().CreateSequence(std::move(p))) {}
  ~ScopedSequence() { e_.cache().FreeSequence(seq_->id()); }
  kvcache::SequenceKv* get() { return seq_; }

 private:
  Engine& e_;
  kvcache::SequenceKv* seq_;
};

double LogSoftmaxAt(std::span<const float> logits, int32_t id) {
  float max = logits[0];
  for (float x : logits) max = std::max(max, x);
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  return static_cast<double>(logits[id]) - max - std::log(sum);
}

// Feeds `tokens` in chunks with logits for every row; calls fn(i, logits row) for each token i.
template <typename Fn>
absl::Status FeedAll(Engine& e, kvcache::SequenceKv* s, std::span<const int32_t> tokens,
                     int32_t chunk, Fn fn) {
  std::vector<float> logits;
  const int32_t vocab = e.config().n_vocab;
  for (size_t b = 0; b < tokens.size(); b += chunk) {
    const size_t n = std::min<size_t>(chunk, tokens.size() - b);
    StepSequence step{s, tokens.subspan(b, n), true};
    KVASIR_RETURN_IF_ERROR(e.runner().Forward({&step, 1}, logits));
    for (size_t i = 0; i < n; ++i) {
      fn(b + i, std::span<const float>(logits.data() + i * vocab, vocab));
    }
  }
  return absl::OkStatus();
}

struct WindowScore {
  double nll = 0;
  int64_t scored = 0;
  int64_t kv_bytes = 0;
};

// Perplexity terms of one window: tokens at positions >= first_scored are scored.
absl::StatusOr<WindowScore> ScoreWindow(Engine& e, std::shared_ptr<const kvcache::KvPolicy> p,
                                        std::span<const int32_t> w, int32_t first_scored,
                                        int32_t chunk) {
  WindowScore r;
  ScopedSequence seq(e, p);
  KVASIR_RETURN_IF_ERROR(FeedAll(e, seq.get(), w, chunk, [&](size_t i, std::span<const float> l) {
    if (i + 1 < w.size() && static_cast<int32_t>(i + 1) >= std::max(1, first_scored)) {
      r.nll -= LogSoftmaxAt(l, w[i + 1]);
      ++r.scored;
    }
  }));
  r.kv_bytes = e.cache().Usage(*seq.get()).bytes;
  return r;
}

// Greedy agreement of the policy with full after the window's tokens.
// `e` runs the full cache, `pe` the policy.
absl::StatusOr<std::pair<int64_t, int64_t>> Agreement(Engine& e, Engine& pe,
                                                      std::shared_ptr<const kvcache::KvPolicy> full,
                                                      std::shared_ptr<const kvcache::KvPolicy> p,
                                                      std::span<const int32_t> w, int32_t chunk,
                                                      int32_t n) {
  const int32_t vocab = e.config().n_vocab;
  // Full cache: greedy continuation.
  std::vector<int32_t> cont;
  {
    ScopedSequence seq(e, full);
    std::vector<float> logits;
    for (size_t b = 0; b < w.size(); b += chunk) {
      StepSequence step{seq.get(), w.subspan(b, std::min<size_t>(chunk, w.size() - b)), false};
      KVASIR_RETURN_IF_ERROR(e.runner().Forward({&step, 1}, logits));
    }
    for (int32_t i = 0; i < n; ++i) {
      cont.push_back(ArgMax(std::span<const float>(logits.data(), vocab)));
      StepSequence step{seq.get(), std::span<const int32_t>(&cont.back(), 1), false};
      if (i + 1 < n) KVASIR_RETURN_IF_ERROR(e.runner().Forward({&step, 1}, logits));
    }
  }
  // Policy, teacher-forced on the full cache's continuation.
  ScopedSequence seq(pe, p);
  std::vector<float> logits;
  for (size_t b = 0; b < w.size(); b += chunk) {
    StepSequence step{seq.get(), w.subspan(b, std::min<size_t>(chunk, w.size() - b)), false};
    KVASIR_RETURN_IF_ERROR(pe.runner().Forward({&step, 1}, logits));
  }
  int64_t agree = 0;
  for (int32_t i = 0; i < n; ++i) {
    agree += ArgMax(std::span<const float>(logits.data(), vocab)) == cont[i];
    StepSequence step{seq.get(), std::span<const int32_t>(&cont[i], 1), false};
    if (i + 1 < n) KVASIR_RETURN_IF_ERROR(pe.runner().Forward({&step, 1}, logits));
  }
  return std::make_pair(agree, static_cast<int64_t>(n));
}

}  // namespace

absl::StatusOr<EvalResult> RunEval(Engine& e, const std::string& text, const EvalOptions& o) {
  const int32_t stride = o.stride > 0 ? o.stride : o.window;
  if (o.window < 2) return absl::InvalidArgumentError("--window must be at least 2 tokens");
  if (stride > o.window) return absl::InvalidArgumentError("--stride must not exceed --window");
  if (o.chunk <= 0) return absl::InvalidArgumentError("the chunk must be positive");
  if (o.window + o.continuation > e.config().context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("window (", o.window, ") plus continuation (", o.continuation,
                     ") exceeds the model's context length of ", e.config().context_length));
  }
  std::vector<int32_t> tokens = e.tokenizer().Encode(text, /*add_special=*/true, false);
  if (o.max_tokens > 0 && static_cast<int32_t>(tokens.size()) > o.max_tokens) {
    tokens.resize(o.max_tokens);
  }
  if (static_cast<int32_t>(tokens.size()) < o.window) {
    return absl::InvalidArgumentError(absl::StrCat("the text has ", tokens.size(),
                                                   " tokens, fewer than one window of ", o.window));
  }
  Engine& pe = o.policy_engine != nullptr ? *o.policy_engine : e;
  KVASIR_ASSIGN_OR_RETURN(auto policy, pe.Policy(o.kv_policy));
  KVASIR_ASSIGN_OR_RETURN(auto full, e.Policy("full"));
  EvalResult r;
  r.policy = policy->spec();
  r.tokens = static_cast<int64_t>(tokens.size());
  std::vector<size_t> starts;
  for (size_t b = 0; b + o.window <= tokens.size(); b += stride) starts.push_back(b);
  double nll = 0, full_nll = 0;
  int64_t agree = 0;
  for (size_t wi = 0; wi < starts.size(); ++wi) {
    std::span<const int32_t> w(tokens.data() + starts[wi], o.window);
    const int32_t first_scored = wi == 0 ? 1 : o.window - stride;
    KVASIR_ASSIGN_OR_RETURN(WindowScore pol, ScoreWindow(pe, policy, w, first_scored, o.chunk));
    KVASIR_ASSIGN_OR_RETURN(WindowScore ful, ScoreWindow(e, full, w, first_scored, o.chunk));
    nll += pol.nll;
    full_nll += ful.nll;
    r.scored_tokens += pol.scored;
    r.kv_bytes += pol.kv_bytes;
    r.full_kv_bytes += ful.kv_bytes;
    if (o.continuation > 0) {
      KVASIR_ASSIGN_OR_RETURN(auto a, Agreement(e, pe, full, policy, w, o.chunk, o.continuation));
      agree += a.first;
      r.agreement_tokens += a.second;
    }
    ++r.windows;
    if (o.progress) o.progress(r.windows, static_cast<int>(starts.size()));
  }
  r.perplexity = std::exp(nll / std::max<int64_t>(1, r.scored_tokens));
  r.full_perplexity = std::exp(full_nll / std::max<int64_t>(1, r.scored_tokens));
  r.greedy_agreement = r.agreement_tokens > 0 ? double(agree) / r.agreement_tokens : 1.0;
  return r;
}

double NeedleResult::accuracy() const {
  int64_t found = 0, n = 0;
  for (const NeedleCell& c : cells) {
    found += c.found;
    n += c.trials;
  }
  return n > 0 ? double(found) / n : 0;
}

double NeedleResult::full_accuracy() const {
  int64_t found = 0, n = 0;
  for (const NeedleCell& c : cells) {
    found += c.full_found;
    n += c.trials;
  }
  return n > 0 ? double(found) / n : 0;
}

absl::StatusOr<NeedleResult> RunNeedle(Engine& e, const NeedleOptions& o) {
  Engine& pe = o.policy_engine != nullptr ? *o.policy_engine : e;
  KVASIR_ASSIGN_OR_RETURN(auto policy, pe.Policy(o.kv_policy));
  KVASIR_ASSIGN_OR_RETURN(auto full, e.Policy("full"));
  const model::Tokenizer& tok = e.tokenizer();
  // The classic passkey prompt (Mohtashami and Jaggi 2023): filler sentences around one line
  // that states the key; the question comes last.
  const std::string head =
      "There is an important piece of information hidden inside a lot of irrelevant text. "
      "Find it and memorize it. I will quiz you about it.\n";
  const std::string filler =
      "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
      "again. ";
  const int32_t filler_tokens = static_cast<int32_t>(tok.Encode(filler, false, false).size());
  std::mt19937_64 rng(o.seed);
  NeedleResult r;
  r.policy = policy->spec();
  const int total = static_cast<int>(o.lengths.size() * o.depths.size());
  int done = 0;
  for (int32_t length : o.lengths) {
    for (double depth : o.depths) {
      NeedleCell cell;
      cell.depth = depth;
      const int32_t n_fill = std::max(1, (length - 60) / std::max(1, filler_tokens));
      const int32_t before = static_cast<int32_t>(std::lround(depth * n_fill));
      for (int32_t t = 0; t < o.trials; ++t) {
        const std::string key = std::to_string(10000 + rng() % 90000);
        std::string prompt = head;
        for (int32_t i = 0; i < before; ++i) prompt += filler;
        prompt += "\nThe pass key is " + key + ". Remember it. " + key + " is the pass key.\n";
        for (int32_t i = before; i < n_fill; ++i) prompt += filler;
        prompt += "\nWhat is the pass key? The pass key is";
        GenerateRequest req;
        req.prompt = tok.Encode(prompt, true, false);
        cell.length = static_cast<int32_t>(req.prompt.size());
        req.sampling = SamplingParams::Greedy();
        req.max_tokens = 8;
        if (cell.length + req.max_tokens > e.config().context_length) {
          return absl::InvalidArgumentError(absl::StrCat("a needle prompt of ", cell.length,
                                                         " tokens exceeds the model's context"));
        }
        req.kv_policy = policy->spec();
        KVASIR_ASSIGN_OR_RETURN(GenerateResult got, Generate(pe, req));
        req.kv_policy = "full";
        KVASIR_ASSIGN_OR_RETURN(GenerateResult ref, Generate(e, req));
        cell.found += got.text.find(key) != std::string::npos;
        cell.full_found += ref.text.find(key) != std::string::npos;
        ++cell.trials;
      }
      r.cells.push_back(cell);
      if (o.progress) o.progress(++done, total);
    }
  }
  return r;
}

}  // namespace kvasir::worker
