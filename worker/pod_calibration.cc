// `kvasir calibrate pod` without the command line (worker/pod_calibration.h).
#include "worker/pod_calibration.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace kvasir::worker {
namespace {

// The first `max_bytes` of `text`, cut at a line end when there is one, never inside a UTF-8
// character.
std::string_view Prefix(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t cut = text.rfind('\n', max_bytes);
  if (cut == std::string_view::npos || cut < max_bytes / 2) {
    cut = max_bytes;
    while (cut > 0 && (static_cast<uint8_t>(text[cut]) & 0xC0) == 0x80) --cut;
  }
  return text.substr(0, cut);
}

void Say(const PodCalibrationOptions& o, const std::string& line) {
  if (o.progress) o.progress(line);
}

}  // namespace

absl::StatusOr<kvcache::PodGroupsFile> CalibratePod(Engine& engine, std::string_view text,
                                                    const PodCalibrationOptions& o) {
  const model::ModelConfig& c = engine.config();
  if (o.sink < 0 || o.window < 1) {
    return absl::InvalidArgumentError("calibrate pod: sink must be >= 0 and window >= 1");
  }
  if (o.max_tokens < 1 || o.chunk_tokens < 2 || o.queries < 1 || o.max_group < 0 ||
      (o.threshold && !std::isfinite(*o.threshold)) || (!o.threshold && o.max_group < 1)) {
    return absl::InvalidArgumentError(
        "calibrate pod: max tokens >= 1, chunk tokens >= 2, queries >= 1, max group >= 0, and a "
        "finite threshold or a max group >= 1 are required");
  }
  const int64_t chunk = std::min<int64_t>(o.chunk_tokens, c.context_length);
  const int64_t proximal = int64_t{o.sink} + o.window;
  if (chunk <= proximal || o.max_tokens <= proximal) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibrate pod: sequences of ", std::min<int64_t>(chunk, o.max_tokens),
                     " tokens have no distant tokens with sink ", o.sink, " + window ", o.window,
                     "; use a smaller window, or more tokens per chunk (the model's context is ",
                     c.context_length, ")"));
  }

  const model::Tokenizer& tok = engine.tokenizer();
  const bool bos = tok.add_bos() && tok.bos_id() >= 0;
  // 16 bytes per token is more than any tokenizer needs for text; the rest is not encoded.
  const std::string_view used =
      Prefix(text, static_cast<size_t>(std::min<int64_t>(o.max_tokens, 1 << 26) * 16));
  const std::vector<int32_t> ids = tok.Encode(used, /*add_special=*/false, false);
  // Sequences: [BOS] + consecutive pieces of the text, each longer than sink + window.
  std::vector<std::vector<int32_t>> seqs;
  int64_t total = 0;
  for (size_t at = 0; at < ids.size() && total < o.max_tokens;) {
    const int64_t room = std::min<int64_t>(chunk, o.max_tokens - total) - (bos ? 1 : 0);
    const size_t n =
        std::min<size_t>(static_cast<size_t>(std::max<int64_t>(room, 0)), ids.size() - at);
    if (static_cast<int64_t>(n) + (bos ? 1 : 0) <= proximal) break;
    std::vector<int32_t>& s = seqs.emplace_back();
    if (bos) s.push_back(tok.bos_id());
    s.insert(s.end(), ids.begin() + static_cast<int64_t>(at),
             ids.begin() + static_cast<int64_t>(at + n));
    total += static_cast<int64_t>(s.size());
    at += n;
  }
  if (seqs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calibrate pod: the text has ", ids.size(),
        " tokens, not enough for one sequence longer than sink + window (", proximal, ")"));
  }
  Say(o, absl::StrFormat("calibrate pod: %d sequences, %d tokens, sink %d, window %d, metric %s",
                         seqs.size(), total, o.sink, o.window, kvcache::PodMetricName(o.metric)));

  kvcache::KvCache& cache = engine.cache();
  kvcache::PodSimilarityOptions so;
  so.sink = o.sink;
  so.window = o.window;
  so.metric = o.metric;
  kvcache::PodSimilarity similarity(cache.geometry(), so);
  auto policy = std::make_shared<kvcache::PodRecordingPolicy>(&similarity);
  std::vector<float> logits;
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < seqs.size(); ++i) {
    const std::vector<int32_t>& s = seqs[i];
    kvcache::SequenceKv& seq = cache.CreateSequence(policy);
    struct Release {
      kvcache::KvCache& cache;
      kvcache::SeqId id;
      ~Release() { cache.FreeSequence(id); }
    } release{cache, seq.id()};
    const int64_t len = static_cast<int64_t>(s.size());
    similarity.SetQueryRange(seq.id(), std::max<int64_t>(len - o.queries, proximal), len);
    constexpr size_t kStep = 512;
    for (size_t at = 0; at < s.size(); at += kStep) {
      const size_t n = std::min(kStep, s.size() - at);
      StepSequence step{&seq, std::span<const int32_t>(s).subspan(at, n), false};
      KVASIR_RETURN_IF_ERROR(engine.runner().Forward({&step, 1}, logits));
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    Say(o, absl::StrFormat("calibrate pod: sequence %d/%d (%d tokens) done, %.1f s", i + 1,
                           seqs.size(), len, secs));
  }

  kvcache::PodGroupsFile file;
  file.similarity = similarity.Matrices();
  file.groups = o.threshold ? kvcache::GreedyPodGroups(file.similarity, *o.threshold, o.max_group)
                            : kvcache::PodGroups::FixedSize(c.n_layer, c.n_head_kv, o.max_group);
  file.model = c.name;
  file.sink = o.sink;
  file.window = o.window;
  kvcache::PodCalibrationInfo info;
  info.text = o.text_name;
  info.metric = kvcache::PodMetricName(o.metric);
  info.tokens = total;
  info.chunks = static_cast<int32_t>(seqs.size());
  info.queries = similarity.queries();
  info.threshold = o.threshold.value_or(std::nan(""));
  info.max_group = o.max_group;
  file.calibration = info;
  return file;
}

}  // namespace kvasir::worker
