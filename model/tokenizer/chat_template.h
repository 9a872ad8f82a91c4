// Chat prompts. Kvasir renders the two template families its models use, without a Jinja
// engine: ChatML (SmolLM2, Qwen; "<|im_start|>role\n...<|im_end|>\n") and Llama-2
// ("<s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST]"). The family is chosen from the model's
// template text (tokenizer.chat_template) and, failing that, from its special tokens.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer/tokenizer.h"

namespace kvasir::model {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatTemplateKind { kChatMl, kLlama2 };

// ChatML when the template text mentions <|im_start|> (or the vocabulary has that token), Llama-2
// when it mentions [INST] (or the vocabulary is SentencePiece). InvalidArgument otherwise.
absl::StatusOr<ChatTemplateKind> DetectChatTemplate(const Tokenizer& tokenizer);

// Renders the conversation. ChatML adds SmolLM2's default system message when the first message
// is not a system message and the template text carries one (as its Jinja does). The result is
// meant to be encoded with parse_special = true and add_special = false: a Llama-2 rendering
// carries its own "<s>" markers as text.
std::string RenderChat(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                       bool add_generation_prompt, std::string_view template_text = "");

}  // namespace kvasir::model
