// coordinator/api: parsing and validation of OpenAI request bodies, and the JSON of responses,
// chunks and errors.
#include "coordinator/api.h"

#include "gtest/gtest.h"
#include "model/model_files.h"
#include "tests/testing/paths.h"

namespace kvasir::coordinator {
namespace {

using json = nlohmann::json;

CompletionRequest ParseOk(const std::string& body, Endpoint endpoint = Endpoint::kCompletions) {
  CompletionRequest r;
  std::optional<ApiError> e = ParseCompletionRequest(body, endpoint, &r);
  EXPECT_FALSE(e.has_value()) << body << " -> " << (e ? e->message : "");
  return r;
}

ApiError ParseError(const std::string& body, Endpoint endpoint = Endpoint::kCompletions) {
  CompletionRequest r;
  std::optional<ApiError> e = ParseCompletionRequest(body, endpoint, &r);
  EXPECT_TRUE(e.has_value()) << body << " was accepted";
  return e.value_or(ApiError{});
}

TEST(ApiTest, CompletionDefaultsAndFields) {
  CompletionRequest r = ParseOk(R"({"model": "m", "prompt": "Hello"})");
  EXPECT_EQ(r.model, "m");
  ASSERT_TRUE(r.prompt_text.has_value());
  EXPECT_EQ(*r.prompt_text, "Hello");
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_FLOAT_EQ(r.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.top_p, 1.0f);
  EXPECT_EQ(r.top_k, 0);
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(r.logprobs, -1);
  EXPECT_FALSE(r.seed.has_value());

  r = ParseOk(R"({"prompt": "x", "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 5,
                  "seed": -3, "stop": ["a", "bc"], "n": 3, "stream": true,
                  "stream_options": {"include_usage": true}, "logprobs": 2,
                  "kv_policy": "streaming:sink=4,window=60", "ignore_eos": true,
                  "stop_token_ids": [2, 3], "user": "u", "frequency_penalty": 0})");
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.top_p, 0.5f);
  EXPECT_EQ(r.top_k, 5);
  EXPECT_EQ(*r.seed, static_cast<uint64_t>(-3));
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.logprobs, 2);
  EXPECT_EQ(r.kv_policy, "streaming:sink=4,window=60");
  EXPECT_TRUE(r.ignore_eos);
  EXPECT_EQ(r.stop_token_ids, (std::vector<int32_t>{2, 3}));

  EXPECT_EQ(ParseOk(R"({"prompt": "x", "stop": "END"})").stop, (std::vector<std::string>{"END"}));
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "top_k": -1})").top_k, 0);
}

TEST(ApiTest, PromptForms) {
  EXPECT_EQ(*ParseOk(R"({"prompt": ["one"]})").prompt_text, "one");
  EXPECT_EQ(ParseOk(R"({"prompt": [1, 2, 3]})").prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(ParseOk(R"({"prompt": [[4, 5]]})").prompt_ids, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(ParseError(R"({"prompt": ["a", "b"]})").param, "prompt");
  EXPECT_EQ(ParseError(R"({"prompt": []})").param, "prompt");
  EXPECT_EQ(ParseError(R"({"prompt": [1, "a"]})").param, "prompt");
  EXPECT_EQ(ParseError(R"({"prompt": [-1]})").param, "prompt");
  EXPECT_EQ(ParseError(R"({"prompt": 5})").code, "invalid_type");
  ApiError missing = ParseError(R"({"model": "m"})");
  EXPECT_EQ(missing.param, "prompt");
  EXPECT_EQ(missing.http_status, 400);
}

TEST(ApiTest, ChatMessages) {
  CompletionRequest r = ParseOk(
      R"({"messages": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                    {"type": "text", "text": "there"}]},
                       {"role": "assistant", "content": null},
                       {"role": "developer", "content": "d"}],
          "logprobs": true, "top_logprobs": 3, "max_completion_tokens": 9})",
      Endpoint::kChat);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.messages[3].role, "system");
  EXPECT_EQ(r.logprobs, 3);
  EXPECT_EQ(*r.max_tokens, 9);
  EXPECT_EQ(ParseOk(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})",
                    Endpoint::kChat)
                .logprobs,
            0);

  EXPECT_EQ(ParseError(R"({"messages": []})", Endpoint::kChat).param, "messages");
  EXPECT_EQ(ParseError(R"({"messages": "hi"})", Endpoint::kChat).code, "invalid_type");
  EXPECT_EQ(ParseError(R"({"messages": [{"content": "x"}]})", Endpoint::kChat).param,
            "messages[0].role");
  EXPECT_EQ(
      ParseError(R"({"messages": [{"role": "wizard", "content": "x"}]})", Endpoint::kChat).param,
      "messages[0].role");
  EXPECT_EQ(ParseError(R"({"messages": [{"role": "user"}]})", Endpoint::kChat).param,
            "messages[0].content");
  EXPECT_EQ(ParseError(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
                       Endpoint::kChat)
                .param,
            "messages[0].content");
  EXPECT_EQ(ParseError(R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})",
                       Endpoint::kChat)
                .param,
            "top_logprobs");
}

TEST(ApiTest, RejectsMalformedJsonAndWrongTypes) {
  for (const char* body : {"", "{", "not json", "{\"prompt\": \"x\",}", "[1, 2]", "\"str\"",
                           "{\"prompt\": \"x\"} trailing"}) {
    ApiError e = ParseError(body);
    EXPECT_EQ(e.http_status, 400) << body;
    EXPECT_EQ(e.type, "invalid_request_error") << body;
  }
  struct Case {
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {R"({"prompt": "x", "max_tokens": "5"})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 1.5})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 99999999999})", "max_tokens"},
      {R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "x", "temperature": 2.5})", "temperature"},
      {R"({"prompt": "x", "top_p": 0})", "top_p"},
      {R"({"prompt": "x", "top_p": 1.1})", "top_p"},
      {R"({"prompt": "x", "top_k": -2})", "top_k"},
      {R"({"prompt": "x", "n": 0})", "n"},
      {R"({"prompt": "x", "n": 100})", "n"},
      {R"({"prompt": "x", "stream": "yes"})", "stream"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
      {R"({"prompt": "x", "stream": true, "stream_options": 3})", "stream_options"},
      {R"({"prompt": "x", "stop": 5})", "stop"},
      {R"({"prompt": "x", "stop": [""]})", "stop"},
      {R"({"prompt": "x", "stop": ["a", 1]})", "stop"},
      {R"({"prompt": "x", "seed": "1"})", "seed"},
      {R"({"prompt": "x", "logprobs": 21})", "logprobs"},
      {R"({"prompt": "x", "model": 7})", "model"},
      {R"({"prompt": "x", "echo": true})", "echo"},
      {R"({"prompt": "x", "frequency_penalty": 0.5})", "frequency_penalty"},
      {R"({"prompt": "x", "logit_bias": {"1": 5}})", "logit_bias"},
      {R"({"prompt": "x", "best_of": 2})", "best_of"},
      {R"({"prompt": "x", "kv_policy": 1})", "kv_policy"},
      {R"({"prompt": "x", "stop_token_ids": [1.5]})", "stop_token_ids"},
  };
  for (const Case& c : cases) {
    ApiError e = ParseError(c.body);
    EXPECT_EQ(e.http_status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.message;
    EXPECT_FALSE(e.message.empty());
  }
  EXPECT_EQ(ParseError(R"({"prompt": "x", "max_tokens": "5"})").message,
            "Invalid type for 'max_tokens': expected an integer, but got string instead.");
}

TEST(ApiTest, DeeplyNestedJsonIsJustBad) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  EXPECT_EQ(ParseError(deep).http_status, 400);
  const std::string open = "{\"prompt\": " + std::string(100000, '[');
  EXPECT_EQ(ParseError(open).http_status, 400);
  const std::string nested_prompt =
      "{\"prompt\": " + std::string(1000, '[') + "1" + std::string(1000, ']') + "}";
  EXPECT_EQ(ParseError(nested_prompt).param, "prompt");
}

TEST(ApiTest, ErrorShape) {
  ApiError e = InvalidRequest("bad", "prompt", "context_length_exceeded");
  json j = ErrorJson(e);
  EXPECT_EQ(j["error"]["message"], "bad");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "prompt");
  EXPECT_EQ(j["error"]["code"], "context_length_exceeded");
  j = ErrorJson(InvalidRequest("x"));
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_TRUE(j["error"]["code"].is_null());
  EXPECT_EQ(SseEvent(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  // Invalid UTF-8 never throws.
  EXPECT_EQ(Dump(json{{"t", std::string("\xff")}}), "{\"t\":\"\xEF\xBF\xBD\"}");
}

class ApiResponseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto files = model::ModelFiles::Open(testing::SharedPath("models/stories260K.gguf"));
    ASSERT_TRUE(files.ok()) << files.status();
    files_ = std::move(*files);
    auto tok = model::Tokenizer::FromGguf(*files_->gguf());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(*tok);
  }
  std::unique_ptr<model::ModelFiles> files_;
  std::unique_ptr<model::Tokenizer> tok_;
};

TEST_F(ApiResponseTest, CompletionAndChatResponses) {
  ResponseMeta meta{"cmpl-1", 1700000000, "stories260K"};
  ChoiceOutput c;
  c.text = " there was";
  c.ids = {100, 101};
  c.finish_reason = "length";
  CompletionRequest completion = ParseOk(R"({"prompt": "x"})");
  json j = CompletionResponseJson(completion, meta, {c}, {5, 2}, *tok_);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"], "cmpl-1");
  EXPECT_EQ(j["model"], "stories260K");
  EXPECT_EQ(j["choices"][0]["text"], " there was");
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(j["usage"]["completion_tokens"], 2);
  EXPECT_EQ(j["usage"]["total_tokens"], 7);

  CompletionRequest chat =
      ParseOk(R"({"messages": [{"role": "user", "content": "x"}]})", Endpoint::kChat);
  j = CompletionResponseJson(chat, meta, {c, c}, {5, 4}, *tok_);
  EXPECT_EQ(j["object"], "chat.completion");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][1]["message"]["content"], " there was");
}

TEST_F(ApiResponseTest, LogprobsShapes) {
  ResponseMeta meta{"x", 1, "m"};
  ChoiceOutput c;
  c.text = "ab";
  c.ids = {100, 101};
  c.logprobs = {{100, -0.5f, {{100, -0.5f}, {7, -1.5f}}},
                {101, -0.25f, {{101, -0.25f}, {9, -2.f}}}};
  CompletionRequest completion = ParseOk(R"({"prompt": "x", "logprobs": 2})");
  json j = CompletionResponseJson(completion, meta, {c}, {1, 2}, *tok_);
  const json& lp = j["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 2u);
  EXPECT_EQ(lp["tokens"][0], tok_->TokenToPiece(100));
  EXPECT_FLOAT_EQ(lp["token_logprobs"][1].get<float>(), -0.25f);
  EXPECT_EQ(lp["top_logprobs"][0].size(), 2u);
  EXPECT_EQ(lp["text_offset"][0], 0);
  EXPECT_EQ(lp["text_offset"][1], tok_->TokenToPiece(100).size());

  CompletionRequest chat = ParseOk(
      R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 2})",
      Endpoint::kChat);
  j = CompletionResponseJson(chat, meta, {c}, {1, 2}, *tok_);
  const json& content = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], tok_->TokenToPiece(100));
  EXPECT_FLOAT_EQ(content[0]["logprob"].get<float>(), -0.5f);
  EXPECT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[0]["top_logprobs"][1]["token"], tok_->TokenToPiece(7));
  EXPECT_TRUE(content[0]["bytes"].is_array());
}

TEST_F(ApiResponseTest, StreamChunks) {
  ResponseMeta meta{"chatcmpl-9", 2, "m"};
  CompletionRequest chat = ParseOk(
      R"({"messages": [{"role": "user", "content": "x"}], "stream": true,
          "stream_options": {"include_usage": true}})",
      Endpoint::kChat);
  json first = ChunkJson(chat, meta, 0, "", {}, "", true, *tok_);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first.contains("usage"));
  EXPECT_TRUE(first["usage"].is_null());
  json text = ChunkJson(chat, meta, 0, "Hi", {}, "", false, *tok_);
  EXPECT_FALSE(text["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(text["choices"][0]["delta"]["content"], "Hi");
  json last = ChunkJson(chat, meta, 0, "", {}, "stop", false, *tok_);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  json usage = UsageChunkJson(chat, meta, {3, 4});
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 7);

  CompletionRequest completion = ParseOk(R"({"prompt": "x", "stream": true})");
  json c = ChunkJson(completion, meta, 1, "abc", {}, "", false, *tok_);
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["index"], 1);
  EXPECT_EQ(c["choices"][0]["text"], "abc");
  EXPECT_FALSE(c.contains("usage"));
}

}  // namespace
}  // namespace kvasir::coordinator
