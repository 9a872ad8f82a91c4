// The OpenAI request/response shapes (see api.h).
#include "coordinator/api.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace kvasir::coordinator {

using json = nlohmann::json;

ApiError InvalidRequest(std::string message, std::string param, std::string code) {
  ApiError e;
  e.http_status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

json ErrorJson(const ApiError& error) {
  json e;
  e["message"] = error.message;
  e["type"] = error.type;
  e["param"] = error.param.empty() ? json(nullptr) : json(error.param);
  e["code"] = error.code.empty() ? json(nullptr) : json(error.code);
  return json{{"error", e}};
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string SseEvent(const json& j) { return absl::StrCat("data: ", Dump(j), "\n\n"); }

transport::http::HttpResponse JsonResponse(int status, const json& body) {
  transport::http::HttpResponse r;
  r.status = status;
  r.body = Dump(body);
  return r;
}

ApiError ServiceUnavailable(std::string message) {
  ApiError e;
  e.http_status = 503;
  e.type = "server_error";
  e.code = "service_unavailable";
  e.message = std::move(message);
  return e;
}

namespace {

const char* Article(std::string_view what) {
  return what.empty() || std::string_view("aeiou").find(what[0]) == std::string_view::npos ? "a"
                                                                                           : "an";
}

ApiError TypeError(std::string_view name, std::string_view expected, const json& got) {
  return InvalidRequest(
      absl::StrCat("Invalid type for '", std::string(name), "': expected ", Article(expected), " ",
                   std::string(expected), ", but got ", got.type_name(), " instead."),
      std::string(name), "invalid_type");
}

ApiError ValueError(std::string_view name, std::string_view rule) {
  return InvalidRequest(
      absl::StrCat("Invalid value for '", std::string(name), "': ", std::string(rule), "."),
      std::string(name), "invalid_value");
}

// Each getter leaves *out alone when the field is absent or null.
std::optional<ApiError> GetBool(const json& o, const char* name, bool* out) {
  auto it = o.find(name);
  if (it == o.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) return TypeError(name, "boolean", *it);
  *out = it->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> GetInt(const json& o, const char* name, int64_t lo, int64_t hi,
                               std::optional<int64_t>* out) {
  auto it = o.find(name);
  if (it == o.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) return TypeError(name, "integer", *it);
  if (it->is_number_unsigned()) {
    const uint64_t v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(hi) || (lo > 0 && v < static_cast<uint64_t>(lo))) {
      return ValueError(name, absl::StrCat("must be between ", lo, " and ", hi));
    }
    *out = static_cast<int64_t>(v);
    return std::nullopt;
  }
  const int64_t v = it->get<int64_t>();
  if (v < lo || v > hi) return ValueError(name, absl::StrCat("must be between ", lo, " and ", hi));
  *out = v;
  return std::nullopt;
}

std::optional<ApiError> GetNumber(const json& o, const char* name, double lo, double hi,
                                  bool lo_open, float* out) {
  auto it = o.find(name);
  if (it == o.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return TypeError(name, "number", *it);
  const double v = it->get<double>();
  if (!(lo_open ? v > lo : v >= lo) || !(v <= hi)) {
    return ValueError(name, absl::StrCat("must be ", lo_open ? "greater than " : "at least ", lo,
                                         " and at most ", hi));
  }
  *out = static_cast<float>(v);
  return std::nullopt;
}

std::optional<ApiError> GetString(const json& o, const char* name, std::string* out) {
  auto it = o.find(name);
  if (it == o.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) return TypeError(name, "string", *it);
  *out = it->get<std::string>();
  return std::nullopt;
}

std::optional<ApiError> GetTokenIds(const json& array, const char* name,
                                    std::vector<int32_t>* out) {
  out->clear();
  for (const json& v : array) {
    if (!v.is_number_integer()) return TypeError(name, "array of token ids", v);
    if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX)
                               : (v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)) {
      return ValueError(name, "token ids must be non-negative 32-bit integers");
    }
    out->push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return std::nullopt;
}

std::optional<ApiError> ParsePrompt(const json& body, CompletionRequest* out) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) {
    return InvalidRequest("Missing required parameter: 'prompt'.", "prompt", "missing_required");
  }
  const json& p = *it;
  if (p.is_string()) {
    out->prompt_text = p.get<std::string>();
    return std::nullopt;
  }
  if (!p.is_array()) return TypeError("prompt", "string or array", p);
  if (p.empty()) return ValueError("prompt", "must not be empty");
  if (p[0].is_string() || p[0].is_array()) {
    if (p.size() > 1) {
      return InvalidRequest("Only one prompt per request is supported; send several requests.",
                            "prompt");
    }
    if (p[0].is_string()) {
      out->prompt_text = p[0].get<std::string>();
      return std::nullopt;
    }
    if (p[0].empty()) return ValueError("prompt", "must not be empty");
    return GetTokenIds(p[0], "prompt", &out->prompt_ids);
  }
  return GetTokenIds(p, "prompt", &out->prompt_ids);
}

std::optional<ApiError> ParseMessages(const json& body, CompletionRequest* out) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null()) {
    return InvalidRequest("Missing required parameter: 'messages'.", "messages",
                          "missing_required");
  }
  if (!it->is_array()) return TypeError("messages", "array", *it);
  if (it->empty()) return ValueError("messages", "must contain at least one message");
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return TypeError(where, "object", m);
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return InvalidRequest(absl::StrCat("Missing or invalid '", where, ".role'."),
                            where + ".role");
    }
    model::ChatMessage message;
    message.role = role->get<std::string>();
    if (message.role == "developer") message.role = "system";
    if (message.role != "system" && message.role != "user" && message.role != "assistant") {
      return InvalidRequest(
          absl::StrCat("Invalid value for '", where, ".role': '", message.role,
                       "' is not supported (system, developer, user or assistant)."),
          where + ".role", "invalid_value");
    }
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      if (message.role != "assistant") {
        return InvalidRequest(absl::StrCat("Missing '", where, ".content'."), where + ".content");
      }
    } else if (content->is_string()) {
      message.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (const json& part : *content) {
        auto type = part.is_object() ? part.find("type") : part.end();
        auto text = part.is_object() ? part.find("text") : part.end();
        if (!part.is_object() || type == part.end() || !type->is_string() ||
            type->get<std::string>() != "text" || text == part.end() || !text->is_string()) {
          return InvalidRequest(
              absl::StrCat("Only text content parts are supported in '", where, ".content'."),
              where + ".content");
        }
        message.content += text->get<std::string>();
      }
    } else {
      return TypeError(where + ".content", "string or array", *content);
    }
    out->messages.push_back(std::move(message));
  }
  return std::nullopt;
}

// Parameters we accept only with their neutral value.
std::optional<ApiError> RefuseUnsupported(const json& body) {
  for (const char* name : {"frequency_penalty", "presence_penalty"}) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) continue;
    if (!it->is_number()) return TypeError(name, "number", *it);
    if (it->get<double>() != 0.0) {
      return InvalidRequest(absl::StrCat("'", name, "' is not supported (use 0)."), name);
    }
  }
  for (const char* name : {"logit_bias", "tools", "functions", "tool_choice", "suffix"}) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) continue;
    if ((it->is_object() || it->is_array() || it->is_string()) && it->empty()) continue;
    if (std::string_view(name) == "tool_choice" && it->is_string() &&
        it->get<std::string>() == "none") {
      continue;
    }
    return InvalidRequest(absl::StrCat("'", name, "' is not supported."), name);
  }
  auto best_of = body.find("best_of");
  if (best_of != body.end() && !best_of->is_null() &&
      !(best_of->is_number_integer() && best_of->get<int64_t>() == 1)) {
    return InvalidRequest("'best_of' is not supported (use 1).", "best_of");
  }
  auto format = body.find("response_format");
  if (format != body.end() && !format->is_null()) {
    auto type = format->is_object() ? format->find("type") : format->end();
    if (!format->is_object() || type == format->end() || !type->is_string() ||
        type->get<std::string>() != "text") {
      return InvalidRequest("Only response_format {\"type\": \"text\"} is supported.",
                            "response_format");
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<ApiError> ParseCompletionRequest(std::string_view text, Endpoint endpoint,
                                               CompletionRequest* out) {
  *out = CompletionRequest();
  out->endpoint = endpoint;
  const json body = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return InvalidRequest(
        "We could not parse the JSON body of your request. The OpenAI API expects a JSON "
        "payload.");
  }
  if (!body.is_object()) {
    return InvalidRequest("The request body must be a JSON object.");
  }
  if (auto e = GetString(body, "model", &out->model)) return e;
  if (endpoint == Endpoint::kCompletions) {
    if (auto e = ParsePrompt(body, out)) return e;
    bool echo = false;
    if (auto e = GetBool(body, "echo", &echo)) return e;
    if (echo) return InvalidRequest("'echo' is not supported.", "echo");
  } else {
    if (auto e = ParseMessages(body, out)) return e;
  }
  if (auto e = RefuseUnsupported(body)) return e;

  std::optional<int64_t> v;
  const char* max_name = "max_tokens";
  if (endpoint == Endpoint::kChat) {
    auto mct = body.find("max_completion_tokens");
    if (mct != body.end() && !mct->is_null()) max_name = "max_completion_tokens";
  }
  if (auto e = GetInt(body, max_name, 1, INT32_MAX, &v)) return e;
  if (v) out->max_tokens = static_cast<int32_t>(*v);
  if (auto e = GetNumber(body, "temperature", 0, 2, false, &out->temperature)) return e;
  if (auto e = GetNumber(body, "top_p", 0, 1, true, &out->top_p)) return e;
  v.reset();
  if (auto e = GetInt(body, "top_k", -1, INT32_MAX, &v)) return e;
  if (v) out->top_k = *v < 0 ? 0 : static_cast<int32_t>(*v);
  if (auto e = GetNumber(body, "min_p", 0, 1, false, &out->min_p)) return e;
  if (auto e = GetNumber(body, "repetition_penalty", 0, 2, true, &out->repetition_penalty)) {
    return e;
  }
  v.reset();
  if (auto e = GetInt(body, "seed", INT64_MIN, INT64_MAX, &v)) return e;
  if (v) out->seed = static_cast<uint64_t>(*v);
  v.reset();
  if (auto e = GetInt(body, "n", 1, 16, &v)) return e;
  if (v) out->n = static_cast<int32_t>(*v);

  auto stop = body.find("stop");
  if (stop != body.end() && !stop->is_null()) {
    if (stop->is_string()) {
      out->stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > 16) return ValueError("stop", "at most 16 stop sequences");
      for (const json& s : *stop) {
        if (!s.is_string()) return TypeError("stop", "string or array of strings", s);
        out->stop.push_back(s.get<std::string>());
      }
    } else {
      return TypeError("stop", "string or array of strings", *stop);
    }
    for (const std::string& s : out->stop) {
      if (s.empty()) return ValueError("stop", "stop sequences must not be empty");
    }
  }
  auto stop_ids = body.find("stop_token_ids");
  if (stop_ids != body.end() && !stop_ids->is_null()) {
    if (!stop_ids->is_array()) return TypeError("stop_token_ids", "array", *stop_ids);
    if (auto e = GetTokenIds(*stop_ids, "stop_token_ids", &out->stop_token_ids)) return e;
  }

  if (auto e = GetBool(body, "stream", &out->stream)) return e;
  auto options = body.find("stream_options");
  if (options != body.end() && !options->is_null()) {
    if (!out->stream) {
      return InvalidRequest(
          "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
          "stream_options");
    }
    if (!options->is_object()) return TypeError("stream_options", "object", *options);
    if (auto e = GetBool(*options, "include_usage", &out->include_usage)) return e;
  }

  if (endpoint == Endpoint::kCompletions) {
    v.reset();
    if (auto e = GetInt(body, "logprobs", 0, 20, &v)) return e;
    if (v) out->logprobs = static_cast<int32_t>(*v);
  } else {
    bool logprobs = false;
    if (auto e = GetBool(body, "logprobs", &logprobs)) return e;
    v.reset();
    if (auto e = GetInt(body, "top_logprobs", 0, 20, &v)) return e;
    if (v && !logprobs) {
      return InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs");
    }
    if (logprobs) out->logprobs = v ? static_cast<int32_t>(*v) : 0;
  }
  if (auto e = GetBool(body, "ignore_eos", &out->ignore_eos)) return e;
  if (auto e = GetString(body, "kv_policy", &out->kv_policy)) return e;
  std::string user;
  if (auto e = GetString(body, "user", &user)) return e;
  return std::nullopt;
}

namespace {

json BytesOf(const std::string& piece) {
  json bytes = json::array();
  for (unsigned char c : piece) bytes.push_back(static_cast<int>(c));
  return bytes;
}

json CompletionLogprobs(const std::vector<LogprobEntry>& entries, const model::Tokenizer& tokenizer,
                        int64_t offset) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  for (const LogprobEntry& e : entries) {
    const std::string piece = tokenizer.TokenToPiece(e.id);
    tokens.push_back(piece);
    token_logprobs.push_back(e.logprob);
    json alternatives = json::object();
    for (const auto& [id, lp] : e.top) alternatives[tokenizer.TokenToPiece(id)] = lp;
    top.push_back(alternatives);
    offsets.push_back(offset);
    offset += static_cast<int64_t>(piece.size());
  }
  return json{{"tokens", tokens},
              {"token_logprobs", token_logprobs},
              {"top_logprobs", top},
              {"text_offset", offsets}};
}

json ChatLogprobs(const std::vector<LogprobEntry>& entries, const model::Tokenizer& tokenizer) {
  json content = json::array();
  for (const LogprobEntry& e : entries) {
    const std::string piece = tokenizer.TokenToPiece(e.id);
    json top = json::array();
    for (const auto& [id, lp] : e.top) {
      const std::string alt = tokenizer.TokenToPiece(id);
      top.push_back({{"token", alt}, {"logprob", lp}, {"bytes", BytesOf(alt)}});
    }
    content.push_back({{"token", piece},
                       {"logprob", e.logprob},
                       {"bytes", BytesOf(piece)},
                       {"top_logprobs", top}});
  }
  return json{{"content", content}};
}

json UsageJson(const Usage& usage) {
  return json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
}

}  // namespace

json CompletionResponseJson(const CompletionRequest& request, const ResponseMeta& meta,
                            const std::vector<ChoiceOutput>& choices, const Usage& usage,
                            const model::Tokenizer& tokenizer) {
  const bool chat = request.endpoint == Endpoint::kChat;
  json out;
  out["id"] = meta.id;
  out["object"] = chat ? "chat.completion" : "text_completion";
  out["created"] = meta.created;
  out["model"] = meta.model;
  json list = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceOutput& c = choices[i];
    json choice;
    choice["index"] = i;
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    } else {
      choice["text"] = c.text;
    }
    if (request.logprobs >= 0) {
      choice["logprobs"] =
          chat ? ChatLogprobs(c.logprobs, tokenizer) : CompletionLogprobs(c.logprobs, tokenizer, 0);
    } else {
      choice["logprobs"] = nullptr;
    }
    choice["finish_reason"] = c.finish_reason.empty() ? json(nullptr) : json(c.finish_reason);
    list.push_back(std::move(choice));
  }
  out["choices"] = std::move(list);
  out["usage"] = UsageJson(usage);
  return out;
}

json ChunkJson(const CompletionRequest& request, const ResponseMeta& meta, int index,
               const std::string& text, const std::vector<LogprobEntry>& logprobs,
               const std::string& finish_reason, bool first, const model::Tokenizer& tokenizer) {
  const bool chat = request.endpoint == Endpoint::kChat;
  json out;
  out["id"] = meta.id;
  out["object"] = chat ? "chat.completion.chunk" : "text_completion";
  out["created"] = meta.created;
  out["model"] = meta.model;
  json choice;
  choice["index"] = index;
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  if (request.logprobs >= 0 && !logprobs.empty()) {
    choice["logprobs"] =
        chat ? ChatLogprobs(logprobs, tokenizer) : CompletionLogprobs(logprobs, tokenizer, 0);
  } else {
    choice["logprobs"] = nullptr;
  }
  choice["finish_reason"] = finish_reason.empty() ? json(nullptr) : json(finish_reason);
  out["choices"] = json::array({std::move(choice)});
  if (request.include_usage) out["usage"] = nullptr;
  return out;
}

json UsageChunkJson(const CompletionRequest& request, const ResponseMeta& meta,
                    const Usage& usage) {
  const bool chat = request.endpoint == Endpoint::kChat;
  json out;
  out["id"] = meta.id;
  out["object"] = chat ? "chat.completion.chunk" : "text_completion";
  out["created"] = meta.created;
  out["model"] = meta.model;
  out["choices"] = json::array();
  out["usage"] = UsageJson(usage);
  return out;
}

}  // namespace kvasir::coordinator
