// The regex pre-tokenizers alone: pieces of the GPT-2, StarCoder/SmolLM and Llama-3 families,
// including the \s+(?!\S) rule and whitespace outside ASCII.
#include "model/tokenizer/pretokenizer.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvasir::model::internal {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Split(PreTokenizerKind kind, std::string_view text) {
  absl::StatusOr<PreTokenizer> pre = PreTokenizer::Create(kind);
  EXPECT_TRUE(pre.ok()) << pre.status();
  std::vector<std::string> out;
  if (!pre.ok()) return out;
  for (std::string_view piece : pre->Split(text)) out.emplace_back(piece);
  return out;
}

TEST(PreTokenizerTest, Gpt2WhitespaceRule) {
  // A run of spaces before a word gives all but its last space; the last one joins the word.
  EXPECT_THAT(Split(PreTokenizerKind::kGpt2, "  multiple   spaces"),
              ElementsAre(" ", " multiple", "  ", " spaces"));
  EXPECT_THAT(Split(PreTokenizerKind::kGpt2, "a \n\n b  "), ElementsAre("a", " \n\n", " b", "  "));
  EXPECT_THAT(Split(PreTokenizerKind::kGpt2, "\tHello"), ElementsAre("\t", "Hello"));
  EXPECT_THAT(Split(PreTokenizerKind::kGpt2, "I'm 123ab!!"),
              ElementsAre("I", "'m", " 123", "ab", "!!"));
  // Contractions are lower-case only in GPT-2.
  EXPECT_THAT(Split(PreTokenizerKind::kGpt2, "I'M"), ElementsAre("I", "'", "M"));
  // U+0085 (NEL) and U+3000 are White_Space, like ' '.
  EXPECT_THAT(Split(PreTokenizerKind::kGpt2, "a\u0085\u0085b"),
              ElementsAre("a", "\u0085", "\u0085", "b"));
  EXPECT_THAT(Split(PreTokenizerKind::kGpt2, "x\u3000\u3000"), ElementsAre("x", "\u3000\u3000"));
  EXPECT_TRUE(Split(PreTokenizerKind::kGpt2, "").empty());
}

TEST(PreTokenizerTest, StarcoderSplitsEveryDigit) {
  EXPECT_THAT(Split(PreTokenizerKind::kStarcoder, "ab 1234"),
              ElementsAre("ab", " ", "1", "2", "3", "4"));
  // Other Unicode numbers too (U+00BD is No, U+0663 is Nd).
  EXPECT_THAT(Split(PreTokenizerKind::kStarcoder, "x½٣"), ElementsAre("x", "½", "٣"));
}

TEST(PreTokenizerTest, Llama3Family) {
  EXPECT_THAT(Split(PreTokenizerKind::kLlama3, "I'VE 1234567 hi!\n\n  x"),
              ElementsAre("I", "'VE", " ", "123", "456", "7", " hi", "!\n\n", " ", " x"));
  EXPECT_THAT(Split(PreTokenizerKind::kLlama3, "a\r\n\r\n b"), ElementsAre("a", "\r\n\r\n", " b"));
  EXPECT_THAT(Split(PreTokenizerKind::kQwen2, "12"), ElementsAre("1", "2"));
}

TEST(PreTokenizerTest, DefaultFamily) {
  // Punctuation runs first, then GPT-2, then number runs cut into groups of three.
  EXPECT_THAT(Split(PreTokenizerKind::kDefault, "a,b 12345"),
              ElementsAre("a", ",", "b", " ", "123", "45"));
}

TEST(PreTokenizerTest, CustomPatternsKeepGaps) {
  absl::StatusOr<PreTokenizer> pre = PreTokenizer::FromPatterns({"[0-9]+"});
  ASSERT_TRUE(pre.ok());
  std::vector<std::string> pieces;
  for (std::string_view p : pre->Split("ab12cd3")) pieces.emplace_back(p);
  EXPECT_THAT(pieces, ElementsAre("ab", "12", "cd", "3"));
  EXPECT_FALSE(PreTokenizer::FromPatterns({"(unclosed"}).ok());
  // A pattern that can match the empty string does not loop.
  absl::StatusOr<PreTokenizer> empty = PreTokenizer::FromPatterns({"x*"});
  ASSERT_TRUE(empty.ok());
  pieces.clear();
  for (std::string_view p : empty->Split("abxxc")) pieces.emplace_back(p);
  EXPECT_THAT(pieces, ElementsAre("ab", "xx", "c"));
}

}  // namespace
}  // namespace kvasir::model::internal
