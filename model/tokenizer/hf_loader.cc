// Tokenizer::FromHfDir: Hugging Face tokenizer.json ("BPE" models, byte-level or
// SentencePiece-style) or tokenizer.model (libsentencepiece), plus tokenizer_config.json.
// JSON is parsed without exceptions and every value's type is checked before it is read.
#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "model/tokenizer/algorithms.h"
#include "model/tokenizer/sentencepiece_model.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/unicode_util.h"
#include "nlohmann/json.hpp"

namespace kvasir::model {
namespace {

using json = nlohmann::json;
using internal::PreTokenizerKind;

constexpr int64_t kMaxVocab = 16 * 1024 * 1024;
constexpr std::string_view kWordMarker = "\xE2\x96\x81";

// The Hugging Face spelling of the regexes that llama.cpp rewrites.
constexpr std::string_view kHfLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kHfQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kGpt2Marker = "gpt2";  // stands for the ByteLevel regex in a step list

bool FileExists(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return f.good();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return std::move(ss).str();
}

absl::StatusOr<json> ReadJson(const std::string& path) {
  KVASIR_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  return j;
}

const json* Member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> StringMember(const json& obj, const char* key) {
  const json* v = Member(obj, key);
  if (v == nullptr || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

std::optional<bool> BoolMember(const json& obj, const char* key) {
  const json* v = Member(obj, key);
  if (v == nullptr || !v->is_boolean()) return std::nullopt;
  return v->get<bool>();
}

// A token given as "text" or as an AddedToken object {"content": "text", ...}.
std::optional<std::string> TokenMember(const json& obj, const char* key) {
  const json* v = Member(obj, key);
  if (v == nullptr) return std::nullopt;
  if (v->is_string()) return v->get<std::string>();
  return StringMember(*v, "content");
}

// What tokenizer_config.json says (every field optional).
struct HfConfig {
  std::optional<bool> add_bos;
  std::optional<bool> add_eos;
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::optional<std::string> unk_token;
  std::string chat_template;
  std::vector<std::pair<int64_t, bool>> added_tokens;  // (id, special) from added_tokens_decoder
};

absl::StatusOr<HfConfig> ReadHfConfig(const std::string& dir) {
  HfConfig config;
  const std::string path = dir + "/tokenizer_config.json";
  if (FileExists(path)) {
    KVASIR_ASSIGN_OR_RETURN(json j, ReadJson(path));
    config.add_bos = BoolMember(j, "add_bos_token");
    config.add_eos = BoolMember(j, "add_eos_token");
    config.bos_token = TokenMember(j, "bos_token");
    config.eos_token = TokenMember(j, "eos_token");
    config.unk_token = TokenMember(j, "unk_token");
    if (const json* t = Member(j, "chat_template"); t != nullptr) {
      if (t->is_string()) {
        config.chat_template = t->get<std::string>();
      } else if (t->is_array()) {
        // [{"name": "default", "template": "..."}, ...]: the default one, else the first.
        for (const json& entry : *t) {
          std::optional<std::string> text = StringMember(entry, "template");
          if (!text.has_value()) continue;
          if (config.chat_template.empty() || StringMember(entry, "name") == "default") {
            config.chat_template = *text;
          }
        }
      }
    }
    if (const json* decoder = Member(j, "added_tokens_decoder");
        decoder != nullptr && decoder->is_object()) {
      for (auto it = decoder->begin(); it != decoder->end(); ++it) {
        const std::string& key = it.key();
        if (key.empty() || key.size() > 9 || key.find_first_not_of("0123456789") != key.npos) {
          continue;
        }
        int64_t id = 0;
        for (char c : key) id = id * 10 + (c - '0');
        config.added_tokens.emplace_back(id, BoolMember(it.value(), "special").value_or(false));
      }
    }
  }
  if (config.chat_template.empty() && FileExists(dir + "/chat_template.jinja")) {
    KVASIR_ASSIGN_OR_RETURN(config.chat_template, ReadFile(dir + "/chat_template.jinja"));
  }
  return config;
}

int32_t FindToken(const internal::Vocab& vocab, std::string_view text) {
  for (size_t i = 0; i < vocab.tokens.size(); ++i) {
    if (vocab.tokens[i] == text) return static_cast<int32_t>(i);
  }
  return -1;
}

// Applies tokenizer_config.json on top of what the tokenizer file said.
void ApplyHfConfig(const HfConfig& config, internal::Vocab* vocab) {
  for (const auto& [id, special] : config.added_tokens) {
    if (id < 0 || id >= static_cast<int64_t>(vocab->tokens.size())) continue;
    TokenType& type = vocab->types[id];
    if (type == TokenType::kNormal || type == TokenType::kUserDefined ||
        type == TokenType::kControl) {
      type = special ? TokenType::kControl : TokenType::kUserDefined;
    }
  }
  auto resolve = [vocab](const std::optional<std::string>& text, int32_t* id) {
    if (!text.has_value()) return;
    const int32_t found = FindToken(*vocab, *text);
    if (found >= 0) *id = found;
  };
  resolve(config.bos_token, &vocab->bos_id);
  resolve(config.eos_token, &vocab->eos_id);
  resolve(config.unk_token, &vocab->unk_id);
  if (config.add_bos.has_value()) vocab->add_bos = *config.add_bos;
  if (config.add_eos.has_value()) vocab->add_eos = *config.add_eos;
  if (!config.chat_template.empty()) vocab->chat_template = config.chat_template;
}

// The pieces of a pre-tokenizer or normalizer: a Sequence is flattened.
void Flatten(const json* node, const char* list_key, std::vector<const json*>* out) {
  if (node == nullptr || !node->is_object()) return;
  if (StringMember(*node, "type") == "Sequence") {
    if (const json* list = Member(*node, list_key); list != nullptr && list->is_array()) {
      for (const json& child : *list) Flatten(&child, list_key, out);
    }
    return;
  }
  out->push_back(node);
}

// The regex of a Split pre-tokenizer, mapped to Kvasir's PCRE2 spelling where it is a known one.
absl::StatusOr<std::string> SplitRegex(const json& split) {
  if (const std::optional<std::string> behavior = StringMember(split, "behavior");
      behavior.has_value() && *behavior != "Isolated") {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer.json Split behavior '", *behavior, "' is not supported"));
  }
  if (BoolMember(split, "invert").value_or(false)) {
    return absl::UnimplementedError("tokenizer.json Split with invert is not supported");
  }
  const json* pattern = Member(split, "pattern");
  if (pattern == nullptr) return absl::InvalidArgumentError("tokenizer.json Split has no pattern");
  if (std::optional<std::string> regex = StringMember(*pattern, "Regex")) {
    if (*regex == kHfLlama3Regex) {
      return internal::PreTokenizerPatterns(PreTokenizerKind::kLlama3)[0];
    }
    if (*regex == kHfQwen2Regex) {
      return internal::PreTokenizerPatterns(PreTokenizerKind::kQwen2)[0];
    }
    return *regex;
  }
  if (std::optional<std::string> literal = StringMember(*pattern, "String")) {
    return absl::StrCat("\\Q", *literal, "\\E");
  }
  return absl::InvalidArgumentError("tokenizer.json Split pattern is neither Regex nor String");
}

// Byte-level pre-tokenizer steps -> a known family when they spell one, else custom regexes.
absl::StatusOr<internal::PreTokenizer> BuildPreTokenizer(const std::vector<std::string>& steps) {
  const std::string gpt2 = internal::PreTokenizerPatterns(PreTokenizerKind::kGpt2)[0];
  for (PreTokenizerKind kind : {PreTokenizerKind::kStarcoder, PreTokenizerKind::kGpt2,
                                PreTokenizerKind::kLlama3, PreTokenizerKind::kQwen2}) {
    std::vector<std::string> known = internal::PreTokenizerPatterns(kind);
    std::vector<std::string> spelled;
    for (const std::string& s : steps) spelled.push_back(s == kGpt2Marker ? gpt2 : s);
    if (spelled == known) return internal::PreTokenizer::Create(kind);
  }
  std::vector<std::string> patterns;
  for (const std::string& s : steps) patterns.push_back(s == kGpt2Marker ? gpt2 : s);
  KVASIR_LOG_SUBSYS(INFO, kModel, "tokenizer.json: custom pre-tokenizer with %zu regexes",
                    patterns.size());
  return internal::PreTokenizer::FromPatterns(patterns);
}

// TemplateProcessing "single": a special token before $A means BOS, after it EOS.
void ReadPostProcessor(const json* post, internal::Vocab* vocab) {
  std::vector<const json*> parts;
  if (post == nullptr || !post->is_object()) return;
  if (StringMember(*post, "type") == "Sequence") {
    if (const json* list = Member(*post, "processors"); list != nullptr && list->is_array()) {
      for (const json& p : *list) parts.push_back(&p);
    }
  } else {
    parts.push_back(post);
  }
  for (const json* p : parts) {
    if (StringMember(*p, "type") != "TemplateProcessing") continue;
    const json* single = Member(*p, "single");
    if (single == nullptr || !single->is_array()) continue;
    bool seen_sequence = false;
    for (const json& item : *single) {
      if (Member(item, "Sequence") != nullptr) {
        seen_sequence = true;
        continue;
      }
      const json* special = Member(item, "SpecialToken");
      if (special == nullptr) continue;
      const std::optional<std::string> text = StringMember(*special, "id");
      if (!text.has_value()) continue;
      const int32_t id = FindToken(*vocab, *text);
      if (id < 0) continue;
      if (!seen_sequence) {
        vocab->bos_id = id;
        vocab->add_bos = true;
      } else {
        vocab->eos_id = id;
        vocab->add_eos = true;
      }
    }
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJson(const std::string& path,
                                                             const HfConfig& config) {
  KVASIR_ASSIGN_OR_RETURN(json root, ReadJson(path));
  const json* model = Member(root, "model");
  if (model == nullptr || !model->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no \"model\" object"));
  }
  const std::string type = StringMember(*model, "type").value_or("BPE");
  if (type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat(path, ": model type '", type, "' is not supported (only BPE)"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (std::optional<std::string> s = StringMember(*model, key); s.has_value() && !s->empty()) {
      return absl::UnimplementedError(absl::StrCat(path, ": BPE ", key, " is not supported"));
    }
  }

  // Vocabulary: model.vocab plus added_tokens; holes in the id range become unused entries.
  const json* vocab_json = Member(*model, "vocab");
  if (vocab_json == nullptr || !vocab_json->is_object() || vocab_json->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": model.vocab is missing or empty"));
  }
  std::vector<std::pair<std::string, int64_t>> entries;
  std::vector<std::pair<std::string, bool>> added;  // by id below
  std::vector<int64_t> added_ids;
  int64_t max_id = -1;
  for (auto it = vocab_json->begin(); it != vocab_json->end(); ++it) {
    if (!it.value().is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": model.vocab id of '", it.key(), "' is not an integer"));
    }
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= kMaxVocab) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": token id ", id, " out of range"));
    }
    entries.emplace_back(it.key(), id);
    max_id = std::max(max_id, id);
  }
  if (const json* list = Member(root, "added_tokens"); list != nullptr && list->is_array()) {
    for (const json& t : *list) {
      const json* id_json = Member(t, "id");
      const std::optional<std::string> content = StringMember(t, "content");
      if (id_json == nullptr || !id_json->is_number_integer() || !content.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": an added_tokens entry lacks an integer id or a content"));
      }
      const int64_t id = id_json->get<int64_t>();
      if (id < 0 || id >= kMaxVocab) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": token id ", id, " out of range"));
      }
      added.emplace_back(*content, BoolMember(t, "special").value_or(false));
      added_ids.push_back(id);
      max_id = std::max(max_id, id);
    }
  }
  internal::Vocab vocab;
  vocab.tokens.assign(max_id + 1, std::string());
  vocab.types.assign(max_id + 1, TokenType::kUnused);
  for (auto& [text, id] : entries) {
    vocab.tokens[id] = std::move(text);
    vocab.types[id] = TokenType::kNormal;
  }
  for (size_t i = 0; i < added.size(); ++i) {
    vocab.tokens[added_ids[i]] = added[i].first;
    vocab.types[added_ids[i]] = added[i].second ? TokenType::kControl : TokenType::kUserDefined;
  }

  // Merges: "left right" strings (older files) or ["left", "right"] pairs.
  std::vector<std::pair<std::string, std::string>> merges;
  if (const json* list = Member(*model, "merges"); list != nullptr) {
    if (!list->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": model.merges is not an array"));
    }
    merges.reserve(list->size());
    for (const json& m : *list) {
      if (m.is_string()) {
        const std::string line = m.get<std::string>();
        const size_t space = line.size() > 1 ? line.find(' ', 1) : std::string::npos;
        if (space == std::string::npos) {
          return absl::InvalidArgumentError(absl::StrCat(path, ": bad merge '", line, "'"));
        }
        merges.emplace_back(line.substr(0, space), line.substr(space + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        return absl::InvalidArgumentError(absl::StrCat(path, ": a merge is malformed"));
      }
    }
  }

  internal::BpeOptions options;
  options.ignore_merges = BoolMember(*model, "ignore_merges").value_or(false);
  options.byte_fallback = BoolMember(*model, "byte_fallback").value_or(false);
  options.fuse_unk = BoolMember(*model, "fuse_unk").value_or(false);
  if (std::optional<std::string> unk = StringMember(*model, "unk_token")) {
    vocab.unk_id = FindToken(vocab, *unk);
    if (vocab.unk_id >= 0 && vocab.types[vocab.unk_id] == TokenType::kNormal) {
      vocab.types[vocab.unk_id] = TokenType::kUnknown;
    }
  }

  std::vector<const json*> pre_steps;
  std::vector<const json*> normalizers;
  std::vector<const json*> decoders;
  Flatten(Member(root, "pre_tokenizer"), "pretokenizers", &pre_steps);
  Flatten(Member(root, "normalizer"), "normalizers", &normalizers);
  Flatten(Member(root, "decoder"), "decoders", &decoders);
  auto has_type = [](const std::vector<const json*>& list, const char* name) {
    for (const json* j : list) {
      if (StringMember(*j, "type") == name) return true;
    }
    return false;
  };
  options.byte_level = has_type(pre_steps, "ByteLevel") || has_type(decoders, "ByteLevel");
  const bool word_marked = has_type(pre_steps, "Metaspace") || has_type(decoders, "Metaspace") ||
                           has_type(normalizers, "Prepend") || has_type(normalizers, "Replace") ||
                           options.byte_fallback;
  if (!options.byte_level && !word_marked) {
    return absl::UnimplementedError(absl::StrCat(
        path,
        ": BPE without ByteLevel or SentencePiece-style (Metaspace) pieces is not supported"));
  }

  if (options.byte_level) {
    std::vector<std::string> steps;
    for (const json* step : pre_steps) {
      const std::string step_type = StringMember(*step, "type").value_or("");
      if (step_type == "ByteLevel") {
        if (BoolMember(*step, "use_regex").value_or(true)) steps.emplace_back(kGpt2Marker);
        options.add_prefix_space = BoolMember(*step, "add_prefix_space").value_or(false);
      } else if (step_type == "Digits") {
        steps.emplace_back(BoolMember(*step, "individual_digits").value_or(false) ? R"(\p{N})"
                                                                                  : R"(\p{N}+)");
      } else if (step_type == "Split") {
        absl::StatusOr<std::string> regex = SplitRegex(*step);
        if (!regex.ok()) return Annotate(regex.status(), path);
        steps.push_back(*std::move(regex));
      } else {
        return absl::UnimplementedError(
            absl::StrCat(path, ": pre-tokenizer '", step_type, "' is not supported"));
      }
    }
    if (!normalizers.empty()) {
      KVASIR_LOG_SUBSYS(WARN, kModel, "%s: normalizer ignored for a byte-level tokenizer", path);
    }
    if (!steps.empty()) {
      absl::StatusOr<internal::PreTokenizer> pre = BuildPreTokenizer(steps);
      if (!pre.ok()) return Annotate(pre.status(), path);
      options.pre_tokenizer = *std::move(pre);
    }
  } else {
    for (const json* n : normalizers) {
      const std::string n_type = StringMember(*n, "type").value_or("");
      if (n_type == "Prepend" && StringMember(*n, "prepend") == std::string(kWordMarker)) {
        options.space_prefix = internal::SpacePrefix::kAlways;
      } else if (n_type != "Replace") {
        KVASIR_LOG_SUBSYS(WARN, kModel, "%s: normalizer '%s' ignored", path, n_type);
      }
    }
    for (const json* step : pre_steps) {
      const std::string step_type = StringMember(*step, "type").value_or("");
      if (step_type != "Metaspace") {
        return absl::UnimplementedError(absl::StrCat(
            path, ": pre-tokenizer '", step_type, "' is not supported with SentencePiece pieces"));
      }
      std::string scheme = StringMember(*step, "prepend_scheme").value_or("");
      if (scheme.empty()) {
        scheme = BoolMember(*step, "add_prefix_space").value_or(true) ? "always" : "never";
      }
      options.space_prefix = scheme == "always"  ? internal::SpacePrefix::kAlways
                             : scheme == "first" ? internal::SpacePrefix::kFirst
                                                 : internal::SpacePrefix::kNever;
      options.split_on_word_marker = BoolMember(*step, "split").value_or(true);
    }
    // A SentencePiece vocabulary's <0xHH> pieces are byte tokens.
    for (size_t i = 0; i < vocab.tokens.size(); ++i) {
      if (vocab.types[i] == TokenType::kNormal && internal::ParseByteToken(vocab.tokens[i]) >= 0) {
        vocab.types[i] = TokenType::kByte;
      }
    }
  }

  ReadPostProcessor(Member(root, "post_processor"), &vocab);
  ApplyHfConfig(config, &vocab);
  if (vocab.eos_id < 0) {
    for (std::string_view text : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>"}) {
      if ((vocab.eos_id = FindToken(vocab, text)) >= 0) break;
    }
  }
  auto result = internal::MakeBpeTokenizer(std::move(vocab), merges, std::move(options));
  if (!result.ok()) return Annotate(result.status(), path);
  return result;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerModel(const std::string& path,
                                                              const HfConfig& config) {
  std::string error;
  std::unique_ptr<internal::SentencePieceModel> model =
      internal::SentencePieceModel::Load(path, &error);
  if (model == nullptr) return absl::InvalidArgumentError(error);
  internal::Vocab vocab = internal::VocabFromSentencePiece(*model);
  ApplyHfConfig(config, &vocab);
  return internal::MakeSentencePieceLibTokenizer(std::move(model), std::move(vocab));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfDir(const std::string& dir) {
  KVASIR_ASSIGN_OR_RETURN(HfConfig config, ReadHfConfig(dir));
  const std::string json_path = dir + "/tokenizer.json";
  if (FileExists(json_path)) return FromTokenizerJson(json_path, config);
  const std::string model_path = dir + "/tokenizer.model";
  if (FileExists(model_path)) return FromTokenizerModel(model_path, config);
  return absl::NotFoundError(
      absl::StrCat(dir, ": no tokenizer.json or tokenizer.model in this directory"));
}

}  // namespace kvasir::model
