// `kvasir calibrate <policy>`: fits the parameters of a KV policy to a model. Today `pod`: measures
// per KV head how alike the layers' attention over distant tokens is on a text, groups the layers
// and writes the groups file that `--kv pod:groups=FILE` reads (docs/compression.md).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "kvcache/pod_groups.h"
#include "kvcache/pod_recorder.h"
#include "worker/pod_calibration.h"

namespace kvasir::cli {
namespace {

constexpr int64_t kMaxTextBytes = int64_t{256} << 20;

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read --text file '", path, "'"));
  std::string text;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof(buffer)) || in.gcount() > 0) {
    text.append(buffer, static_cast<size_t>(in.gcount()));
    if (static_cast<int64_t>(text.size()) > kMaxTextBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("--text file '", path, "' is larger than 256 MiB"));
    }
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("read error in '", path, "'"));
  return text;
}

// The share of a full cache that `pod` holds after `tokens` tokens with these groups.
double HeldRatio(const kvcache::PodGroups& g, int32_t sink, int32_t window, int64_t tokens) {
  const double pairs = static_cast<double>(g.n_layer()) * g.n_head_kv();
  const double anchors = g.num_anchors();
  const double k_other =
      (pairs - anchors) * static_cast<double>(std::min<int64_t>(tokens, int64_t{sink} + window));
  return (pairs * tokens + anchors * tokens + k_other) / (2.0 * pairs * tokens);
}

int RunCalibratePod(int argc, char** argv) {
  const std::string cmd = "kvasir calibrate pod";
  ArgParser p(
      "kvasir calibrate pod --text FILE [--out groups.json] [options]",
      "Runs the model over chunks of FILE, measures per KV head how similar the layers' "
      "attention over distant tokens is (1 - Jensen-Shannon divergence in bits, averaged over "
      "the head's query heads and the last --queries positions of each chunk), groups "
      "consecutive layers greedily (a layer joins its group while its similarity to the group's "
      "first layer, the anchor, is at least --threshold, and the group has fewer than "
      "--group-size layers) and writes the groups file of the `pod` KV policy.");
  EngineFlags engine_flags;
  std::string text_path, out_path, metric_name = "attention";
  int64_t max_tokens = 4096;
  int32_t chunk_tokens = 1024, queries = 64, group_size = 0, sink = 4, window = 252;
  float threshold = 0.5f;
  engine_flags.Register(p);
  p.AddString("text", &text_path, "FILE", "calibration text (required)");
  p.AddString("out", &out_path, "FILE", "write the groups JSON here (default: stdout)");
  p.AddInt("max-tokens", &max_tokens, "tokens of the text to run through the model, at most");
  p.AddInt32("chunk-tokens", &chunk_tokens,
             "tokens per sequence, capped by the model's context length");
  p.AddInt32("queries", &queries, "query positions measured per sequence (its last ones)");
  p.AddFloat("threshold", &threshold, "similarity a layer needs to join its anchor's group");
  p.AddInt32("group-size", &group_size,
             "at most this many layers per group (0: no cap); alone, without --threshold, it "
             "gives fixed groups of this size");
  p.AddInt32("sink", &sink, "PoD sink tokens: always proximal");
  p.AddInt32("window", &window, "PoD window: the newest tokens, the query included, are proximal");
  p.AddString("metric", &metric_name, "NAME",
              "attention: each layer's own attention against the anchor's (as in the paper); "
              "keys: a layer's attention with its own keys against that with the anchor's keys");
  p.AddEpilog(
      "\nexample:\n  kvasir calibrate pod --model default --text "
      "../shared/eval/shakespeare-public.txt"
      " \\\n      --out smollm2-pod.json\n  kvasir generate --kv pod:groups=smollm2-pod.json "
      "--prompt \"...\"\n");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (text_path.empty()) {
    return Fail(cmd, absl::InvalidArgumentError("--text is required (see --help)"), 2);
  }
  auto metric = kvcache::ParsePodMetric(metric_name);
  if (!metric.ok()) return Fail(cmd, metric.status(), 2);
  if (sink < 0 || window < 1 || max_tokens < 1 || chunk_tokens < 2 || queries < 1 ||
      group_size < 0 || !std::isfinite(threshold)) {
    return Fail(cmd,
                absl::InvalidArgumentError(
                    "--sink >= 0, --window >= 1, --max-tokens >= 1, --chunk-tokens >= 2, "
                    "--queries >= 1, --group-size >= 0 and a finite --threshold are required"),
                2);
  }
  if (p.was_set("group-size") && !p.was_set("threshold") && group_size < 1) {
    return Fail(cmd, absl::InvalidArgumentError("--group-size alone must be >= 1"), 2);
  }
  auto text = ReadText(text_path);
  if (!text.ok()) return Fail(cmd, text.status());

  auto engine_or = LoadEngine(engine_flags);
  if (!engine_or.ok()) return Fail(cmd, engine_or.status());
  worker::Engine& engine = **engine_or;

  worker::PodCalibrationOptions o;
  o.sink = sink;
  o.window = window;
  o.max_tokens = max_tokens;
  o.chunk_tokens = chunk_tokens;
  o.queries = queries;
  o.max_group = group_size;
  if (p.was_set("group-size") && !p.was_set("threshold")) {
    o.threshold = std::nullopt;
  } else {
    o.threshold = threshold;
  }
  o.metric = *metric;
  o.text_name = text_path;
  if (!engine_flags.quiet) {
    o.progress = [](std::string_view line) {
      std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
    };
  }
  auto file = worker::CalibratePod(engine, *text, o);
  if (!file.ok()) return Fail(cmd, file.status());
  const std::string json = kvcache::PodGroupsToJson(*file);
  if (out_path.empty()) {
    std::fwrite(json.data(), 1, json.size(), stdout);
  } else {
    std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
    out.write(json.data(), static_cast<std::streamsize>(json.size()));
    out.close();
    if (!out) {
      return Fail(cmd, absl::PermissionDeniedError(absl::StrCat("cannot write '", out_path, "'")));
    }
  }
  if (!engine_flags.quiet) {
    const kvcache::PodGroups& g = file->groups;
    for (int32_t h = 0; h < g.n_head_kv(); ++h) {
      std::string line;
      for (const auto& group : g.Groups(h)) {
        absl::StrAppend(&line, " [", group.front(),
                        group.size() > 1 ? absl::StrCat("-", group.back()) : "", "]");
      }
      std::fprintf(stderr, "kv head %d: %zu groups:%s\n", h, g.Groups(h).size(), line.c_str());
    }
    const int32_t pairs = g.n_layer() * g.n_head_kv();
    std::fprintf(stderr,
                 "%d of %d (layer, KV head) pairs are anchors; pod would hold %.1f%% of the full "
                 "KV at 1024 tokens, %.1f%% at 4096 (sink %d, window %d)%s%s\n",
                 g.num_anchors(), pairs, 100 * HeldRatio(g, sink, window, 1024),
                 100 * HeldRatio(g, sink, window, 4096), sink, window,
                 out_path.empty() ? "" : "; wrote ", out_path.c_str());
  }
  return 0;
}

}  // namespace

int RunCalibrate(int argc, char** argv) {
  const std::string usage =
      "usage: kvasir calibrate <policy> [options]\n\npolicies:\n"
      "  pod         group layers for the pod KV policy (writes its groups file)\n"
      "\nRun 'kvasir calibrate <policy> --help' for its options.\n";
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fputs(usage.c_str(), argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string policy = argv[1];
  if (policy == "pod") return RunCalibratePod(argc - 1, argv + 1);
  std::fprintf(stderr, "kvasir calibrate: unknown policy '%s'\n\n%s", policy.c_str(),
               usage.c_str());
  return 2;
}

}  // namespace kvasir::cli
