// Fuzz target for chat templates (model/tokenizer/chat_template.h): the model's template text
// goes to DetectChatTemplate, then a conversation is rendered in the detected family and in both
// families. Input: one flags byte (bit 0: add_generation_prompt, bit 1: the vocabulary has
// <|im_start|>, bit 2: a SentencePiece vocabulary), then NUL-separated fields: the template
// text, then role and content of each message. Every message's content must appear in the
// rendering (stripped of surrounding whitespace for Llama-2), and nothing else may grow it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"

namespace {

using namespace kvasir::model;  // NOLINT

// Only what DetectChatTemplate looks at: the template text, one token and the vocabulary kind.
class FakeTokenizer : public Tokenizer {
 public:
  FakeTokenizer(std::string chat_template, bool has_im_start, bool sentencepiece)
      : has_im_start_(has_im_start), sentencepiece_(sentencepiece) {
    chat_template_ = std::move(chat_template);
  }
  std::vector<int32_t> Encode(std::string_view, bool, bool) const override { return {}; }
  std::string TokenToPiece(int32_t, bool) const override { return {}; }
  TokenizerKind kind() const override {
    return sentencepiece_ ? TokenizerKind::kSentencePiece : TokenizerKind::kByteLevelBpe;
  }
  int32_t n_vocab() const override { return 1; }
  TokenType token_type(int32_t) const override { return TokenType::kControl; }
  std::string_view token_text(int32_t) const override { return "<|im_start|>"; }
  int32_t TokenId(std::string_view text) const override {
    return has_im_start_ && text == "<|im_start|>" ? 0 : -1;
  }

 private:
  bool has_im_start_;
  bool sentencepiece_;
};

std::string_view Strip(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kSpace) - begin + 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::vector<std::string_view> fields;
  for (size_t begin = 0;;) {
    const size_t end = rest.find('\0', begin);
    fields.push_back(rest.substr(begin, end == std::string_view::npos ? end : end - begin));
    if (end == std::string_view::npos) break;
    begin = end + 1;
  }
  const std::string_view template_text = fields[0];
  std::vector<ChatMessage> messages;
  size_t content_bytes = 0;
  for (size_t i = 1; i + 1 < fields.size(); i += 2) {
    messages.push_back({std::string(fields[i]), std::string(fields[i + 1])});
    content_bytes += fields[i].size() + fields[i + 1].size();
  }
  const bool generation_prompt = (flags & 1) != 0;

  FakeTokenizer tokenizer(std::string(template_text), (flags & 2) != 0, (flags & 4) != 0);
  absl::StatusOr<ChatTemplateKind> detected = DetectChatTemplate(tokenizer);
  if (detected.ok()) {
    (void)RenderChat(*detected, messages, generation_prompt, template_text);
  } else if (detected.status().message().empty()) {
    __builtin_trap();  // a refusal says why
  }
  // Markup per message and the one default system message bound the rendering's size.
  const size_t bound = content_bytes + 64 * (messages.size() + 2) + 128;
  for (ChatTemplateKind kind : {ChatTemplateKind::kChatMl, ChatTemplateKind::kLlama2}) {
    const std::string out = RenderChat(kind, messages, generation_prompt, template_text);
    if (out.size() > bound) __builtin_trap();
    for (const ChatMessage& m : messages) {
      const std::string_view content =
          kind == ChatTemplateKind::kLlama2 ? Strip(m.content) : std::string_view(m.content);
      if (out.find(content) == std::string::npos) __builtin_trap();
    }
  }
  return 0;
}
