// Pieces the engine's benchmarks share (engine_bench.cc, handoff_bench.cc): a clock, medians,
// deterministic prompts, sequences freed on scope exit, and a chunked prefill.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/status_macros.h"
#include "kvcache/kv_cache.h"
#include "worker/engine.h"

namespace kvasir::worker::bench {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Deterministic pseudo-random prompt tokens, avoiding the first ids (special tokens).
inline std::vector<int32_t> Prompt(int32_t n, int32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  const int32_t low = std::min(vocab - 1, 256);
  for (int32_t& id : ids) id = low + static_cast<int32_t>(rng() % (vocab - low));
  return ids;
}

// Holds sequences and frees them on scope exit.
class Sequences {
 public:
  explicit Sequences(Engine& e) : e_(e) {}
  ~Sequences() {
    for (kvcache::SequenceKv* s : seqs_) e_.cache().FreeSequence(s->id());
  }
  Sequences(const Sequences&) = delete;
  Sequences& operator=(const Sequences&) = delete;
  kvcache::SequenceKv* Add(std::shared_ptr<const kvcache::KvPolicy> p) {
    seqs_.push_back(&e_.cache().CreateSequence(std::move(p)));
    return seqs_.back();
  }
  // Takes over a sequence created elsewhere (freed with the others).
  void Adopt(kvcache::SequenceKv* s) { seqs_.push_back(s); }
  const std::vector<kvcache::SequenceKv*>& all() const { return seqs_; }

 private:
  Engine& e_;
  std::vector<kvcache::SequenceKv*> seqs_;
};

// Runs `prompt` through `s` in chunks of 512 tokens.
inline absl::Status Prefill(Engine& e, kvcache::SequenceKv* s, const std::vector<int32_t>& prompt,
                            std::vector<float>& logits) {
  const size_t chunk = 512;
  for (size_t b = 0; b < prompt.size(); b += chunk) {
    StepSequence step{
        s, std::span<const int32_t>(prompt).subspan(b, std::min(chunk, prompt.size() - b)), false};
    KVASIR_RETURN_IF_ERROR(e.runner().Forward({&step, 1}, logits));
  }
  return absl::OkStatus();
}

}  // namespace kvasir::worker::bench
