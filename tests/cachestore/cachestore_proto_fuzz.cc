// Fuzz target for the cachestore's request messages (cachestore/cachestore.proto) as the service
// parses and validates them: each request's bytes are parsed into its message, checked as the
// service's handler checks them (batch sizes, piece and inline limits, key spaces through
// FromProto) and applied to an in-process BlockStore, whose own checks (header and payload
// checksums, snapshot consistency, leases) then run; the response is serialized. No network:
// these are the bodies of the handlers in cachestore/service.cc (RegisterHandlers), to be kept in
// step with them.
//
// Input: records of [method byte][length, 2 bytes little-endian][request bytes], applied in order
// to one fresh store. The store's lease ids are random, so a lease written as n in 1..64 stands for
// the n-th lease this input was granted (reservations and reads, in grant order). Method 14
// advances the store's clock past the lease TTL and reclaims. With the method byte's top bit set,
// the blocks of a PutInline or the data of a Write get their KV block checksums rewritten to match
// (tests/testing/kv_block_fixup.h), so that mutated headers reach the store's checks behind the
// checksums. Seeds (fuzz_seeds/cachestore_proto): write, read, pin and expiry sessions with real
// blocks; the target writes them itself when KVASIR_FUZZ_WRITE_SEEDS names a folder (then it
// exits):
//   KVASIR_FUZZ_WRITE_SEEDS=tests/cachestore/fuzz_seeds/cachestore_proto \
//     build/fuzz/cachestore_proto_fuzz
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cachestore/block_key.h"
#include "cachestore/cachestore.pb.h"
#include "cachestore/protocol.h"
#include "cachestore/store.h"
#include "cachestore/synthetic_blocks.h"
#include "common/log.h"
#include "tests/testing/fuzz_util.h"
#include "tests/testing/kv_block_fixup.h"

namespace {

using namespace kvasir::cachestore;  // NOLINT

enum Method : uint8_t {
  kLookup = 0,
  kReserve,
  kWrite,
  kCommit,
  kAbort,
  kPutInline,
  kOpenRead,
  kRead,
  kRelease,
  kPin,
  kUnpin,
  kRemove,
  kStats,
  kHello,
  kTick,
  kMethodCount,
};

// The service's limits (ServiceOptions), scaled down with the store.
constexpr uint64_t kMaxInlineBytes = 16 << 10;
constexpr uint64_t kMaxPieceBytes = 8 << 10;

absl::Time g_now;
std::vector<uint64_t> g_leases;  // granted to this input, in order

// A lease as a request names it: n in 1..64 is the n-th lease granted so far.
uint64_t Lease(uint64_t n) {
  return n >= 1 && n <= 64 && n <= g_leases.size() ? g_leases[n - 1] : n;
}

std::unique_ptr<BlockStore> NewStore() {
  StoreOptions o;
  o.memory_capacity_bytes = 128 << 10;
  o.arena_bytes = 32 << 10;
  o.max_block_bytes = 16 << 10;
  o.lease_ttl = absl::Seconds(1);
  o.max_leases = 64;
  o.clock = [] { return g_now; };
  absl::StatusOr<std::unique_ptr<BlockStore>> store = BlockStore::Create(std::move(o));
  if (!store.ok()) __builtin_trap();
  return *std::move(store);
}

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

template <typename Items>
bool TooMany(const Items& items) {
  return items.size() > kMaxBatchItems;
}

// One request, handled as its handler in service.cc does; the response bytes (or nothing).
void Handle(BlockStore& store, uint8_t method, bool fix, const std::string& bytes) {
  std::string response_bytes;
  switch (method) {
    case kLookup: {
      LookupRequest request;
      if (!request.ParseFromString(bytes)) return;
      if (request.prefix_hashes_size() > kMaxLookupHashes) return;
      absl::StatusOr<KeySpace> space = FromProto(request.space());
      if (!space.ok()) return;
      const LookupResult found = store.Lookup(
          *space, std::span<const uint64_t>(request.prefix_hashes().data(),
                                            static_cast<size_t>(request.prefix_hashes_size())));
      if (found.matched_blocks < 0 || found.matched_blocks > request.prefix_hashes_size()) {
        __builtin_trap();
      }
      LookupResponse response;
      response.set_matched_blocks(found.matched_blocks);
      response.set_prefix_hash(found.prefix_hash);
      for (uint64_t b : found.chunk_bytes) response.add_chunk_bytes(b);
      response_bytes = response.SerializeAsString();
      break;
    }
    case kReserve: {
      ReserveRequest request;
      if (!request.ParseFromString(bytes) || TooMany(request.items())) return;
      ReserveResponse response;
      for (const ReserveItem& item : request.items()) {
        ReserveGrant* grant = response.add_grants();
        absl::StatusOr<BlockKey> key = FromProto(item.key());
        absl::StatusOr<Reservation> r =
            key.ok() ? store.Reserve(*key, item.size()) : absl::StatusOr<Reservation>(key.status());
        ToProto(r.status(), grant->mutable_status());
        if (!r.ok() || r->state != ReserveState::kReserved) continue;
        if (r->memory.size() != item.size()) __builtin_trap();
        g_leases.push_back(r->lease);
        grant->set_lease(r->lease);
        grant->set_arena(r->where.arena);
        grant->set_offset(r->where.offset);
      }
      response_bytes = response.SerializeAsString();
      break;
    }
    case kWrite: {
      WriteRequest request;
      if (!request.ParseFromString(bytes)) return;
      if (request.data().size() > kMaxPieceBytes) return;
      if (fix && request.offset() == 0)
        kvasir::testing::FixKvBlockChecksums(*request.mutable_data());
      (void)store.Write(Lease(request.lease()), request.offset(), AsBytes(request.data()));
      break;
    }
    case kCommit:
    case kAbort:
    case kRelease: {
      LeaseList request;
      if (!request.ParseFromString(bytes) || TooMany(request.leases())) return;
      StatusList response;
      for (uint64_t n : request.leases()) {
        const uint64_t lease = Lease(n);
        const absl::Status s = method == kCommit  ? store.Commit(lease)
                               : method == kAbort ? store.Abort(lease)
                                                  : store.Release(lease);
        ToProto(s, response.add_statuses());
      }
      response_bytes = response.SerializeAsString();
      break;
    }
    case kPutInline: {
      PutInlineRequest request;
      if (!request.ParseFromString(bytes) || TooMany(request.blocks())) return;
      if (fix) {
        for (std::string& b : *request.mutable_blocks()) kvasir::testing::FixKvBlockChecksums(b);
      }
      for (const std::string& b : request.blocks()) {
        if (b.size() > kMaxInlineBytes) return;
      }
      PutInlineResponse response;
      for (const std::string& block : request.blocks()) {
        absl::StatusOr<ReserveState> state = store.PutBlock(AsBytes(block));
        ToProto(state.status(), response.add_statuses());
        response.add_states(state.ok() ? RESERVE_STATE_RESERVED : RESERVE_STATE_UNSPECIFIED);
      }
      response_bytes = response.SerializeAsString();
      break;
    }
    case kOpenRead: {
      OpenReadRequest request;
      if (!request.ParseFromString(bytes) || TooMany(request.keys()) ||
          TooMany(request.release_leases())) {
        return;
      }
      const uint64_t inline_max = std::min<uint64_t>(request.inline_max_bytes(), kMaxInlineBytes);
      for (uint64_t n : request.release_leases()) (void)store.Release(Lease(n));
      OpenReadResponse response;
      uint64_t inline_total = 0;
      for (const BlockKeyProto& key_proto : request.keys()) {
        ReadGrantProto* grant = response.add_grants();
        absl::StatusOr<BlockKey> key = FromProto(key_proto);
        absl::StatusOr<ReadGrant> g =
            key.ok() ? store.OpenRead(*key, g_now) : absl::StatusOr<ReadGrant>(key.status());
        ToProto(g.status(), grant->mutable_status());
        if (!g.ok()) continue;
        if (g->memory.size() != g->where.size) __builtin_trap();
        // What a reader gets back must be the block that was asked for, intact.
        absl::StatusOr<std::pair<BlockKey, kvasir::kvcache::KvBlockHeader>> verified = VerifyBlock(
            std::string_view(reinterpret_cast<const char*>(g->memory.data()), g->memory.size()));
        if (!verified.ok() || !(verified->first == *key)) __builtin_trap();
        grant->set_size(g->where.size);
        if (g->where.size <= inline_max && inline_total + g->where.size <= kMaxPieceBytes) {
          grant->set_data(reinterpret_cast<const char*>(g->memory.data()), g->memory.size());
          inline_total += g->where.size;
          (void)store.Release(g->lease);
          continue;
        }
        g_leases.push_back(g->lease);
        grant->set_lease(g->lease);
      }
      response_bytes = response.SerializeAsString();
      break;
    }
    case kRead: {
      ReadRequest request;
      if (!request.ParseFromString(bytes)) return;
      if (request.length() > kMaxPieceBytes) return;
      std::string data(request.length(), '\0');
      (void)store.Read(Lease(request.lease()), request.offset(),
                       std::as_writable_bytes(std::span<char>(data.data(), data.size())));
      break;
    }
    case kPin:
    case kUnpin:
    case kRemove: {
      KeyList request;
      if (!request.ParseFromString(bytes) || TooMany(request.keys())) return;
      StatusList response;
      for (const BlockKeyProto& key_proto : request.keys()) {
        absl::StatusOr<BlockKey> key = FromProto(key_proto);
        absl::Status s = !key.ok()          ? key.status()
                         : method == kPin   ? store.Pin(*key)
                         : method == kUnpin ? store.Unpin(*key)
                                            : store.Remove(*key);
        ToProto(s, response.add_statuses());
      }
      response_bytes = response.SerializeAsString();
      break;
    }
    case kStats: {
      const StoreStats s = store.stats();
      if (s.memory_bytes > s.memory_capacity_bytes) __builtin_trap();
      break;
    }
    case kHello: {
      HelloRequest request;
      (void)request.ParseFromString(bytes);
      break;
    }
    case kTick:
      g_now += absl::Seconds(2);
      (void)store.ReclaimExpired(g_now);
      break;
  }
  (void)response_bytes;
}

void Append(std::string& input, uint8_t method, const std::string& request) {
  input.push_back(static_cast<char>(method));
  input.push_back(static_cast<char>(request.size() & 0xff));
  input.push_back(static_cast<char>(request.size() >> 8));
  input += request;
}

std::string KeyListOf(const std::vector<std::string>& blocks) {
  KeyList keys;
  for (const std::string& b : blocks) ToProto(ParseBlock(b)->first, keys.add_keys());
  return keys.SerializeAsString();
}

bool WriteSeeds(const std::string& dir) {
  SyntheticSnapshotOptions o;
  o.payload_bytes = 600;
  o.block_bytes = 400;
  o.n_layer = 1;
  o.n_head_kv = 1;
  o.head_dim = 4;
  o.prefix_hash = 0x51;
  absl::StatusOr<std::vector<std::string>> blocks = MakeSyntheticSnapshot(o);
  if (!blocks.ok() || blocks->size() < 2) return false;
  const KeySpace space = SyntheticKeySpace(o);
  auto write = [&](const char* name, const std::string& input) {
    std::ofstream(dir + "/" + name, std::ios::binary) << input;
    std::printf("%s: %zu bytes\n", name, input.size());
  };
  LookupRequest lookup;
  ToProto(space, lookup.mutable_space());
  lookup.add_prefix_hashes(0x50);
  lookup.add_prefix_hashes(0x51);
  {  // Inline puts, lookup, inline read, pins, remove, stats.
    PutInlineRequest put;
    for (const std::string& b : *blocks) put.add_blocks(b);
    OpenReadRequest read;
    for (const std::string& b : *blocks) ToProto(ParseBlock(b)->first, read.add_keys());
    read.set_inline_max_bytes(1 << 20);
    std::string input;
    Append(input, kPutInline, put.SerializeAsString());
    Append(input, kLookup, lookup.SerializeAsString());
    Append(input, kOpenRead, read.SerializeAsString());
    Append(input, kPin, KeyListOf(*blocks));
    Append(input, kRemove, KeyListOf(*blocks));
    Append(input, kUnpin, KeyListOf(*blocks));
    Append(input, kRemove, KeyListOf(*blocks));
    Append(input, kStats, "");
    write("inline.bin", input);
    input[0] = static_cast<char>(kPutInline | 0x80);  // the same with checksums rewritten
    write("inline_fixup.bin", input);
  }
  {  // Reserve, write in two pieces, commit; read under a lease in pieces; release.
    ReserveRequest reserve;
    for (const std::string& b : *blocks) {
      ReserveItem* item = reserve.add_items();
      ToProto(ParseBlock(b)->first, item->mutable_key());
      item->set_size(b.size());
    }
    std::string input;
    HelloRequest hello;
    hello.set_client_name("fuzz");
    Append(input, kHello, hello.SerializeAsString());
    Append(input, kReserve, reserve.SerializeAsString());
    LeaseList commit;
    for (size_t i = 0; i < blocks->size(); ++i) {
      const std::string& b = (*blocks)[i];
      const size_t half = b.size() / 2;
      for (size_t at : {size_t{0}, half}) {
        WriteRequest w;
        w.set_lease(i + 1);
        w.set_offset(at);
        w.set_data(b.substr(at, at == 0 ? half : std::string::npos));
        Append(input, kWrite, w.SerializeAsString());
      }
      commit.add_leases(i + 1);
    }
    Append(input, kCommit, commit.SerializeAsString());
    Append(input, kLookup, lookup.SerializeAsString());
    OpenReadRequest open;
    ToProto(ParseBlock((*blocks)[0])->first, open.add_keys());
    Append(input, kOpenRead, open.SerializeAsString());
    const uint64_t read_lease = blocks->size() + 1;
    ReadRequest read;
    read.set_lease(read_lease);
    read.set_offset(8);
    read.set_length(64);
    Append(input, kRead, read.SerializeAsString());
    LeaseList release;
    release.add_leases(read_lease);
    Append(input, kRelease, release.SerializeAsString());
    write("reserve_write_commit.bin", input);
  }
  {  // A reservation that expires before its commit; an abort of an unknown lease.
    ReserveRequest reserve;
    ReserveItem* item = reserve.add_items();
    ToProto(ParseBlock((*blocks)[0])->first, item->mutable_key());
    item->set_size((*blocks)[0].size());
    LeaseList leases;
    leases.add_leases(1);
    leases.add_leases(7);
    std::string input;
    Append(input, kReserve, reserve.SerializeAsString());
    Append(input, kTick, "");
    Append(input, kCommit, leases.SerializeAsString());
    Append(input, kAbort, leases.SerializeAsString());
    Append(input, kReserve, reserve.SerializeAsString());
    Append(input, kAbort, leases.SerializeAsString());
    write("expiry.bin", input);
  }
  return true;
}

const bool kSeedsWritten = kvasir::testing::WriteSeedsIfAsked(WriteSeeds);

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvasir::testing::QuietLogs();
  g_now = absl::FromUnixSeconds(1'000'000);
  g_leases.clear();
  std::unique_ptr<BlockStore> store = NewStore();
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  size_t at = 0;
  for (int records = 0; records < 64 && input.size() - at >= 3; ++records) {
    const uint8_t method = (static_cast<uint8_t>(input[at]) & 0x7f) % kMethodCount;
    const bool fix = (static_cast<uint8_t>(input[at]) & 0x80) != 0;
    const size_t length =
        std::min<size_t>(static_cast<uint8_t>(input[at + 1]) |
                             static_cast<size_t>(static_cast<uint8_t>(input[at + 2])) << 8,
                         input.size() - at - 3);
    Handle(*store, method, fix, std::string(input.substr(at + 3, length)));
    at += 3 + length;
  }
  const StoreStats s = store->stats();
  if (s.memory_bytes > s.memory_capacity_bytes) __builtin_trap();
  return 0;
}
