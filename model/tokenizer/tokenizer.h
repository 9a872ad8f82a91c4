// Tokenizers of Llama-family models: SentencePiece-style BPE with scores and byte fallback
// (GGUF "llama" vocabularies, and Hugging Face tokenizer.model through libsentencepiece) and
// byte-level BPE (GGUF "gpt2" vocabularies and Hugging Face tokenizer.json) with the
// pre-tokenizers of smollm/starcoder, gpt2 and llama3. Encoding follows llama.cpp exactly
// (docs/model.md); the tests check every case of ../shared/models/*.inp.
//
//   KVASIR_ASSIGN_OR_RETURN(auto tok, Tokenizer::FromGguf(gguf));
//   std::vector<int32_t> ids = tok->Encode("Hello", /*add_special=*/true, /*parse_special=*/false);
//   StreamingDecoder dec(*tok);
//   for (int32_t id : ids) std::cout << dec.Push(id);   // never half a UTF-8 character
//
// Thread contract: a Tokenizer is immutable after creation and safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/gguf.h"

namespace kvasir::model {

// GGUF tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

enum class TokenizerKind { kSentencePiece, kByteLevelBpe };

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // From the tokenizer.ggml.* keys of a GGUF file.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);
  // From a Hugging Face model directory: tokenizer.json (byte-level BPE or SentencePiece-style
  // BPE), else tokenizer.model (through libsentencepiece). tokenizer_config.json, when present,
  // supplies add_bos/add_eos, special tokens and the chat template.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfDir(const std::string& dir);

  // Text to ids. add_special: BOS/EOS as the vocabulary asks (add_bos_token, add_eos_token).
  // parse_special: control tokens written in the text ("<|im_start|>") become their ids;
  // user-defined tokens are always matched.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_special,
                                      bool parse_special) const = 0;
  // The bytes of one token. Control and unknown tokens give "" unless `special` is set; the
  // SentencePiece word marker becomes a space and <0xHH> tokens become their byte. May be part of
  // a UTF-8 character.
  virtual std::string TokenToPiece(int32_t id, bool special = false) const = 0;
  // Ids to text, dropping the leading space SentencePiece adds to the first word when
  // `strip_leading_space` (as Hugging Face decode does).
  std::string Decode(std::span<const int32_t> ids, bool special = false,
                     bool strip_leading_space = false) const;

  virtual TokenizerKind kind() const = 0;
  virtual int32_t n_vocab() const = 0;
  virtual TokenType token_type(int32_t id) const = 0;
  // The token's text as stored in the vocabulary ("▁Hello", "Ġworld", "<|im_end|>").
  virtual std::string_view token_text(int32_t id) const = 0;
  // Id of an exact vocabulary string, or -1.
  virtual int32_t TokenId(std::string_view text) const = 0;

  int32_t bos_id() const { return bos_id_; }  // -1 if none
  int32_t eos_id() const { return eos_id_; }  // -1 if none
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  // End-of-generation ids: eos, eot, and <|im_end|>/<|endoftext|>/<|eot_id|> when present.
  const std::vector<int32_t>& eog_ids() const { return eog_ids_; }
  bool IsEog(int32_t id) const;
  // tokenizer.chat_template (GGUF) or chat_template (tokenizer_config.json); "" if none.
  const std::string& chat_template() const { return chat_template_; }

 protected:
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  bool add_bos_ = false;
  bool add_eos_ = false;
  std::vector<int32_t> eog_ids_;
  std::string chat_template_;
};

// Turns a stream of ids into text without ever emitting part of a UTF-8 character: bytes of an
// incomplete character wait for the next token. Invalid sequences come out as U+FFFD.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool special = false)
      : tokenizer_(tokenizer), special_(special) {}
  // Complete UTF-8 text that token `id` finishes (possibly empty).
  std::string Push(int32_t id);
  // What is left (incomplete bytes become U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool special_;
  std::string pending_;
};

}  // namespace kvasir::model
