// The client library workers link to use a cachestore: lookup of the longest stored prefix, and
// block puts and gets. Block bytes move one-sided over UCX between the caller's memory and the
// store's exported arenas (the control plane carries only metadata); small blocks travel inside
// the RPC; where UCX is unavailable every byte goes over the control plane in pieces. Every call
// has a deadline: its `timeout`, or ClientOptions::timeout when zero.
//
//   KVASIR_ASSIGN_OR_RETURN(auto client, StoreClient::Connect({.host = "10.0.0.9", .port = 8300}));
//   KVASIR_ASSIGN_OR_RETURN(LookupResult hit, client->LookupTokens(space, prompt_ids));
//   KVASIR_ASSIGN_OR_RETURN(std::span<std::byte> buffer, client->AllocateBuffer(64 << 20));
//   for (uint32_t c = 0; c < hit.chunk_bytes.size(); ++c) { ... client->Get(key_of(c), out) ... }
//   KVASIR_RETURN_IF_ERROR(client->Put(block_bytes).status());
//
// Writes are two-phase (reserve, write, commit; abort on failure), so a block is visible only once
// whole and verified. A read holds a lease on its blocks while their bytes move; the client
// releases it off the read path: with its next read, before any other call it makes, or after
// 2 ms of quiet, whichever comes first. Reads are verified here too (header, payload XXH3, key)
// unless verify_reads is off. If the store restarts, the client notices the reconnection and sets
// up its session again before the next call. Every method is safe from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachestore/block_key.h"
#include "cachestore/cachestore.pb.h"
#include "cachestore/store.h"
#include "kvcache/prefix_hash.h"
#include "transport/bulk_transport.h"
#include "transport/fault/fault_schedule.h"
#include "transport/rpc/client.h"

namespace kvasir::cachestore {

enum class DataPath {
  kAuto,  // UCX when the store offers it and a probe read works; else the RPC fallback
  kUcx,   // UCX or fail
  kRpc,   // the RPC fallback only
};

struct ClientOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string name = "client";
  absl::Duration timeout = absl::Seconds(5);          // deadline of calls that give none
  absl::Duration connect_timeout = absl::Seconds(5);  // Connect, and re-setup after a restart
  DataPath data_path = DataPath::kAuto;
  std::string ucx_tls;                   // UCX_TLS of the client's transport ("" = UCX's choice)
  uint64_t inline_max_bytes = 16 << 10;  // blocks up to this size go inside the RPC
  uint64_t batch_bytes = 4 << 20;        // data per call in PutBatch / GetBatch
  bool verify_reads = true;              // check header, payload XXH3 and key after a get
  // Testing: every block read is the operation "read_block" of this schedule before it is
  // verified (kCorrupt damages the bytes read, kFail fails that block), and every PutBatch and
  // GetBatch call the operation "put_batch" or "get_batch" (kDelay waits first, kFail fails the
  // call); null = none.
  std::shared_ptr<transport::fault::FaultSchedule> faults;
};

enum class PutResult {
  kStored,         // written and committed by this call
  kAlreadyStored,  // the store had it
  kInProgress,     // another client is writing it now
};

// A reservation made with Reserve (the explicit two-phase API).
struct ClientReservation {
  ReserveState state = ReserveState::kReserved;
  BlockKey key;
  uint64_t size = 0;
  LeaseId lease = 0;
  uint32_t arena = 0;
  uint64_t offset = 0;
  uint64_t instance = 0;  // the store process that granted it
};

class StoreClient {
 public:
  // Connects the control plane (handshake), says hello, and sets up the UCX data path when
  // options.data_path allows. Unavailable / DeadlineExceeded when the store does not answer
  // within connect_timeout; FailedPrecondition when the handshake is refused.
  static absl::StatusOr<std::unique_ptr<StoreClient>> Connect(ClientOptions options);
  ~StoreClient();
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  // "ucx[...]" when block bytes move over UCX, "rpc" otherwise.
  std::string data_path() const;
  bool using_ucx() const;
  const ClientOptions& options() const { return options_; }

  // Memory for blocks: allocated (and registered) by UCX when there is a UCX path, so gets and
  // puts from it need no bounce; plain heap otherwise. Valid until the client is destroyed.
  absl::StatusOr<std::span<std::byte>> AllocateBuffer(size_t bytes);
  // Registers caller memory with UCX (a no-op without UCX). It must outlive the client.
  absl::Status RegisterBuffer(std::span<std::byte> memory);

  // The longest prefix of `prefix_hashes` (h[1..n] of a sequence) whose snapshot is stored whole.
  absl::StatusOr<LookupResult> Lookup(const KeySpace& space,
                                      std::span<const uint64_t> prefix_hashes,
                                      absl::Duration timeout = absl::ZeroDuration());
  // The same from token ids, hashed in blocks of `block_tokens` (kvcache::PrefixHashes).
  absl::StatusOr<LookupResult> LookupTokens(const KeySpace& space, std::span<const int32_t> tokens,
                                            int32_t block_tokens = kvcache::kDefaultHashBlockTokens,
                                            absl::Duration timeout = absl::ZeroDuration());

  // The chunk sizes of the snapshots stored under prefix_hashes[0], [1], ... as long as each is
  // stored whole (per-block entries, such as the workers' prefix-cache tier).
  absl::StatusOr<std::vector<std::vector<uint64_t>>> LookupRun(
      const KeySpace& space, std::span<const uint64_t> prefix_hashes,
      absl::Duration timeout = absl::ZeroDuration());

  // Stores one block (bytes of a kvcache codec block; the key comes from its header).
  // InvalidArgument for bytes that are not a valid block.
  absl::StatusOr<PutResult> Put(std::span<const std::byte> block,
                                absl::Duration timeout = absl::ZeroDuration());
  // Several blocks, batched (one reserve, one UCX batch per arena, one commit per batch_bytes).
  // One result per block; the call itself fails only when no block could be attempted.
  absl::StatusOr<std::vector<absl::StatusOr<PutResult>>> PutBatch(
      std::span<const std::span<const std::byte>> blocks,
      absl::Duration timeout = absl::ZeroDuration());

  // Reads a block into `out`; returns its size. NotFound: a miss. ResourceExhausted when `out` is
  // too small (Lookup's chunk_bytes gives sizes). DataLoss when the bytes fail verification.
  absl::StatusOr<uint64_t> Get(const BlockKey& key, std::span<std::byte> out,
                               absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<std::string> GetBlock(const BlockKey& key, uint64_t max_bytes = 64 << 20,
                                       absl::Duration timeout = absl::ZeroDuration());
  // Several blocks, keys[i] into outs[i]. One result (size or error) per key.
  absl::StatusOr<std::vector<absl::StatusOr<uint64_t>>> GetBatch(
      std::span<const BlockKey> keys, std::span<const std::span<std::byte>> outs,
      absl::Duration timeout = absl::ZeroDuration());

  // Pins keep blocks in the store's memory and disk until as many Unpins (the worker's prefix
  // reuse). One status per key.
  absl::StatusOr<std::vector<absl::Status>> Pin(std::span<const BlockKey> keys,
                                                absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<std::vector<absl::Status>> Unpin(std::span<const BlockKey> keys,
                                                  absl::Duration timeout = absl::ZeroDuration());
  // Deletes blocks (not while leased or pinned).
  absl::StatusOr<std::vector<absl::Status>> Remove(std::span<const BlockKey> keys,
                                                   absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<StatsResponse> Stats(absl::Duration timeout = absl::ZeroDuration());

  // The explicit two-phase write that Put is made of: Reserve, then WriteReserved (any number of
  // pieces), then Commit, or Abort. The reservation is a lease: it expires after the store's TTL.
  absl::StatusOr<ClientReservation> Reserve(const BlockKey& key, uint64_t size,
                                            absl::Duration timeout = absl::ZeroDuration());
  absl::Status WriteReserved(const ClientReservation& reservation, uint64_t offset,
                             std::span<const std::byte> data,
                             absl::Duration timeout = absl::ZeroDuration());
  absl::Status Commit(const ClientReservation& reservation,
                      absl::Duration timeout = absl::ZeroDuration());
  absl::Status Abort(const ClientReservation& reservation,
                     absl::Duration timeout = absl::ZeroDuration());

  // For `kvasir bench cachestore`: a raw UCX get of `out.size()` bytes at `offset` of the store's
  // arena `arena`, on the same endpoint the client's gets use (no control-plane traffic).
  // FailedPrecondition without a UCX path.
  absl::Status RawArenaGet(uint32_t arena, std::span<const transport::RmaOp> ops,
                           absl::Duration timeout);
  // Sizes of the store's exported arenas (empty without a UCX path).
  std::vector<uint64_t> arena_sizes() const;

  struct Session;
  class Releases;

 private:
  explicit StoreClient(ClientOptions options);
  absl::StatusOr<std::shared_ptr<const Session>> CurrentSession(absl::Time deadline);
  absl::StatusOr<std::shared_ptr<const Session>> NewSession(absl::Time deadline);
  // Sends the leases waiting for release first, except for the calls that cannot conflict with
  // them (hello, open-read, which carries them itself, and read pieces).
  absl::StatusOr<std::string> Call(const char* method, const std::string& request,
                                   absl::Time deadline);
  absl::StatusOr<std::string> CallRpc(const char* method, const std::string& request,
                                      absl::Time deadline);
  // Releases the leases waiting for it now (waiting for a release already on its way).
  void FlushReleases(absl::Time deadline);
  // Testing: what options_.faults decides for the call `op` (a delay is slept here).
  absl::Status InjectedFault(const char* op) const;
  void ReleaseLoop();  // the releaser thread
  absl::Time Deadline(absl::Duration timeout) const;
  absl::Status Transfer(const Session& session, bool put, uint32_t arena,
                        std::span<const transport::RmaOp> ops, absl::Time deadline);
  absl::StatusOr<std::vector<absl::Status>> KeyCall(const char* method,
                                                    std::span<const BlockKey> keys,
                                                    absl::Duration timeout);

  const ClientOptions options_;
  std::unique_ptr<transport::rpc::RpcClient> rpc_;
  std::unique_ptr<transport::BulkTransport> ucx_;  // null without a UCX path
  mutable absl::Mutex mu_;
  std::shared_ptr<const Session> session_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<std::byte[]>> heap_buffers_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Releases> releases_;
};

}  // namespace kvasir::cachestore
