// The cachestore's state in one process: the block index, the memory tier (arenas, placement,
// LRU eviction), the optional disk tier (write-through, LRU eviction by its own capacity), leases
// and pins. The service (service.h) puts RPC and UCX in front of it; tests drive it directly.
//
// Invariants: a block is visible (Lookup, OpenRead) only after Commit verified its header and
// payload checksum, and, with a disk tier, after its file is durably in place. A block under a
// read lease, being loaded from disk, or pinned is never evicted from memory; a pinned block is
// never evicted from disk. Expired reservations' memory is quarantined for one lease TTL before
// reuse, so a late one-sided write from a client that lost its lease cannot land in another block.
//
//   KVASIR_ASSIGN_OR_RETURN(auto store, BlockStore::Create({.memory_capacity_bytes = 1 << 30}));
//   KVASIR_ASSIGN_OR_RETURN(Reservation r, store->Reserve(key, block.size()));
//   std::memcpy(r.memory.data(), block.data(), block.size());   // or a UCX put by the client
//   KVASIR_RETURN_IF_ERROR(store->Commit(r.lease));
//   KVASIR_ASSIGN_OR_RETURN(ReadGrant g, store->OpenRead(key, absl::Now() + absl::Seconds(1)));
//   ... copy g.memory ...
//   KVASIR_RETURN_IF_ERROR(store->Release(g.lease));
//
// Every method is safe from any thread. Commit, PutBlock and OpenRead may block on checksums and
// disk I/O; the others only take the store's mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachestore/block_key.h"
#include "cachestore/disk_tier.h"
#include "cachestore/range_allocator.h"

namespace kvasir::cachestore {

using LeaseId = uint64_t;

struct StoreOptions {
  uint64_t memory_capacity_bytes = 1ull << 30;
  uint64_t arena_bytes = 256ull << 20;     // memory is allocated in arenas of this size
  uint64_t max_block_bytes = 64ull << 20;  // larger blocks are refused
  std::string disk_dir;                    // "" = no disk tier
  uint64_t disk_capacity_bytes = 0;        // 0 = as much as the file system holds
  bool disk_fsync = true;
  absl::Duration lease_ttl = absl::Seconds(30);
  size_t max_leases = 1 << 16;  // reservations + read leases at once
  // (optional) The clock leases are measured with (tests); default absl::Now.
  std::function<absl::Time()> clock;
};

// Counters since start and current sizes.
struct StoreStats {
  uint64_t memory_bytes = 0, memory_blocks = 0, memory_capacity_bytes = 0;
  uint64_t reserved_bytes = 0;  // reservations and quarantine
  uint64_t disk_bytes = 0, disk_blocks = 0, disk_capacity_bytes = 0;
  uint64_t hits = 0, misses = 0;                // OpenRead per block
  uint64_t lookup_hits = 0, lookup_misses = 0;  // Lookup per call (hit: matched > 0)
  uint64_t evictions_memory = 0, evictions_disk = 0;
  uint64_t expiries_reservation = 0, expiries_read = 0;
  uint64_t checksum_failures = 0;  // at commit or on a disk read (and start-up scan)
  uint64_t disk_loads = 0;         // blocks read back from disk into memory
  uint64_t active_reservations = 0, active_read_leases = 0, pinned_blocks = 0;
  uint64_t bytes_in = 0, bytes_out = 0;  // committed bytes, bytes granted to readers
};

enum class ReserveState { kReserved, kAlreadyStored, kInProgress };

struct Reservation {
  ReserveState state = ReserveState::kReserved;
  LeaseId lease = 0;            // kReserved only
  Allocation where;             // kReserved only
  std::span<std::byte> memory;  // kReserved only: where the block's bytes go
};

struct ReadGrant {
  LeaseId lease = 0;
  Allocation where;
  std::span<const std::byte> memory;  // valid while the lease is held
};

struct LookupResult {
  int32_t matched_blocks = 0;         // longest n with the snapshot under hashes[n-1] complete
  uint64_t prefix_hash = 0;           // hashes[n-1]
  std::vector<uint64_t> chunk_bytes;  // block sizes of that snapshot, by chunk index
};

class BlockStore {
 public:
  // Provides `bytes` of arena memory that outlives the store (the service passes UCX-allocated,
  // exported memory). Without one, arenas come from the heap and the store owns them.
  using ArenaAllocator = std::function<absl::StatusOr<std::span<std::byte>>(uint64_t bytes)>;

  // Allocates the arenas and, with a disk tier, rebuilds the index from its files.
  static absl::StatusOr<std::unique_ptr<BlockStore>> Create(StoreOptions options,
                                                            ArenaAllocator allocate = nullptr);
  ~BlockStore();
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  size_t num_arenas() const { return arenas_.size(); }
  std::span<std::byte> arena(uint32_t index) const { return arenas_[index]; }
  const StoreOptions& options() const { return options_; }

  // Phase one of a write: room for `size` bytes of the block `key` (evicting as needed) under a
  // lease. kAlreadyStored / kInProgress when the block is committed / being written. Errors:
  // InvalidArgument (size 0 or over max_block_bytes), ResourceExhausted (no room: the rest is
  // leased or pinned; or too many leases).
  absl::StatusOr<Reservation> Reserve(const BlockKey& key, uint64_t size);
  // Copies `data` into a reservation at `offset` (the fallback data path).
  absl::Status Write(LeaseId lease, uint64_t offset, std::span<const std::byte> data);
  // Phase two: verifies the block (header, payload XXH3, key, snapshot consistency), writes it to
  // disk when there is a disk tier, and makes it visible. On any error the reservation is gone.
  // NotFound for an unknown or expired lease, DataLoss for a checksum mismatch.
  absl::Status Commit(LeaseId lease);
  // Drops a reservation. NotFound for an unknown lease; FailedPrecondition while it is committing.
  absl::Status Abort(LeaseId lease);
  // Reserve + copy + Commit for a block held in memory (small blocks sent inline).
  absl::StatusOr<ReserveState> PutBlock(std::span<const std::byte> block);

  // Grants read access to a committed block under a lease, loading it from disk if needed
  // (verified; a corrupted file is deleted, counted and reported as DataLoss). NotFound: a miss.
  // Waits for a concurrent load of the same block until `deadline`.
  absl::StatusOr<ReadGrant> OpenRead(const BlockKey& key, absl::Time deadline);
  // Copies [offset, offset + out.size()) of a leased block into `out` (the fallback data path).
  absl::Status Read(LeaseId lease, uint64_t offset, std::span<std::byte> out);
  // Ends a read lease. NotFound for an unknown (e.g. expired) lease.
  absl::Status Release(LeaseId lease);

  // The longest prefix of `hashes` (h[1..n] of a token sequence) whose snapshot is stored whole.
  LookupResult Lookup(const KeySpace& space, std::span<const uint64_t> hashes);
  // The chunk sizes of the snapshots under hashes[0], hashes[1], ... as long as each is stored
  // whole (the run stops at the first that is not).
  std::vector<std::vector<uint64_t>> LookupRun(const KeySpace& space,
                                               std::span<const uint64_t> hashes);

  // Pins keep a committed block in memory and on disk until as many Unpins. NotFound for a
  // missing block; Unpin of an unpinned block is FailedPrecondition.
  absl::Status Pin(const BlockKey& key);
  absl::Status Unpin(const BlockKey& key);
  // Deletes a block from both tiers. FailedPrecondition while it is leased, loading or pinned.
  absl::Status Remove(const BlockKey& key);

  // Reclaims leases that expired before `now` and ends quarantines; returns leases reclaimed.
  // The service calls it from a timer on its control thread.
  int ReclaimExpired(absl::Time now);

  StoreStats stats() const;
  // Checksum failures found outside the store (e.g. by the service); counted in stats.
  void CountChecksumFailure();

 private:
  struct Entry;
  struct Snapshot {
    uint32_t chunk_count = 0;
    uint64_t snapshot_bytes = 0;
    uint32_t live = 0;  // chunks stored (either tier)
    // Sizes of the chunks stored, by chunk index. A map, not a [chunk_count] array: chunk_count
    // comes from a block header, and a forged one must not size an allocation.
    absl::flat_hash_map<uint32_t, uint64_t> chunk_bytes;
  };
  struct Lease {
    bool is_read = false;
    absl::Time expiry;
    int busy = 0;             // copies in progress (Write/Read): not reclaimed meanwhile
    bool committing = false;  // reservations: Commit in progress
    // Reservation.
    BlockKey key;
    Allocation where;
    // Read lease.
    Entry* entry = nullptr;
  };

  BlockStore(StoreOptions options, std::unique_ptr<DiskTier> disk);
  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }
  std::span<std::byte> Span(const Allocation& a) const {
    return arenas_[a.arena].subspan(a.offset, a.size);
  }

  absl::Status LoadIndex();
  std::optional<Allocation> AllocateLocked(uint64_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ReserveDiskLocked(uint64_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckSnapshotLocked(const BlockKey& key, const kvcache::KvBlockHeader& header)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddEntryLocked(std::unique_ptr<Entry> entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvictFromMemoryLocked(Entry* entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvictFromDiskLocked(Entry* entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropIfEmptyLocked(Entry* entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateLruLocked(Entry* entry, bool touch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<ReadGrant> GrantLocked(Entry* entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeReservationLocked(LeaseId id, Lease& lease, bool quarantine)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  LeaseId NewLeaseIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const StoreOptions options_;
  const std::unique_ptr<DiskTier> disk_;
  std::vector<std::unique_ptr<std::byte[]>> owned_arenas_;  // heap arenas (no allocator given)
  std::vector<std::span<std::byte>> arenas_;

  mutable absl::Mutex mu_;
  RangeAllocator allocator_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<BlockKey, std::unique_ptr<Entry>> blocks_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<SnapshotKey, Snapshot> snapshots_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<LeaseId, Lease> leases_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<BlockKey, LeaseId> writing_ ABSL_GUARDED_BY(mu_);
  // Expired reservations' memory, freed at the time given.
  std::vector<std::pair<absl::Time, Allocation>> quarantine_ ABSL_GUARDED_BY(mu_);
  // Evictable blocks, most recently used first.
  std::list<Entry*> memory_lru_ ABSL_GUARDED_BY(mu_);
  std::list<Entry*> disk_lru_ ABSL_GUARDED_BY(mu_);
  uint64_t disk_used_ ABSL_GUARDED_BY(mu_) = 0;  // files plus writes in flight
  uint64_t next_lease_ ABSL_GUARDED_BY(mu_) = 0;
  StoreStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvasir::cachestore
