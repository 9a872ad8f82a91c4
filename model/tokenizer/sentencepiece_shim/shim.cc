// libkvasir_sentencepiece.so: libsentencepiece behind a C interface, loaded at run time by
// model/tokenizer/sentencepiece_model.cc with RTLD_DEEPBIND.
//
// Why a separate shared object: Debian's libsentencepiece carries its own copy of protobuf-lite
// (3.14) and exports those symbols. A program that also links libprotobuf (3.21: the control
// plane) gets one of two failures depending on load order: protobuf's static initialisation
// binding to sentencepiece's copies (a crash at start-up), or sentencepiece's generated code
// binding to libprotobuf (a fatal version check at the first Load). Loaded privately and
// deep-bound, libsentencepiece resolves against its own copy and never meets libprotobuf.
//
// This file must include no Abseil header: sentencepiece_processor.h defines absl::string_view.
#include <sentencepiece_processor.h>

#include <cstddef>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

namespace {

void CopyError(const std::string& message, char* error, size_t error_size) {
  if (error == nullptr || error_size == 0) return;
  const size_t n = message.size() < error_size - 1 ? message.size() : error_size - 1;
  std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

}  // namespace

extern "C" {

// Version of this interface; the loader refuses a shim of another version.
__attribute__((visibility("default"))) int kvasir_spm_abi_version() { return 1; }

__attribute__((visibility("default"))) void* kvasir_spm_load(const char* path, char* error,
                                                             size_t error_size) {
  auto* processor = new (std::nothrow) sentencepiece::SentencePieceProcessor();
  if (processor == nullptr) {
    CopyError("out of memory", error, error_size);
    return nullptr;
  }
  // libsentencepiece reports a protobuf clash by throwing (see above); keep it inside the shim.
  sentencepiece::util::Status status;
  try {
    status = processor->Load(path);
  } catch (const std::exception& e) {
    CopyError(std::string("libsentencepiece failed: ") + e.what() +
                  " (a build with AddressSanitizer cannot isolate its protobuf copy)",
              error, error_size);
    delete processor;
    return nullptr;
  }
  if (!status.ok()) {
    CopyError(status.ToString(), error, error_size);
    delete processor;
    return nullptr;
  }
  return processor;
}

__attribute__((visibility("default"))) void kvasir_spm_free(void* model) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(model);
}

__attribute__((visibility("default"))) int kvasir_spm_size(const void* model) {
  return static_cast<const sentencepiece::SentencePieceProcessor*>(model)->GetPieceSize();
}

// The piece's bytes stay valid while the model lives.
__attribute__((visibility("default"))) const char* kvasir_spm_piece(const void* model, int id,
                                                                    size_t* size) {
  const std::string& piece =
      static_cast<const sentencepiece::SentencePieceProcessor*>(model)->IdToPiece(id);
  *size = piece.size();
  return piece.data();
}

__attribute__((visibility("default"))) float kvasir_spm_score(const void* model, int id) {
  return static_cast<const sentencepiece::SentencePieceProcessor*>(model)->GetScore(id);
}

// 0 normal, 1 unknown, 2 control, 3 unused, 4 byte.
__attribute__((visibility("default"))) int kvasir_spm_type(const void* model, int id) {
  const auto* p = static_cast<const sentencepiece::SentencePieceProcessor*>(model);
  if (p->IsUnknown(id)) return 1;
  if (p->IsControl(id)) return 2;
  if (p->IsUnused(id)) return 3;
  if (p->IsByte(id)) return 4;
  return 0;
}

// 0 bos, 1 eos, 2 unk.
__attribute__((visibility("default"))) int kvasir_spm_special(const void* model, int which) {
  const auto* p = static_cast<const sentencepiece::SentencePieceProcessor*>(model);
  switch (which) {
    case 0:
      return p->bos_id();
    case 1:
      return p->eos_id();
    default:
      return p->unk_id();
  }
}

// Writes up to `capacity` ids and returns how many the text has (call again with a larger
// buffer when that is more than `capacity`), or -1 with *error set.
__attribute__((visibility("default"))) long kvasir_spm_encode(const void* model, const char* text,
                                                              size_t text_size, int* ids,
                                                              size_t capacity, char* error,
                                                              size_t error_size) {
  std::vector<int> out;
  const auto status = static_cast<const sentencepiece::SentencePieceProcessor*>(model)->Encode(
      std::string(text, text_size), &out);
  if (!status.ok()) {
    CopyError(status.ToString(), error, error_size);
    return -1;
  }
  const size_t n = out.size() < capacity ? out.size() : capacity;
  if (n > 0) std::memcpy(ids, out.data(), n * sizeof(int));
  return static_cast<long>(out.size());
}

}  // extern "C"
