// The coordinator's registry of workers and its router. Workers register over RPC and send
// heartbeats with their load; a worker whose heartbeats stop for longer than the timeout, or
// whose connection breaks in the middle of a request, is marked dead and dropped (it registers
// again if it comes back). Pick() routes a request to the least-loaded live worker: fewest
// requests in flight from this coordinator, then least KV in use, then the one picked least
// recently.
//
// Thread contract: every method is safe from any thread. Channels are created on Register and
// destroyed outside the lock once the last lease on a dropped worker is released.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/rpc/channel.h"
#include "worker/service/worker_service.pb.h"

namespace kvasir::coordinator {

// A channel to one worker, and whether it is connected now (a worker is routable only then).
struct WorkerChannel {
  std::shared_ptr<transport::rpc::RpcChannel> channel;
  std::function<bool()> connected;
};
using ChannelFactory =
    std::function<absl::StatusOr<WorkerChannel>(const std::string& host, uint16_t port)>;

struct WorkerView {
  uint64_t id = 0;
  std::string name;
  std::string rpc_address;
  std::string http_address;
  std::string role;
  bool connected = false;
  bool draining = false;  // POST /admin/drain, or the worker said so
  int32_t inflight = 0;   // streams from this coordinator now
  serving::WorkerLoad load;
  absl::Time last_heartbeat;
  std::vector<serving::KvPolicyInfo> kv_policies;  // what it was configured with
};

class WorkerRegistry {
 public:
  struct Options {
    absl::Duration heartbeat_timeout = absl::Seconds(3);
    std::string model;    // the model the workers must serve (file stem); "" = any
    int32_t n_vocab = 0;  // 0 = any
    // KV-aware routing: Pick weighs the blocks of a request's prompt a worker holds in its prefix
    // cache (known from its heartbeats' events) against its load; false: load alone.
    bool kv_routing = true;
  };
  // What one request in flight on a worker costs in Pick, in prompt blocks to compute: a worker
  // holding a prompt's prefix is preferred until it has this many more requests in flight per
  // block it saves (a 1k-token prefix, 62 blocks, outweighs 15 requests).
  static constexpr int64_t kLoadWeightBlocks = 4;
  // A block a worker would read from the cachestore (the prefix cache's second tier) instead of
  // computing it costs 1/kStoreBlockDivisor of a block to compute: on the CPU, reading a block
  // of the default model (about 370 KB) takes well under a millisecond, computing its 16 tokens
  // 40-50 ms.
  static constexpr int64_t kStoreBlockDivisor = 8;
  // Blocks the store index keeps at most; past it, it starts again empty (the store's own
  // evictions are not reported, so the index is a hint, not a record).
  static constexpr size_t kMaxStoredBlocks = size_t{1} << 20;
  WorkerRegistry(Options options, ChannelFactory factory)
      : options_(std::move(options)), factory_(std::move(factory)) {}
  ~WorkerRegistry();

  // Registers a worker, replacing one of the same name. FailedPrecondition when it serves
  // another model, InvalidArgument for a malformed address. Returns its id.
  absl::StatusOr<uint64_t> Register(const serving::WorkerInfo& info);
  // Records a heartbeat. False when no worker of this name holds the id (dropped, or registered
  // with a coordinator that restarted since: ids start again at 1, so an old id may now be
  // another worker's).
  // `prefix` (may be null) updates the index of the blocks it holds.
  bool Heartbeat(uint64_t id, std::string_view name, const serving::WorkerLoad& load,
                 const serving::PrefixCacheEvents* prefix = nullptr);
  // Drops the workers whose last heartbeat is older than the timeout; returns their names.
  std::vector<std::string> Sweep(absl::Time now);
  // Drops a worker at once (its connection broke mid-request). No-op for unknown ids.
  void MarkDead(uint64_t id, const absl::Status& why);

  struct Lease {
    uint64_t id = 0;
    std::string name;
    std::shared_ptr<transport::rpc::RpcChannel> channel;
  };
  // The least-loaded live, connected, not draining worker not in `exclude` (and of `role`,
  // unless empty), counted in flight until Release.
  // With KV-aware routing and a request's prefix chain (kvcache::PrefixCache::ChainOf, blocks
  // of `block_tokens`), the one with the least cost: prompt blocks it would compute (those
  // after the longest run of leading blocks it holds) plus kLoadWeightBlocks per request in
  // flight. A worker whose second tier is the cachestore computes only the blocks after the
  // run that it holds or the store holds (reported in heartbeats' `stored`), and reads the
  // store's at 1/kStoreBlockDivisor of a block each. `matched`, when given, gets the blocks the
  // chosen one holds itself; `stored`, those it would read from the store.
  std::optional<Lease> Pick(const absl::flat_hash_set<uint64_t>& exclude = {},
                            std::string_view role = "", std::span<const uint64_t> chain = {},
                            int32_t block_tokens = 0, int64_t* matched = nullptr,
                            int64_t* stored = nullptr);
  // The KV policies the registered workers were configured with, by name (workers started
  // together are configured alike; a name offered by any worker is listed once).
  std::map<std::string, serving::KvPolicyInfo> KvPolicies() const;
  // True when a live, connected worker that is not draining has this role.
  bool HasRole(std::string_view role) const;
  // Marks the worker of this name as draining (never picked again; when it leaves, that is not
  // counted as a death) and leases it, for the drain call. nullopt for an unknown name.
  std::optional<Lease> BeginDrain(std::string_view name);
  void Release(uint64_t id);

  std::vector<WorkerView> Snapshot() const;
  // Workers dropped since the start (timeouts and broken connections).
  int64_t deaths() const;
  // Drops every worker (shutdown).
  void Clear();

 private:
  struct Entry {
    WorkerView view;
    WorkerChannel channel;
    uint64_t last_pick = 0;
    int32_t prefix_block_tokens = 0;              // 0: no prefix cache
    absl::flat_hash_set<uint64_t> prefix_blocks;  // chain hashes of the blocks it holds
    bool prefix_store = false;                    // reads blocks from the cachestore
  };
  Options options_;
  ChannelFactory factory_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t picks_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t deaths_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uint64_t, Entry> workers_ ABSL_GUARDED_BY(mu_);
  // Blocks written to the cachestore by any worker (chain hashes; the store index).
  absl::flat_hash_set<uint64_t> stored_blocks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvasir::coordinator
