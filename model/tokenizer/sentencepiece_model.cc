// SentencePieceModel over libkvasir_sentencepiece.so (sentencepiece_shim/shim.cc), which wraps
// libsentencepiece and is loaded here with dlopen(RTLD_LOCAL | RTLD_DEEPBIND): Debian's
// libsentencepiece exports its own protobuf-lite, which clashes with libprotobuf in any program
// that also speaks the control plane (see shim.cc). Nothing else in the project links
// libsentencepiece.
//
// The shim is looked up in this order: $KVASIR_SENTENCEPIECE_LIB, next to the executable, in
// ../lib from the executable (build/bin -> build/lib, build/tests -> build/lib), and at the path
// it was built to.
#include "model/tokenizer/sentencepiece_model.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <utility>

namespace kvasir::model::internal {
namespace {

constexpr const char* kShimName = "libkvasir_sentencepiece.so";

struct ShimApi {
  int (*abi_version)();
  void* (*load)(const char* path, char* error, size_t error_size);
  void (*free)(void* model);
  int (*size)(const void* model);
  const char* (*piece)(const void* model, int id, size_t* size);
  float (*score)(const void* model, int id);
  int (*type)(const void* model, int id);
  int (*special)(const void* model, int which);
  long (*encode)(const void* model, const char* text, size_t text_size, int* ids, size_t capacity,
                 char* error, size_t error_size);
};

std::string ExecutableDir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string path(buf, static_cast<size_t>(n));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("KVASIR_SENTENCEPIECE_LIB"); env != nullptr && *env) {
    out.push_back(env);
    return out;
  }
  const std::string dir = ExecutableDir();
  if (!dir.empty()) {
    out.push_back(dir + "/" + kShimName);
    out.push_back(dir + "/../lib/" + kShimName);
  }
#ifdef KVASIR_SENTENCEPIECE_SHIM_PATH
  out.push_back(KVASIR_SENTENCEPIECE_SHIM_PATH);
#endif
  return out;
}

int DlopenFlags() {
  // AddressSanitizer refuses RTLD_DEEPBIND; sanitizer builds load the shim plainly (their
  // SentencePiece tests run in binaries that do not link libprotobuf).
#if defined(__SANITIZE_ADDRESS__)
  return RTLD_NOW | RTLD_LOCAL;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return RTLD_NOW | RTLD_LOCAL;
#else
  return RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif
#else
  return RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif
}

template <typename F>
bool Resolve(void* lib, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  return *out != nullptr;
}

// Loads the shim once per process; returns nullptr and sets *error when it cannot.
const ShimApi* Shim(std::string* error) {
  static std::once_flag once;
  static ShimApi api;
  static bool ok = false;
  static std::string load_error;
  std::call_once(once, [] {
    std::string tried;
    void* lib = nullptr;
    for (const std::string& path : Candidates()) {
      if (access(path.c_str(), R_OK) != 0) {
        tried += " " + path + " (absent)";
        continue;
      }
      lib = dlopen(path.c_str(), DlopenFlags());
      if (lib != nullptr) break;
      const char* why = dlerror();
      tried += " " + path + " (" + (why != nullptr ? why : "dlopen failed") + ")";
    }
    if (lib == nullptr) {
      load_error = std::string("cannot load ") + kShimName +
                   ", which SentencePiece tokenizer.model files need; tried:" + tried +
                   " (set KVASIR_SENTENCEPIECE_LIB to its path)";
      return;
    }
    ok = Resolve(lib, "kvasir_spm_abi_version", &api.abi_version) &&
         Resolve(lib, "kvasir_spm_load", &api.load) && Resolve(lib, "kvasir_spm_free", &api.free) &&
         Resolve(lib, "kvasir_spm_size", &api.size) &&
         Resolve(lib, "kvasir_spm_piece", &api.piece) &&
         Resolve(lib, "kvasir_spm_score", &api.score) &&
         Resolve(lib, "kvasir_spm_type", &api.type) &&
         Resolve(lib, "kvasir_spm_special", &api.special) &&
         Resolve(lib, "kvasir_spm_encode", &api.encode) && api.abi_version() == 1;
    if (!ok) load_error = std::string(kShimName) + " is from another version of Kvasir";
  });
  if (!ok) {
    *error = load_error;
    return nullptr;
  }
  return &api;
}

}  // namespace

struct SentencePieceModel::Impl {
  const ShimApi* api = nullptr;
  void* model = nullptr;
  ~Impl() {
    if (model != nullptr) api->free(model);
  }
};

SentencePieceModel::SentencePieceModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SentencePieceModel::~SentencePieceModel() = default;

std::unique_ptr<SentencePieceModel> SentencePieceModel::Load(const std::string& path,
                                                             std::string* error) {
  const ShimApi* api = Shim(error);
  if (api == nullptr) return nullptr;
  auto impl = std::make_unique<Impl>();
  impl->api = api;
  char message[512] = {0};
  impl->model = api->load(path.c_str(), message, sizeof message);
  if (impl->model == nullptr) {
    *error = "cannot load SentencePiece model " + path + ": " + message;
    return nullptr;
  }
  if (api->size(impl->model) <= 0) {
    *error = "SentencePiece model " + path + " has no pieces";
    return nullptr;
  }
  return std::unique_ptr<SentencePieceModel>(new SentencePieceModel(std::move(impl)));
}

int SentencePieceModel::size() const { return impl_->api->size(impl_->model); }

std::string SentencePieceModel::piece(int id) const {
  size_t n = 0;
  const char* p = impl_->api->piece(impl_->model, id, &n);
  return std::string(p, n);
}

float SentencePieceModel::score(int id) const { return impl_->api->score(impl_->model, id); }

SentencePieceModel::PieceType SentencePieceModel::type(int id) const {
  switch (impl_->api->type(impl_->model, id)) {
    case 1:
      return PieceType::kUnknown;
    case 2:
      return PieceType::kControl;
    case 3:
      return PieceType::kUnused;
    case 4:
      return PieceType::kByte;
    default:
      return PieceType::kNormal;
  }
}

int SentencePieceModel::bos_id() const { return impl_->api->special(impl_->model, 0); }
int SentencePieceModel::eos_id() const { return impl_->api->special(impl_->model, 1); }
int SentencePieceModel::unk_id() const { return impl_->api->special(impl_->model, 2); }

bool SentencePieceModel::Encode(const std::string& text, std::vector<int>* ids,
                                std::string* error) const {
  char message[512] = {0};
  ids->resize(text.size() + 16);
  for (;;) {
    const long n = impl_->api->encode(impl_->model, text.data(), text.size(), ids->data(),
                                      ids->size(), message, sizeof message);
    if (n < 0) {
      *error = message;
      return false;
    }
    const size_t count = static_cast<size_t>(n);
    if (count <= ids->size()) {
      ids->resize(count);
      return true;
    }
    ids->resize(count);
  }
}

}  // namespace kvasir::model::internal
