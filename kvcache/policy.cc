#include "kvcache/policy.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "kvcache/policies.h"

namespace kvasir::kvcache {
namespace {

struct PolicyEntry {
  const char* name;
  PolicyResult (*make)(PolicyArgs&, const KvGeometry&);
  const char* help;  // one line, then indented parameter lines
};

// The help lines are what `kvasir generate --help` shows; docs/compression.md has the details.
constexpr PolicyEntry kPolicies[] = {
    {"full", MakeFullPolicy, "full                       every token's K and V (no compression)\n"},
    {"streaming", MakeStreamingPolicy,
     "streaming:sink=4,window=252  StreamingLLM: the first `sink` tokens and the last `window`\n"},
    {"h2o", MakeH2oPolicy,
     "h2o:budget=256,recent=32   H2O: `budget` slots per head: the `recent` newest tokens plus\n"
     "                           the heavy hitters by accumulated attention\n"},
    {"dmc", MakeDmcPolicy,
     "dmc:mode=free,ratio=4      DMC: merge tokens into the tail slot of each head; mode=learned\n"
     "                           for DMC-trained checkpoints, mode=free (training-free) merges\n"
     "                           similar pre-RoPE keys to reach `ratio`\n"},
    {"pod", MakePodPolicy,
     "pod:sink=4,window=252,groups=FILE  PoD: distant tokens share the keys of the group's\n"
     "                           anchor layer (groups from `kvasir calibrate pod`)\n"},
    {"lococo", MakeLococoPolicy,
     "lococo:slots=128,chunk=16,weights=FILE  LoCoCo: `slots` fused slots per head; without\n"
     "                           weights (lambda = 0) it keeps heavy hitters\n"},
};

}  // namespace

absl::StatusOr<std::shared_ptr<const KvPolicy>> ParsePolicy(std::string_view spec,
                                                            const KvGeometry& geometry) {
  KVASIR_ASSIGN_OR_RETURN(PolicyArgs args, PolicyArgs::Parse(spec.empty() ? "full" : spec));
  for (const PolicyEntry& e : kPolicies) {
    if (args.name() == e.name) return e.make(args, geometry);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown KV policy '", args.name(), "'; known policies:\n", PolicyHelp()));
}

std::string PolicyHelp() {
  std::string out;
  for (const PolicyEntry& e : kPolicies) absl::StrAppend(&out, "  ", e.help);
  return out;
}

}  // namespace kvasir::kvcache
