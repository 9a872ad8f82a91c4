#include "kvcache/policy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "kvcache/policies.h"

namespace kvasir::kvcache {

int64_t UniformTablePages(const KvGeometry& geometry, int32_t page_size, int64_t slots) {
  const int64_t pages = (std::max<int64_t>(0, slots) + page_size - 1) / page_size;
  return int64_t{2} * geometry.n_layer * geometry.n_head_kv * pages;
}

int64_t KvPolicy::PlannedPages(const KvGeometry& geometry, int32_t page_size,
                               int64_t n_tokens) const {
  return UniformTablePages(geometry, page_size, n_tokens);
}

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
     "streaming:sink=4,window=252  StreamingLLM: per head, the first `sink` tokens and the\n"
     "                           `window` newest (sink + window slots once full)\n"},
    {"h2o", MakeH2oPolicy,
     "h2o:budget=256,recent=32   H2O: `budget` slots per head: the `recent` newest tokens plus\n"
     "                           the heavy hitters by accumulated attention (GQA: summed over\n"
     "                           the group), one greedy eviction per token\n"},
    {"dmc", MakeDmcPolicy,
     "dmc:mode=free,ratio=4      DMC: a token appends a slot or merges into its head's tail slot;\n"
     "                           mode=learned for DMC-trained checkpoints; mode=free (training-\n"
     "                           free) merges similar keys leaving a `recent`=64 window to reach\n"
     "                           `ratio` (also window=12, sink=4, space, threshold, gain)\n"},
    {"pod", MakePodPolicy,
     "pod:sink=4,window=252,groups=FILE  PoD: the first `sink` and the `window` newest tokens\n"
     "                           keep K in every layer, older ones use the K of their layer\n"
     "                           group's anchor; groups=FILE from `kvasir calibrate pod`, or\n"
     "                           group_size=N (default 2) consecutive layers per group\n"},
    {"lococo", MakeLococoPolicy,
     "lococo:slots=128,chunk=16[,weights=FILE][,lambda=X]  LoCoCo: per head `slots` slots\n"
     "                           (half heavy hitters, half conv-fused) + a `chunk`-token buffer;\n"
     "                           without weights (lambda = 0) it keeps heavy hitters\n"},
};

}  // namespace

absl::StatusOr<std::shared_ptr<const KvPolicy>> ParsePolicy(std::string_view spec,
                                                            const KvGeometry& geometry,
                                                            PolicySource source) {
  KVASIR_ASSIGN_OR_RETURN(PolicyArgs args, PolicyArgs::Parse(spec.empty() ? "full" : spec, source));
  for (const PolicyEntry& e : kPolicies) {
    if (args.name() == e.name) return e.make(args, geometry);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown KV policy '", args.name(), "'; known policies:\n", PolicyHelp()));
}

bool IsPolicyKind(std::string_view name) {
  for (const PolicyEntry& e : kPolicies) {
    if (name == e.name) return true;
  }
  return false;
}

std::string PolicyHelp() {
  std::string out;
  for (const PolicyEntry& e : kPolicies) absl::StrAppend(&out, "  ", e.help);
  return out;
}

}  // namespace kvasir::kvcache
