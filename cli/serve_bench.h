// `kvasir bench serve`: load against a running coordinator, shaped like vLLM's benchmark_serving.
// Requests arrive by a Poisson process at --request-rate (or all at once), at most
// --max-concurrency are in flight, each a streamed /v1/completions call (or, with --chat, a
// /v1/chat/completions call with the prompt as the user message) with a random prompt of
// common words and a fixed number of new tokens (ignore_eos). Reported: request and token
// throughput, and mean/median/p99 of time to first token (TTFT), time per output token after the
// first (TPOT), inter-token latency (ITL, between streamed chunks) and end-to-end latency.
//
//   ServeBenchOptions o;
//   o.port = 8000;
//   KVASIR_ASSIGN_OR_RETURN(ServeBenchResult r, RunServeBench(o));
//   std::cout << FormatServeBench(r);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace kvasir::cli {

struct ServeBenchOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;
  std::string model;         // served model name; "" = the first one /v1/models lists
  bool chat = false;         // /v1/chat/completions (one user message) instead of /v1/completions
  int num_prompts = 64;      // requests sent in all
  double request_rate = 0;   // requests per second (Poisson arrivals); 0 = all at once
  int max_concurrency = 16;  // requests in flight at once
  int input_words = 64;      // prompt length in common English words (about one token each)
  // A mixed workload: this fraction of the requests (chosen from the seed) has prompts of
  // long_input_words instead (0: none).
  double long_fraction = 0;
  int long_input_words = 2048;
  // A shared-prefix workload (like SGLang's generated-shared-prefix): num_prefixes system
  // prompts of shared_prefix_words words each, every request starting with one of them (request
  // i with prefix i % num_prefixes) followed by its own prompt (0: no shared prefix).
  int shared_prefix_words = 0;
  int num_prefixes = 8;
  int output_tokens = 64;  // max_tokens of every request, with ignore_eos
  uint64_t seed = 0;       // prompts and arrival times
  std::string api_key;     // sent as a bearer token when not empty
  std::string kv_policy;   // the kv_policy field of every request ("" = the server's default)
  absl::Duration request_timeout = absl::Seconds(300);  // per request, from its start
};

// The requests of a run, all drawn from the seed: each prompt, and when it is sent (an offset
// from the start; all zero when every request goes at once).
struct ServeBenchWorkload {
  std::vector<std::string> prompts;
  std::vector<absl::Duration> arrivals;
};
ServeBenchWorkload MakeServeBenchWorkload(const ServeBenchOptions& options);

struct LatencySummary {
  double mean_ms = 0;
  double median_ms = 0;
  double p99_ms = 0;
};

struct ServeBenchResult {
  ServeBenchOptions options;
  std::string model;
  int completed = 0;
  int failed = 0;
  std::string first_error;        // of the first failed request
  double duration_s = 0;          // from the first request sent to the last answer
  int64_t input_tokens = 0;       // prompt tokens of the completed requests (from `usage`)
  int64_t output_tokens = 0;      // generated tokens of the completed requests (from `usage`)
  double request_throughput = 0;  // completed requests per second
  double output_throughput = 0;   // generated tokens per second
  double total_token_throughput = 0;
  LatencySummary ttft, tpot, itl, e2e;
};

// InvalidArgument naming the flag when an option is out of range.
absl::Status CheckServeBenchOptions(const ServeBenchOptions& options);

// Runs the benchmark. InvalidArgument for bad options; Unavailable when the coordinator does not
// answer /v1/models. Failed requests are counted (with the first error), not returned.
absl::StatusOr<ServeBenchResult> RunServeBench(const ServeBenchOptions& options);

std::string FormatServeBench(const ServeBenchResult& result);
nlohmann::json ServeBenchJson(const ServeBenchResult& result);

}  // namespace kvasir::cli
