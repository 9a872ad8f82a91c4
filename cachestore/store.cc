// The block store (see store.h).
#include "cachestore/store.h"

#include <algorithm>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace kvasir::cachestore {

struct BlockStore::Entry {
  BlockKey key;
  uint64_t size = 0;
  std::optional<Allocation> memory;  // set while in the memory tier (or being loaded into it)
  bool on_disk = false;
  bool loading = false;  // being read from disk into `memory`
  int readers = 0;       // read leases
  int pins = 0;
  bool in_memory_lru = false, in_disk_lru = false;
  std::list<Entry*>::iterator memory_lru, disk_lru;

  bool in_memory() const { return memory.has_value() && !loading; }
};

namespace {

std::string_view AsChars(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// Keeps `e` in `lru` exactly while it is evictable there; a touch moves it to the front (most
// recently used).
template <typename Entry>
void Relink(std::list<Entry*>& lru, typename std::list<Entry*>::iterator& at, bool& linked,
            Entry* e, bool evictable, bool touch) {
  if (linked && (!evictable || touch)) {
    lru.erase(at);
    linked = false;
  }
  if (evictable && !linked) {
    lru.push_front(e);
    at = lru.begin();
    linked = true;
  }
}

}  // namespace

BlockStore::BlockStore(StoreOptions options, std::unique_ptr<DiskTier> disk)
    : options_(std::move(options)), disk_(std::move(disk)) {}

BlockStore::~BlockStore() = default;

absl::StatusOr<std::unique_ptr<BlockStore>> BlockStore::Create(StoreOptions options,
                                                               ArenaAllocator allocate) {
  if (options.memory_capacity_bytes < 4096) {
    return absl::InvalidArgumentError("memory capacity must be at least 4 KiB");
  }
  if (options.arena_bytes == 0) return absl::InvalidArgumentError("arena size must be > 0");
  if (options.max_block_bytes == 0) {
    return absl::InvalidArgumentError("max block bytes must be > 0");
  }
  if (options.lease_ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("lease TTL must be > 0");
  }
  // A block lives in one arena: arenas are at least as large as the largest block.
  options.arena_bytes = std::max(options.arena_bytes, options.max_block_bytes);
  options.arena_bytes = std::min(options.arena_bytes, options.memory_capacity_bytes);
  options.max_block_bytes = std::min(options.max_block_bytes, options.arena_bytes);
  std::unique_ptr<DiskTier> disk;
  if (!options.disk_dir.empty()) {
    KVASIR_ASSIGN_OR_RETURN(disk,
                            DiskTier::Open({.dir = options.disk_dir, .fsync = options.disk_fsync}));
  }
  std::unique_ptr<BlockStore> store(new BlockStore(std::move(options), std::move(disk)));
  const StoreOptions& o = store->options_;
  absl::MutexLock lock(&store->mu_);
  for (uint64_t left = o.memory_capacity_bytes; left > 0;) {
    const uint64_t bytes = std::min(left, o.arena_bytes);
    std::span<std::byte> memory;
    if (allocate) {
      KVASIR_ASSIGN_OR_RETURN(memory, allocate(bytes));
      if (memory.size() < bytes) return absl::InternalError("arena allocator returned too little");
      memory = memory.first(bytes);
    } else {
      store->owned_arenas_.push_back(std::make_unique_for_overwrite<std::byte[]>(bytes));
      memory = std::span<std::byte>(store->owned_arenas_.back().get(), bytes);
    }
    store->arenas_.push_back(memory);
    store->allocator_.AddArena(bytes);
    left -= bytes;
  }
  store->stats_.memory_capacity_bytes = store->allocator_.capacity();
  store->stats_.disk_capacity_bytes = o.disk_capacity_bytes;
  std::mt19937_64 rng(std::random_device{}());
  store->next_lease_ = rng() >> 16;  // lease ids differ between runs of the store
  if (store->disk_) KVASIR_RETURN_IF_ERROR(store->LoadIndex());
  return store;
}

absl::Status BlockStore::LoadIndex() ABSL_NO_THREAD_SAFETY_ANALYSIS {  // called under mu_
  KVASIR_ASSIGN_OR_RETURN(DiskTier::ScanResult scan, disk_->Scan());
  stats_.checksum_failures += scan.corrupt_removed;
  // Oldest first, so that the most recently written blocks end up at the front of the LRU.
  std::sort(scan.blocks.begin(), scan.blocks.end(),
            [](const auto& a, const auto& b) { return a.modified < b.modified; });
  int inconsistent = 0;
  for (const DiskTier::ScannedBlock& b : scan.blocks) {
    kvasir::kvcache::KvBlockHeader header;
    header.chunk_count = b.chunk_count;
    header.snapshot_bytes = b.snapshot_bytes;
    header.chunk_index = b.key.chunk_index;
    if (b.size > options_.max_block_bytes || !CheckSnapshotLocked(b.key, header).ok()) {
      (void)disk_->Remove(b.key);
      ++inconsistent;
      continue;
    }
    auto entry = std::make_unique<Entry>();
    entry->key = b.key;
    entry->size = b.size;
    entry->on_disk = true;
    auto& snap = snapshots_[b.key.snapshot()];
    snap.chunk_count = b.chunk_count;
    snap.snapshot_bytes = b.snapshot_bytes;
    disk_used_ += b.size;
    stats_.disk_bytes += b.size;
    ++stats_.disk_blocks;
    AddEntryLocked(std::move(entry));
  }
  KVASIR_LOG_SUBSYS(INFO, kCachestore,
                    "disk tier %s: %d blocks (%s) indexed, %d corrupted and %d temporary files "
                    "removed, %d dropped (too large or inconsistent)",
                    disk_->dir(), static_cast<int>(stats_.disk_blocks),
                    FormatBytes(static_cast<double>(stats_.disk_bytes)), scan.corrupt_removed,
                    scan.temp_removed, inconsistent);
  // Over capacity after a restart with a smaller limit: evict the oldest.
  while (options_.disk_capacity_bytes > 0 && disk_used_ > options_.disk_capacity_bytes &&
         !disk_lru_.empty()) {
    EvictFromDiskLocked(disk_lru_.back());
  }
  return absl::OkStatus();
}

LeaseId BlockStore::NewLeaseIdLocked() {
  do {
    ++next_lease_;
  } while (next_lease_ == 0 || leases_.contains(next_lease_));
  return next_lease_;
}

absl::Status BlockStore::CheckSnapshotLocked(const BlockKey& key,
                                             const kvcache::KvBlockHeader& header) {
  if (header.chunk_count == 0 || header.chunk_index >= header.chunk_count) {
    return absl::InvalidArgumentError("block header has a bad chunk index or count");
  }
  auto it = snapshots_.find(key.snapshot());
  if (it == snapshots_.end()) return absl::OkStatus();
  if (it->second.chunk_count != header.chunk_count ||
      it->second.snapshot_bytes != header.snapshot_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block ", key.ToString(), " belongs to a snapshot of ", header.chunk_count, " chunks and ",
        header.snapshot_bytes, " bytes, but the stored snapshot under this prefix has ",
        it->second.chunk_count, " chunks and ", it->second.snapshot_bytes, " bytes"));
  }
  return absl::OkStatus();
}

void BlockStore::AddEntryLocked(std::unique_ptr<Entry> entry) {
  Entry* e = entry.get();
  Snapshot& snap = snapshots_[e->key.snapshot()];
  KVASIR_CHECK(e->key.chunk_index < snap.chunk_count);
  snap.chunk_bytes[e->key.chunk_index] = e->size;
  ++snap.live;
  blocks_[e->key] = std::move(entry);
  UpdateLruLocked(e, /*touch=*/true);
}

void BlockStore::UpdateLruLocked(Entry* e, bool touch) {
  const bool memory_evictable = e->in_memory() && e->readers == 0 && e->pins == 0;
  const bool disk_evictable = e->on_disk && !e->loading && e->pins == 0;
  Relink(memory_lru_, e->memory_lru, e->in_memory_lru, e, memory_evictable, touch);
  Relink(disk_lru_, e->disk_lru, e->in_disk_lru, e, disk_evictable, touch);
}

void BlockStore::DropIfEmptyLocked(Entry* e) {
  if (e->memory.has_value() || e->on_disk) return;
  KVASIR_CHECK(e->readers == 0 && !e->loading);
  if (e->in_memory_lru) memory_lru_.erase(e->memory_lru);
  if (e->in_disk_lru) disk_lru_.erase(e->disk_lru);
  if (e->pins > 0) --stats_.pinned_blocks;
  auto snap = snapshots_.find(e->key.snapshot());
  if (snap != snapshots_.end()) {
    snap->second.chunk_bytes.erase(e->key.chunk_index);
    if (--snap->second.live == 0) snapshots_.erase(snap);
  }
  blocks_.erase(e->key);  // destroys *e
}

void BlockStore::EvictFromMemoryLocked(Entry* e) {
  KVASIR_CHECK(e->in_memory() && e->readers == 0);
  allocator_.Free(*e->memory);
  e->memory.reset();
  stats_.memory_bytes -= e->size;
  --stats_.memory_blocks;
  ++stats_.evictions_memory;
  UpdateLruLocked(e, /*touch=*/false);
  DropIfEmptyLocked(e);
}

void BlockStore::EvictFromDiskLocked(Entry* e) {
  KVASIR_CHECK(e->on_disk && !e->loading);
  if (absl::Status s = disk_->Remove(e->key); !s.ok()) {
    KVASIR_LOG_SUBSYS(WARN, kCachestore, "disk tier eviction: %s", s.ToString());
  }
  e->on_disk = false;
  disk_used_ -= e->size;
  stats_.disk_bytes -= e->size;
  --stats_.disk_blocks;
  ++stats_.evictions_disk;
  UpdateLruLocked(e, /*touch=*/false);
  DropIfEmptyLocked(e);
}

std::optional<Allocation> BlockStore::AllocateLocked(uint64_t size) {
  while (true) {
    if (std::optional<Allocation> a = allocator_.Allocate(size)) return a;
    if (memory_lru_.empty()) return std::nullopt;
    EvictFromMemoryLocked(memory_lru_.back());
  }
}

absl::Status BlockStore::ReserveDiskLocked(uint64_t size) {
  const uint64_t cap = options_.disk_capacity_bytes;
  if (cap > 0 && size > cap) {
    return absl::ResourceExhaustedError(
        absl::StrCat("block of ", size, " bytes exceeds the disk tier's capacity of ", cap));
  }
  while (cap > 0 && disk_used_ + size > cap) {
    if (disk_lru_.empty()) {
      return absl::ResourceExhaustedError(absl::StrCat("disk tier full: ", disk_used_, " of ", cap,
                                                       " bytes pinned or being written"));
    }
    EvictFromDiskLocked(disk_lru_.back());
  }
  disk_used_ += size;
  return absl::OkStatus();
}

absl::StatusOr<Reservation> BlockStore::Reserve(const BlockKey& key, uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError("cannot store an empty block");
  if (size > options_.max_block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block of ", size, " bytes exceeds the store's limit of ", options_.max_block_bytes));
  }
  absl::MutexLock lock(&mu_);
  if (blocks_.contains(key)) return Reservation{.state = ReserveState::kAlreadyStored};
  if (auto w = writing_.find(key); w != writing_.end()) {
    return Reservation{.state = ReserveState::kInProgress};
  }
  if (leases_.size() >= options_.max_leases) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many leases in flight (", leases_.size(), ")"));
  }
  std::optional<Allocation> where = AllocateLocked(size);
  if (!where) {
    return absl::ResourceExhaustedError(
        absl::StrCat("memory tier full: no room for ", size, " bytes; ",
                     stats_.memory_bytes + stats_.reserved_bytes, " of ", allocator_.capacity(),
                     " bytes are leased, pinned, being written or quarantined"));
  }
  const LeaseId id = NewLeaseIdLocked();
  Lease& lease = leases_[id];
  lease.is_read = false;
  lease.expiry = Now() + options_.lease_ttl;
  lease.key = key;
  lease.where = *where;
  writing_[key] = id;
  stats_.reserved_bytes += size;
  ++stats_.active_reservations;
  return Reservation{ReserveState::kReserved, id, *where, Span(*where)};
}

absl::Status BlockStore::Write(LeaseId id, uint64_t offset, std::span<const std::byte> data) {
  std::span<std::byte> target;
  {
    absl::MutexLock lock(&mu_);
    auto it = leases_.find(id);
    if (it == leases_.end() || it->second.is_read) {
      return absl::NotFoundError(absl::StrCat("no reservation ", id, " (expired or finished)"));
    }
    Lease& lease = it->second;
    if (lease.committing) return absl::FailedPreconditionError("reservation is committing");
    if (offset > lease.where.size || data.size() > lease.where.size - offset) {
      return absl::OutOfRangeError(absl::StrCat("write of ", data.size(), " bytes at ", offset,
                                                " overruns the reservation of ", lease.where.size));
    }
    ++lease.busy;
    target = Span(lease.where).subspan(offset, data.size());
  }
  if (!data.empty()) std::memcpy(target.data(), data.data(), data.size());
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  KVASIR_CHECK(it != leases_.end());  // busy leases are not reclaimed
  --it->second.busy;
  return absl::OkStatus();
}

void BlockStore::FreeReservationLocked(LeaseId id, Lease& lease, bool quarantine) {
  writing_.erase(lease.key);
  --stats_.active_reservations;
  if (quarantine) {
    quarantine_.emplace_back(Now() + options_.lease_ttl, lease.where);
  } else {
    allocator_.Free(lease.where);
    stats_.reserved_bytes -= lease.where.size;
  }
  leases_.erase(id);
}

absl::Status BlockStore::Commit(LeaseId id) {
  BlockKey key;
  Allocation where;
  {
    absl::MutexLock lock(&mu_);
    auto it = leases_.find(id);
    if (it == leases_.end() || it->second.is_read) {
      return absl::NotFoundError(absl::StrCat("no reservation ", id, " (expired or finished)"));
    }
    if (it->second.committing || it->second.busy > 0) {
      return absl::FailedPreconditionError("reservation is being written or committed");
    }
    it->second.committing = true;
    key = it->second.key;
    where = it->second.where;
  }
  const std::span<std::byte> memory = Span(where);
  absl::StatusOr<std::pair<BlockKey, kvcache::KvBlockHeader>> verified =
      VerifyBlock(AsChars(memory));
  absl::Status status = verified.status();
  if (status.ok() && !(verified->first == key)) {
    status =
        absl::InvalidArgumentError(absl::StrCat("block header names ", verified->first.ToString(),
                                                " but was reserved as ", key.ToString()));
  }
  bool disk_reserved = false;
  if (status.ok()) {
    absl::MutexLock lock(&mu_);
    status = CheckSnapshotLocked(key, verified->second);
    if (status.ok() && disk_) {
      status = ReserveDiskLocked(where.size);
      disk_reserved = status.ok();
    }
  }
  if (status.ok() && disk_) status = Annotate(disk_->Write(key, memory), "disk tier");

  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  KVASIR_CHECK(it != leases_.end());  // committing leases are not reclaimed
  if (status.ok()) status = CheckSnapshotLocked(key, verified->second);  // a racing commit
  if (!status.ok()) {
    if (disk_reserved) {
      disk_used_ -= where.size;
      (void)disk_->Remove(key);
    }
    if (status.code() == absl::StatusCode::kDataLoss) ++stats_.checksum_failures;
    FreeReservationLocked(id, it->second, /*quarantine=*/false);
    return status;
  }
  writing_.erase(key);
  leases_.erase(it);
  --stats_.active_reservations;
  stats_.reserved_bytes -= where.size;
  auto& snap = snapshots_[key.snapshot()];
  snap.chunk_count = verified->second.chunk_count;
  snap.snapshot_bytes = verified->second.snapshot_bytes;
  auto entry = std::make_unique<Entry>();
  entry->key = key;
  entry->size = where.size;
  entry->memory = where;
  entry->on_disk = disk_ != nullptr;
  stats_.memory_bytes += where.size;
  ++stats_.memory_blocks;
  if (disk_) {
    stats_.disk_bytes += where.size;
    ++stats_.disk_blocks;
  }
  stats_.bytes_in += where.size;
  AddEntryLocked(std::move(entry));
  return absl::OkStatus();
}

absl::Status BlockStore::Abort(LeaseId id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  if (it == leases_.end() || it->second.is_read) {
    return absl::NotFoundError(absl::StrCat("no reservation ", id, " (expired or finished)"));
  }
  if (it->second.committing || it->second.busy > 0) {
    return absl::FailedPreconditionError("reservation is being written or committed");
  }
  FreeReservationLocked(id, it->second, /*quarantine=*/false);
  return absl::OkStatus();
}

absl::StatusOr<ReserveState> BlockStore::PutBlock(std::span<const std::byte> block) {
  KVASIR_ASSIGN_OR_RETURN(auto parsed, ParseBlock(AsChars(block)));
  KVASIR_ASSIGN_OR_RETURN(Reservation r, Reserve(parsed.first, block.size()));
  if (r.state != ReserveState::kReserved) return r.state;
  KVASIR_RETURN_IF_ERROR(Write(r.lease, 0, block));
  KVASIR_RETURN_IF_ERROR(Commit(r.lease));
  return ReserveState::kReserved;
}

absl::StatusOr<ReadGrant> BlockStore::GrantLocked(Entry* e) {
  if (leases_.size() >= options_.max_leases) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many leases in flight (", leases_.size(), ")"));
  }
  const LeaseId id = NewLeaseIdLocked();
  Lease& lease = leases_[id];
  lease.is_read = true;
  lease.expiry = Now() + options_.lease_ttl;
  lease.entry = e;
  ++e->readers;
  ++stats_.active_read_leases;
  ++stats_.hits;
  stats_.bytes_out += e->size;
  UpdateLruLocked(e, /*touch=*/true);
  return ReadGrant{id, *e->memory, Span(*e->memory)};
}

absl::StatusOr<ReadGrant> BlockStore::OpenRead(const BlockKey& key, absl::Time deadline) {
  struct WaitArg {
    BlockStore* store;
    const BlockKey* key;
  };
  WaitArg arg{this, &key};
  // True when the block is not being loaded by someone else.
  auto not_loading = +[](WaitArg* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    auto it = a->store->blocks_.find(*a->key);
    return it == a->store->blocks_.end() || !it->second->loading;
  };
  Entry* e = nullptr;
  Allocation where;
  {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithDeadline(absl::Condition(not_loading, &arg), deadline)) {
      return absl::DeadlineExceededError("block is still being loaded from disk");
    }
    auto it = blocks_.find(key);
    if (it == blocks_.end()) {
      ++stats_.misses;
      return absl::NotFoundError(absl::StrCat("no block ", key.ToString()));
    }
    e = it->second.get();
    if (e->in_memory()) return GrantLocked(e);
    // On disk only: load it into memory.
    KVASIR_CHECK(e->on_disk);
    std::optional<Allocation> a = AllocateLocked(e->size);
    if (!a) {
      return absl::ResourceExhaustedError(
          "memory tier full: no room to load a block from disk (the rest is leased or pinned)");
    }
    where = *a;
    e->memory = where;
    e->loading = true;
    UpdateLruLocked(e, /*touch=*/false);
  }
  const absl::Status read = disk_->Read(key, Span(where));
  absl::MutexLock lock(&mu_);
  e->loading = false;
  if (!read.ok()) {
    allocator_.Free(where);
    e->memory.reset();
    const bool corrupt =
        read.code() == absl::StatusCode::kDataLoss || read.code() == absl::StatusCode::kNotFound;
    if (corrupt) {
      if (read.code() == absl::StatusCode::kDataLoss) ++stats_.checksum_failures;
      KVASIR_LOG_SUBSYS(WARN, kCachestore, "disk tier: dropping block %s: %s", key.ToString(),
                        read.ToString());
      (void)disk_->Remove(key);
      e->on_disk = false;
      disk_used_ -= e->size;
      stats_.disk_bytes -= e->size;
      --stats_.disk_blocks;
      ++stats_.misses;
    }
    UpdateLruLocked(e, /*touch=*/false);
    DropIfEmptyLocked(e);
    return read;
  }
  stats_.memory_bytes += e->size;
  ++stats_.memory_blocks;
  ++stats_.disk_loads;
  return GrantLocked(e);
}

absl::Status BlockStore::Read(LeaseId id, uint64_t offset, std::span<std::byte> out) {
  std::span<const std::byte> source;
  {
    absl::MutexLock lock(&mu_);
    auto it = leases_.find(id);
    if (it == leases_.end() || !it->second.is_read) {
      return absl::NotFoundError(absl::StrCat("no read lease ", id, " (expired or released)"));
    }
    Lease& lease = it->second;
    const uint64_t size = lease.entry->size;
    if (offset > size || out.size() > size - offset) {
      return absl::OutOfRangeError(absl::StrCat("read of ", out.size(), " bytes at ", offset,
                                                " overruns the block of ", size));
    }
    ++lease.busy;
    source = Span(*lease.entry->memory).subspan(offset, out.size());
  }
  if (!out.empty()) std::memcpy(out.data(), source.data(), out.size());
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  KVASIR_CHECK(it != leases_.end());
  --it->second.busy;
  return absl::OkStatus();
}

absl::Status BlockStore::Release(LeaseId id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  if (it == leases_.end() || !it->second.is_read) {
    return absl::NotFoundError(absl::StrCat("no read lease ", id, " (expired or released)"));
  }
  if (it->second.busy > 0) return absl::FailedPreconditionError("read lease is being copied");
  Entry* e = it->second.entry;
  leases_.erase(it);
  --e->readers;
  --stats_.active_read_leases;
  UpdateLruLocked(e, /*touch=*/false);
  return absl::OkStatus();
}

LookupResult BlockStore::Lookup(const KeySpace& space, std::span<const uint64_t> hashes) {
  absl::MutexLock lock(&mu_);
  SnapshotKey probe{space, 0};
  for (size_t n = hashes.size(); n > 0; --n) {
    probe.prefix_hash = hashes[n - 1];
    auto it = snapshots_.find(probe);
    if (it == snapshots_.end() || it->second.live != it->second.chunk_count) continue;
    ++stats_.lookup_hits;
    // Complete: chunk_count blocks are stored, one per index below it.
    std::vector<uint64_t> chunk_bytes(it->second.chunk_count, 0);
    for (const auto& [index, bytes] : it->second.chunk_bytes) chunk_bytes[index] = bytes;
    return LookupResult{static_cast<int32_t>(n), probe.prefix_hash, std::move(chunk_bytes)};
  }
  ++stats_.lookup_misses;
  return LookupResult{};
}

std::vector<std::vector<uint64_t>> BlockStore::LookupRun(const KeySpace& space,
                                                         std::span<const uint64_t> hashes) {
  absl::MutexLock lock(&mu_);
  std::vector<std::vector<uint64_t>> run;
  SnapshotKey probe{space, 0};
  for (uint64_t hash : hashes) {
    probe.prefix_hash = hash;
    auto it = snapshots_.find(probe);
    if (it == snapshots_.end() || it->second.live != it->second.chunk_count) break;
    std::vector<uint64_t>& chunk_bytes = run.emplace_back(it->second.chunk_count, 0);
    for (const auto& [index, bytes] : it->second.chunk_bytes) chunk_bytes[index] = bytes;
  }
  ++(run.empty() ? stats_.lookup_misses : stats_.lookup_hits);
  return run;
}

absl::Status BlockStore::Pin(const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = blocks_.find(key);
  if (it == blocks_.end()) return absl::NotFoundError(absl::StrCat("no block ", key.ToString()));
  if (it->second->pins++ == 0) ++stats_.pinned_blocks;
  UpdateLruLocked(it->second.get(), /*touch=*/false);
  return absl::OkStatus();
}

absl::Status BlockStore::Unpin(const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = blocks_.find(key);
  if (it == blocks_.end()) return absl::NotFoundError(absl::StrCat("no block ", key.ToString()));
  if (it->second->pins == 0) {
    return absl::FailedPreconditionError(absl::StrCat("block ", key.ToString(), " is not pinned"));
  }
  if (--it->second->pins == 0) --stats_.pinned_blocks;
  UpdateLruLocked(it->second.get(), /*touch=*/false);
  return absl::OkStatus();
}

absl::Status BlockStore::Remove(const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = blocks_.find(key);
  if (it == blocks_.end()) return absl::NotFoundError(absl::StrCat("no block ", key.ToString()));
  Entry* e = it->second.get();
  if (e->readers > 0 || e->loading || e->pins > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("block ", key.ToString(), " is leased, loading or pinned"));
  }
  if (e->on_disk) {
    KVASIR_RETURN_IF_ERROR(disk_->Remove(key));
    e->on_disk = false;
    disk_used_ -= e->size;
    stats_.disk_bytes -= e->size;
    --stats_.disk_blocks;
  }
  if (e->memory) {
    allocator_.Free(*e->memory);
    e->memory.reset();
    stats_.memory_bytes -= e->size;
    --stats_.memory_blocks;
  }
  UpdateLruLocked(e, /*touch=*/false);
  DropIfEmptyLocked(e);
  return absl::OkStatus();
}

int BlockStore::ReclaimExpired(absl::Time now) {
  absl::MutexLock lock(&mu_);
  std::vector<LeaseId> expired;
  for (const auto& [id, lease] : leases_) {
    if (lease.expiry <= now && lease.busy == 0 && !lease.committing) expired.push_back(id);
  }
  for (LeaseId id : expired) {
    Lease& lease = leases_[id];
    if (lease.is_read) {
      Entry* e = lease.entry;
      leases_.erase(id);
      --e->readers;
      --stats_.active_read_leases;
      ++stats_.expiries_read;
      UpdateLruLocked(e, /*touch=*/false);
    } else {
      ++stats_.expiries_reservation;
      FreeReservationLocked(id, lease, /*quarantine=*/true);
    }
  }
  auto done = std::partition(quarantine_.begin(), quarantine_.end(),
                             [&](const auto& q) { return q.first > now; });
  for (auto q = done; q != quarantine_.end(); ++q) {
    allocator_.Free(q->second);
    stats_.reserved_bytes -= q->second.size;
  }
  quarantine_.erase(done, quarantine_.end());
  if (!expired.empty()) {
    KVASIR_LOG_SUBSYS(INFO, kCachestore, "reclaimed %d expired leases",
                      static_cast<int>(expired.size()));
  }
  return static_cast<int>(expired.size());
}

StoreStats BlockStore::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void BlockStore::CountChecksumFailure() {
  absl::MutexLock lock(&mu_);
  ++stats_.checksum_failures;
}

}  // namespace kvasir::cachestore
