// Fuzz target for Hugging Face tokenizer.json loading (Tokenizer::FromHfDir, model/tokenizer/
// hf_loader.cc). FromHfDir reads files only, so the input goes to a scratch folder of this
// process: the bytes up to a line "#tokenizer_config.json" are tokenizer.json, the rest (when that
// line is there) tokenizer_config.json. A tokenizer that loads encodes a few texts and a piece of
// the input, decodes the ids back (whole and streamed), answers every per-token query, and its
// chat template goes through detection.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/log.h"
#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/testing/fuzz_util.h"

namespace {

using namespace kvasir::model;  // NOLINT

constexpr std::string_view kConfigMarker = "\n#tokenizer_config.json\n";

// A folder of this process under $TMPDIR, removed at exit.
const std::string& ScratchDir() {
  static const std::string* dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/kvasir_tokenizer_json_fuzz.XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    auto* path = new std::string(pattern);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(ScratchDir(), ec);
    });
    return path;
  }();
  return *dir;
}

void WriteFile(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvasir::testing::QuietLogs();
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::string& dir = ScratchDir();
  const size_t marker = input.find(kConfigMarker);
  WriteFile(dir + "/tokenizer.json", input.substr(0, marker));
  const std::string config_path = dir + "/tokenizer_config.json";
  if (marker == std::string_view::npos) {
    std::remove(config_path.c_str());
  } else {
    WriteFile(config_path, input.substr(marker + kConfigMarker.size()));
  }

  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::FromHfDir(dir);
  if (!loaded.ok()) {
    if (loaded.status().message().empty()) __builtin_trap();  // a refusal says why
    return 0;
  }
  const Tokenizer& tok = **loaded;
  const int32_t n_vocab = tok.n_vocab();
  if (n_vocab <= 0) __builtin_trap();
  for (int32_t id : {tok.bos_id(), tok.eos_id()}) {
    if (id < -1 || id >= n_vocab) __builtin_trap();
  }
  for (int32_t id = 0; id < std::min(n_vocab, 256); ++id) {
    const std::string_view text = tok.token_text(id);
    (void)tok.token_type(id);
    (void)tok.TokenToPiece(id, /*special=*/true);
    const int32_t found = tok.TokenId(text);
    if (found < -1 || found >= n_vocab) __builtin_trap();
  }
  (void)tok.IsEog(n_vocab - 1);

  const std::string_view texts[] = {"Hello world",
                                    " 12345 x\n\n  y",
                                    "caf\xc3\xa9 \xe2\x96\x81",
                                    "<|im_start|>user\nhi<|im_end|>",
                                    "\xff\xfe bad utf-8",
                                    input.substr(0, 64)};
  for (std::string_view text : texts) {
    for (bool special : {false, true}) {
      const std::vector<int32_t> ids = tok.Encode(text, /*add_special=*/special, special);
      for (int32_t id : ids) {
        if (id < 0 || id >= n_vocab) __builtin_trap();
      }
      (void)tok.Decode(ids, special, /*strip_leading_space=*/true);
      StreamingDecoder stream(tok, special);
      for (int32_t id : ids) (void)stream.Push(id);
      (void)stream.Flush();
    }
  }
  absl::StatusOr<ChatTemplateKind> kind = DetectChatTemplate(tok);
  if (kind.ok()) {
    const std::string prompt = RenderChat(*kind, {{"user", "hi"}}, true, tok.chat_template());
    (void)tok.Encode(prompt, false, true);
  }
  return 0;
}
