// The OpenAI-compatible request and response shapes of the coordinator: parsing and validation
// of /v1/completions and /v1/chat/completions bodies (types, ranges, unsupported options), the
// error object {"error": {"message", "type", "param", "code"}} with OpenAI's string codes, and the
// JSON of responses and streamed chunks. No I/O here: coordinator.cc drives it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "transport/http/server.h"

namespace kvasir::coordinator {

// An API error: HTTP status plus OpenAI's error object.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;      // "" -> null
  std::string code;       // "" -> null
  int retry_after_s = 0;  // > 0: sent as Retry-After
};

ApiError InvalidRequest(std::string message, std::string param = "", std::string code = "");
// {"error": {...}}
nlohmann::json ErrorJson(const ApiError& error);

enum class Endpoint { kCompletions, kChat };

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;  // "" when not given
  // /v1/completions: the prompt as text, or as token ids.
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_ids;
  // /v1/chat/completions.
  std::vector<model::ChatMessage> messages;

  std::optional<int32_t> max_tokens;
  float temperature = 1.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;  // 0: off (-1 is accepted and means off, as in vLLM)
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  int32_t n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int32_t logprobs = -1;       // < 0: none; else the number of alternatives per token
  bool ignore_eos = false;
  std::string kv_policy;  // "" = the worker's default
};

// Parses and validates a request body. On failure returns the error (400 for malformed JSON,
// wrong types, values out of range and unsupported options).
std::optional<ApiError> ParseCompletionRequest(std::string_view body, Endpoint endpoint,
                                               CompletionRequest* out);

// One token's log probability and the most likely alternatives.
struct LogprobEntry {
  int32_t id = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

// What one choice produced.
struct ChoiceOutput {
  std::string text;
  std::vector<int32_t> ids;
  std::vector<LogprobEntry> logprobs;
  std::string finish_reason;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// Identity of one response: shared by all its chunks.
struct ResponseMeta {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};

// The complete (non-streamed) response.
nlohmann::json CompletionResponseJson(const CompletionRequest& request, const ResponseMeta& meta,
                                      const std::vector<ChoiceOutput>& choices, const Usage& usage,
                                      const model::Tokenizer& tokenizer);

// One streamed chunk for choice `index`: new text (and its logprobs), and the finish reason on
// the last one. `first` adds the assistant role to a chat chunk's delta.
nlohmann::json ChunkJson(const CompletionRequest& request, const ResponseMeta& meta, int index,
                         const std::string& text, const std::vector<LogprobEntry>& logprobs,
                         const std::string& finish_reason, bool first,
                         const model::Tokenizer& tokenizer);

// The final usage chunk of a stream with stream_options.include_usage: "choices": [].
nlohmann::json UsageChunkJson(const CompletionRequest& request, const ResponseMeta& meta,
                              const Usage& usage);

// JSON text that never throws: invalid UTF-8 becomes U+FFFD.
std::string Dump(const nlohmann::json& j);
// "data: <json>\n\n"
std::string SseEvent(const nlohmann::json& j);

// An HTTP response with `body` as JSON.
transport::http::HttpResponse JsonResponse(int status, const nlohmann::json& body);
// 503 service_unavailable with `message`.
ApiError ServiceUnavailable(std::string message);

}  // namespace kvasir::coordinator
