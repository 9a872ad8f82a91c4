// The driver of `kvasir calibrate pod`: runs a model over chunks of a text with the PoD recording
// policy (kvcache/pod_recorder.h), measures per KV head how similar the layers' attention over
// distant tokens is, and groups the layers greedily into the groups file of the `pod` policy.
//
//   PodCalibrationOptions o;
//   o.progress = [](std::string_view line) { std::cerr << line << "\n"; };
//   KVASIR_ASSIGN_OR_RETURN(kvcache::PodGroupsFile file, CalibratePod(engine, text, o));
//   std::string json = kvcache::PodGroupsToJson(file);
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kvcache/pod_groups.h"
#include "kvcache/pod_recorder.h"
#include "worker/engine.h"

namespace kvasir::worker {

struct PodCalibrationOptions {
  int32_t sink = 4;
  int32_t window = 252;
  int64_t max_tokens = 4096;    // tokens of the text run through the model, at most
  int32_t chunk_tokens = 1024;  // tokens per sequence (BOS included), capped by the context length
  int32_t queries = 64;         // query positions measured per sequence: its last ones
  // Similarity a layer needs to join its anchor's group; nullopt: groups of max_group layers
  // whatever the similarity (still measured and recorded).
  std::optional<double> threshold = 0.5;
  int32_t max_group = 0;  // at most this many layers per group (0: no cap)
  kvcache::PodMetric metric = kvcache::PodMetric::kAttention;
  std::string text_name;                           // recorded in the file
  std::function<void(std::string_view)> progress;  // (optional) one line per event
};

// Runs the calibration on `text`. InvalidArgument when the options do not fit the model or the
// text is too short to give one sequence with distant tokens (longer than sink + window).
// Uses the engine's cache and runner: no other sequence may run meanwhile.
absl::StatusOr<kvcache::PodGroupsFile> CalibratePod(Engine& engine, std::string_view text,
                                                    const PodCalibrationOptions& options);

}  // namespace kvasir::worker
