#include "kvcache/policy.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "kvcache/policies.h"

namespace kvasir::kvcache {

void* BackendScratch::Get(kernels::Backend& backend, size_t bytes) {
  if (!buffer_) buffer_.emplace(backend);
  KVASIR_CHECK_MSG(&buffer_->backend() == &backend, "BackendScratch used with a second backend");
  if (buffer_->as() != nullptr && buffer_->bytes() >= bytes) return buffer_->as();
  // Grow geometrically, so that a slowly growing size reallocates a few times only.
  return buffer_->Reserve(std::max(bytes, buffer_->bytes() * 2)) ? buffer_->as() : nullptr;
}

int64_t UniformTablePages(const KvGeometry& geometry, int32_t page_size, int64_t slots) {
  const int64_t pages = (std::max<int64_t>(0, slots) + page_size - 1) / page_size;
  return int64_t{2} * geometry.n_layer * geometry.n_head_kv * pages;
}

int64_t KvPolicy::PlannedPages(const KvGeometry& geometry, int32_t page_size,
                               int64_t n_tokens) const {
  return UniformTablePages(geometry, page_size, n_tokens);
}

absl::Status KvPolicy::SaveSplitState(const SequenceKv& seq, std::string& shared,
                                      std::vector<std::string>& heads) const {
  shared.clear();
  heads.clear();
  std::string whole;
  KVASIR_RETURN_IF_ERROR(SaveState(seq, whole));
  if (whole.empty()) return absl::OkStatus();
  const std::optional<StateLayout> layout = state_layout();
  if (!layout.has_value()) {
    return absl::UnimplementedError(
        absl::StrCat("the state of KV policy '", spec(), "' does not split by KV heads"));
  }
  if (whole.size() < layout->header_bytes || layout->n_head_kv_at + 4 > layout->header_bytes) {
    return absl::InternalError(
        absl::StrCat("KV policy '", spec(), "': a state shorter than its header"));
  }
  shared = whole.substr(0, layout->header_bytes);
  std::memset(shared.data() + layout->n_head_kv_at, 0, 4);  // the same whatever the split
  std::string_view rest = std::string_view(whole).substr(layout->header_bytes);
  while (!rest.empty()) {
    const size_t n = layout->record_bytes(rest);
    if (n == 0 || n > rest.size()) {
      return absl::InternalError(
          absl::StrCat("KV policy '", spec(), "': a malformed state record"));
    }
    heads.emplace_back(rest.substr(0, n));
    rest.remove_prefix(n);
  }
  return absl::OkStatus();
}

absl::Status KvPolicy::LoadSplitState(std::string_view shared,
                                      std::span<const std::string_view> heads, int32_t n_head_kv,
                                      SequenceKv& seq) const {
  if (shared.empty() && heads.empty()) return LoadState("", seq);
  const std::optional<StateLayout> layout = state_layout();
  if (!layout.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV policy '", spec(), "' keeps no state that splits by KV heads"));
  }
  if (shared.size() != layout->header_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV policy '", spec(), "': the shared part of its state has ", shared.size(),
                     " bytes, not ", layout->header_bytes));
  }
  std::string whole(shared);
  const uint32_t n = static_cast<uint32_t>(n_head_kv);
  const unsigned char le[4] = {static_cast<unsigned char>(n), static_cast<unsigned char>(n >> 8),
                               static_cast<unsigned char>(n >> 16),
                               static_cast<unsigned char>(n >> 24)};
  std::memcpy(whole.data() + layout->n_head_kv_at, le, 4);
  for (std::string_view record : heads) {
    // Each record alone must be one record (LoadState would take a run of them as well).
    if (layout->record_bytes(record) != record.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV policy '", spec(), "': a malformed per-head state record"));
    }
    whole.append(record);
  }
  return LoadState(whole, seq);
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
     "                           mode=learned for DMC-trained checkpoints (weights=FILE: a\n"
     "                           retrofit adapter, train/retrofit.py); mode=free (training-\n"
     "                           free) merges similar keys leaving a `recent`=64 window to reach\n"
     "                           `ratio` (also window=12, sink=4, space, threshold, gain)\n"},
    {"pod", MakePodPolicy,
     "pod:sink=4,window=252,groups=FILE  PoD: the first `sink` and the `window` newest tokens\n"
     "                           keep K in every layer, older ones use the K of their layer\n"
     "                           group's anchor; groups=FILE from `kvasir calibrate pod`, or\n"
     "                           group_size=N (default 2) consecutive layers per group;\n"
     "                           weights=FILE: the adapter of a model post-trained for it\n"
     "                           (train/retrofit.py pod)\n"},
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
