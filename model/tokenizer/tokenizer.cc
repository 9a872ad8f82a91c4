// Tokenizer::FromGguf (the tokenizer.ggml.* keys, with llama.cpp's defaults), Decode, IsEog and
// StreamingDecoder. FromHfDir lives in hf_loader.cc, the algorithms in *_tokenizer.cc.
#include "model/tokenizer/tokenizer.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "model/tokenizer/algorithms.h"
#include "model/tokenizer/unicode_util.h"

namespace kvasir::model {
namespace {

using internal::PreTokenizerKind;

struct PreInfo {
  PreTokenizerKind kind;
  bool ignore_merges;
  bool add_bos;  // llama.cpp turns add_bos on for the llama3 family before reading the key
};

// tokenizer.ggml.pre -> regex family, following llama.cpp's llama_vocab::impl::load.
std::optional<PreInfo> LookupPre(std::string_view pre) {
  static constexpr std::string_view kStarcoder[] = {"smollm",    "starcoder", "refact", "command-r",
                                                    "codeshell", "exaone",    "minerva"};
  static constexpr std::string_view kGpt2[] = {
      "gpt2",        "gpt-2",      "phi-2",   "jina-es", "jina-de",    "gigachat",
      "jina-v2-es",  "jina-v2-de", "a.x-4.0", "mellum",  "jina-v1-en", "jina-v2-code",
      "roberta-bpe", "mpt",        "olmo",    "jais",    "trillion"};
  static constexpr std::string_view kLlama3[] = {"llama3",    "llama-v3", "llama-bpe", "falcon3",
                                                 "falcon-h1", "pixtral",  "midm-2.0",  "lfm2"};
  static constexpr std::string_view kLlama3NoIgnore[] = {"dbrx", "smaug-bpe"};
  static constexpr std::string_view kQwen2[] = {"qwen2", "stablelm2", "hunyuan"};
  auto in = [pre](const auto& names) {
    return std::find(std::begin(names), std::end(names), pre) != std::end(names);
  };
  if (pre == "default") return PreInfo{PreTokenizerKind::kDefault, false, false};
  if (in(kStarcoder)) return PreInfo{PreTokenizerKind::kStarcoder, false, false};
  if (in(kGpt2)) return PreInfo{PreTokenizerKind::kGpt2, false, false};
  if (in(kLlama3)) return PreInfo{PreTokenizerKind::kLlama3, true, true};
  if (in(kLlama3NoIgnore)) return PreInfo{PreTokenizerKind::kLlama3, false, false};
  if (in(kQwen2)) return PreInfo{PreTokenizerKind::kQwen2, false, false};
  if (pre == "falcon") return PreInfo{PreTokenizerKind::kFalcon, false, false};
  return std::nullopt;
}

// An optional special-token id key: a valid id replaces `*id`; an out-of-range one is ignored
// with a warning, as llama.cpp does.
void ReadTokenId(const GgufFile& gguf, std::string_view key, int64_t n_vocab, int32_t* id) {
  const std::optional<int64_t> value = gguf.GetInt(key);
  if (!value.has_value()) return;
  if (*value < 0 || *value >= n_vocab) {
    KVASIR_LOG_SUBSYS(WARN, kModel, "%s: %s = %d is not a token id; using %d", gguf.name(),
                      ToAbsl(key), *value, *id);
    return;
  }
  *id = static_cast<int32_t>(*value);
}

absl::Status GgufError(const GgufFile& gguf, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(gguf.name(), ": ", ToAbsl(what)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& gguf) {
  const std::optional<std::string_view> model = gguf.GetString("tokenizer.ggml.model");
  if (!model.has_value()) {
    return GgufError(gguf, "no tokenizer in this GGUF file (tokenizer.ggml.model is missing)");
  }
  const GgufValue* tokens_value = gguf.Find("tokenizer.ggml.tokens");
  if (tokens_value == nullptr) return GgufError(gguf, "tokenizer.ggml.tokens is missing");
  std::optional<std::vector<std::string_view>> tokens = tokens_value->AsStringArray();
  if (!tokens.has_value()) return GgufError(gguf, "tokenizer.ggml.tokens is not a string array");
  if (tokens->empty()) return GgufError(gguf, "tokenizer.ggml.tokens is empty");
  const auto n_vocab = static_cast<int64_t>(tokens->size());

  internal::Vocab vocab;
  vocab.tokens.assign(tokens->begin(), tokens->end());
  if (const GgufValue* v = gguf.Find("tokenizer.ggml.scores"); v != nullptr) {
    std::optional<std::vector<float>> scores = v->AsFloatArray();
    if (!scores.has_value() || static_cast<int64_t>(scores->size()) != n_vocab) {
      return GgufError(gguf, absl::StrCat("tokenizer.ggml.scores must be ", n_vocab, " floats"));
    }
    vocab.scores = *std::move(scores);
  }
  if (const GgufValue* v = gguf.Find("tokenizer.ggml.token_type"); v != nullptr) {
    std::optional<std::vector<int64_t>> types = v->AsIntArray();
    if (!types.has_value() || static_cast<int64_t>(types->size()) != n_vocab) {
      return GgufError(gguf,
                       absl::StrCat("tokenizer.ggml.token_type must be ", n_vocab, " integers"));
    }
    vocab.types.reserve(types->size());
    for (int64_t t : *types) {
      vocab.types.push_back(t >= 0 && t <= static_cast<int64_t>(TokenType::kByte)
                                ? static_cast<TokenType>(t)
                                : TokenType::kUndefined);
    }
  }
  if (std::optional<std::string_view> tmpl = gguf.GetString("tokenizer.chat_template")) {
    vocab.chat_template = std::string(*tmpl);
  }

  const bool spm = *model == "llama";
  if (!spm && *model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat(gguf.name(), ": tokenizer model '", ToAbsl(*model),
                                                 "' is not supported (only llama and gpt2)"));
  }

  // Defaults when the keys are absent (llama.cpp): llama => bos 1, eos 2, unk 0, add_bos;
  // gpt2 => bos = eos = 11, no add_bos.
  bool add_space_prefix = false;
  std::optional<PreInfo> pre_info;
  std::vector<std::pair<std::string, std::string>> merges;
  if (spm) {
    vocab.bos_id = n_vocab > 1 ? 1 : -1;
    vocab.eos_id = n_vocab > 2 ? 2 : -1;
    vocab.unk_id = 0;
    vocab.add_bos = true;
    add_space_prefix = true;
  } else {
    vocab.bos_id = vocab.eos_id = n_vocab > 11 ? 11 : -1;
    const GgufValue* v = gguf.Find("tokenizer.ggml.merges");
    if (v == nullptr) return GgufError(gguf, "gpt2 tokenizer without tokenizer.ggml.merges");
    std::optional<std::vector<std::string_view>> lines = v->AsStringArray();
    if (!lines.has_value()) return GgufError(gguf, "tokenizer.ggml.merges is not a string array");
    merges.reserve(lines->size());
    for (std::string_view line : *lines) {
      // Split at the first space after the first byte, so that a merge of " " itself parses.
      const size_t space = line.size() > 1 ? line.find(' ', 1) : std::string_view::npos;
      if (space == std::string_view::npos) {
        merges.emplace_back();
      } else {
        merges.emplace_back(std::string(line.substr(0, space)),
                            std::string(line.substr(space + 1)));
      }
    }
    const std::optional<std::string_view> pre = gguf.GetString("tokenizer.ggml.pre");
    if (!pre.has_value()) {
      KVASIR_LOG_SUBSYS(WARN, kModel, "%s: no tokenizer.ggml.pre; using the 'default' regexes",
                        gguf.name());
      pre_info = LookupPre("default");
    } else {
      pre_info = LookupPre(*pre);
      if (!pre_info.has_value()) {
        KVASIR_LOG_SUBSYS(WARN, kModel,
                          "%s: unknown pre-tokenizer '%s'; falling back to the gpt2 regex",
                          gguf.name(), ToAbsl(*pre));
        pre_info = PreInfo{PreTokenizerKind::kGpt2, false, false};
      }
    }
    vocab.add_bos = pre_info->add_bos;
  }

  ReadTokenId(gguf, "tokenizer.ggml.bos_token_id", n_vocab, &vocab.bos_id);
  ReadTokenId(gguf, "tokenizer.ggml.eos_token_id", n_vocab, &vocab.eos_id);
  ReadTokenId(gguf, "tokenizer.ggml.unknown_token_id", n_vocab, &vocab.unk_id);
  ReadTokenId(gguf, "tokenizer.ggml.eot_token_id", n_vocab, &vocab.eot_id);
  if (std::optional<bool> b = gguf.GetBool("tokenizer.ggml.add_bos_token")) vocab.add_bos = *b;
  if (std::optional<bool> b = gguf.GetBool("tokenizer.ggml.add_eos_token")) vocab.add_eos = *b;
  if (std::optional<bool> b = gguf.GetBool("tokenizer.ggml.add_space_prefix")) {
    add_space_prefix = *b;
  }

  absl::StatusOr<std::unique_ptr<Tokenizer>> result;
  if (spm) {
    result = internal::MakeSpmTokenizer(std::move(vocab), add_space_prefix);
  } else {
    absl::StatusOr<internal::PreTokenizer> pre = internal::PreTokenizer::Create(pre_info->kind);
    if (!pre.ok()) return pre.status();
    internal::BpeOptions options;
    options.byte_level = true;
    options.pre_tokenizer = *std::move(pre);
    options.ignore_merges = pre_info->ignore_merges;
    result = internal::MakeBpeTokenizer(std::move(vocab), merges, std::move(options));
  }
  if (!result.ok()) return Annotate(result.status(), gguf.name());
  return result;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool special,
                              bool strip_leading_space) const {
  std::string out;
  for (int32_t id : ids) out += TokenToPiece(id, special);
  if (strip_leading_space && kind() == TokenizerKind::kSentencePiece && !out.empty() &&
      out.front() == ' ') {
    out.erase(0, 1);
  }
  return out;
}

bool Tokenizer::IsEog(int32_t id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

namespace {

// Moves the complete characters at the front of `pending` to the result; ill-formed bytes
// become U+FFFD; an incomplete tail stays in `pending`.
std::string TakeComplete(std::string* pending) {
  std::string out;
  size_t pos = 0;
  while (pos < pending->size()) {
    const internal::Utf8Char c = internal::DecodeUtf8(*pending, pos);
    if (c.status == internal::Utf8Status::kIncomplete) break;
    if (c.status == internal::Utf8Status::kValid) {
      out.append(*pending, pos, c.length);
    } else {
      internal::AppendUtf8(internal::kReplacementChar, &out);
    }
    pos += c.length;
  }
  pending->erase(0, pos);
  return out;
}

}  // namespace

std::string StreamingDecoder::Push(int32_t id) {
  pending_ += tokenizer_.TokenToPiece(id, special_);
  return TakeComplete(&pending_);
}

std::string StreamingDecoder::Flush() {
  std::string out = TakeComplete(&pending_);
  if (!pending_.empty()) {
    internal::AppendUtf8(internal::kReplacementChar, &out);
    pending_.clear();
  }
  return out;
}

}  // namespace kvasir::model
