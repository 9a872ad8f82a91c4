// Fuzz target for KV policy spec strings ("name:key=value,..."): PolicyArgs::Parse and its typed
// getters, then ParsePolicy with a small geometry. A policy that parses must give a canonical
// spec() that parses again to the same spec. A spec that names a file parameter (groups=,
// weights=, ...) would make a policy open that path, so such inputs only go through
// PolicyArgs::Parse: the fuzzer never opens files.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"
#include "kvcache/policy_args.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvasir::kvcache;  // NOLINT
  if (size > 4096) return 0;
  const std::string_view spec(reinterpret_cast<const char*>(data), size);

  absl::StatusOr<PolicyArgs> args = PolicyArgs::Parse(spec);
  if (args.ok()) {
    // Every getter on every likely key, in every type: malformed values are errors, not crashes.
    for (const char* key : {"sink", "window", "budget", "recent", "ratio", "mode", "slots", "chunk",
                            "lambda", "group_size", "threshold", "gain", "space"}) {
      (void)args->Has(key);
      (void)args->Int(key, 1, -5, 1 << 20);
      (void)args->Float(key, 0.5, -1e6, 1e6);
      (void)args->String(key, "x");
      (void)args->Bool(key, false);
    }
    (void)args->Finish();
  }

  auto names_file = [](std::string_view text) {
    for (std::string_view key : {"groups", "weights", "checkpoint", "adapter", "file", "path"}) {
      if (text.find(key) != std::string_view::npos) return true;
    }
    return false;
  };
  if (names_file(spec)) return 0;
  KvGeometry g;
  g.n_layer = 4;
  g.n_head = 4;
  g.n_head_kv = 2;
  g.head_dim = 8;
  g.n_rot = 8;
  absl::StatusOr<std::shared_ptr<const KvPolicy>> policy = ParsePolicy(spec, g);
  if (!policy.ok()) return 0;
  const std::string canonical = (*policy)->spec();
  if (names_file(canonical)) __builtin_trap();  // no file went in, so none may come out
  absl::StatusOr<std::shared_ptr<const KvPolicy>> again = ParsePolicy(canonical, g);
  if (!again.ok() || (*again)->spec() != canonical) __builtin_trap();
  // A fresh per-sequence state exists for every geometry the policy accepted.
  (void)(*policy)->NewState(g);
  return 0;
}
