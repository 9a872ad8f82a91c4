// libsentencepiece as the oracle of the tokenizer.model tests. This file includes no Abseil
// header (see spm_oracle.h); its one test checks that the oracle itself works.
#include "tests/model/tokenizer/spm_oracle.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/paths.h"

namespace kvasir::model::testing {

std::string TrainTinySentencePiece(const std::string& corpus_path, const std::string& model_prefix,
                                   int vocab_size) {
  const std::string args = "--input=" + corpus_path + " --model_prefix=" + model_prefix +
                           " --vocab_size=" + std::to_string(vocab_size) +
                           " --model_type=bpe --byte_fallback=true --character_coverage=1.0"
                           " --normalization_rule_name=identity --remove_extra_whitespaces=false"
                           " --num_threads=1 --minloglevel=2";
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  return status.ok() ? "" : status.ToString();
}

std::vector<OraclePiece> OraclePieces(const std::string& model_path) {
  sentencepiece::SentencePieceProcessor sp;
  if (!sp.Load(model_path).ok()) return {};
  std::vector<OraclePiece> pieces;
  for (int i = 0; i < sp.GetPieceSize(); ++i) {
    int type = 1;
    if (sp.IsUnknown(i)) {
      type = 2;
    } else if (sp.IsControl(i)) {
      type = 3;
    } else if (sp.IsUnused(i)) {
      type = 5;
    } else if (sp.IsByte(i)) {
      type = 6;
    }
    pieces.push_back({sp.IdToPiece(i), sp.GetScore(i), type});
  }
  return pieces;
}

std::vector<int> OracleEncode(const std::string& model_path, const std::string& text) {
  sentencepiece::SentencePieceProcessor sp;
  std::vector<int> ids;
  if (!sp.Load(model_path).ok() || !sp.Encode(text, &ids).ok()) return {};
  return ids;
}

namespace {

TEST(SentencePieceOracleTest, TrainsAndEncodes) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("kvasir_spm_oracle_" + std::to_string(::getpid())))
          .string();
  std::filesystem::create_directories(dir);
  std::ifstream in(kvasir::testing::SharedPath("eval/shakespeare-public.txt"), std::ios::binary);
  std::string text(20000, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  ASSERT_GT(text.size(), 1000u);
  std::ofstream(dir + "/corpus.txt", std::ios::binary) << text;
  ASSERT_EQ(TrainTinySentencePiece(dir + "/corpus.txt", dir + "/m", 320), "");
  const std::vector<OraclePiece> pieces = OraclePieces(dir + "/m.model");
  ASSERT_EQ(pieces.size(), 320u);
  EXPECT_EQ(pieces[0].type, 2);  // <unk>
  EXPECT_EQ(pieces[3].text, "<0x00>");
  EXPECT_EQ(pieces[3].type, 6);
  EXPECT_FALSE(OracleEncode(dir + "/m.model", "to be or not").empty());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvasir::model::testing
