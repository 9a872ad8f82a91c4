// End to end on loopback, with real processes (kvasir-coordinator, kvasir-worker, kvasir) and
// stories260K: completions and chat, SSE streaming, the API's error cases, 32 concurrent
// requests, and greedy output equal to `kvasir generate`.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

namespace kvasir::integration {
namespace {

std::unique_ptr<Cluster> StartCluster(ClusterOptions options = {}) {
  auto cluster = Cluster::Start(options);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? std::move(*cluster) : nullptr;
}

void ExpectError(const HttpResult& r, int status, const std::string& type,
                 const std::string& code) {
  EXPECT_EQ(r.status, status) << r.body;
  ASSERT_TRUE(r.j.is_object()) << r.body;
  ASSERT_TRUE(r.j.contains("error")) << r.body;
  const json& e = r.j["error"];
  EXPECT_TRUE(e["message"].is_string()) << r.body;
  EXPECT_FALSE(e["message"].get<std::string>().empty());
  EXPECT_EQ(e["type"], type) << r.body;
  if (code.empty()) {
    EXPECT_TRUE(e["code"].is_null() || e["code"].is_string()) << r.body;
  } else {
    EXPECT_EQ(e["code"], code) << r.body;
  }
  EXPECT_TRUE(e.contains("param"));
}

TEST(ServingTest, CompletionAndChat) {
  auto c = StartCluster();
  ASSERT_NE(c, nullptr);
  HttpResult r = c->Post("/v1/completions", {{"model", c->model_name()},
                                             {"prompt", "Once upon a time"},
                                             {"max_tokens", 20},
                                             {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers["content-type"], "application/json");
  EXPECT_EQ(r.j["object"], "text_completion");
  EXPECT_TRUE(absl::StartsWith(r.j["id"].get<std::string>(), "cmpl-"));
  EXPECT_EQ(r.j["model"], c->model_name());
  ASSERT_EQ(r.j["choices"].size(), 1u);
  EXPECT_FALSE(r.j["choices"][0]["text"].get<std::string>().empty());
  const std::string reason = r.j["choices"][0]["finish_reason"];
  EXPECT_TRUE(reason == "length" || reason == "stop") << reason;
  HttpResult tokens = c->Post("/tokenize", {{"prompt", "Once upon a time"}});
  ASSERT_EQ(tokens.status, 200) << tokens.body;
  EXPECT_EQ(r.j["usage"]["prompt_tokens"], tokens.j["count"]);
  EXPECT_LE(r.j["usage"]["completion_tokens"].get<int>(), 20);
  EXPECT_EQ(
      r.j["usage"]["total_tokens"].get<int>(),
      r.j["usage"]["prompt_tokens"].get<int>() + r.j["usage"]["completion_tokens"].get<int>());

  HttpResult chat = c->Post("/v1/chat/completions",
                            {{"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}},
                             {"max_tokens", 16},
                             {"temperature", 0}});
  ASSERT_EQ(chat.status, 200) << chat.body;
  EXPECT_EQ(chat.j["object"], "chat.completion");
  EXPECT_TRUE(absl::StartsWith(chat.j["id"].get<std::string>(), "chatcmpl-"));
  EXPECT_EQ(chat.j["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(chat.j["choices"][0]["message"]["content"].is_string());
  EXPECT_GT(chat.j["usage"]["completion_tokens"].get<int>(), 0);

  // n choices with seeds: distinct samples, reproducible.
  json sampled = {{"prompt", "Once upon a time"},
                  {"max_tokens", 12},
                  {"temperature", 1.0},
                  {"n", 3},
                  {"seed", 7}};
  HttpResult a = c->Post("/v1/completions", sampled);
  HttpResult b = c->Post("/v1/completions", sampled);
  ASSERT_EQ(a.status, 200) << a.body;
  ASSERT_EQ(a.j["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a.j["choices"][i]["index"], i);
    EXPECT_EQ(a.j["choices"][i]["text"], b.j["choices"][i]["text"]);
  }
  EXPECT_EQ(a.j["usage"]["completion_tokens"], b.j["usage"]["completion_tokens"]);

  // Logprobs, OpenAI's completion shape.
  HttpResult lp = c->Post("/v1/completions", {{"prompt", "Once upon a time"},
                                              {"max_tokens", 5},
                                              {"temperature", 0},
                                              {"ignore_eos", true},
                                              {"logprobs", 2}});
  ASSERT_EQ(lp.status, 200) << lp.body;
  const json& l = lp.j["choices"][0]["logprobs"];
  ASSERT_EQ(l["tokens"].size(), 5u);
  ASSERT_EQ(l["top_logprobs"].size(), 5u);
  for (const json& p : l["token_logprobs"]) EXPECT_LE(p.get<double>(), 0.0);
}

TEST(ServingTest, GreedyCompletionMatchesKvasirGenerate) {
  auto c = StartCluster();
  ASSERT_NE(c, nullptr);
  for (const char* prompt : {"Once upon a time", "The little dog was sad because"}) {
    auto ref = KvasirGenerate({"--model", StoriesModel(), "--prompt", prompt, "--temperature", "0",
                               "--max-tokens", "48"});
    ASSERT_TRUE(ref.ok()) << ref.status();
    HttpResult r =
        c->Post("/v1/completions", {{"prompt", prompt}, {"max_tokens", 48}, {"temperature", 0}});
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.j["choices"][0]["text"], (*ref)["text"]) << prompt;
    EXPECT_EQ(r.j["usage"]["completion_tokens"], (*ref)["ids"].size()) << prompt;
    EXPECT_EQ(r.j["usage"]["prompt_tokens"], (*ref)["prompt_ids"].size()) << prompt;
    EXPECT_EQ(r.j["choices"][0]["finish_reason"], (*ref)["finish_reason"]) << prompt;
    HttpResult tokens = c->Post("/tokenize", {{"prompt", prompt}});
    EXPECT_EQ(tokens.j["tokens"], (*ref)["prompt_ids"]);
    // The generated ids, through /detokenize, give the same text.
    HttpResult text = c->Post("/detokenize", {{"tokens", (*ref)["ids"]}});
    ASSERT_EQ(text.status, 200) << text.body;
  }
  auto ref = KvasirGenerate({"--model", StoriesModel(), "--chat", "--prompt", "Hello there",
                             "--temperature", "0", "--max-tokens", "24"});
  ASSERT_TRUE(ref.ok()) << ref.status();
  HttpResult chat = c->Post("/v1/chat/completions",
                            {{"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                             {"max_tokens", 24},
                             {"temperature", 0}});
  ASSERT_EQ(chat.status, 200) << chat.body;
  EXPECT_EQ(chat.j["choices"][0]["message"]["content"], (*ref)["text"]);
  EXPECT_EQ(chat.j["usage"]["prompt_tokens"], (*ref)["prompt_ids"].size());
  EXPECT_EQ(chat.j["usage"]["completion_tokens"], (*ref)["ids"].size());
}

TEST(ServingTest, StreamingFramingDoneAndUsage) {
  auto c = StartCluster();
  ASSERT_NE(c, nullptr);
  const json base = {{"prompt", "Once upon a time"}, {"max_tokens", 24}, {"temperature", 0}};
  HttpResult whole = c->Post("/v1/completions", base);
  ASSERT_EQ(whole.status, 200);

  json streamed = base;
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}};
  auto stream = c->OpenStream("/v1/completions", streamed);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->status(), 200);
  ASSERT_NE((*stream)->header("content-type"), nullptr);
  EXPECT_EQ(*(*stream)->header("content-type"), "text/event-stream");
  auto body = (*stream)->ReadAll(absl::Seconds(30));
  ASSERT_TRUE(body.ok()) << body.status();
  bool framing_ok = false;
  std::vector<std::string> events = SseEvents(*body, &framing_ok);
  EXPECT_TRUE(framing_ok) << *body;
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    json chunk = json::parse(events[i], nullptr, false);
    ASSERT_TRUE(chunk.is_object()) << events[i];
    EXPECT_EQ(chunk["object"], "text_completion");
    EXPECT_TRUE(chunk["usage"].is_null());
    ASSERT_EQ(chunk["choices"].size(), 1u);
    text += chunk["choices"][0]["text"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null())
      finish = chunk["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, whole.j["choices"][0]["text"]);
  EXPECT_EQ(finish, whole.j["choices"][0]["finish_reason"]);
  json usage = json::parse(events[events.size() - 2], nullptr, false);
  ASSERT_TRUE(usage.is_object());
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"], whole.j["usage"]);

  // Chat: the role first, content deltas, a finish chunk; no usage unless asked.
  json chat = {{"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}},
               {"max_tokens", 16},
               {"temperature", 0},
               {"stream", true}};
  auto chat_stream = c->OpenStream("/v1/chat/completions", chat);
  ASSERT_TRUE(chat_stream.ok()) << chat_stream.status();
  auto chat_body = (*chat_stream)->ReadAll(absl::Seconds(30));
  ASSERT_TRUE(chat_body.ok());
  events = SseEvents(*chat_body, &framing_ok);
  EXPECT_TRUE(framing_ok);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  json first = json::parse(events[0], nullptr, false);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_FALSE(first.contains("usage"));
  json last = json::parse(events[events.size() - 2], nullptr, false);
  EXPECT_FALSE(last["choices"][0]["finish_reason"].is_null()) << events[events.size() - 2];
  chat["stream"] = false;
  HttpResult chat_whole = c->Post("/v1/chat/completions", chat);
  std::string content;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json chunk = json::parse(events[i], nullptr, false);
    const json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content")) content += delta["content"].get<std::string>();
  }
  EXPECT_EQ(content, chat_whole.j["choices"][0]["message"]["content"]);
}

TEST(ServingTest, ModelsHealthReadyTokenizeMetrics) {
  auto c = StartCluster();
  ASSERT_NE(c, nullptr);
  HttpResult models = c->Get("/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(models.j["object"], "list");
  ASSERT_EQ(models.j["data"].size(), 1u);
  EXPECT_EQ(models.j["data"][0]["id"], "stories260K");
  EXPECT_EQ(models.j["data"][0]["object"], "model");
  EXPECT_EQ(c->Get("/v1/models/stories260K").status, 200);
  ExpectError(c->Get("/v1/models/nope"), 404, "invalid_request_error", "model_not_found");
  HttpResult health = c->Get("/health");
  EXPECT_EQ(health.status, 200);
  HttpResult ready = c->Get("/ready");
  EXPECT_EQ(ready.status, 200);
  EXPECT_EQ(ready.j["workers_ready"], 1);
  HttpResult tokens = c->Post("/tokenize", {{"prompt", "Once upon a time"}});
  ASSERT_EQ(tokens.status, 200);
  EXPECT_EQ(tokens.j["count"], tokens.j["tokens"].size());
  EXPECT_EQ(tokens.j["max_model_len"], 2048);
  HttpResult text = c->Post("/detokenize", {{"tokens", tokens.j["tokens"]}});
  ASSERT_EQ(text.status, 200);
  EXPECT_NE(text.j["prompt"].get<std::string>().find("Once upon a time"), std::string::npos);
  ExpectError(c->Post("/detokenize", {{"tokens", {1, 99999}}}), 400, "invalid_request_error", "");
  HttpResult chat_tokens =
      c->Post("/tokenize", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}});
  ASSERT_EQ(chat_tokens.status, 200) << chat_tokens.body;
  EXPECT_GT(chat_tokens.j["count"].get<int>(), tokens.j["count"].get<int>() / 2);

  ASSERT_EQ(c->Post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 4}, {"ignore_eos", true}})
                .status,
            200);
  ExpectError(c->Post("/v1/completions", {{"prompt", 3.5}}), 400, "invalid_request_error",
              "invalid_type");
  HttpResult metrics = c->Get("/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_TRUE(absl::StartsWith(metrics.headers["content-type"], "text/plain"));
  const std::string& m = metrics.body;
  EXPECT_GE(MetricValue(m, "kvasir_request_success_total").value_or(0), 1);
  // The bad /detokenize and the bad completion.
  EXPECT_EQ(MetricValue(m, "kvasir_request_failure_total{reason=\"invalid_request\"}"), 2);
  EXPECT_GE(MetricValue(m, "kvasir_time_to_first_token_seconds_count").value_or(0), 1);
  EXPECT_GE(MetricValue(m, "kvasir_inter_token_latency_seconds_count").value_or(0), 1);
  EXPECT_GE(MetricValue(m, "kvasir_e2e_request_latency_seconds_count").value_or(0), 1);
  EXPECT_GE(MetricValue(m, "kvasir_prompt_tokens_total").value_or(0), 1);
  EXPECT_EQ(MetricValue(m, "kvasir_generation_tokens_total"), 4);
  EXPECT_TRUE(MetricValue(m, "kvasir_num_requests_running").has_value());
  EXPECT_TRUE(MetricValue(m, "kvasir_num_requests_waiting").has_value());
  EXPECT_TRUE(MetricValue(m, "kvasir_kv_cache_usage_perc{worker=\"worker-0\"}").has_value()) << m;
  // The process series and the build info, on the coordinator and on the worker.
  EXPECT_GT(MetricValue(m, "process_resident_memory_bytes").value_or(0), 0) << m;
  EXPECT_NE(m.find("kvasir_build_info{service=\"coordinator\""), std::string::npos);
  const std::string w = c->WorkerMetrics(0);
  EXPECT_GT(MetricValue(w, "process_start_time_seconds").value_or(0), 0) << w;
  EXPECT_NE(w.find("kvasir_build_info{service=\"worker\""), std::string::npos);
  // The worker serves its own.
  const std::string wm = c->WorkerMetrics(0);
  EXPECT_EQ(MetricValue(wm, "kvasir_generation_tokens_total"), 4) << wm;
  EXPECT_EQ(MetricValue(wm, "kvasir_num_requests_running"), 0);
  // The worker measured its default inter-token latency target at start-up (at least 20 ms).
  EXPECT_GE(MetricValue(wm, "kvasir_scheduler_target_itl_seconds").value_or(0), 0.020) << wm;
}

TEST(ServingTest, ErrorCases) {
  auto c = StartCluster({.coordinator_args = {"--max-body-bytes", "64KiB"}});
  ASSERT_NE(c, nullptr);
  // Malformed JSON and wrong types.
  ExpectError(c->PostRaw("/v1/completions", "{\"prompt\": "), 400, "invalid_request_error", "");
  ExpectError(c->PostRaw("/v1/chat/completions", "[]"), 400, "invalid_request_error", "");
  ExpectError(c->Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", "ten"}}), 400,
              "invalid_request_error", "invalid_type");
  ExpectError(c->Post("/v1/chat/completions", {{"messages", "hi"}}), 400, "invalid_request_error",
              "invalid_type");
  ExpectError(c->Post("/v1/completions", {{"prompt", "x"}, {"temperature", 9}}), 400,
              "invalid_request_error", "invalid_value");
  // Unknown model.
  HttpResult unknown = c->Post("/v1/completions", {{"model", "gpt-4"}, {"prompt", "x"}});
  ExpectError(unknown, 404, "invalid_request_error", "model_not_found");
  EXPECT_EQ(unknown.j["error"]["param"], "model");
  // Prompt plus max_tokens over the context.
  HttpResult too_long =
      c->Post("/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 2047}});
  ExpectError(too_long, 400, "invalid_request_error", "context_length_exceeded");
  EXPECT_NE(too_long.j["error"]["message"].get<std::string>().find("2048"), std::string::npos);
  std::string long_prompt;
  for (int i = 0; i < 1000; ++i) long_prompt += "Once upon a time ";
  ExpectError(c->Post("/v1/chat/completions",
                      {{"messages", {{{"role", "user"}, {"content", long_prompt}}}}}),
              400, "invalid_request_error", "context_length_exceeded");
  // Body over the size limit.
  HttpResult big = c->Post("/v1/completions", {{"prompt", std::string(70000, 'a')}});
  EXPECT_EQ(big.status, 413) << big.body;
  EXPECT_TRUE(big.j.contains("error")) << big.body;
  // Unknown route and wrong method.
  ExpectError(c->Get("/v2/nothing"), 404, "invalid_request_error", "unknown_url");
  EXPECT_EQ(c->Get("/v1/completions").status, 405);
  // Still serving.
  EXPECT_EQ(c->Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}}).status, 200);
}

TEST(ServingTest, ApiKeys) {
  const std::string keys = (std::filesystem::temp_directory_path() /
                            ("kvasir-keys-" + std::to_string(getpid()) + ".txt"))
                               .string();
  {
    std::FILE* f = std::fopen(keys.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("# test keys\nkey-one\n\n  key-two  \n", f);
    std::fclose(f);
  }
  auto c = StartCluster({.coordinator_args = {"--api-key-file", keys}});
  std::remove(keys.c_str());
  ASSERT_NE(c, nullptr);
  const json body = {{"prompt", "x"}, {"max_tokens", 2}};
  ExpectError(c->Post("/v1/completions", body), 401, "invalid_request_error", "invalid_api_key");
  ExpectError(c->Post("/v1/completions", body, {{"Authorization", "Bearer wrong"}}), 401,
              "invalid_request_error", "invalid_api_key");
  ExpectError(c->Post("/v1/completions", body, {{"Authorization", "key-one"}}), 401,
              "invalid_request_error", "invalid_api_key");
  EXPECT_EQ(c->Post("/v1/completions", body, {{"Authorization", "Bearer key-one"}}).status, 200);
  EXPECT_EQ(c->Post("/v1/completions", body, {{"Authorization", "bearer key-two"}}).status, 200);
  EXPECT_EQ(c->Get("/v1/models").status, 401);
  EXPECT_EQ(c->Post("/tokenize", {{"prompt", "x"}}).status, 401);
  // Health, readiness and metrics stay open for probes and scrapers.
  EXPECT_EQ(c->Get("/health").status, 200);
  EXPECT_EQ(c->Get("/ready").status, 200);
  HttpResult metrics = c->Get("/metrics");
  EXPECT_EQ(metrics.status, 200);
  // Three refused completions, /v1/models and /tokenize.
  EXPECT_EQ(MetricValue(metrics.body, "kvasir_request_failure_total{reason=\"unauthorized\"}"), 5);
}

// Tenants from the API key file: a tenant's requests share cached KV (the prefix cache's hits
// grow), another tenant's identical prompt finds none of it.
TEST(ServingTest, TenantsDoNotShareCachedKv) {
  const std::string keys = (std::filesystem::temp_directory_path() /
                            ("kvasir-tenants-" + std::to_string(getpid()) + ".txt"))
                               .string();
  {
    std::FILE* f = std::fopen(keys.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("key-a alpha\nkey-a2\talpha\nkey-b beta\n", f);
    std::fclose(f);
  }
  auto c = StartCluster({.coordinator_args = {"--api-key-file", keys}});
  std::remove(keys.c_str());
  ASSERT_NE(c, nullptr);
  const json body = {{"prompt",
                      "Once upon a time, there was a little girl named Lily. She loved to play "
                      "outside in the sun with her big red ball. One day, she saw a dog"},
                     {"max_tokens", 4},
                     {"temperature", 0}};
  const auto hits = [&] {
    return MetricValue(c->WorkerMetrics(0), "kvasir_prefix_cache_hits_total{tier=\"local\"}")
        .value_or(-1);
  };
  std::string text;
  std::vector<double> seen = {hits()};  // hits before, then after each request
  for (const char* key : {"key-a", "key-a2", "key-b", "key-b"}) {
    const HttpResult r =
        c->Post("/v1/completions", body, {{"Authorization", std::string("Bearer ") + key}});
    ASSERT_EQ(r.status, 200) << r.body;
    if (text.empty()) text = r.j["choices"][0]["text"];
    EXPECT_EQ(r.j["choices"][0]["text"], text) << key;  // the same output, cached or not
    seen.push_back(hits());
  }
  ASSERT_EQ(seen[0], 0);
  EXPECT_EQ(seen[1], seen[0]);       // alpha's first request: nothing cached
  EXPECT_GE(seen[2], seen[1] + 16);  // alpha's second key: alpha's blocks
  EXPECT_EQ(seen[3], seen[2]);       // beta: none of alpha's
  EXPECT_GE(seen[4], seen[3] + 16);  // beta again: beta's own
}

TEST(ServingTest, QueueFullAndNoWorkers) {
  auto c = StartCluster({.coordinator_args = {"--max-pending-requests", "1"},
                         .worker_args = {"--debug-step-delay-ms", "20"}});
  ASSERT_NE(c, nullptr);
  auto stream = c->OpenStream("/v1/completions", {{"prompt", "Once upon a time"},
                                                  {"max_tokens", 200},
                                                  {"ignore_eos", true},
                                                  {"stream", true}});
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_EQ((*stream)->status(), 200);
  HttpResult busy = c->Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}});
  ExpectError(busy, 429, "rate_limit_error", "rate_limit_exceeded");
  EXPECT_EQ(busy.headers["retry-after"], "1");
  (*stream)->Close();

  // A coordinator without workers: 503 with Retry-After, and /ready says 503.
  auto alone = Cluster::Start({.workers = 0, .wait_ready = false});
  ASSERT_TRUE(alone.ok()) << alone.status();
  HttpResult none = (*alone)->Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}});
  ExpectError(none, 503, "server_error", "service_unavailable");
  EXPECT_EQ(none.headers["retry-after"], "1");
  HttpResult ready = (*alone)->Get("/ready");
  EXPECT_EQ(ready.status, 503);
  EXPECT_EQ(ready.j["workers_ready"], 0);
}

TEST(ServingTest, ThirtyTwoConcurrentRequestsAllAnswered) {
  auto c = StartCluster({.workers = 2});
  ASSERT_NE(c, nullptr);
  constexpr int kRequests = 32;
  std::vector<HttpResult> results(kRequests);
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      json body = {{"prompt", i % 2 ? "Once upon a time" : "The little dog"},
                   {"max_tokens", 24},
                   {"temperature", 0.8},
                   {"seed", i}};
      if (i % 4 == 0) {
        body["messages"] = {{{"role", "user"}, {"content", "Tell me a story."}}};
        body.erase("prompt");
        results[i] = c->Post("/v1/chat/completions", body);
      } else {
        results[i] = c->Post("/v1/completions", body);
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  int tokens = 0;
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_EQ(results[i].status, 200) << i << ": " << results[i].body;
    tokens += results[i].j["usage"]["completion_tokens"].get<int>();
  }
  std::printf("32 concurrent requests on 2 workers: %.2f s, %d tokens, %.0f tokens/s\n", seconds,
              tokens, tokens / seconds);
  // Both workers took a share (least-loaded routing).
  for (int w = 0; w < 2; ++w) {
    EXPECT_GT(MetricValue(c->WorkerMetrics(w), "kvasir_generation_tokens_total").value_or(0), 0)
        << "worker " << w;
  }
}

// The default model (SmolLM2-135M-Instruct Q4_1), when installed: a greedy chat completion over
// HTTP gives the same answer as `kvasir generate --chat`.
TEST(ServingTest, DefaultModelGreedyChatMatchesKvasirGenerate) {
  const std::string path = DefaultModelPath();
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << "the default model is not installed (" << path
                 << "); scripts/install-deps.sh installs it";
  }
  auto c = StartCluster({.model = path, .worker_args = {"--threads", "2"}});
  ASSERT_NE(c, nullptr);
  const std::string question = "What is the capital of France?";
  auto ref = KvasirGenerate({"--model", path, "--chat", "--prompt", question, "--temperature", "0",
                             "--max-tokens", "16", "--threads", "2"});
  ASSERT_TRUE(ref.ok()) << ref.status();
  HttpResult chat =
      c->Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", question}}}},
                                       {"max_tokens", 16},
                                       {"temperature", 0}});
  ASSERT_EQ(chat.status, 200) << chat.body;
  EXPECT_EQ(chat.j["choices"][0]["message"]["content"], (*ref)["text"]);
  EXPECT_EQ(chat.j["usage"]["prompt_tokens"], (*ref)["prompt_ids"].size());
  EXPECT_EQ(chat.j["usage"]["completion_tokens"], (*ref)["ids"].size());
  std::printf("default model: %s\n", chat.j["choices"][0]["message"]["content"].dump().c_str());
}

}  // namespace
}  // namespace kvasir::integration
