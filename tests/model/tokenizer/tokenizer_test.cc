// Tokenizers against llama.cpp's fixtures (every case of ggml-vocab-llama-spm and
// ggml-vocab-starcoder), the SmolLM2 vectors of model-formats.md §4.2 on the default model,
// decoding, streaming, special tokens and bad input.
#include "model/tokenizer/tokenizer.h"

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "tests/model/tokenizer/tokenizer_test_util.h"
#include "tests/testing/gguf_builder.h"
#include "tests/testing/paths.h"

namespace kvasir::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::LoadCases;
using ::testing::Not;

std::unique_ptr<Tokenizer> Load(const std::string& path) {
  absl::StatusOr<GgufFile> gguf = GgufFile::Open(path);
  EXPECT_TRUE(gguf.ok()) << gguf.status();
  if (!gguf.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(*gguf);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

// Every case of a fixture must give exactly llama.cpp's ids (add_special and parse_special off).
void CheckFixture(const std::string& path, const char* name) {
  std::unique_ptr<Tokenizer> tok = Load(path);
  ASSERT_NE(tok, nullptr);
  const std::vector<testing::TokenizerCase> cases = LoadCases(path);
  ASSERT_EQ(cases.size(), 46u);
  int passed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<int32_t> ids = tok->Encode(cases[i].text, false, false);
    EXPECT_EQ(ids, cases[i].ids) << name << " case " << i << ": \"" << cases[i].text << "\"";
    passed += ids == cases[i].ids;
  }
  std::cout << "[ fixture  ] " << name << ": " << passed << "/" << cases.size()
            << " cases give llama.cpp's ids\n";
}

TEST(TokenizerFixtureTest, LlamaSpmMatchesLlamaCpp) {
  CheckFixture(testing::LlamaSpmPath(), "ggml-vocab-llama-spm");
}

TEST(TokenizerFixtureTest, StarcoderMatchesLlamaCpp) {
  CheckFixture(testing::StarcoderPath(), "ggml-vocab-starcoder");
}

TEST(TokenizerFixtureTest, KindsAndDefaults) {
  std::unique_ptr<Tokenizer> spm = Load(testing::LlamaSpmPath());
  ASSERT_NE(spm, nullptr);
  EXPECT_EQ(spm->kind(), TokenizerKind::kSentencePiece);
  EXPECT_EQ(spm->n_vocab(), 32000);
  EXPECT_EQ(spm->bos_id(), 1);
  EXPECT_EQ(spm->eos_id(), 2);
  EXPECT_TRUE(spm->add_bos());
  EXPECT_FALSE(spm->add_eos());
  EXPECT_TRUE(spm->IsEog(2));
  EXPECT_FALSE(spm->IsEog(1));
  EXPECT_EQ(spm->token_text(1), "<s>");
  EXPECT_EQ(spm->token_type(1), TokenType::kControl);
  EXPECT_EQ(spm->token_type(3), TokenType::kByte);
  EXPECT_EQ(spm->TokenId("▁Hello"), 15043);
  // Known Llama-2 values (model-formats.md §4.3), with and without BOS.
  EXPECT_THAT(spm->Encode("Hello world", false, false), ElementsAre(15043, 3186));
  EXPECT_THAT(spm->Encode("Hello world", true, false), ElementsAre(1, 15043, 3186));
  EXPECT_THAT(spm->Encode(" Hello world", false, false), ElementsAre(29871, 15043, 3186));

  std::unique_ptr<Tokenizer> bpe = Load(testing::StarcoderPath());
  ASSERT_NE(bpe, nullptr);
  EXPECT_EQ(bpe->kind(), TokenizerKind::kByteLevelBpe);
  EXPECT_EQ(bpe->n_vocab(), 49152);
  EXPECT_FALSE(bpe->add_bos());
  const int32_t eot = bpe->TokenId("<|endoftext|>");
  ASSERT_GE(eot, 0);
  EXPECT_TRUE(bpe->IsEog(eot));
}

TEST(TokenizerFixtureTest, DecodeRoundTrips) {
  std::unique_ptr<Tokenizer> spm = Load(testing::LlamaSpmPath());
  std::unique_ptr<Tokenizer> bpe = Load(testing::StarcoderPath());
  ASSERT_NE(spm, nullptr);
  ASSERT_NE(bpe, nullptr);
  int checked = 0;
  for (const auto& c : LoadCases(testing::LlamaSpmPath())) {
    // SentencePiece adds a leading space to the first word; Hugging Face-style decoding
    // drops it again.
    const std::vector<int32_t> spm_ids = spm->Encode(c.text, true, false);
    EXPECT_EQ(spm->Decode(spm_ids, false, /*strip_leading_space=*/true), c.text);
    EXPECT_EQ(spm->Decode(spm->Encode(c.text, false, false)), c.text.empty() ? "" : " " + c.text);
    const std::vector<int32_t> bpe_ids = bpe->Encode(c.text, false, false);
    EXPECT_EQ(bpe->Decode(bpe_ids), c.text);
    // strip_leading_space only concerns SentencePiece.
    EXPECT_EQ(bpe->Decode(bpe_ids, false, true), c.text);
    ++checked;
  }
  EXPECT_EQ(checked, 46);
}

TEST(TokenizerSmolLmTest, VectorsOfTheDefaultModel) {
  const std::string path = testing::SmolLmPath();
  if (path.empty()) GTEST_SKIP() << "default model not installed (scripts/install-deps.sh)";
  std::unique_ptr<Tokenizer> tok = Load(path);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), TokenizerKind::kByteLevelBpe);
  EXPECT_EQ(tok->n_vocab(), 49152);
  const std::vector<std::pair<std::string, std::vector<int32_t>>> vectors = {
      {"Hello world! 123", {19556, 905, 17, 216, 33, 34, 35}},
      {"The capital of France is", {504, 3575, 282, 4649, 314}},
      {"Hello, we can use", {19556, 28, 392, 416, 722}},
      {"  multiple   spaces", {216, 2701, 256, 5600}},
      {"Café déjà vu.", {51, 1939, 2756, 32564, 90, 16739, 386, 101, 30}},
      {"\n", {198}},
      {"You are a helpful AI assistant named SmolLM, trained by Hugging Face",
       {2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712,
        8182}},
  };
  for (const auto& [text, ids] : vectors) {
    EXPECT_EQ(tok->Encode(text, false, false), ids) << "\"" << text << "\"";
    EXPECT_EQ(tok->Decode(ids), text);
  }
  // Special tokens of SmolLM2-Instruct (model-formats.md §2).
  EXPECT_EQ(tok->TokenId("<|im_start|>"), 1);
  EXPECT_EQ(tok->TokenId("<|im_end|>"), 2);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->IsEog(0));
  EXPECT_TRUE(tok->IsEog(2));
  EXPECT_FALSE(tok->IsEog(1));
  EXPECT_FALSE(tok->IsEog(198));
}

TEST(TokenizerSmolLmTest, ParseSpecial) {
  const std::string path = testing::SmolLmPath();
  if (path.empty()) GTEST_SKIP() << "default model not installed (scripts/install-deps.sh)";
  std::unique_ptr<Tokenizer> tok = Load(path);
  ASSERT_NE(tok, nullptr);
  const std::string text = "<|im_start|>user\nHi<|im_end|>\n";
  const std::vector<int32_t> parsed = tok->Encode(text, false, /*parse_special=*/true);
  ASSERT_GE(parsed.size(), 4u);
  EXPECT_EQ(parsed.front(), 1);
  EXPECT_EQ(parsed[parsed.size() - 2], 2);
  EXPECT_EQ(parsed.back(), 198);
  // The text between the markers encodes as it does alone.
  std::vector<int32_t> expected = {1};
  for (int32_t id : tok->Encode("user\nHi", false, false)) expected.push_back(id);
  expected.push_back(2);
  expected.push_back(198);
  EXPECT_EQ(parsed, expected);
  // Control tokens print only when asked.
  EXPECT_EQ(tok->Decode(parsed), "user\nHi\n");
  EXPECT_EQ(tok->Decode(parsed, /*special=*/true), text);

  const std::vector<int32_t> literal = tok->Encode(text, false, /*parse_special=*/false);
  EXPECT_THAT(literal, Not(::testing::Contains(1)));
  EXPECT_THAT(literal, Not(::testing::Contains(2)));
  EXPECT_EQ(tok->Decode(literal), text);
}

TEST(TokenizerSpecialTest, StarcoderEndOfText) {
  std::unique_ptr<Tokenizer> tok = Load(testing::StarcoderPath());
  ASSERT_NE(tok, nullptr);
  const int32_t eot = tok->TokenId("<|endoftext|>");
  ASSERT_GE(eot, 0);
  EXPECT_EQ(tok->token_type(eot), TokenType::kControl);
  const std::string text = "x = 1<|endoftext|>y";
  const std::vector<int32_t> parsed = tok->Encode(text, false, true);
  std::vector<int32_t> expected = tok->Encode("x = 1", false, false);
  expected.push_back(eot);
  for (int32_t id : tok->Encode("y", false, false)) expected.push_back(id);
  EXPECT_EQ(parsed, expected);
  const std::vector<int32_t> literal = tok->Encode(text, false, false);
  EXPECT_THAT(literal, Not(::testing::Contains(eot)));
  EXPECT_EQ(tok->Decode(literal), text);
  EXPECT_EQ(tok->TokenToPiece(eot), "");
  EXPECT_EQ(tok->TokenToPiece(eot, true), "<|endoftext|>");
}

TEST(TokenizerSpecialTest, SpmControlTokensAndSpacePrefix) {
  std::unique_ptr<Tokenizer> tok = Load(testing::LlamaSpmPath());
  ASSERT_NE(tok, nullptr);
  // "</s>" in the text is a token only with parse_special; the fragment after it gets its own
  // space prefix, as llama.cpp does.
  EXPECT_THAT(tok->Encode("Hello</s>world", false, true),
              ElementsAre(15043, 2, tok->TokenId("▁world")));
  const std::vector<int32_t> literal = tok->Encode("Hello</s>", false, false);
  EXPECT_THAT(literal, Not(::testing::Contains(2)));
  EXPECT_EQ(tok->Decode(literal, false, true), "Hello</s>");
}

TEST(TokenizerStreamingTest, EmojiThroughByteTokens) {
  std::unique_ptr<Tokenizer> tok = Load(testing::LlamaSpmPath());
  ASSERT_NE(tok, nullptr);
  // U+1F999 (llama) is F0 9F A6 99: four byte-fallback tokens in Llama's vocabulary.
  const int32_t b0 = tok->TokenId("<0xF0>");
  const int32_t b1 = tok->TokenId("<0x9F>");
  const int32_t b2 = tok->TokenId("<0xA6>");
  const int32_t b3 = tok->TokenId("<0x99>");
  ASSERT_GE(std::min({b0, b1, b2, b3}), 0);
  StreamingDecoder dec(*tok);
  EXPECT_EQ(dec.Push(tok->TokenId("▁Hello")), " Hello");
  EXPECT_EQ(dec.Push(b0), "");
  EXPECT_EQ(dec.Push(b1), "");
  EXPECT_EQ(dec.Push(b2), "");
  EXPECT_EQ(dec.Push(b3), "\xF0\x9F\xA6\x99");
  EXPECT_EQ(dec.Flush(), "");
  // The encoder produces the same byte tokens (fixture " this is 🦙.cpp").
  const std::vector<int32_t> ids = tok->Encode("🦙", false, false);
  EXPECT_THAT(ids, ElementsAre(tok->TokenId("▁"), b0, b1, b2, b3));
}

TEST(TokenizerStreamingTest, InvalidAndTruncatedBytes) {
  std::unique_ptr<Tokenizer> tok = Load(testing::LlamaSpmPath());
  ASSERT_NE(tok, nullptr);
  const std::string kFffd = "\xEF\xBF\xBD";
  StreamingDecoder dec(*tok);
  // A stray continuation byte can never become valid: U+FFFD at once.
  EXPECT_EQ(dec.Push(tok->TokenId("<0x80>")), kFffd);
  // A lead byte followed by a non-continuation: U+FFFD, then the ASCII letter.
  EXPECT_EQ(dec.Push(tok->TokenId("<0xE2>")), "");
  EXPECT_EQ(dec.Push(tok->TokenId("<0x41>")), kFffd + "A");
  // An unfinished character at the end comes out as U+FFFD on Flush.
  EXPECT_EQ(dec.Push(tok->TokenId("<0xE2>")), "");
  EXPECT_EQ(dec.Push(tok->TokenId("<0x96>")), "");
  EXPECT_EQ(dec.Flush(), kFffd);
  EXPECT_EQ(dec.Flush(), "");
}

TEST(TokenizerStreamingTest, Gpt2TokenEndingMidCharacter) {
  std::unique_ptr<Tokenizer> tok = Load(testing::StarcoderPath());
  ASSERT_NE(tok, nullptr);
  // llama.cpp's expected ids for "🚀" in ggml-vocab-starcoder.gguf.out: three tokens, the first
  // of which holds only part of the character.
  const std::vector<int32_t> ids = {3822, 272, 246};
  EXPECT_EQ(tok->Encode("🚀", false, false), ids);
  EXPECT_FALSE(tok->TokenToPiece(3822).empty());
  StreamingDecoder dec(*tok);
  std::string streamed;
  EXPECT_EQ(dec.Push(ids[0]), "");
  for (size_t i = 1; i < ids.size(); ++i) streamed += dec.Push(ids[i]);
  streamed += dec.Flush();
  EXPECT_EQ(streamed, "🚀");

  // Over a whole fixture input, streaming gives the same text as Decode, in valid pieces.
  const std::string text = "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～";
  StreamingDecoder dec2(*tok);
  std::string all;
  for (int32_t id : tok->Encode(text, false, false)) {
    const std::string piece = dec2.Push(id);
    for (size_t i = 0; i < piece.size(); ++i) {
      // No piece ends inside a character: a lead byte is always followed by its continuation.
      const auto b = static_cast<uint8_t>(piece[i]);
      const size_t len = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
      ASSERT_LE(i + len, piece.size());
      i += len - 1;
    }
    all += piece;
  }
  all += dec2.Flush();
  EXPECT_EQ(all, text);
}

TEST(TokenizerBadInputTest, InvalidUtf8DoesNotCrash) {
  std::unique_ptr<Tokenizer> bpe = Load(testing::StarcoderPath());
  std::unique_ptr<Tokenizer> spm = Load(testing::LlamaSpmPath());
  ASSERT_NE(bpe, nullptr);
  ASSERT_NE(spm, nullptr);
  const std::string bad = std::string("\xFF\xFE abc \xC3", 8);
  // Byte-level BPE replaces ill-formed bytes with U+FFFD first (as llama.cpp does).
  EXPECT_EQ(bpe->Decode(bpe->Encode(bad, false, false)),
            "\xEF\xBF\xBD\xEF\xBF\xBD abc \xEF\xBF\xBD");
  // SentencePiece keeps them as byte tokens, so the bytes come back exactly...
  const std::string bad_spm = std::string("x\x80y\xC3(z \xFF\xFE\xFD\xFCw", 12);
  EXPECT_EQ(spm->Decode(spm->Encode(bad_spm, false, false), false, true), bad_spm);
  // ...except that a lead byte takes the next bytes along as llama.cpp does (0xFF claims four),
  // so a following space stays the U+2581 word marker.
  EXPECT_EQ(spm->Decode(spm->Encode(bad, false, false), false, true),
            "\xFF\xFE\xE2\x96\x81"
            "abc \xC3");
  // Lone surrogates, overlong forms, NUL bytes and truncated sequences.
  const std::string nasty("\xED\xA0\x80\xC0\xAF\0x\xF4\x90\x80\x80\xE2\x82", 13);
  EXPECT_FALSE(bpe->Encode(nasty, true, true).empty());
  EXPECT_EQ(spm->Decode(spm->Encode(nasty, false, true), false, true), nasty);
}

TEST(TokenizerBadInputTest, LongRunsDoNotBreakTheRegexes) {
  std::unique_ptr<Tokenizer> bpe = Load(testing::StarcoderPath());
  std::unique_ptr<Tokenizer> spm = Load(testing::LlamaSpmPath());
  ASSERT_NE(bpe, nullptr);
  ASSERT_NE(spm, nullptr);
  for (const std::string& text : {std::string(100000, ' ') + "x", std::string(100000, 'a'),
                                  std::string(50000, '7'), std::string(30000, '\n') + "!"}) {
    const std::vector<int32_t> ids = bpe->Encode(text, false, false);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(bpe->Decode(ids), text);
    EXPECT_EQ(spm->Decode(spm->Encode(text, false, false), false, true), text);
  }
}

TEST(TokenizerBadInputTest, EmptyTextAndOutOfRangeIds) {
  std::unique_ptr<Tokenizer> spm = Load(testing::LlamaSpmPath());
  std::unique_ptr<Tokenizer> bpe = Load(testing::StarcoderPath());
  ASSERT_NE(spm, nullptr);
  ASSERT_NE(bpe, nullptr);
  EXPECT_TRUE(spm->Encode("", false, false).empty());
  EXPECT_THAT(spm->Encode("", true, false), ElementsAre(1));  // as Hugging Face: just BOS
  EXPECT_TRUE(bpe->Encode("", true, true).empty());
  for (const Tokenizer* tok : {spm.get(), bpe.get()}) {
    EXPECT_EQ(tok->TokenToPiece(-1), "");
    EXPECT_EQ(tok->TokenToPiece(tok->n_vocab()), "");
    EXPECT_EQ(tok->TokenToPiece(1 << 30, true), "");
    EXPECT_EQ(tok->token_text(-7), "");
    EXPECT_EQ(tok->token_type(tok->n_vocab()), TokenType::kUndefined);
    EXPECT_EQ(tok->TokenId("no such token, surely"), -1);
    const std::vector<int32_t> ids = {-5, tok->TokenId(tok == spm.get() ? "▁Hello" : "Hello"),
                                      tok->n_vocab() + 3};
    EXPECT_EQ(tok->Decode(ids), tok == spm.get() ? " Hello" : "Hello");
    StreamingDecoder dec(*tok);
    EXPECT_EQ(dec.Push(-1), "");
    EXPECT_EQ(dec.Push(tok->n_vocab()), "");
  }
}

TEST(TokenizerBadInputTest, GgufWithoutTokenizer) {
  kvasir::testing::GgufBuilder b;
  b.AddString("general.architecture", "llama").AddU32("llama.block_count", 1);
  const std::vector<uint8_t> bytes = b.Build();
  absl::StatusOr<GgufFile> gguf = GgufFile::Parse(bytes, "no-tokenizer.gguf");
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(*gguf);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("no-tokenizer.gguf"));
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("tokenizer.ggml.model"));
}

TEST(TokenizerBadInputTest, MalformedTokenizerKeys) {
  auto load = [](kvasir::testing::GgufBuilder& b) {
    const std::vector<uint8_t> bytes = b.Build();
    absl::StatusOr<GgufFile> gguf = GgufFile::Parse(bytes, "bad.gguf");
    EXPECT_TRUE(gguf.ok()) << gguf.status();
    return gguf.ok() ? Tokenizer::FromGguf(*gguf).status() : gguf.status();
  };
  const std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "a", "b", "ab"};
  {
    kvasir::testing::GgufBuilder b;
    b.AddString("tokenizer.ggml.model", "llama").AddStringArray("tokenizer.ggml.tokens", tokens);
    b.AddArray<float>("tokenizer.ggml.scores", kvasir::testing::GgufType::kF32, {0.f, 1.f});
    EXPECT_THAT(std::string(load(b).message()), HasSubstr("tokenizer.ggml.scores"));
  }
  {
    kvasir::testing::GgufBuilder b;
    b.AddString("tokenizer.ggml.model", "gpt2").AddStringArray("tokenizer.ggml.tokens", tokens);
    EXPECT_THAT(std::string(load(b).message()), HasSubstr("merges"));
  }
  {
    kvasir::testing::GgufBuilder b;
    b.AddString("tokenizer.ggml.model", "llama").AddU32("tokenizer.ggml.tokens", 3);
    EXPECT_THAT(std::string(load(b).message()), HasSubstr("tokenizer.ggml.tokens"));
  }
  {
    kvasir::testing::GgufBuilder b;
    b.AddString("tokenizer.ggml.model", "bert").AddStringArray("tokenizer.ggml.tokens", tokens);
    EXPECT_EQ(load(b).code(), absl::StatusCode::kUnimplemented);
  }
  {
    // A tiny but valid SentencePiece vocabulary; ids out of range fall back to the defaults.
    kvasir::testing::GgufBuilder b;
    b.AddString("tokenizer.ggml.model", "llama").AddStringArray("tokenizer.ggml.tokens", tokens);
    b.AddArray<float>("tokenizer.ggml.scores", kvasir::testing::GgufType::kF32,
                      {0.f, 0.f, 0.f, -1.f, -2.f, -0.5f});
    b.AddU32("tokenizer.ggml.eos_token_id", 999);
    const std::vector<uint8_t> bytes = b.Build();
    absl::StatusOr<GgufFile> gguf = GgufFile::Parse(bytes, "tiny.gguf");
    ASSERT_TRUE(gguf.ok());
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(*gguf);
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ((*tok)->eos_id(), 2);
    // No "▁" and no byte tokens: the space prefix falls back to <unk>, "ab" merges.
    EXPECT_THAT((*tok)->Encode("ab", false, false), ElementsAre(0, 5));
  }
}

TEST(TokenizerSpeedTest, HundredKilobytesOfShakespeare) {
  const std::string path =
      testing::SmolLmPath().empty() ? testing::StarcoderPath() : testing::SmolLmPath();
  std::unique_ptr<Tokenizer> tok = Load(path);
  ASSERT_NE(tok, nullptr);
  std::string text =
      testing::ReadWholeFile(kvasir::testing::SharedPath("eval/shakespeare-public.txt"));
  ASSERT_GE(text.size(), 100000u);
  text.resize(100000);
  while (!text.empty() && (static_cast<uint8_t>(text.back()) & 0xC0) == 0x80) text.pop_back();
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok->Encode(text, false, false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "[ speed    ] encoded " << text.size() << " bytes into " << ids.size()
            << " tokens in " << seconds * 1000 << " ms (" << path.substr(path.rfind('/') + 1)
            << ")\n";
  EXPECT_EQ(tok->Decode(ids), text);
  EXPECT_LT(ids.size(), text.size() / 2);
}

}  // namespace
}  // namespace kvasir::model
