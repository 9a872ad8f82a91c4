// Chat rendering (ChatML with SmolLM2's default system message, Meta's Llama-2 format) and
// template detection from the real GGUFs.
#include "model/tokenizer/chat_template.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "tests/model/tokenizer/tokenizer_test_util.h"

namespace kvasir::model {
namespace {

using ::testing::ElementsAre;

// SmolLM2-Instruct's Jinja template (model-formats.md §2).
constexpr char kSmolLmTemplate[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

std::unique_ptr<Tokenizer> Load(const std::string& path) {
  absl::StatusOr<GgufFile> gguf = GgufFile::Open(path);
  EXPECT_TRUE(gguf.ok()) << gguf.status();
  if (!gguf.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(*gguf);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(ChatTemplateTest, ChatMlWithSmolLmDefaultSystem) {
  const std::vector<ChatMessage> messages = {{"user", "What is 2+2?"}};
  EXPECT_EQ(RenderChat(ChatTemplateKind::kChatMl, messages, true, kSmolLmTemplate),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
  // Without the sentence in the template there is no default system message.
  EXPECT_EQ(RenderChat(ChatTemplateKind::kChatMl, messages, false, "<|im_start|>"),
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n");
  // A conversation that starts with its own system message keeps it.
  const std::vector<ChatMessage> with_system = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}};
  EXPECT_EQ(RenderChat(ChatTemplateKind::kChatMl, with_system, true, kSmolLmTemplate),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(RenderChat(ChatTemplateKind::kChatMl, {}, true, kSmolLmTemplate),
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Llama2MetaFormat) {
  const std::vector<ChatMessage> messages = {{"system", "You are terse."},
                                             {"user", " What is 2+2? "},
                                             {"assistant", "4"},
                                             {"user", "And 3+3?"}};
  EXPECT_EQ(RenderChat(ChatTemplateKind::kLlama2, messages, true),
            "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4 </s>"
            "<s>[INST] And 3+3? [/INST]");
  EXPECT_EQ(RenderChat(ChatTemplateKind::kLlama2, {{"user", "Hi"}}, true), "<s>[INST] Hi [/INST]");
}

TEST(ChatTemplateTest, Llama2RenderingEncodesWithMarkers) {
  std::unique_ptr<Tokenizer> tok = Load(testing::LlamaSpmPath());
  ASSERT_NE(tok, nullptr);
  const std::string prompt = RenderChat(
      ChatTemplateKind::kLlama2, {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "?"}}, true);
  const std::vector<int32_t> ids =
      tok->Encode(prompt, /*add_special=*/false, /*parse_special=*/true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 1);
}

TEST(ChatTemplateTest, DetectionFromRealGgufs) {
  std::unique_ptr<Tokenizer> llama = Load(testing::LlamaSpmPath());
  ASSERT_NE(llama, nullptr);
  EXPECT_EQ(DetectChatTemplate(*llama).value_or(ChatTemplateKind::kChatMl),
            ChatTemplateKind::kLlama2);
  std::unique_ptr<Tokenizer> stories = Load(testing::StoriesPath());
  ASSERT_NE(stories, nullptr);
  EXPECT_EQ(DetectChatTemplate(*stories).value_or(ChatTemplateKind::kChatMl),
            ChatTemplateKind::kLlama2);
  // StarCoder2 is a byte-level vocabulary without <|im_start|> and without a template.
  std::unique_ptr<Tokenizer> starcoder = Load(testing::StarcoderPath());
  ASSERT_NE(starcoder, nullptr);
  ASSERT_EQ(starcoder->TokenId("<|im_start|>"), -1);
  EXPECT_EQ(DetectChatTemplate(*starcoder).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, SmolLmDetectionAndEncoding) {
  const std::string path = testing::SmolLmPath();
  if (path.empty()) GTEST_SKIP() << "default model not installed (scripts/install-deps.sh)";
  std::unique_ptr<Tokenizer> tok = Load(path);
  ASSERT_NE(tok, nullptr);
  ASSERT_FALSE(tok->chat_template().empty());
  absl::StatusOr<ChatTemplateKind> kind = DetectChatTemplate(*tok);
  ASSERT_TRUE(kind.ok()) << kind.status();
  EXPECT_EQ(*kind, ChatTemplateKind::kChatMl);
  const std::string prompt = RenderChat(*kind, {{"user", "Hi"}}, true, tok->chat_template());
  // The GGUF's template carries SmolLM2's default system message.
  EXPECT_EQ(prompt.rfind("<|im_start|>system\nYou are a helpful AI assistant named SmolLM", 0), 0u);
  const std::vector<int32_t> ids = tok->Encode(prompt, false, true);
  // <|im_start|> system \n ... <|im_end|> \n <|im_start|> user \n Hi <|im_end|> \n <|im_start|>
  // assistant \n
  ASSERT_GE(ids.size(), 10u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 3);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);
  EXPECT_EQ(ids.back(), 198);
  EXPECT_EQ(tok->Decode(ids, true), prompt);
}

}  // namespace
}  // namespace kvasir::model
