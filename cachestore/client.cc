// The cachestore client (see client.h).
#include "cachestore/client.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cachestore/protocol.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "transport/ucx/ucx_transport.h"

namespace kvasir::cachestore {

using transport::RmaOp;

struct StoreClient::Session {
  int64_t connects = 0;   // rpc_->num_connects() when it was set up
  uint64_t instance = 0;  // the store process it was set up with
  bool ucx = false;
  transport::PeerId peer = 0;
  std::vector<transport::RemoteRegion> arenas;
  uint64_t max_inline = 0;
  uint64_t max_piece = 0;
  uint64_t max_block = 0;
  absl::Duration lease_ttl;
  std::string transport;
};

namespace {

std::string_view AsChars(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// A lease's usable time as seen by the client: the store's TTL from when the request was sent,
// less a margin, so that one-sided transfers end before the store can reclaim the memory.
absl::Time LeaseDeadline(absl::Time sent, absl::Duration ttl) { return sent + ttl * 0.8; }

// The store answering is not the one the session was set up with (it restarted between the
// session's hello and this call). The next call sets up a new session.
absl::Status StoreRestarted() {
  return absl::UnavailableError("the cachestore restarted; retry the call");
}

// How long a quiet client keeps the leases of finished reads before it sends their release on
// its own; a busy one sends them with its next open-read.
constexpr absl::Duration kReleaseDelay = absl::Milliseconds(2);
// Deadline of a release the client sends on its own (a lost one only delays the store until the
// lease expires).
constexpr absl::Duration kReleaseTimeout = absl::Milliseconds(200);

}  // namespace

// The leases of finished reads, waiting for release. They belong to one store process: leases of
// another (a restart in between) are dropped, not sent.
class StoreClient::Releases {
 public:
  void Add(uint64_t instance, std::span<const LeaseId> leases) {
    absl::MutexLock lock(&mu);
    if (instance != this->instance) {
      waiting.clear();
      this->instance = instance;
    }
    if (waiting.empty()) oldest = absl::Now();
    waiting.insert(waiting.end(), leases.begin(), leases.end());
  }

  // Up to kMaxBatchItems leases to release with a request to store process `instance`.
  std::vector<LeaseId> Take(uint64_t instance) {
    absl::MutexLock lock(&mu);
    if (instance != this->instance) {
      waiting.clear();
      return {};
    }
    return TakeLocked();
  }

  std::vector<LeaseId> TakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::vector<LeaseId> out;
    if (waiting.size() <= static_cast<size_t>(kMaxBatchItems)) {
      out.swap(waiting);
    } else {
      out.assign(waiting.end() - kMaxBatchItems, waiting.end());
      waiting.resize(waiting.size() - kMaxBatchItems);
    }
    return out;
  }

  absl::Mutex mu;
  uint64_t instance ABSL_GUARDED_BY(mu) = 0;
  std::vector<LeaseId> waiting ABSL_GUARDED_BY(mu);
  absl::Time oldest ABSL_GUARDED_BY(mu);     // when the first of `waiting` was added
  bool sending ABSL_GUARDED_BY(mu) = false;  // a release call is on its way
  bool stop ABSL_GUARDED_BY(mu) = false;
  std::thread thread;  // runs ReleaseLoop
};

StoreClient::StoreClient(ClientOptions options)
    : options_(std::move(options)), releases_(std::make_unique<Releases>()) {}

StoreClient::~StoreClient() {
  if (releases_->thread.joinable()) {
    {
      absl::MutexLock lock(&releases_->mu);
      releases_->stop = true;
    }
    releases_->thread.join();
  }
  if (rpc_) {
    FlushReleases(absl::Now() + kReleaseTimeout);
    rpc_->Stop();
  }
  ucx_.reset();
}

void StoreClient::ReleaseLoop() {
  Releases& r = *releases_;
  absl::MutexLock lock(&r.mu);
  while (!r.stop) {
    r.mu.Await(absl::Condition(
        +[](Releases* r) ABSL_NO_THREAD_SAFETY_ANALYSIS { return r->stop || !r->waiting.empty(); },
        &r));
    if (r.stop) break;
    // Sleep until the oldest waiting lease is kReleaseDelay old. Reads taking the leases meanwhile
    // do not wake this thread (a busy client costs it one wake-up per delay).
    const absl::Time due = r.oldest + kReleaseDelay;
    r.mu.AwaitWithDeadline(absl::Condition(&r.stop), due);
    if (r.stop || r.sending || absl::Now() < due) continue;
    r.mu.Unlock();
    FlushReleases(absl::Now() + kReleaseTimeout);
    r.mu.Lock();
  }
}

void StoreClient::FlushReleases(absl::Time deadline) {
  Releases& r = *releases_;
  absl::MutexLock lock(&r.mu);
  // A release on its way (from the releaser thread) goes first, so that a call made after this
  // one returns finds every earlier read's lease released.
  r.mu.AwaitWithDeadline(
      absl::Condition(
          +[](Releases* r) ABSL_NO_THREAD_SAFETY_ANALYSIS { return !r->sending; }, &r),
      deadline);
  while (!r.waiting.empty() && !r.sending) {
    LeaseList release;
    for (LeaseId lease : r.TakeLocked()) release.add_leases(lease);
    r.sending = true;
    r.mu.Unlock();
    // A lost release only delays the store until the lease expires.
    (void)CallRpc(kReleaseMethod, release.SerializeAsString(),
                  std::max(deadline, absl::Now() + kReleaseTimeout));
    r.mu.Lock();
    r.sending = false;
  }
}

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::Connect(ClientOptions options) {
  if (options.port == 0) return absl::InvalidArgumentError("cachestore client: no port");
  if (options.timeout <= absl::ZeroDuration() || options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("cachestore client: timeouts must be > 0");
  }
  std::unique_ptr<StoreClient> client(new StoreClient(options));
  transport::rpc::RpcClient::Options rpc;
  rpc.host = options.host;
  rpc.port = options.port;
  rpc.handshake = CachestoreHandshake("cachestore-client", options.name);
  rpc.default_timeout = options.timeout;
  rpc.connect_timeout = options.connect_timeout;
  rpc.max_frame_bytes = 16u << 20;
  KVASIR_ASSIGN_OR_RETURN(client->rpc_, transport::rpc::RpcClient::Create(rpc));
  KVASIR_RETURN_IF_ERROR(Annotate(client->rpc_->WaitConnected(options.connect_timeout),
                                  absl::StrCat("cachestore at ", options.host, ":", options.port)));
  if (options.data_path != DataPath::kRpc) {
    // Failed stores are noticed by deadlines and by the control plane (a reconnection renews
    // the session), so endpoints need no UCX peer-failure handling. Asking for it would keep
    // UCX 1.13 off its shared-memory transports, which cannot provide it: on one host every
    // byte would then go through loopback TCP, about 10x slower here.
    absl::StatusOr<std::unique_ptr<transport::ucx::UcxTransport>> ucx =
        transport::ucx::UcxTransport::Create(
            {.tls = options.ucx_tls, .peer_errors = transport::ucx::PeerErrorHandling::kOff});
    if (ucx.ok()) {
      client->ucx_ = *std::move(ucx);
    } else if (options.data_path == DataPath::kUcx) {
      return Annotate(ucx.status(), "cachestore client: UCX");
    } else {
      KVASIR_LOG_SUBSYS(INFO, kCachestore, "cachestore client: no UCX (%s); using the RPC path",
                        ucx.status().ToString());
    }
  }
  const absl::Time deadline = absl::Now() + options.connect_timeout;
  KVASIR_RETURN_IF_ERROR(client->CurrentSession(deadline).status());
  client->releases_->thread = std::thread([c = client.get()] { c->ReleaseLoop(); });
  return client;
}

absl::Time StoreClient::Deadline(absl::Duration timeout) const {
  return absl::Now() + (timeout > absl::ZeroDuration() ? timeout : options_.timeout);
}

absl::StatusOr<std::string> StoreClient::Call(const char* method, const std::string& request,
                                              absl::Time deadline) {
  const std::string_view m = method;
  if (m != kHelloMethod && m != kOpenReadMethod && m != kReadMethod && m != kReleaseMethod) {
    FlushReleases(deadline);
  }
  return CallRpc(method, request, deadline);
}

absl::StatusOr<std::string> StoreClient::CallRpc(const char* method, const std::string& request,
                                                 absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) {
    return absl::DeadlineExceededError(absl::StrCat(method, ": deadline passed"));
  }
  return rpc_->Call(method, request, {.timeout = left});
}

absl::StatusOr<std::shared_ptr<const StoreClient::Session>> StoreClient::CurrentSession(
    absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  if (session_ != nullptr && session_->connects == rpc_->num_connects()) return session_;
  std::shared_ptr<const Session> old = session_;
  KVASIR_ASSIGN_OR_RETURN(session_, NewSession(deadline));
  if (old != nullptr && old->ucx && ucx_ != nullptr) ucx_->Disconnect(old->peer);
  return session_;
}

absl::StatusOr<std::shared_ptr<const StoreClient::Session>> StoreClient::NewSession(
    absl::Time deadline) {
  HelloRequest request;
  request.set_client_name(options_.name);
  const int64_t connects = rpc_->num_connects();
  KVASIR_ASSIGN_OR_RETURN(std::string reply,
                          Call(kHelloMethod, request.SerializeAsString(), deadline));
  HelloResponse hello;
  if (!hello.ParseFromString(reply)) {
    return absl::InternalError("cachestore sent a malformed hello");
  }
  auto session = std::make_shared<Session>();
  session->connects = connects;
  session->instance = hello.instance();
  session->max_inline = hello.max_inline_bytes();
  session->max_piece = std::max<uint64_t>(hello.max_piece_bytes(), 4096);
  session->max_block = hello.max_block_bytes();
  session->lease_ttl = absl::Microseconds(static_cast<int64_t>(hello.lease_ttl_us()));
  session->transport = "rpc";
  if (options_.data_path != DataPath::kRpc && ucx_ != nullptr && !hello.ucx_address().empty() &&
      hello.arenas_size() > 0) {
    absl::Status ucx = [&]() -> absl::Status {
      for (int i = 0; i < hello.arenas_size(); ++i) {
        const ArenaProto& a = hello.arenas(i);
        if (a.id() != static_cast<uint32_t>(i)) {
          return absl::InternalError("cachestore sent arenas out of order");
        }
        session->arenas.push_back({a.address(), a.size(), a.key()});
      }
      KVASIR_ASSIGN_OR_RETURN(session->peer, ucx_->Connect(hello.ucx_address()));
      // Probe: one small one-sided read shows that the store's memory is reachable from here.
      std::byte probe[64];
      RmaOp op{std::span<std::byte>(probe, std::min<uint64_t>(64, session->arenas[0].size_bytes)),
               0};
      const absl::Duration left = std::min(deadline - absl::Now(), absl::Seconds(2));
      absl::Status s = ucx_->Get(session->peer, session->arenas[0], {&op, 1}, left);
      if (!s.ok()) ucx_->Disconnect(session->peer);
      return s;
    }();
    if (ucx.ok()) {
      session->ucx = true;
      session->transport = ucx_->name();
    } else if (options_.data_path == DataPath::kUcx) {
      return Annotate(ucx, "cachestore client: UCX data path");
    } else {
      KVASIR_LOG_SUBSYS(INFO, kCachestore,
                        "cachestore client: UCX data path unusable (%s); using the RPC path",
                        ucx.ToString());
      session->arenas.clear();
    }
  } else if (options_.data_path == DataPath::kUcx) {
    return absl::FailedPreconditionError(
        "cachestore client: the store or this client has no UCX data path");
  }
  return session;
}

std::string StoreClient::data_path() const {
  absl::MutexLock lock(&mu_);
  return session_ ? session_->transport : "rpc";
}

bool StoreClient::using_ucx() const {
  absl::MutexLock lock(&mu_);
  return session_ && session_->ucx;
}

std::vector<uint64_t> StoreClient::arena_sizes() const {
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> sizes;
  if (session_) {
    for (const transport::RemoteRegion& r : session_->arenas) sizes.push_back(r.size_bytes);
  }
  return sizes;
}

absl::StatusOr<std::span<std::byte>> StoreClient::AllocateBuffer(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("cannot allocate an empty buffer");
  if (ucx_ != nullptr) {
    KVASIR_ASSIGN_OR_RETURN(auto region, ucx_->AllocateMemory(bytes));
    return region.second;
  }
  absl::MutexLock lock(&mu_);
  heap_buffers_.push_back(std::make_unique_for_overwrite<std::byte[]>(bytes));
  return std::span<std::byte>(heap_buffers_.back().get(), bytes);
}

absl::Status StoreClient::RegisterBuffer(std::span<std::byte> memory) {
  if (ucx_ == nullptr) return absl::OkStatus();
  return ucx_->RegisterMemory(memory).status();
}

absl::Status StoreClient::Transfer(const Session& session, bool put, uint32_t arena,
                                   std::span<const RmaOp> ops, absl::Time deadline) {
  if (arena >= session.arenas.size()) {
    return absl::InternalError(
        absl::StrCat("cachestore named arena ", arena, " of ", session.arenas.size()));
  }
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) {
    return absl::DeadlineExceededError("cachestore transfer: deadline passed");
  }
  const transport::RemoteRegion& region = session.arenas[arena];
  return put ? ucx_->Put(session.peer, region, ops, left)
             : ucx_->Get(session.peer, region, ops, left);
}

absl::Status StoreClient::RawArenaGet(uint32_t arena, std::span<const RmaOp> ops,
                                      absl::Duration timeout) {
  const absl::Time deadline = Deadline(timeout);
  KVASIR_ASSIGN_OR_RETURN(auto session, CurrentSession(deadline));
  if (!session->ucx) return absl::FailedPreconditionError("no UCX data path");
  return Transfer(*session, /*put=*/false, arena, ops, deadline);
}

absl::StatusOr<LookupResult> StoreClient::Lookup(const KeySpace& space,
                                                 std::span<const uint64_t> prefix_hashes,
                                                 absl::Duration timeout) {
  if (prefix_hashes.size() > static_cast<size_t>(kMaxLookupHashes)) {
    return absl::InvalidArgumentError("too many prefix hashes for one lookup");
  }
  const absl::Time deadline = Deadline(timeout);
  LookupRequest request;
  ToProto(space, request.mutable_space());
  for (uint64_t h : prefix_hashes) request.add_prefix_hashes(h);
  KVASIR_ASSIGN_OR_RETURN(std::string reply,
                          Call(kLookupMethod, request.SerializeAsString(), deadline));
  LookupResponse response;
  if (!response.ParseFromString(reply)) return absl::InternalError("malformed lookup response");
  LookupResult result;
  result.matched_blocks = response.matched_blocks();
  result.prefix_hash = response.prefix_hash();
  result.chunk_bytes.assign(response.chunk_bytes().begin(), response.chunk_bytes().end());
  if (result.matched_blocks < 0 ||
      static_cast<size_t>(result.matched_blocks) > prefix_hashes.size() ||
      (result.matched_blocks > 0 &&
       prefix_hashes[result.matched_blocks - 1] != result.prefix_hash)) {
    return absl::InternalError("cachestore sent an inconsistent lookup response");
  }
  return result;
}

absl::StatusOr<std::vector<std::vector<uint64_t>>> StoreClient::LookupRun(
    const KeySpace& space, std::span<const uint64_t> prefix_hashes, absl::Duration timeout) {
  if (prefix_hashes.size() > static_cast<size_t>(kMaxLookupHashes)) {
    return absl::InvalidArgumentError("too many prefix hashes for one lookup");
  }
  const absl::Time deadline = Deadline(timeout);
  LookupRunRequest request;
  ToProto(space, request.mutable_space());
  request.mutable_prefix_hashes()->Add(prefix_hashes.begin(), prefix_hashes.end());
  KVASIR_ASSIGN_OR_RETURN(std::string reply,
                          Call(kLookupRunMethod, request.SerializeAsString(), deadline));
  LookupRunResponse response;
  if (!response.ParseFromString(reply) ||
      static_cast<size_t>(response.run_size()) > prefix_hashes.size()) {
    return absl::InternalError("cachestore sent an inconsistent lookup response");
  }
  std::vector<std::vector<uint64_t>> run;
  run.reserve(response.run_size());
  for (const ChunkSizes& sizes : response.run()) {
    if (sizes.chunk_bytes_size() == 0) {
      return absl::InternalError("cachestore sent an inconsistent lookup response");
    }
    run.emplace_back(sizes.chunk_bytes().begin(), sizes.chunk_bytes().end());
  }
  return run;
}

absl::StatusOr<LookupResult> StoreClient::LookupTokens(const KeySpace& space,
                                                       std::span<const int32_t> tokens,
                                                       int32_t block_tokens,
                                                       absl::Duration timeout) {
  if (block_tokens <= 0) return absl::InvalidArgumentError("block_tokens must be > 0");
  const std::vector<uint64_t> hashes = kvcache::PrefixHashes(tokens, block_tokens);
  return Lookup(space, hashes, timeout);
}

absl::StatusOr<ClientReservation> StoreClient::Reserve(const BlockKey& key, uint64_t size,
                                                       absl::Duration timeout) {
  const absl::Time deadline = Deadline(timeout);
  KVASIR_ASSIGN_OR_RETURN(auto session, CurrentSession(deadline));
  ReserveRequest request;
  ReserveItem* item = request.add_items();
  ToProto(key, item->mutable_key());
  item->set_size(size);
  KVASIR_ASSIGN_OR_RETURN(std::string reply,
                          Call(kReserveMethod, request.SerializeAsString(), deadline));
  ReserveResponse response;
  if (!response.ParseFromString(reply) || response.grants_size() != 1) {
    return absl::InternalError("malformed reserve response");
  }
  if (response.instance() != session->instance) {
    if (response.grants(0).lease() != 0) {
      LeaseList abort;
      abort.add_leases(response.grants(0).lease());
      (void)Call(kAbortMethod, abort.SerializeAsString(), deadline);
    }
    return StoreRestarted();
  }
  const ReserveGrant& g = response.grants(0);
  KVASIR_RETURN_IF_ERROR(FromProto(g.status()));
  ClientReservation r;
  r.key = key;
  r.size = size;
  r.instance = response.instance();
  switch (g.state()) {
    case RESERVE_STATE_RESERVED:
      r.state = ReserveState::kReserved;
      r.lease = g.lease();
      r.arena = g.arena();
      r.offset = g.offset();
      break;
    case RESERVE_STATE_ALREADY_STORED:
      r.state = ReserveState::kAlreadyStored;
      break;
    case RESERVE_STATE_IN_PROGRESS:
      r.state = ReserveState::kInProgress;
      break;
    default:
      return absl::InternalError("reserve response without a state");
  }
  return r;
}

absl::Status StoreClient::WriteReserved(const ClientReservation& r, uint64_t offset,
                                        std::span<const std::byte> data, absl::Duration timeout) {
  if (r.state != ReserveState::kReserved) {
    return absl::FailedPreconditionError("nothing reserved to write into");
  }
  if (offset > r.size || data.size() > r.size - offset) {
    return absl::OutOfRangeError("write beyond the reservation");
  }
  const absl::Time deadline = Deadline(timeout);
  KVASIR_ASSIGN_OR_RETURN(auto session, CurrentSession(deadline));
  // Offsets of another store process's arenas must never be written into this one's.
  if (r.instance != session->instance) return StoreRestarted();
  if (session->ucx) {
    RmaOp op{std::span<std::byte>(const_cast<std::byte*>(data.data()), data.size()),
             r.offset + offset};
    return Transfer(*session, /*put=*/true, r.arena, {&op, 1}, deadline);
  }
  for (uint64_t done = 0; done < data.size();) {
    const uint64_t n = std::min<uint64_t>(session->max_piece, data.size() - done);
    WriteRequest w;
    w.set_lease(r.lease);
    w.set_offset(offset + done);
    w.set_data(reinterpret_cast<const char*>(data.data() + done), n);
    KVASIR_RETURN_IF_ERROR(Call(kWriteMethod, w.SerializeAsString(), deadline).status());
    done += n;
  }
  return absl::OkStatus();
}

absl::Status StoreClient::Commit(const ClientReservation& r, absl::Duration timeout) {
  LeaseList request;
  request.add_leases(r.lease);
  KVASIR_ASSIGN_OR_RETURN(std::string reply,
                          Call(kCommitMethod, request.SerializeAsString(), Deadline(timeout)));
  StatusList response;
  if (!response.ParseFromString(reply) || response.statuses_size() != 1) {
    return absl::InternalError("malformed commit response");
  }
  return FromProto(response.statuses(0));
}

absl::Status StoreClient::Abort(const ClientReservation& r, absl::Duration timeout) {
  LeaseList request;
  request.add_leases(r.lease);
  KVASIR_ASSIGN_OR_RETURN(std::string reply,
                          Call(kAbortMethod, request.SerializeAsString(), Deadline(timeout)));
  StatusList response;
  if (!response.ParseFromString(reply) || response.statuses_size() != 1) {
    return absl::InternalError("malformed abort response");
  }
  return FromProto(response.statuses(0));
}

absl::StatusOr<PutResult> StoreClient::Put(std::span<const std::byte> block,
                                           absl::Duration timeout) {
  const std::span<const std::byte> one[] = {block};
  KVASIR_ASSIGN_OR_RETURN(auto results, PutBatch(one, timeout));
  return results[0];
}

absl::Status StoreClient::InjectedFault(const char* op) const {
  if (options_.faults == nullptr) return absl::OkStatus();
  const transport::fault::FaultDecision d = options_.faults->Next(op);
  if (d.action == transport::fault::FaultAction::kDelay) absl::SleepFor(d.delay);
  if (d.action == transport::fault::FaultAction::kFail) {
    return d.error.ok() ? absl::UnavailableError("injected fault") : d.error;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<absl::StatusOr<PutResult>>> StoreClient::PutBatch(
    std::span<const std::span<const std::byte>> blocks, absl::Duration timeout) {
  const absl::Time deadline = Deadline(timeout);
  KVASIR_RETURN_IF_ERROR(InjectedFault("put_batch"));
  KVASIR_ASSIGN_OR_RETURN(auto session, CurrentSession(deadline));
  std::vector<absl::StatusOr<PutResult>> results(
      blocks.size(), absl::StatusOr<PutResult>(absl::UnknownError("not attempted")));
  const uint64_t inline_max =
      session->ucx ? std::min(options_.inline_max_bytes, session->max_inline) : session->max_inline;
  std::vector<size_t> small, large;
  std::vector<BlockKey> keys(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    absl::StatusOr<std::pair<BlockKey, kvcache::KvBlockHeader>> parsed =
        ParseBlock(AsChars(blocks[i]));
    if (!parsed.ok()) {
      results[i] = Annotate(parsed.status(), "not a KV block");
      continue;
    }
    keys[i] = std::move(parsed->first);
    (blocks[i].size() <= inline_max ? small : large).push_back(i);
  }
  // Groups indices into calls of at most batch_bytes (and kMaxBatchItems), one block at least.
  auto batches = [&](const std::vector<size_t>& indices) {
    std::vector<std::vector<size_t>> out;
    uint64_t bytes = 0;
    for (size_t i : indices) {
      if (out.empty() || out.back().size() >= static_cast<size_t>(kMaxBatchItems) ||
          bytes + blocks[i].size() > options_.batch_bytes) {
        out.emplace_back();
        bytes = 0;
      }
      out.back().push_back(i);
      bytes += blocks[i].size();
    }
    return out;
  };

  for (const std::vector<size_t>& batch : batches(small)) {
    PutInlineRequest request;
    for (size_t i : batch) request.add_blocks(AsChars(blocks[i]).data(), blocks[i].size());
    absl::StatusOr<std::string> reply =
        Call(kPutInlineMethod, request.SerializeAsString(), deadline);
    PutInlineResponse response;
    if (reply.ok() && (!response.ParseFromString(*reply) ||
                       response.statuses_size() != static_cast<int>(batch.size()) ||
                       response.states_size() != static_cast<int>(batch.size()))) {
      reply = absl::InternalError("malformed put response");
    }
    for (size_t j = 0; j < batch.size(); ++j) {
      const size_t i = batch[j];
      if (!reply.ok()) {
        results[i] = reply.status();
        continue;
      }
      absl::Status s = FromProto(response.statuses(static_cast<int>(j)));
      if (!s.ok()) {
        results[i] = s;
        continue;
      }
      const int state = response.states(static_cast<int>(j));
      results[i] = state == RESERVE_STATE_ALREADY_STORED ? PutResult::kAlreadyStored
                   : state == RESERVE_STATE_IN_PROGRESS  ? PutResult::kInProgress
                                                         : PutResult::kStored;
    }
  }

  for (const std::vector<size_t>& batch : batches(large)) {
    ReserveRequest request;
    for (size_t i : batch) {
      ReserveItem* item = request.add_items();
      ToProto(keys[i], item->mutable_key());
      item->set_size(blocks[i].size());
    }
    const absl::Time sent = absl::Now();
    absl::StatusOr<std::string> reply = Call(kReserveMethod, request.SerializeAsString(), deadline);
    ReserveResponse response;
    if (reply.ok() && (!response.ParseFromString(*reply) ||
                       response.grants_size() != static_cast<int>(batch.size()))) {
      reply = absl::InternalError("malformed reserve response");
    }
    if (reply.ok() && response.instance() != session->instance) {
      reply = StoreRestarted();
    }
    if (!reply.ok()) {
      for (size_t i : batch) results[i] = reply.status();
      continue;
    }
    const absl::Time write_deadline = std::min(deadline, LeaseDeadline(sent, session->lease_ttl));
    std::vector<std::pair<size_t, LeaseId>> written;  // block, lease
    std::vector<LeaseId> failed;
    std::map<uint32_t, std::vector<std::pair<size_t, RmaOp>>> by_arena;
    for (size_t j = 0; j < batch.size(); ++j) {
      const size_t i = batch[j];
      const ReserveGrant& g = response.grants(static_cast<int>(j));
      if (absl::Status s = FromProto(g.status()); !s.ok()) {
        results[i] = s;
        continue;
      }
      if (g.state() == RESERVE_STATE_ALREADY_STORED) {
        results[i] = PutResult::kAlreadyStored;
        continue;
      }
      if (g.state() == RESERVE_STATE_IN_PROGRESS) {
        results[i] = PutResult::kInProgress;
        continue;
      }
      if (session->ucx) {
        by_arena[g.arena()].push_back(
            {i,
             RmaOp{std::span<std::byte>(const_cast<std::byte*>(blocks[i].data()), blocks[i].size()),
                   g.offset()}});
        written.emplace_back(i, g.lease());
        continue;
      }
      ClientReservation r{
          ReserveState::kReserved, keys[i], blocks[i].size(), g.lease(), g.arena(), g.offset(),
          session->instance};
      absl::Status s = WriteReserved(r, 0, blocks[i],
                                     std::max(write_deadline - absl::Now(), absl::Nanoseconds(1)));
      if (s.ok()) {
        written.emplace_back(i, g.lease());
      } else {
        results[i] = s;
        failed.push_back(g.lease());
      }
    }
    for (auto& [arena, items] : by_arena) {
      std::vector<RmaOp> ops;
      for (auto& [i, op] : items) ops.push_back(op);
      absl::Status s = Transfer(*session, /*put=*/true, arena, ops, write_deadline);
      if (s.ok()) continue;
      for (auto& [i, op] : items) {
        results[i] = s;
        const size_t index = i;  // a named copy: clang 14 cannot capture a structured binding
        auto w = std::find_if(written.begin(), written.end(),
                              [&](const auto& x) { return x.first == index; });
        failed.push_back(w->second);
        written.erase(w);
      }
    }
    if (!written.empty()) {
      LeaseList commit;
      for (auto& [i, lease] : written) commit.add_leases(lease);
      absl::StatusOr<std::string> committed =
          Call(kCommitMethod, commit.SerializeAsString(), deadline);
      StatusList statuses;
      if (committed.ok() && (!statuses.ParseFromString(*committed) ||
                             statuses.statuses_size() != static_cast<int>(written.size()))) {
        committed = absl::InternalError("malformed commit response");
      }
      for (size_t j = 0; j < written.size(); ++j) {
        const size_t i = written[j].first;
        if (!committed.ok()) {
          results[i] = committed.status();
          continue;
        }
        absl::Status s = FromProto(statuses.statuses(static_cast<int>(j)));
        if (s.ok()) {
          results[i] = PutResult::kStored;
        } else {
          results[i] = s;
        }
      }
    }
    if (!failed.empty()) {
      // Best effort: the leases expire anyway.
      LeaseList abort;
      for (LeaseId lease : failed) abort.add_leases(lease);
      (void)Call(kAbortMethod, abort.SerializeAsString(),
                 std::min(absl::Now() + absl::Milliseconds(500), deadline));
    }
  }
  return results;
}

absl::StatusOr<uint64_t> StoreClient::Get(const BlockKey& key, std::span<std::byte> out,
                                          absl::Duration timeout) {
  const std::span<std::byte> outs[] = {out};
  KVASIR_ASSIGN_OR_RETURN(auto results, GetBatch({&key, 1}, outs, timeout));
  return results[0];
}

absl::StatusOr<std::string> StoreClient::GetBlock(const BlockKey& key, uint64_t max_bytes,
                                                  absl::Duration timeout) {
  std::string out(max_bytes, '\0');
  KVASIR_ASSIGN_OR_RETURN(
      uint64_t size,
      Get(key, std::as_writable_bytes(std::span<char>(out.data(), out.size())), timeout));
  out.resize(size);
  return out;
}

absl::StatusOr<std::vector<absl::StatusOr<uint64_t>>> StoreClient::GetBatch(
    std::span<const BlockKey> keys, std::span<const std::span<std::byte>> outs,
    absl::Duration timeout) {
  if (keys.size() != outs.size()) {
    return absl::InvalidArgumentError("GetBatch needs one output buffer per key");
  }
  const absl::Time deadline = Deadline(timeout);
  KVASIR_RETURN_IF_ERROR(InjectedFault("get_batch"));
  KVASIR_ASSIGN_OR_RETURN(auto session, CurrentSession(deadline));
  std::vector<absl::StatusOr<uint64_t>> results(
      keys.size(), absl::StatusOr<uint64_t>(absl::UnknownError("not attempted")));
  const uint64_t inline_max =
      session->ucx ? std::min(options_.inline_max_bytes, session->max_inline) : session->max_inline;

  size_t begin = 0;
  while (begin < keys.size()) {
    // A call carries blocks whose buffers add up to at most batch_bytes (one at least).
    size_t end = begin;
    uint64_t bytes = 0;
    while (end < keys.size() && end - begin < static_cast<size_t>(kMaxBatchItems) &&
           (end == begin || bytes + outs[end].size() <= options_.batch_bytes)) {
      bytes += outs[end].size();
      ++end;
    }
    OpenReadRequest request;
    request.set_inline_max_bytes(inline_max);
    for (size_t i = begin; i < end; ++i) ToProto(keys[i], request.add_keys());
    const std::vector<LeaseId> releasing = releases_->Take(session->instance);
    for (LeaseId lease : releasing) request.add_release_leases(lease);
    const absl::Time sent = absl::Now();
    absl::StatusOr<std::string> reply =
        Call(kOpenReadMethod, request.SerializeAsString(), deadline);
    if (!reply.ok() && !releasing.empty()) {
      // The store may not have seen them: keep them for the next call (a second release of a
      // lease only answers NotFound; lease ids are not reused).
      releases_->Add(session->instance, releasing);
    }
    OpenReadResponse response;
    if (reply.ok() && (!response.ParseFromString(*reply) ||
                       response.grants_size() != static_cast<int>(end - begin))) {
      reply = absl::InternalError("malformed open-read response");
    }
    if (reply.ok() && response.instance() != session->instance) {
      // Leases of another store process: release them there, and set up a new session.
      LeaseList release;
      for (const ReadGrantProto& g : response.grants()) {
        if (g.lease() != 0) release.add_leases(g.lease());
      }
      if (release.leases_size() > 0) {
        (void)Call(kReleaseMethod, release.SerializeAsString(),
                   std::max(deadline, absl::Now() + kReleaseTimeout));
      }
      reply = StoreRestarted();
    }
    if (!reply.ok()) {
      for (size_t i = begin; i < end; ++i) results[i] = reply.status();
      begin = end;
      continue;
    }
    const absl::Time read_deadline = std::min(deadline, LeaseDeadline(sent, session->lease_ttl));
    std::vector<LeaseId> leases;
    std::map<uint32_t, std::vector<std::pair<size_t, RmaOp>>> by_arena;
    for (size_t i = begin; i < end; ++i) {
      ReadGrantProto& g = *response.mutable_grants(static_cast<int>(i - begin));
      if (g.lease() != 0) leases.push_back(g.lease());
      if (absl::Status s = FromProto(g.status()); !s.ok()) {
        results[i] = s;
        continue;
      }
      if (g.size() > outs[i].size()) {
        results[i] = absl::ResourceExhaustedError(
            absl::StrCat("block ", keys[i].ToString(), " has ", g.size(),
                         " bytes; the buffer holds ", outs[i].size()));
        continue;
      }
      if (g.lease() == 0) {  // inline
        if (g.data().size() != g.size()) {
          results[i] = absl::InternalError("inline block of the wrong size");
          continue;
        }
        std::memcpy(outs[i].data(), g.data().data(), g.data().size());
        results[i] = g.size();
        continue;
      }
      if (session->ucx) {
        by_arena[g.arena()].push_back({i, RmaOp{outs[i].first(g.size()), g.offset()}});
        results[i] = g.size();
        continue;
      }
      absl::Status s;
      for (uint64_t done = 0; done < g.size() && s.ok();) {
        const uint64_t n = std::min<uint64_t>(session->max_piece, g.size() - done);
        ReadRequest r;
        r.set_lease(g.lease());
        r.set_offset(done);
        r.set_length(n);
        absl::StatusOr<std::string> piece = Call(kReadMethod, r.SerializeAsString(), read_deadline);
        if (!piece.ok()) {
          s = piece.status();
        } else if (piece->size() != n) {
          s = absl::InternalError("read piece of the wrong size");
        } else {
          std::memcpy(outs[i].data() + done, piece->data(), n);
          done += n;
        }
      }
      if (s.ok()) {
        results[i] = g.size();
      } else {
        results[i] = s;
      }
    }
    for (auto& [arena, items] : by_arena) {
      std::vector<RmaOp> ops;
      for (auto& [i, op] : items) ops.push_back(op);
      absl::Status s = Transfer(*session, /*put=*/false, arena, ops, read_deadline);
      if (!s.ok()) {
        for (auto& [i, op] : items) results[i] = s;
      }
    }
    if (!leases.empty()) releases_->Add(session->instance, leases);
    begin = end;
  }
  if (options_.faults != nullptr) {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (!results[i].ok()) continue;
      const transport::fault::FaultDecision d = options_.faults->Next("read_block");
      if (d.action == transport::fault::FaultAction::kCorrupt) {
        transport::fault::CorruptBytes(outs[i].first(*results[i]));
      } else if (d.action == transport::fault::FaultAction::kFail) {
        results[i] = d.error.ok() ? absl::UnavailableError("injected fault") : d.error;
      }
    }
  }
  if (options_.verify_reads) {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (!results[i].ok()) continue;
      auto verified = VerifyBlock(AsChars(outs[i].first(*results[i])));
      if (!verified.ok()) {
        results[i] = absl::DataLossError(absl::StrCat(
            "block read from the cachestore failed verification: ", verified.status().message()));
      } else if (!(verified->first == keys[i])) {
        results[i] = absl::DataLossError("the cachestore returned another block than asked");
      }
    }
  }
  return results;
}

absl::StatusOr<std::vector<absl::Status>> StoreClient::KeyCall(const char* method,
                                                               std::span<const BlockKey> keys,
                                                               absl::Duration timeout) {
  if (keys.size() > static_cast<size_t>(kMaxBatchItems)) {
    return absl::InvalidArgumentError("too many keys in one call");
  }
  KeyList request;
  for (const BlockKey& k : keys) ToProto(k, request.add_keys());
  KVASIR_ASSIGN_OR_RETURN(std::string reply,
                          Call(method, request.SerializeAsString(), Deadline(timeout)));
  StatusList response;
  if (!response.ParseFromString(reply) ||
      response.statuses_size() != static_cast<int>(keys.size())) {
    return absl::InternalError(absl::StrCat("malformed ", method, " response"));
  }
  std::vector<absl::Status> out;
  for (const ItemStatus& s : response.statuses()) out.push_back(FromProto(s));
  return out;
}

absl::StatusOr<std::vector<absl::Status>> StoreClient::Pin(std::span<const BlockKey> keys,
                                                           absl::Duration timeout) {
  return KeyCall(kPinMethod, keys, timeout);
}

absl::StatusOr<std::vector<absl::Status>> StoreClient::Unpin(std::span<const BlockKey> keys,
                                                             absl::Duration timeout) {
  return KeyCall(kUnpinMethod, keys, timeout);
}

absl::StatusOr<std::vector<absl::Status>> StoreClient::Remove(std::span<const BlockKey> keys,
                                                              absl::Duration timeout) {
  return KeyCall(kRemoveMethod, keys, timeout);
}

absl::StatusOr<StatsResponse> StoreClient::Stats(absl::Duration timeout) {
  KVASIR_ASSIGN_OR_RETURN(std::string reply, Call(kStatsMethod, "", Deadline(timeout)));
  StatsResponse stats;
  if (!stats.ParseFromString(reply)) return absl::InternalError("malformed stats response");
  return stats;
}

}  // namespace kvasir::cachestore
