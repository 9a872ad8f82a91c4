// `kvasir generate`: one prompt through the single-process engine, streaming the text to stdout,
// or one JSON object with --json (README.md, docs/serving.md).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "kvcache/policy.h"
#include "model/tokenizer/chat_template.h"
#include "nlohmann/json.hpp"
#include "worker/adapter.h"

namespace kvasir::cli {

int RunGenerate(int argc, char** argv) {
  const std::string cmd = "kvasir generate";
  ArgParser p("kvasir generate --prompt TEXT [options]",
              "Generates a continuation of TEXT with the model, streaming it to stdout.");
  EngineFlags engine_flags;
  std::string prompt, system, kv = "full";
  int32_t max_tokens = 128, top_k = 40, prefill_chunk = 512;
  float temperature = 0.8f, top_p = 0.95f, min_p = 0.05f, repeat_penalty = 1.0f;
  uint64_t seed = 0;
  bool chat = false, json = false, ignore_eos = false;
  std::vector<std::string> stop;
  TpFlags tp;
  engine_flags.Register(p);
  tp.Register(p);
  p.AddString("prompt", &prompt, "TEXT", "the prompt (required)");
  p.AddBool("chat", &chat, "wrap the prompt in the model's chat template as a user message");
  p.AddString("system", &system, "TEXT", "system message for --chat (default: none)");
  p.AddInt32("max-tokens", &max_tokens, "tokens to generate at most");
  p.AddFloat("temperature", &temperature, "sampling temperature; 0 is greedy");
  p.AddFloat("top-p", &top_p, "nucleus sampling: keep the smallest set with this mass (1: off)");
  p.AddInt32("top-k", &top_k, "keep the k most likely tokens (0: off)");
  p.AddFloat("min-p", &min_p, "drop tokens under min-p times the top probability (0: off)");
  p.AddFloat("repeat-penalty", &repeat_penalty, "penalty for the last 64 tokens (1: off)");
  p.AddUint64("seed", &seed, "random seed; the same seed gives the same output (default: random)");
  p.AddStrings("stop", &stop, "TEXT", "stop when the output contains TEXT");
  p.AddBool("ignore-eos", &ignore_eos, "keep going past end-of-generation tokens");
  p.AddString("kv", &kv, "POLICY", "KV cache policy (see below)");
  p.AddInt32("prefill-chunk", &prefill_chunk, "prompt tokens per forward step");
  p.AddBool("json", &json, "print one JSON object instead of streaming text");
  p.AddEpilog("KV policies:\n" + kvcache::PolicyHelp() +
              "\nexample:\n  kvasir generate --model default --chat --temperature 0 \\\n"
              "      --prompt \"What is the capital of France?\"\n");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (!p.was_set("prompt")) {
    return Fail(cmd, absl::InvalidArgumentError("--prompt is required (see --help)"), 2);
  }
  if (!p.was_set("seed")) seed = std::random_device{}();
  auto adapter = worker::AdapterOfSpec(kv);
  if (!adapter.ok()) return Fail(cmd, adapter.status(), 2);
  engine_flags.adapter = *adapter;
  if (tp.follower()) return RunFollower(cmd, engine_flags, tp);

  auto ranks = LoadRankEngine(engine_flags, tp, std::vector<std::string>(argv, argv + argc));
  if (!ranks.ok()) return Fail(cmd, ranks.status());
  worker::Engine& engine = *ranks->engine;
  const model::Tokenizer& tok = engine.tokenizer();

  worker::GenerateRequest req;
  if (chat) {
    auto kind = model::DetectChatTemplate(tok);
    if (!kind.ok()) return Fail(cmd, kind.status());
    std::vector<model::ChatMessage> messages;
    if (!system.empty()) messages.push_back({"system", system});
    messages.push_back({"user", prompt});
    // Like llama.cpp's built-in ChatML, no system message unless --system gives one. (SmolLM2's
    // Jinja template adds a default one; with it the 135M Q4_1 model answers this kind of
    // question off-topic, in llama.cpp as here.)
    const std::string text = model::RenderChat(*kind, messages, true);
    req.prompt = tok.Encode(text, /*add_special=*/false, /*parse_special=*/true);
  } else {
    req.prompt = tok.Encode(prompt, /*add_special=*/true, /*parse_special=*/false);
  }
  req.max_tokens = max_tokens;
  req.sampling.temperature = temperature;
  req.sampling.top_k = top_k;
  req.sampling.top_p = top_p;
  req.sampling.min_p = min_p;
  req.sampling.repetition_penalty = repeat_penalty;
  req.sampling.seed = seed;
  req.stop = stop;
  req.ignore_eos = ignore_eos;
  req.kv_policy = kv;
  req.prefill_chunk = prefill_chunk;

  worker::TextCallback on_text;
  if (!json) {
    on_text = [](std::string_view text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    };
  }
  auto result_or = worker::Generate(engine, req, on_text);
  if (!result_or.ok()) {
    if (!json) std::fputc('\n', stdout);
    return Fail(cmd, result_or.status());
  }
  const worker::GenerateResult& r = *result_or;
  if (json) {
    nlohmann::json out;
    out["model"] = engine.files().path();
    out["prompt_ids"] = req.prompt;
    out["ids"] = r.ids;
    out["text"] = r.text;
    out["finish_reason"] = r.finish_reason;
    out["seed"] = seed;
    out["kv"] = {{"policy", r.kv_policy}, {"tokens", r.kv.tokens},
                 {"slots", r.kv.slots},   {"full_slots", r.kv.full_slots},
                 {"bytes", r.kv.bytes},   {"full_bytes", r.kv.full_bytes},
                 {"ratio", r.kv.ratio()}};
    out["timings"] = {
        {"prompt_tokens", r.prompt_tokens},        {"generated_tokens", r.ids.size()},
        {"prefill_seconds", r.prefill_seconds},    {"decode_seconds", r.decode_seconds},
        {"prefill_tokens_per_s", r.prefill_tps()}, {"decode_tokens_per_s", r.decode_tps()}};
    if (tp.size > 1) {
      // Rank 0's time in collectives (all-reduces, the logits' all-gather), prefill and decode.
      const worker::CollectiveStats cs = engine.runner().collective_stats();
      out["tensor_parallel"] = {{"size", tp.size},
                                {"collectives", cs.calls},
                                {"collective_seconds", cs.seconds},
                                {"weight_bytes_per_rank", engine.weights().bytes}};
    }
    // Invalid UTF-8 cannot reach here (the streaming decoder replaces it), but be safe.
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    // Flushed before the stats go to stderr, so that they start on a line of their own even when
    // both streams go to one pipe.
    std::fputc('\n', stdout);
    std::fflush(stdout);
    if (!engine_flags.quiet) {
      std::fprintf(stderr,
                   "prompt %d tokens, %.1f tokens/s; generated %zu tokens, %.1f tokens/s; "
                   "KV %s held %.1f%% of full (%lld of %lld bytes)\n",
                   r.prompt_tokens, r.prefill_tps(), r.ids.size(), r.decode_tps(),
                   r.kv_policy.c_str(), 100.0 * r.kv.ratio(), static_cast<long long>(r.kv.bytes),
                   static_cast<long long>(r.kv.full_bytes));
    }
  }
  return 0;
}

}  // namespace kvasir::cli
