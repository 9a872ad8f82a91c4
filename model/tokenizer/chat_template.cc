// ChatML and Llama-2 chat rendering, written out by hand instead of evaluating the models'
// Jinja templates (docs/model.md gives both formats).
#include "model/tokenizer/chat_template.h"

#include "absl/status/status.h"

namespace kvasir::model {
namespace {

constexpr std::string_view kSmolLmSystem =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

std::string_view StripWhitespace(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  const size_t end = s.find_last_not_of(kSpace);
  return s.substr(begin, end - begin + 1);
}

std::string RenderChatMl(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                         std::string_view template_text) {
  std::string out;
  // SmolLM2's template adds its default system message before a first non-system message.
  if (!messages.empty() && messages.front().role != "system" &&
      template_text.find(kSmolLmSystem) != std::string_view::npos) {
    out.append("<|im_start|>system\n").append(kSmolLmSystem).append("<|im_end|>\n");
  }
  for (const ChatMessage& m : messages) {
    out.append("<|im_start|>").append(m.role).append("\n").append(m.content).append("<|im_end|>\n");
  }
  if (add_generation_prompt) out.append("<|im_start|>assistant\n");
  return out;
}

// Meta's Llama-2 chat format: every user turn is "<s>[INST] {user} [/INST]", every assistant
// turn " {assistant} </s>"; a system message goes into the next user turn as a <<SYS>> block.
// Contents are stripped of surrounding whitespace, as Meta's and Hugging Face's code do.
std::string RenderLlama2(const std::vector<ChatMessage>& messages) {
  std::string out;
  std::string system;
  for (const ChatMessage& m : messages) {
    const std::string_view content = StripWhitespace(m.content);
    if (m.role == "system") {
      if (!system.empty()) system.append("\n");
      system.append(content);
    } else if (m.role == "assistant") {
      out.append(" ").append(content).append(" </s>");
    } else {
      out.append("<s>[INST] ");
      if (!system.empty()) {
        out.append("<<SYS>>\n").append(system).append("\n<</SYS>>\n\n");
        system.clear();
      }
      out.append(content).append(" [/INST]");
    }
  }
  if (!system.empty()) {
    // A system message with no user turn after it still reaches the model.
    out.append("<s>[INST] <<SYS>>\n").append(system).append("\n<</SYS>>\n\n [/INST]");
  }
  return out;
}

}  // namespace

absl::StatusOr<ChatTemplateKind> DetectChatTemplate(const Tokenizer& tokenizer) {
  const std::string& text = tokenizer.chat_template();
  if (text.find("<|im_start|>") != std::string::npos) return ChatTemplateKind::kChatMl;
  if (text.find("[INST]") != std::string::npos) return ChatTemplateKind::kLlama2;
  if (tokenizer.TokenId("<|im_start|>") >= 0) return ChatTemplateKind::kChatMl;
  if (tokenizer.kind() == TokenizerKind::kSentencePiece) return ChatTemplateKind::kLlama2;
  return absl::InvalidArgumentError(
      text.empty() ? "the model has no chat template and no <|im_start|> token"
                   : "the model's chat template is neither ChatML nor Llama-2");
}

std::string RenderChat(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                       bool add_generation_prompt, std::string_view template_text) {
  switch (kind) {
    case ChatTemplateKind::kChatMl:
      return RenderChatMl(messages, add_generation_prompt, template_text);
    case ChatTemplateKind::kLlama2:
      return RenderLlama2(messages);
  }
  return {};
}

}  // namespace kvasir::model
