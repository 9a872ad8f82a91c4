// `kvasir eval`: perplexity, greedy agreement and KV bytes of a policy against the full cache on
// a text, or (--needle) passkey retrieval at several depths and lengths.
#include "worker/eval.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "kvcache/policy.h"
#include "nlohmann/json.hpp"
#include "worker/adapter.h"

namespace kvasir::cli {

int RunEval(int argc, char** argv) {
  const std::string cmd = "kvasir eval";
  ArgParser p("kvasir eval --text FILE --kv POLICY [options]",
              "Measures the quality cost of a KV policy against the full cache: perplexity over "
              "sliding windows of the text, greedy agreement with the full cache over a "
              "continuation after each window (teacher-forced), and the KV bytes held at each "
              "window's end. With --needle: passkey retrieval at several depths and lengths.");
  EngineFlags flags;
  flags.Register(p);
  std::string text_path, kv = "full", lengths = "512,1024,2048";
  int32_t window = 1024, stride = 0, max_tokens = 8192, continuation = 32, trials = 2;
  bool json = false, needle = false;
  p.AddString("text", &text_path, "FILE", "evaluation text (UTF-8), e.g. shakespeare-public.txt");
  p.AddString("kv", &kv, "POLICY", "KV policy to evaluate (see kvasir generate --help)");
  p.AddInt32("window", &window, "tokens per window");
  p.AddInt32("stride", &stride, "tokens between window starts (0: = window)");
  p.AddInt32("max-tokens", &max_tokens, "evaluate the first N tokens of the text (0: all)");
  p.AddInt32("continuation", &continuation, "greedy tokens per window for the agreement");
  p.AddBool("needle", &needle, "run the passkey-retrieval test instead");
  p.AddString("lengths", &lengths, "N,N", "prompt lengths of the needle test");
  p.AddInt32("trials", &trials, "passkeys per (length, depth) of the needle test");
  p.AddBool("json", &json, "print one JSON object");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (!needle && text_path.empty()) {
    return Fail(cmd, absl::InvalidArgumentError("--text is required (or --needle)"), 2);
  }
  std::string text;
  if (!needle) {
    std::ifstream in(text_path, std::ios::binary);
    if (!in) return Fail(cmd, absl::NotFoundError(text_path + ": cannot open"));
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto engine = LoadEngine(flags);
  if (!engine.ok()) return Fail(cmd, engine.status());
  // A policy with a retrofit adapter runs on a second engine with the adapter merged; the full
  // cache it is compared with runs on the model as it is.
  auto adapter = worker::AdapterOfSpec(kv);
  if (!adapter.ok()) return Fail(cmd, adapter.status(), 2);
  std::unique_ptr<worker::Engine> adapted;
  if (!adapter->empty()) {
    EngineFlags adapted_flags = flags;
    adapted_flags.adapter = *adapter;
    adapted_flags.quiet = true;
    auto e = LoadEngine(adapted_flags);
    if (!e.ok()) return Fail(cmd, e.status());
    adapted = std::move(*e);
  }
  auto progress = [&](int done, int total) {
    if (!flags.quiet) std::fprintf(stderr, "\r%s: %d/%d", cmd.c_str(), done, total);
    if (!flags.quiet && done == total) std::fprintf(stderr, "\n");
  };

  if (needle) {
    worker::NeedleOptions o;
    o.kv_policy = kv;
    o.trials = trials;
    o.lengths.clear();
    for (absl::string_view part : absl::StrSplit(lengths, ',')) {
      int32_t v;
      if (!absl::SimpleAtoi(part, &v) || v <= 0) {
        return Fail(cmd, absl::InvalidArgumentError("--lengths wants positive integers"), 2);
      }
      o.lengths.push_back(v);
    }
    o.progress = progress;
    o.policy_engine = adapted.get();
    auto r = worker::RunNeedle(**engine, o);
    if (!r.ok()) return Fail(cmd, r.status());
    if (json) {
      nlohmann::json cells = nlohmann::json::array();
      for (const auto& c : r->cells) {
        cells.push_back({{"length", c.length},
                         {"depth", c.depth},
                         {"found", c.found},
                         {"full_found", c.full_found},
                         {"trials", c.trials}});
      }
      nlohmann::json j = {{"policy", r->policy},
                          {"accuracy", r->accuracy()},
                          {"full_accuracy", r->full_accuracy()},
                          {"cells", cells}};
      std::cout << j.dump() << "\n";
    } else {
      std::printf("%-8s %-6s %10s %10s\n", "length", "depth", r->policy.c_str(), "full");
      for (const auto& c : r->cells) {
        std::printf("%-8d %-6.2f %7d/%-2d %7d/%-2d\n", c.length, c.depth, c.found, c.trials,
                    c.full_found, c.trials);
      }
      std::printf("accuracy: %.1f%% (full: %.1f%%)\n", 100 * r->accuracy(),
                  100 * r->full_accuracy());
    }
    return 0;
  }

  worker::EvalOptions o;
  o.kv_policy = kv;
  o.window = window;
  o.stride = stride;
  o.max_tokens = max_tokens;
  o.continuation = continuation;
  o.progress = progress;
  o.policy_engine = adapted.get();
  auto r = worker::RunEval(**engine, text, o);
  if (!r.ok()) return Fail(cmd, r.status());
  if (json) {
    nlohmann::json j = {{"policy", r->policy},
                        {"perplexity", r->perplexity},
                        {"full_perplexity", r->full_perplexity},
                        {"greedy_agreement", r->greedy_agreement},
                        {"kv_bytes", r->kv_bytes},
                        {"full_kv_bytes", r->full_kv_bytes},
                        {"kv_ratio", r->kv_ratio()},
                        {"tokens", r->tokens},
                        {"windows", r->windows},
                        {"window", window},
                        {"stride", stride > 0 ? stride : window},
                        {"scored_tokens", r->scored_tokens},
                        {"agreement_tokens", r->agreement_tokens}};
    std::cout << j.dump() << "\n";
  } else {
    std::printf("policy            %s\n", r->policy.c_str());
    std::printf("text              %s: %lld tokens, %d windows of %d\n", text_path.c_str(),
                static_cast<long long>(r->tokens), r->windows, window);
    std::printf("perplexity        %.4f (full cache: %.4f)\n", r->perplexity, r->full_perplexity);
    std::printf("greedy agreement  %.2f%% over %lld tokens\n", 100 * r->greedy_agreement,
                static_cast<long long>(r->agreement_tokens));
    std::printf("KV held           %.2f%% of full (%lld of %lld bytes, summed over windows)\n",
                100 * r->kv_ratio(), static_cast<long long>(r->kv_bytes),
                static_cast<long long>(r->full_kv_bytes));
  }
  return 0;
}

}  // namespace kvasir::cli
