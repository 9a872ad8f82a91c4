// The serving load generator (see serve_bench.h).
#include "cli/serve_bench.h"

#include <algorithm>
#include <atomic>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/stats.h"
#include "common/status_macros.h"
#include "transport/http/client.h"

namespace kvasir::cli {
namespace {

using json = nlohmann::json;
namespace http = transport::http;

// Common words: most are one token (with their leading space) in Llama-family vocabularies.
constexpr const char* kWords[] = {
    "the",     "of",     "and",     "to",     "in",     "is",      "was",     "that",  "for",
    "it",      "with",   "as",      "his",    "on",     "be",      "at",      "by",    "had",
    "are",     "but",    "from",    "or",     "have",   "an",      "they",    "which", "one",
    "you",     "were",   "her",     "all",    "she",    "there",   "would",   "their", "we",
    "him",     "been",   "has",     "when",   "who",    "will",    "more",    "no",    "if",
    "out",     "so",     "said",    "what",   "up",     "its",     "about",   "into",  "than",
    "them",    "can",    "only",    "other",  "new",    "some",    "could",   "time",  "these",
    "two",     "may",    "then",    "do",     "first",  "any",     "my",      "now",   "such",
    "like",    "our",    "over",    "man",    "me",     "even",    "most",    "made",  "after",
    "also",    "did",    "many",    "before", "must",   "through", "back",    "years", "where",
    "much",    "your",   "way",     "well",   "down",   "should",  "because", "each",  "just",
    "those",   "people", "how",     "too",    "little", "state",   "good",    "very",  "make",
    "world",   "still",  "own",     "see",    "men",    "work",    "long",    "get",   "here",
    "between", "both",   "life",    "being",  "under",  "never",   "day",     "same",  "another",
    "know",    "while",  "last",    "might",  "us",     "great",   "old",     "year",  "off",
    "come",    "since",  "against", "go",     "came",   "right",   "used",    "take",  "three",
    "house",   "city",   "tree",    "river",  "light",  "small"};

std::string RandomPrompt(std::mt19937_64& rng, int words) {
  std::uniform_int_distribution<size_t> pick(0, std::size(kWords) - 1);
  std::string prompt;
  for (int i = 0; i < words; ++i) {
    if (i > 0) prompt += ' ';
    prompt += kWords[pick(rng)];
  }
  return prompt;
}

std::vector<http::HttpHeader> AuthHeaders(const ServeBenchOptions& o) {
  if (o.api_key.empty()) return {};
  return {{"Authorization", "Bearer " + o.api_key}};
}

// What one request measured.
struct RequestRecord {
  bool ok = false;
  std::string error;
  double ttft_ms = 0;
  double e2e_ms = 0;
  std::vector<double> itl_ms;  // between consecutive streamed chunks with text
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// Sends one streamed completion and reads it to the end: chunks are `data: {json}` events, the
// last of them carrying `usage`, then `data: [DONE]`.
RequestRecord RunRequest(const ServeBenchOptions& o, const std::string& model,
                         const std::string& prompt) {
  RequestRecord rec;
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + o.request_timeout;
  http::HttpClientRequest request;
  request.method = "POST";
  request.target = o.chat ? "/v1/chat/completions" : "/v1/completions";
  request.headers = AuthHeaders(o);
  json body = {{"model", model},   {"max_tokens", o.output_tokens},
               {"temperature", 0}, {"ignore_eos", true},
               {"stream", true},   {"stream_options", {{"include_usage", true}}}};
  if (!o.kv_policy.empty()) body["kv_policy"] = o.kv_policy;
  if (o.chat) {
    body["messages"] = json::array({{{"role", "user"}, {"content", prompt}}});
  } else {
    body["prompt"] = prompt;
  }
  request.body = body.dump();
  auto fail = [&](std::string why) {
    rec.ok = false;
    rec.error = std::move(why);
    return rec;
  };
  auto stream = http::HttpClientStream::Open(o.host, o.port, request, o.request_timeout);
  if (!stream.ok()) return fail(stream.status().ToString());
  if ((*stream)->status() != 200) {
    auto body = (*stream)->ReadAll(std::max(deadline - absl::Now(), absl::Seconds(1)));
    return fail(absl::StrCat("HTTP ", (*stream)->status(), ": ",
                             body.ok() ? body->substr(0, 300) : body.status().ToString()));
  }
  std::string pending;
  std::optional<absl::Time> last_chunk;
  bool done = false, usage_seen = false;
  while (!done) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return fail("no answer within --request-timeout-s");
    auto piece = (*stream)->Read(left);
    if (!piece.ok()) return fail(piece.status().ToString());
    if (!piece->has_value()) break;  // the server ended the body
    const absl::Time now = absl::Now();
    pending += **piece;
    for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
      std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (!absl::StartsWith(event, "data: ")) continue;
      const std::string data = event.substr(6);
      if (data == "[DONE]") {
        done = true;
        break;
      }
      json chunk = json::parse(data, nullptr, /*allow_exceptions=*/false);
      if (chunk.is_discarded()) return fail("a streamed chunk is not JSON: " + data.substr(0, 200));
      if (chunk.contains("error")) return fail("error in the stream: " + chunk["error"].dump());
      if (const auto usage = chunk.find("usage"); usage != chunk.end() && usage->is_object()) {
        const auto prompt_tokens = usage->find("prompt_tokens");
        const auto completion_tokens = usage->find("completion_tokens");
        if (prompt_tokens == usage->end() || !prompt_tokens->is_number_integer() ||
            completion_tokens == usage->end() || !completion_tokens->is_number_integer()) {
          return fail("the usage chunk has no integer token counts: " + usage->dump());
        }
        rec.prompt_tokens = prompt_tokens->get<int64_t>();
        rec.completion_tokens = completion_tokens->get<int64_t>();
        usage_seen = true;
      }
      // The new text: choices[0].text (completions) or choices[0].delta.content (chat).
      const auto choices = chunk.find("choices");
      if (choices == chunk.end() || !choices->is_array() || choices->empty()) continue;
      const json& choice = (*choices)[0];
      const json* holder = &choice;
      if (o.chat) {
        const auto delta = choice.find("delta");
        if (delta == choice.end()) continue;
        holder = &*delta;
      }
      if (!holder->is_object()) continue;
      const auto text = holder->find(o.chat ? "content" : "text");
      if (text == holder->end() || !text->is_string() ||
          text->get_ref<const std::string&>().empty()) {
        continue;
      }
      if (!last_chunk.has_value()) {
        rec.ttft_ms = absl::ToDoubleMilliseconds(now - start);
      } else {
        rec.itl_ms.push_back(absl::ToDoubleMilliseconds(now - *last_chunk));
      }
      last_chunk = now;
    }
  }
  if (!done) return fail("the stream ended without [DONE]");
  if (!usage_seen) return fail("the stream carried no usage");
  if (!last_chunk.has_value()) return fail("no text was streamed");
  rec.e2e_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  rec.ok = true;
  return rec;
}

LatencySummary Summarize(std::vector<double> values) {
  LatencySummary s;
  if (values.empty()) return s;
  double sum = 0;
  for (double v : values) sum += v;
  s.mean_ms = sum / static_cast<double>(values.size());
  s.median_ms = Percentile(values, 0.5);
  s.p99_ms = Percentile(values, 0.99);
  return s;
}

absl::StatusOr<std::string> FirstModel(const ServeBenchOptions& o) {
  http::HttpClientRequest request;
  request.target = "/v1/models";
  request.headers = AuthHeaders(o);
  auto r = http::HttpFetch(o.host, o.port, request, absl::Seconds(10));
  if (!r.ok()) {
    return absl::UnavailableError(absl::StrCat("no coordinator answers at ", o.host, ":", o.port,
                                               " (", r.status().message(), ")"));
  }
  if (r->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("GET /v1/models answered HTTP ", r->status, ": ", r->body.substr(0, 300)));
  }
  json models = json::parse(r->body, nullptr, false);
  const json* id = nullptr;
  if (models.is_object() && models.contains("data") && models["data"].is_array() &&
      !models["data"].empty() && models["data"][0].is_object() &&
      models["data"][0].contains("id")) {
    id = &models["data"][0]["id"];
  }
  if (id == nullptr || !id->is_string()) {
    return absl::UnavailableError("GET /v1/models lists no model");
  }
  return id->get<std::string>();
}

}  // namespace

absl::Status CheckServeBenchOptions(const ServeBenchOptions& o) {
  if (o.num_prompts < 1) return absl::InvalidArgumentError("--num-prompts must be at least 1");
  if (o.max_concurrency < 1 || o.max_concurrency > 1024) {
    return absl::InvalidArgumentError("--max-concurrency must be in 1..1024");
  }
  if (!(o.request_rate >= 0)) return absl::InvalidArgumentError("--request-rate must be >= 0");
  if (o.input_words < 1 || o.output_tokens < 1) {
    return absl::InvalidArgumentError("--input-len and --output-len must be at least 1");
  }
  if (!(o.long_fraction >= 0 && o.long_fraction <= 1) || o.long_input_words < 1) {
    return absl::InvalidArgumentError(
        "--long-fraction must be in [0, 1] and --long-input-len at least 1");
  }
  if (o.shared_prefix_words < 0 || o.num_prefixes < 1) {
    return absl::InvalidArgumentError(
        "--shared-prefix-len must be >= 0 and --num-prefixes at least 1");
  }
  if (o.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--request-timeout-s must be positive");
  }
  return absl::OkStatus();
}

ServeBenchWorkload MakeServeBenchWorkload(const ServeBenchOptions& o) {
  std::mt19937_64 rng(o.seed);
  ServeBenchWorkload w;
  std::vector<std::string>& prompts = w.prompts;
  std::vector<absl::Duration>& arrivals = w.arrivals;
  absl::Duration at;
  std::exponential_distribution<double> gap(o.request_rate > 0 ? o.request_rate : 1.0);
  std::uniform_real_distribution<double> coin(0, 1);
  std::vector<std::string> prefixes;
  if (o.shared_prefix_words > 0) {
    for (int k = 0; k < o.num_prefixes; ++k) {
      prefixes.push_back(RandomPrompt(rng, o.shared_prefix_words) + " ");
    }
  }
  for (int i = 0; i < o.num_prompts; ++i) {
    const bool long_prompt = o.long_fraction > 0 && coin(rng) < o.long_fraction;
    prompts.push_back(RandomPrompt(rng, long_prompt ? o.long_input_words : o.input_words));
    if (!prefixes.empty()) prompts.back().insert(0, prefixes[i % prefixes.size()]);
    arrivals.push_back(at);
    if (o.request_rate > 0) at += absl::Seconds(gap(rng));
  }
  return w;
}

absl::StatusOr<ServeBenchResult> RunServeBench(const ServeBenchOptions& o) {
  KVASIR_RETURN_IF_ERROR(CheckServeBenchOptions(o));
  ServeBenchResult result;
  result.options = o;
  if (o.model.empty()) {
    KVASIR_ASSIGN_OR_RETURN(result.model, FirstModel(o));
  } else {
    result.model = o.model;
  }

  const ServeBenchWorkload workload = MakeServeBenchWorkload(o);
  const std::vector<std::string>& prompts = workload.prompts;
  const std::vector<absl::Duration>& arrivals = workload.arrivals;

  std::vector<RequestRecord> records(static_cast<size_t>(o.num_prompts));
  std::atomic<int> next{0};
  const int threads = std::min(o.max_concurrency, o.num_prompts);
  const absl::Time start = absl::Now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < o.num_prompts;) {
        absl::SleepFor(start + arrivals[i] - absl::Now());  // no-op when it is already due
        records[i] = RunRequest(o, result.model, prompts[i]);
      }
    });
  }
  for (std::thread& t : pool) t.join();
  result.duration_s = absl::ToDoubleSeconds(absl::Now() - start);

  std::vector<double> ttft, tpot, itl, e2e;
  for (const RequestRecord& r : records) {
    if (!r.ok) {
      if (result.failed++ == 0) result.first_error = r.error;
      continue;
    }
    ++result.completed;
    result.input_tokens += r.prompt_tokens;
    result.output_tokens += r.completion_tokens;
    ttft.push_back(r.ttft_ms);
    e2e.push_back(r.e2e_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    if (r.completion_tokens > 1) {
      tpot.push_back((r.e2e_ms - r.ttft_ms) / static_cast<double>(r.completion_tokens - 1));
    }
  }
  if (result.duration_s > 0) {
    result.request_throughput = result.completed / result.duration_s;
    result.output_throughput = static_cast<double>(result.output_tokens) / result.duration_s;
    result.total_token_throughput =
        static_cast<double>(result.input_tokens + result.output_tokens) / result.duration_s;
  }
  result.ttft = Summarize(std::move(ttft));
  result.tpot = Summarize(std::move(tpot));
  result.itl = Summarize(std::move(itl));
  result.e2e = Summarize(std::move(e2e));
  return result;
}

std::string FormatServeBench(const ServeBenchResult& r) {
  const ServeBenchOptions& o = r.options;
  std::string out = absl::StrFormat(
      "serving bench against %s:%d, model %s\n"
      "%d %s requests, %s, at most %d in flight, prompts of %s words, %d new tokens each\n\n",
      o.host, o.port, r.model, o.num_prompts, o.chat ? "chat" : "completion",
      o.request_rate > 0 ? absl::StrFormat("%.2f req/s (Poisson)", o.request_rate)
                         : std::string("all at once"),
      o.max_concurrency,
      absl::StrCat(o.shared_prefix_words > 0
                       ? absl::StrFormat("one of %d shared prefixes of %d + ", o.num_prefixes,
                                         o.shared_prefix_words)
                       : "",
                   o.long_fraction > 0 ? absl::StrFormat("%d (%.0f %% of them %d)", o.input_words,
                                                         100 * o.long_fraction, o.long_input_words)
                                       : absl::StrCat(o.input_words)),
      o.output_tokens);
  absl::StrAppendFormat(&out, "%-34s %12d\n", "successful requests", r.completed);
  absl::StrAppendFormat(&out, "%-34s %12d\n", "failed requests", r.failed);
  absl::StrAppendFormat(&out, "%-34s %12.2f\n", "duration (s)", r.duration_s);
  absl::StrAppendFormat(&out, "%-34s %12d\n", "input tokens", r.input_tokens);
  absl::StrAppendFormat(&out, "%-34s %12d\n", "generated tokens", r.output_tokens);
  absl::StrAppendFormat(&out, "%-34s %12.2f\n", "request throughput (req/s)", r.request_throughput);
  absl::StrAppendFormat(&out, "%-34s %12.2f\n", "output token throughput (tok/s)",
                        r.output_throughput);
  absl::StrAppendFormat(&out, "%-34s %12.2f\n", "total token throughput (tok/s)",
                        r.total_token_throughput);
  absl::StrAppendFormat(&out, "\n%-34s %10s %10s %10s\n", "latency (ms)", "mean", "median", "p99");
  const auto row = [&](const char* name, const LatencySummary& s) {
    absl::StrAppendFormat(&out, "%-34s %10.2f %10.2f %10.2f\n", name, s.mean_ms, s.median_ms,
                          s.p99_ms);
  };
  row("time to first token", r.ttft);
  row("time per output token (after 1st)", r.tpot);
  row("inter-token latency", r.itl);
  row("end-to-end", r.e2e);
  if (r.failed > 0) absl::StrAppendFormat(&out, "\nfirst error: %s\n", r.first_error);
  return out;
}

json ServeBenchJson(const ServeBenchResult& r) {
  const auto latency = [](const LatencySummary& s) {
    return json{{"mean_ms", s.mean_ms}, {"median_ms", s.median_ms}, {"p99_ms", s.p99_ms}};
  };
  json out = {
      {"model", r.model},
      {"endpoint", r.options.chat ? "/v1/chat/completions" : "/v1/completions"},
      {"num_prompts", r.options.num_prompts},
      {"request_rate", r.options.request_rate > 0 ? json(r.options.request_rate) : json("inf")},
      {"max_concurrency", r.options.max_concurrency},
      {"input_words", r.options.input_words},
      {"long_fraction", r.options.long_fraction},
      {"long_input_words", r.options.long_input_words},
      {"shared_prefix_words", r.options.shared_prefix_words},
      {"num_prefixes", r.options.num_prefixes},
      {"output_tokens_per_request", r.options.output_tokens},
      {"completed", r.completed},
      {"failed", r.failed},
      {"duration_s", r.duration_s},
      {"input_tokens", r.input_tokens},
      {"output_tokens", r.output_tokens},
      {"request_throughput", r.request_throughput},
      {"output_throughput", r.output_throughput},
      {"total_token_throughput", r.total_token_throughput},
      {"ttft", latency(r.ttft)},
      {"tpot", latency(r.tpot)},
      {"itl", latency(r.itl)},
      {"e2e", latency(r.e2e)}};
  if (r.failed > 0) out["first_error"] = r.first_error;
  return out;
}

}  // namespace kvasir::cli
