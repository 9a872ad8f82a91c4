// Hugging Face tokenizers: tokenizer.json files written by the test from the fixture GGUF
// vocabularies (byte-level StarCoder, SentencePiece-style Llama) must give llama.cpp's ids on
// every fixture input; a tokenizer.model trained here must match libsentencepiece itself, both
// through FromHfDir and through Kvasir's own SentencePiece algorithm.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>
#include <unordered_map>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/model/tokenizer/spm_oracle.h"
#include "tests/model/tokenizer/tokenizer_test_util.h"
#include "tests/testing/gguf_builder.h"
#include "tests/testing/paths.h"

namespace kvasir::model {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::LoadCases;
using ::testing::Not;
using testing::ScratchDir;
using testing::WriteFile;

struct GgufVocab {
  std::vector<std::string> tokens;
  std::vector<int64_t> types;
  std::vector<float> scores;
  std::vector<std::string> merges;
};

GgufVocab ReadGgufVocab(const std::string& path) {
  GgufVocab v;
  absl::StatusOr<GgufFile> gguf = GgufFile::Open(path);
  EXPECT_TRUE(gguf.ok()) << gguf.status();
  if (!gguf.ok()) return v;
  // Each optional is kept in a local: a range-for over optional<...>().value() would dangle.
  const GgufValue* tokens = gguf->Find("tokenizer.ggml.tokens");
  const GgufValue* types = gguf->Find("tokenizer.ggml.token_type");
  EXPECT_TRUE(tokens != nullptr && types != nullptr);
  if (tokens == nullptr || types == nullptr) return v;
  const std::vector<std::string_view> texts =
      tokens->AsStringArray().value_or(std::vector<std::string_view>{});
  for (std::string_view t : texts) v.tokens.emplace_back(t);
  v.types = types->AsIntArray().value_or(std::vector<int64_t>{});
  if (const GgufValue* s = gguf->Find("tokenizer.ggml.scores")) {
    v.scores = s->AsFloatArray().value_or(std::vector<float>{});
  }
  if (const GgufValue* m = gguf->Find("tokenizer.ggml.merges")) {
    const std::vector<std::string_view> lines =
        m->AsStringArray().value_or(std::vector<std::string_view>{});
    for (std::string_view line : lines) v.merges.emplace_back(line);
  }
  return v;
}

std::unique_ptr<Tokenizer> LoadDir(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromHfDir(dir);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void ExpectFixtureIds(const Tokenizer& tok, const std::string& gguf_path, const char* name) {
  const std::vector<testing::TokenizerCase> cases = LoadCases(gguf_path);
  ASSERT_EQ(cases.size(), 46u);
  int passed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<int32_t> ids = tok.Encode(cases[i].text, false, false);
    EXPECT_EQ(ids, cases[i].ids) << name << " case " << i << ": \"" << cases[i].text << "\"";
    passed += ids == cases[i].ids;
  }
  std::cout << "[ fixture  ] " << name << ": " << passed << "/" << cases.size()
            << " cases give llama.cpp's ids\n";
}

TEST(HfTokenizerJsonTest, ByteLevelStarcoderMatchesGguf) {
  const GgufVocab v = ReadGgufVocab(testing::StarcoderPath());
  ASSERT_FALSE(v.tokens.empty());
  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    vocab[v.tokens[i]] = i;
    if (v.types[i] == static_cast<int64_t>(TokenType::kControl)) {
      added.push_back({{"id", i},
                       {"content", v.tokens[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", true}});
    }
  }
  ASSERT_FALSE(added.empty());
  json root = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers", json::array({{{"type", "Digits"}, {"individual_digits", true}},
                                       {{"type", "ByteLevel"},
                                        {"add_prefix_space", false},
                                        {"trim_offsets", true},
                                        {"use_regex", true}}})}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", vocab},
        {"merges", v.merges}}},  // the older "left right" spelling
  };
  ScratchDir dir("starcoder_json");
  WriteFile(dir.path() + "/tokenizer.json", Dump(root));
  std::unique_ptr<Tokenizer> tok = LoadDir(dir.path());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), TokenizerKind::kByteLevelBpe);
  EXPECT_EQ(tok->n_vocab(), static_cast<int32_t>(v.tokens.size()));
  ExpectFixtureIds(*tok, testing::StarcoderPath(), "starcoder tokenizer.json");
  // Special tokens behave as in the GGUF: matched only with parse_special, printed on request.
  const int32_t eot = tok->TokenId("<|endoftext|>");
  ASSERT_GE(eot, 0);
  EXPECT_EQ(tok->token_type(eot), TokenType::kControl);
  EXPECT_EQ(tok->Encode("<|endoftext|>", false, true), std::vector<int32_t>{eot});
  EXPECT_NE(tok->Encode("<|endoftext|>", false, false), std::vector<int32_t>{eot});
  EXPECT_TRUE(tok->IsEog(eot));
  for (const auto& c : LoadCases(testing::StarcoderPath())) {
    EXPECT_EQ(tok->Decode(tok->Encode(c.text, false, false)), c.text);
  }
}

// Merges of a SentencePiece vocabulary, as Hugging Face's converter derives them: every split
// of a piece into two pieces, ordered by the score of the merged piece (best first), then by
// the ids of the two halves.
std::vector<std::pair<std::string, std::string>> MergesFromScores(const GgufVocab& v) {
  std::unordered_map<std::string, int64_t> ids;
  for (size_t i = 0; i < v.tokens.size(); ++i) ids.emplace(v.tokens[i], i);
  struct M {
    float score;
    int64_t l, r;
  };
  std::vector<M> merges;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.types[i] != static_cast<int64_t>(TokenType::kNormal)) continue;
    const std::string& t = v.tokens[i];
    std::vector<M> local;
    for (size_t k = 1; k < t.size(); ++k) {
      if ((static_cast<uint8_t>(t[k]) & 0xC0) == 0x80) continue;  // not a character boundary
      const auto l = ids.find(t.substr(0, k));
      const auto r = ids.find(t.substr(k));
      if (l != ids.end() && r != ids.end()) local.push_back({v.scores[i], l->second, r->second});
    }
    std::sort(local.begin(), local.end(),
              [](const M& a, const M& b) { return a.l != b.l ? a.l < b.l : a.r < b.r; });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(),
                   [](const M& a, const M& b) { return a.score > b.score; });
  std::vector<std::pair<std::string, std::string>> out;
  for (const M& m : merges) out.emplace_back(v.tokens[m.l], v.tokens[m.r]);
  return out;
}

TEST(HfTokenizerJsonTest, SentencePieceStyleLlamaMatchesGguf) {
  const GgufVocab v = ReadGgufVocab(testing::LlamaSpmPath());
  ASSERT_EQ(v.tokens.size(), 32000u);
  json vocab = json::object();
  for (size_t i = 0; i < v.tokens.size(); ++i) vocab[v.tokens[i]] = i;
  json added = json::array();
  for (int i : {0, 1, 2}) {
    added.push_back({{"id", i}, {"content", v.tokens[i]}, {"special", true}});
  }
  json merges = json::array();
  for (const auto& [l, r] : MergesFromScores(v)) merges.push_back(json::array({l, r}));
  ASSERT_GT(merges.size(), 30000u);
  json root = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         json::array({{{"type", "Prepend"}, {"prepend", "▁"}},
                      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         json::array({{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}}})}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", merges}}},  // the newer ["left", "right"] spelling
  };
  ScratchDir dir("llama_json");
  WriteFile(dir.path() + "/tokenizer.json", Dump(root));
  std::unique_ptr<Tokenizer> tok = LoadDir(dir.path());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), TokenizerKind::kSentencePiece);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->token_type(3), TokenType::kByte);
  ExpectFixtureIds(*tok, testing::LlamaSpmPath(), "llama-spm tokenizer.json");
  EXPECT_THAT(tok->Encode("Hello world", true, false), ElementsAre(1, 15043, 3186));
  for (const auto& c : LoadCases(testing::LlamaSpmPath())) {
    EXPECT_EQ(tok->Decode(tok->Encode(c.text, true, false), false, true), c.text);
  }

  // tokenizer_config.json overrides the post-processor and brings the chat template.
  WriteFile(dir.path() + "/tokenizer_config.json",
            R"({"add_bos_token": false, "add_eos_token": true, "eos_token": "</s>",
                "bos_token": {"content": "<s>", "special": true},
                "chat_template": "{{ bos_token }}[INST] {{ m }} [/INST]"})");
  std::unique_ptr<Tokenizer> configured = LoadDir(dir.path());
  ASSERT_NE(configured, nullptr);
  EXPECT_FALSE(configured->add_bos());
  EXPECT_TRUE(configured->add_eos());
  EXPECT_THAT(configured->Encode("Hello world", true, false), ElementsAre(15043, 3186, 2));
  EXPECT_THAT(configured->chat_template(), HasSubstr("[INST]"));
}

TEST(HfTokenizerJsonTest, MetaspacePrependFirstAndUserDefinedTokens) {
  // A small hand-made SentencePiece-style vocabulary with a user-defined token.
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"▁", 3},   {"a", 4},
                {"b", 5},     {"▁a", 6},  {"ab", 7},   {"▁ab", 8}, {"<0x63>", 9}};
  json root = {
      {"added_tokens", json::array({{{"id", 10}, {"content", "<tool>"}, {"special", false}},
                                    {{"id", 1}, {"content", "<s>"}, {"special", true}}})},
      {"pre_tokenizer",
       {{"type", "Metaspace"},
        {"replacement", "▁"},
        {"prepend_scheme", "first"},
        {"split", false}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", json::array({"a b", "▁ a", "▁a b"})}}},
  };
  ScratchDir dir("metaspace_json");
  WriteFile(dir.path() + "/tokenizer.json", Dump(root));
  std::unique_ptr<Tokenizer> tok = LoadDir(dir.path());
  ASSERT_NE(tok, nullptr);
  // "▁a b" has rank 2 but "a b" rank 0: "▁ab" cannot form (no "▁ ab" merge).
  EXPECT_THAT(tok->Encode("ab", false, false), ElementsAre(3, 7));
  // The user-defined token is matched even without parse_special; only the first fragment gets
  // the prefix (prepend_scheme "first"); "c" falls back to its byte token <0x63>.
  EXPECT_THAT(tok->Encode("a<tool>ac", false, false), ElementsAre(6, 10, 4, 9));
  EXPECT_EQ(tok->token_type(10), TokenType::kUserDefined);
  EXPECT_EQ(tok->Decode(tok->Encode("a<tool>ac", false, false)), " a<tool>ac");
  // "<s>" is special: a token only with parse_special.
  EXPECT_THAT(tok->Encode("<s>a", false, true), ElementsAre(1, 4));
  EXPECT_THAT(tok->Encode("<s>", false, false), Not(ElementsAre(1)));
  // "z" has no byte token: one <unk> per character (fuse_unk is off).
  EXPECT_THAT(tok->Encode("zz", false, false), ElementsAre(3, 0, 0));
}

TEST(HfTokenizerJsonTest, BadFilesGiveClearErrors) {
  ScratchDir dir("bad_json");
  EXPECT_EQ(Tokenizer::FromHfDir(dir.path() + "/missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Tokenizer::FromHfDir(dir.path()).status().code(), absl::StatusCode::kNotFound);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{not json", "not valid JSON"},
      {"[1, 2]", "not a JSON object"},
      {R"({"model": {"type": "Unigram", "vocab": []}})", "Unigram"},
      {R"({"model": {"type": "BPE", "vocab": {"a": "zero"}}})", "not an integer"},
      {R"({"model": {"type": "BPE", "vocab": {"a": -4}}})", "out of range"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 99999999999}}})", "out of range"},
      {R"({"model": {"type": "BPE", "vocab": {}}})", "missing or empty"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": "a b"}})", "not an array"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [7]}})", "malformed"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "ByteLevel"},
           "added_tokens": [{"content": 5}]})",
       "added_tokens"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}},
           "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}},
           "decoder": {"type": "ByteLevel"}})",
       "does not compile"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}}})", "not supported"},
  };
  for (const auto& [text, message] : bad) {
    WriteFile(dir.path() + "/tokenizer.json", text);
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromHfDir(dir.path());
    ASSERT_FALSE(tok.ok()) << text;
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr(message)) << text;
  }
  WriteFile(
      dir.path() + "/tokenizer.json",
      R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "ByteLevel"}})");
  WriteFile(dir.path() + "/tokenizer_config.json", "{\"add_bos_token\": tru");
  EXPECT_THAT(std::string(Tokenizer::FromHfDir(dir.path()).status().message()),
              HasSubstr("tokenizer_config.json"));
}

class SentencePieceModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("spm_model");
    std::string corpus =
        testing::ReadWholeFile(kvasir::testing::SharedPath("eval/shakespeare-public.txt"));
    corpus.resize(std::min<size_t>(corpus.size(), 30000));
    WriteFile(dir_->path() + "/corpus.txt", corpus);
    error_ = new std::string(
        testing::TrainTinySentencePiece(dir_->path() + "/corpus.txt", dir_->path() + "/m", 400));
    std::filesystem::copy_file(dir_->path() + "/m.model", dir_->path() + "/tokenizer.model");
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete error_;
  }
  std::string model_path() const { return dir_->path() + "/m.model"; }

  static const std::vector<std::string>& Texts() {
    static const std::vector<std::string> texts = {
        "To be, or not to be, that is the question:",
        "  Whether 'tis nobler in the mind to suffer",
        "The slings and arrows of outrageous fortune,\nOr to take arms",
        "QUEEN ELIZABETH: 12345 🦙 naïve café — done",
        "x",
        " ",
        "a  b   c",
    };
    return texts;
  }

  static ScratchDir* dir_;
  static std::string* error_;
};
ScratchDir* SentencePieceModelTest::dir_ = nullptr;
std::string* SentencePieceModelTest::error_ = nullptr;

TEST_F(SentencePieceModelTest, FromHfDirMatchesLibSentencePiece) {
  ASSERT_EQ(*error_, "");
  std::unique_ptr<Tokenizer> tok = LoadDir(dir_->path());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), TokenizerKind::kSentencePiece);
  EXPECT_EQ(tok->n_vocab(), 400);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_TRUE(tok->add_bos());
  for (const std::string& text : Texts()) {
    const std::vector<int> oracle = testing::OracleEncode(model_path(), text);
    ASSERT_FALSE(oracle.empty()) << text;
    const std::vector<int32_t> ids = tok->Encode(text, false, false);
    EXPECT_EQ(ids, std::vector<int32_t>(oracle.begin(), oracle.end())) << text;
    std::vector<int32_t> with_bos = {1};
    with_bos.insert(with_bos.end(), oracle.begin(), oracle.end());
    EXPECT_EQ(tok->Encode(text, true, false), with_bos) << text;
    EXPECT_EQ(tok->Decode(ids, false, true), text);
  }
  // Control tokens in the text: literal unless parse_special.
  EXPECT_THAT(tok->Encode("</s>", false, true), ElementsAre(2));
  EXPECT_NE(tok->Encode("</s>", false, false), std::vector<int32_t>{2});
}

TEST_F(SentencePieceModelTest, OwnAlgorithmMatchesLibSentencePiece) {
  ASSERT_EQ(*error_, "");
  // The trained pieces as a GGUF "llama" vocabulary, encoded by Kvasir's own implementation.
  const std::vector<testing::OraclePiece> pieces = testing::OraclePieces(model_path());
  ASSERT_EQ(pieces.size(), 400u);
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (const auto& p : pieces) {
    tokens.push_back(p.text);
    scores.push_back(p.score);
    types.push_back(p.type);
  }
  kvasir::testing::GgufBuilder b;
  b.AddString("tokenizer.ggml.model", "llama").AddStringArray("tokenizer.ggml.tokens", tokens);
  b.AddArray<float>("tokenizer.ggml.scores", kvasir::testing::GgufType::kF32, scores);
  b.AddArray<int32_t>("tokenizer.ggml.token_type", kvasir::testing::GgufType::kI32, types);
  const std::vector<uint8_t> bytes = b.Build();
  absl::StatusOr<GgufFile> gguf = GgufFile::Parse(bytes, "trained.gguf");
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(*gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();
  int same = 0;
  for (const std::string& text : Texts()) {
    const std::vector<int> oracle = testing::OracleEncode(model_path(), text);
    const std::vector<int32_t> ids = (*tok)->Encode(text, false, false);
    EXPECT_EQ(ids, std::vector<int32_t>(oracle.begin(), oracle.end())) << text;
    same += ids == std::vector<int32_t>(oracle.begin(), oracle.end());
  }
  std::cout << "[ oracle   ] own SentencePiece vs libsentencepiece: " << same << "/"
            << Texts().size() << " strings identical\n";
}

}  // namespace
}  // namespace kvasir::model
