// What a KV compression policy is to the engine. Per layer of a forward step, the policy gets
// the new tokens' queries, keys and values before RoPE, decides what of them the cache keeps
// (append, merge, evict, fuse), and has the attention output computed over what it keeps. It owns
// the RoPE of q and k because some policies need the keys before rotation (DMC merges pre-RoPE
// keys and re-rotates them). A policy *plans* on the host (the tables' lengths and pages, which
// slots each head keeps, evicts or merges, the step's page tables and attention items) and a
// kernels::Backend *runs* the plan (kernels/backend.h): `full`, `streaming` and `h2o` reach the
// page pool and the step's q/k/v/out only through backend operations, so they run on any backend;
// so do `pod` (one row write and one partial attention per backend call) and `lococo`, whose
// compressions read and rewrite the tables through host memory (KvCache::ReadSlots /
// WriteSlots); `dmc` and the PoD calibration recorder still read the pool and the activations on
// the host between backend calls, so they run on the CPU backend only for now
// (FailedPrecondition on a backend that is not host_addressable()). Policies are
// immutable and shared; per-sequence state
// lives in SequenceKv::state(). The spec strings and parameters are documented in
// docs/compression.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy_args.h"

namespace kvasir::kvcache {

// The tokens of one sequence inside a step: rows [begin, begin + count) of the step's buffers.
struct SeqSpan {
  SequenceKv* seq = nullptr;
  int32_t begin = 0;
  int32_t count = 0;
};

// Backend memory that Attend calls reuse from one call to the next (h2o's attention scores, the
// column sums an AttendObserver reads): it grows to the largest size asked and is then reused, so
// steady-state decoding does not allocate. The caller of Attend owns it (LayerInputs::scratch),
// one per thread that calls Attend, declared after its backend so that it is freed first. It is
// bound to the backend of its first Get until Release.
//
//   std::unique_ptr<kernels::Backend> backend_;
//   kvcache::BackendScratch scratch_;  // declared after backend_: freed before it
//   ...
//   in.scratch = &scratch_;
//   KVASIR_RETURN_IF_ERROR(policy->Attend(cache, in, *backend_));
class BackendScratch {
 public:
  BackendScratch() = default;
  BackendScratch(const BackendScratch&) = delete;
  BackendScratch& operator=(const BackendScratch&) = delete;

  // At least `bytes` bytes of `backend`'s memory, contents undefined (they survive a call that
  // does not grow the buffer), or nullptr when the backend is out of memory. `backend` must be
  // the one the scratch is bound to (checked).
  void* Get(kernels::Backend& backend, size_t bytes);
  // Frees the buffer (through the backend it came from) and unbinds the scratch.
  void Release() { buffer_.reset(); }

 private:
  std::optional<kernels::BackendBuffer> buffer_;
};

// One layer of one forward step. Rows are tokens; the sequences' spans partition them (the spans
// of one Attend call may leave out rows that other policies' calls serve). q, k, v and out are
// the backend's data arrays (host memory for the CPU backend); pos is a host array.
struct LayerInputs {
  int32_t layer = 0;
  std::span<const SeqSpan> seqs;
  float* q =
      nullptr;  // [n_tokens, n_head * head_dim], before RoPE (the policy may rotate in place)
  int64_t q_stride = 0;
  float* k = nullptr;  // [n_tokens, n_head_kv * head_dim], before RoPE
  int64_t k_stride = 0;
  float* v = nullptr;  // [n_tokens, n_head_kv * head_dim]
  int64_t v_stride = 0;
  const int32_t* pos = nullptr;  // [n_tokens] absolute positions
  float* out = nullptr;          // [n_tokens, n_head * head_dim]
  int64_t out_stride = 0;
  // (optional) backend memory reused across calls; null: a policy that needs some allocates it
  // for the call.
  BackendScratch* scratch = nullptr;
};

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;

  // The canonical spec string ("full", "streaming:sink=4,window=252", ...).
  virtual std::string spec() const = 0;
  // Per-sequence state, or nullptr if the policy needs none.
  virtual std::unique_ptr<PolicyState> NewState(const KvGeometry& geometry) const {
    return nullptr;
  }
  // Before a step: allocates what `n_new` more tokens of `seq` need in every table, so that
  // Attend cannot run out of pages halfway. ResourceExhausted when the pool is full.
  virtual absl::Status Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const = 0;
  // One layer: stores what the policy keeps of the new tokens and writes the attention output,
  // through `backend`, whose memory holds the page pool (cache.pool()) and in's q/k/v/out.
  // Called for layers 0..n_layer-1 in order; the work is batched into backend operations, and
  // host work that stays per head goes through backend.HostParallelFor. It writes the tables of
  // in.layer only (it may read earlier layers'): once it ran, that layer's tables hold their
  // content for the step, which a prefill streams out while the later layers compute.
  virtual absl::Status Attend(KvCache& cache, const LayerInputs& in,
                              kernels::Backend& backend) const = 0;
  // After every layer of a step ran, before n_tokens advances. It may give back pages beyond the
  // tables' lengths (policies that evict or merge reserve for the worst case), nothing more.
  virtual absl::Status EndStep(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
    return absl::OkStatus();
  }

  // The per-sequence state beyond the tables (SequenceKv::state()), as bytes, for the block
  // codec (kvcache/codec.h): a sequence restored from its tables and this state must continue
  // bit for bit as the original would. The format is the policy's own; LoadState refuses bytes it
  // did not write (InvalidArgument). Policies without state keep the defaults.
  virtual absl::Status SaveState(const SequenceKv& seq, std::string& out) const {
    return absl::OkStatus();
  }
  virtual absl::Status LoadState(std::string_view in, SequenceKv& seq) const {
    return in.empty() ? absl::OkStatus()
                      : absl::InvalidArgumentError("this KV policy keeps no state");
  }

  // The same state split by KV heads, for the block codec: each tensor-parallel rank's part
  // carries its own heads' records, and a cache of another split takes its heads' records from
  // several parts. `shared` is what every head has in common (the policy's parameters; the same
  // whatever the split), `heads` one record per (layer, KV head) of the sequence's cache,
  // layer-major. LoadSplitState takes the shared part and a record for every head of a cache of
  // `n_head_kv` KV heads, in the same order, and checks them as LoadState does (it puts them
  // together and calls it). Both empty for a policy without state; Unimplemented for a state
  // that does not split (state_layout()).
  // True when the policy's choices for a KV head read every query head of its group (h2o and
  // lococo scores, learned dmc): a tensor-parallel rank that replicates a KV head holds only some
  // of them, so such a policy is refused there (worker/cpu_model_runner.cc).
  virtual bool reads_whole_query_group() const { return false; }
  // The adapter file (LoRA, docs/retrofit.md) the model must be merged with for this policy to
  // mean anything ("" for none): learned dmc's or pod's weights=FILE. The engine that runs the
  // policy loads it at start-up (worker/adapter.h); a policy is refused by an engine adapted
  // otherwise.
  virtual std::string model_adapter() const { return ""; }

  absl::Status SaveSplitState(const SequenceKv& seq, std::string& shared,
                              std::vector<std::string>& heads) const;
  absl::Status LoadSplitState(std::string_view shared, std::span<const std::string_view> heads,
                              int32_t n_head_kv, SequenceKv& seq) const;

  // The KV pages a sequence is planned to hold after `n_tokens` tokens, over every table (K and V
  // of every layer and KV head, each rounded up to whole pages), a step's reservation included:
  // what the scheduler sets aside to admit it. A bound where the policy has one (full: every
  // token; streaming: sink + window slots per table; h2o: budget + 1; lococo: slots + chunk; pod:
  // every token in the values and the anchors' keys, the ring in the other keys). DMC merges
  // toward its target ratio without a bound: free mode plans for that ratio (preemption catches a
  // sequence that compresses less), learned mode for every token.
  virtual int64_t PlannedPages(const KvGeometry& geometry, int32_t page_size,
                               int64_t n_tokens) const;

 protected:
  // How SaveState's bytes split by KV heads: a header of `header_bytes` whose little-endian
  // int32 at `n_head_kv_at` is the cache's KV-head count, then one record per (layer, KV head),
  // layer-major, `record_bytes(the bytes from the record on)` long (0: malformed).
  struct StateLayout {
    size_t header_bytes = 0;
    size_t n_head_kv_at = 0;
    std::function<size_t(std::string_view rest)> record_bytes;
  };
  // Policies with a state that splits so say; none (the default): no state, or one that does
  // not split.
  virtual std::optional<StateLayout> state_layout() const { return std::nullopt; }
};

// Pages of every table (K and V of every layer and KV head) holding `slots` slots each.
int64_t UniformTablePages(const KvGeometry& geometry, int32_t page_size, int64_t slots);

// Parses a policy spec string (docs/compression.md). InvalidArgument names the bad part. A spec
// from a request (PolicySource::kRequest) that names a file is refused with PermissionDenied
// before anything is opened; only the process's own command line may name files.
absl::StatusOr<std::shared_ptr<const KvPolicy>> ParsePolicy(
    std::string_view spec, const KvGeometry& geometry,
    PolicySource source = PolicySource::kTrusted);
// The names of the policies ParsePolicy knows ("full", "streaming", ...).
bool IsPolicyKind(std::string_view name);
// One line per policy with its parameters, for --help.
std::string PolicyHelp();

}  // namespace kvasir::kvcache
