// The cachestore service (see service.h).
#include "cachestore/service.h"

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/post.hpp"
#include "boost/asio/thread_pool.hpp"
#include "cachestore/metrics.h"
#include "cachestore/protocol.h"
#include "common/log.h"
#include "common/process_metrics.h"
#include "common/status_macros.h"
#include "prometheus/registry.h"
#include "transport/http/server.h"
#include "transport/rpc/server.h"
#include "transport/ucx/ucx_transport.h"

namespace kvasir::cachestore {

namespace asio = boost::asio;
using transport::rpc::ServerCall;

namespace {

// Work above this many bytes (checksums, copies) leaves the RPC I/O thread.
constexpr uint64_t kHeavyBytes = 256 << 10;
// A call without a deadline still stops waiting for a disk load after this long.
constexpr absl::Duration kDefaultWait = absl::Seconds(30);

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

absl::Status Malformed(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed ", std::string(what), " request"));
}

template <typename Message>
absl::Status CheckItems(const Message& items, std::string_view what) {
  if (items.size() > kMaxBatchItems) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), " of ", items.size(), " items; at most ", kMaxBatchItems));
  }
  return absl::OkStatus();
}

}  // namespace

struct StoreService::Impl {
  ServiceOptions options;
  // UCX owns the arenas' memory: declared before the store, and released after it in Stop().
  std::unique_ptr<transport::ucx::UcxTransport> ucx;
  std::vector<transport::RegionId> regions;
  std::unique_ptr<BlockStore> store;
  prometheus::Registry registry;
  std::unique_ptr<StoreMetrics> metrics;
  std::string hello;      // the serialized HelloResponse
  uint64_t instance = 0;  // random per process (HelloResponse.instance)
  std::unique_ptr<asio::thread_pool> pool;
  std::unique_ptr<transport::rpc::RpcServer> server;
  std::unique_ptr<transport::http::HttpServer> http;

  std::thread control;
  absl::Mutex control_mu;
  bool control_stop ABSL_GUARDED_BY(control_mu) = false;

  absl::Mutex stop_mu;
  bool stopped ABSL_GUARDED_BY(stop_mu) = false;
  std::atomic<bool> stopping{false};

  // Runs fn (returning StatusOr<std::string>) now or on the worker pool, and answers the call.
  template <typename Fn>
  void Serve(std::shared_ptr<ServerCall> call, std::string_view op, bool heavy, Fn fn) {
    auto run = [this, call, op, fn = std::move(fn)]() mutable {
      if (call->cancelled()) return;  // the client gave up; leases it may hold expire
      const absl::Time start = absl::Now();
      absl::StatusOr<std::string> result = fn();
      metrics->ObserveRequest(op, absl::Now() - start);
      call->Finish(std::move(result));
    };
    if (heavy) {
      asio::post(*pool, std::move(run));
    } else {
      run();
    }
  }

  absl::Time WaitDeadline(const ServerCall& call) const {
    return std::min(call.deadline(), absl::Now() + kDefaultWait);
  }

  void ControlLoop() {
    const absl::Duration period =
        std::clamp(options.store.lease_ttl / 4, absl::Milliseconds(5), absl::Seconds(1));
    absl::Time next_rates = absl::Now();
    absl::MutexLock lock(&control_mu);
    while (!control_stop) {
      control_mu.AwaitWithTimeout(absl::Condition(&control_stop), period);
      if (control_stop) break;
      const absl::Time now = absl::Now();
      store->ReclaimExpired(now);
      if (now >= next_rates) {
        metrics->UpdateRates(store->stats(), now);
        next_rates = now + absl::Seconds(1);
      }
    }
  }

  void RegisterHandlers();
  void HandleHttp(transport::http::HttpRequest request,
                  std::shared_ptr<transport::http::HttpResponder> responder);
};

void StoreService::Impl::RegisterHandlers() {
  server->RegisterUnary(kHelloMethod,
                        [this](std::shared_ptr<ServerCall> call) { call->Finish(hello); });

  server->RegisterUnary(kLookupMethod, [this](std::shared_ptr<ServerCall> call) {
    Serve(call, "lookup", false, [this, call]() -> absl::StatusOr<std::string> {
      LookupRequest request;
      if (!request.ParseFromString(call->request())) return Malformed("lookup");
      if (request.prefix_hashes_size() > kMaxLookupHashes) {
        return absl::InvalidArgumentError("too many prefix hashes in one lookup");
      }
      KVASIR_ASSIGN_OR_RETURN(KeySpace space, FromProto(request.space()));
      const LookupResult found = store->Lookup(
          space, std::span<const uint64_t>(request.prefix_hashes().data(),
                                           static_cast<size_t>(request.prefix_hashes_size())));
      LookupResponse response;
      response.set_matched_blocks(found.matched_blocks);
      response.set_prefix_hash(found.prefix_hash);
      for (uint64_t b : found.chunk_bytes) response.add_chunk_bytes(b);
      return response.SerializeAsString();
    });
  });

  server->RegisterUnary(kLookupRunMethod, [this](std::shared_ptr<ServerCall> call) {
    Serve(call, "lookup", false, [this, call]() -> absl::StatusOr<std::string> {
      LookupRunRequest request;
      if (!request.ParseFromString(call->request())) return Malformed("lookup");
      if (request.prefix_hashes_size() > kMaxLookupHashes) {
        return absl::InvalidArgumentError("too many prefix hashes in one lookup");
      }
      KVASIR_ASSIGN_OR_RETURN(KeySpace space, FromProto(request.space()));
      LookupRunResponse response;
      for (const std::vector<uint64_t>& sizes : store->LookupRun(
               space,
               std::span<const uint64_t>(request.prefix_hashes().data(),
                                         static_cast<size_t>(request.prefix_hashes_size())))) {
        response.add_run()->mutable_chunk_bytes()->Add(sizes.begin(), sizes.end());
      }
      return response.SerializeAsString();
    });
  });

  server->RegisterUnary(kReserveMethod, [this](std::shared_ptr<ServerCall> call) {
    Serve(call, "reserve", false, [this, call]() -> absl::StatusOr<std::string> {
      ReserveRequest request;
      if (!request.ParseFromString(call->request())) return Malformed("reserve");
      KVASIR_RETURN_IF_ERROR(CheckItems(request.items(), "reserve"));
      ReserveResponse response;
      response.set_instance(instance);
      for (const ReserveItem& item : request.items()) {
        ReserveGrant* grant = response.add_grants();
        absl::StatusOr<BlockKey> key = FromProto(item.key());
        absl::StatusOr<Reservation> r = key.ok() ? store->Reserve(*key, item.size())
                                                 : absl::StatusOr<Reservation>(key.status());
        ToProto(r.status(), grant->mutable_status());
        if (!r.ok()) continue;
        switch (r->state) {
          case ReserveState::kReserved:
            grant->set_state(RESERVE_STATE_RESERVED);
            grant->set_lease(r->lease);
            grant->set_arena(r->where.arena);
            grant->set_offset(r->where.offset);
            break;
          case ReserveState::kAlreadyStored:
            grant->set_state(RESERVE_STATE_ALREADY_STORED);
            break;
          case ReserveState::kInProgress:
            grant->set_state(RESERVE_STATE_IN_PROGRESS);
            break;
        }
      }
      return response.SerializeAsString();
    });
  });

  server->RegisterUnary(kWriteMethod, [this](std::shared_ptr<ServerCall> call) {
    auto request = std::make_shared<WriteRequest>();
    if (!request->ParseFromString(call->request())) return call->Finish(Malformed("write"));
    if (request->data().size() > options.max_piece_bytes) {
      return call->Finish(absl::InvalidArgumentError("write piece over the store's limit"));
    }
    Serve(call, "write", request->data().size() > kHeavyBytes,
          [this, request]() -> absl::StatusOr<std::string> {
            KVASIR_RETURN_IF_ERROR(
                store->Write(request->lease(), request->offset(), AsBytes(request->data())));
            return std::string();
          });
  });

  // Commit, Abort and Release: one store call per lease of a LeaseList, one status each.
  const auto lease_method = [this](const char* method, std::string_view op, bool heavy,
                                   absl::Status (BlockStore::*fn)(LeaseId)) {
    server->RegisterUnary(method, [this, op, heavy, fn](std::shared_ptr<ServerCall> call) {
      auto request = std::make_shared<LeaseList>();
      if (!request->ParseFromString(call->request())) return call->Finish(Malformed(op));
      if (absl::Status s = CheckItems(request->leases(), op); !s.ok()) return call->Finish(s);
      Serve(call, op, heavy, [this, request, fn]() -> absl::StatusOr<std::string> {
        StatusList response;
        for (uint64_t lease : request->leases()) {
          ToProto((store.get()->*fn)(lease), response.add_statuses());
        }
        return response.SerializeAsString();
      });
    });
  };
  // Checksums of large blocks and disk writes leave the I/O thread.
  lease_method(kCommitMethod, "commit", /*heavy=*/true, &BlockStore::Commit);
  lease_method(kAbortMethod, "abort", /*heavy=*/false, &BlockStore::Abort);
  lease_method(kReleaseMethod, "release", /*heavy=*/false, &BlockStore::Release);

  server->RegisterUnary(kPutInlineMethod, [this](std::shared_ptr<ServerCall> call) {
    auto request = std::make_shared<PutInlineRequest>();
    if (!request->ParseFromString(call->request())) return call->Finish(Malformed("put"));
    if (absl::Status s = CheckItems(request->blocks(), "put"); !s.ok()) return call->Finish(s);
    uint64_t total = 0;
    for (const std::string& b : request->blocks()) {
      if (b.size() > options.max_inline_bytes) {
        return call->Finish(absl::InvalidArgumentError(
            absl::StrCat("inline block of ", b.size(), " bytes; the store takes at most ",
                         options.max_inline_bytes, " inline")));
      }
      total += b.size();
    }
    const bool heavy = store->options().disk_dir.size() > 0 || total > kHeavyBytes;
    Serve(call, "put_inline", heavy, [this, request]() -> absl::StatusOr<std::string> {
      PutInlineResponse response;
      for (const std::string& block : request->blocks()) {
        absl::StatusOr<ReserveState> state = store->PutBlock(AsBytes(block));
        ToProto(state.status(), response.add_statuses());
        response.add_states(!state.ok()                              ? RESERVE_STATE_UNSPECIFIED
                            : *state == ReserveState::kAlreadyStored ? RESERVE_STATE_ALREADY_STORED
                            : *state == ReserveState::kInProgress    ? RESERVE_STATE_IN_PROGRESS
                                                                     : RESERVE_STATE_RESERVED);
      }
      return response.SerializeAsString();
    });
  });

  server->RegisterUnary(kOpenReadMethod, [this](std::shared_ptr<ServerCall> call) {
    auto request = std::make_shared<OpenReadRequest>();
    if (!request->ParseFromString(call->request())) return call->Finish(Malformed("open-read"));
    if (absl::Status s = CheckItems(request->keys(), "open-read"); !s.ok()) return call->Finish(s);
    if (absl::Status s = CheckItems(request->release_leases(), "open-read releases"); !s.ok()) {
      return call->Finish(s);
    }
    const uint64_t inline_max = std::min(request->inline_max_bytes(), options.max_inline_bytes);
    const bool heavy = store->options().disk_dir.size() > 0 ||
                       inline_max * static_cast<uint64_t>(request->keys_size()) > kHeavyBytes;
    Serve(call, "open_read", heavy,
          [this, call, request, inline_max]() -> absl::StatusOr<std::string> {
            for (uint64_t lease : request->release_leases()) (void)store->Release(lease);
            OpenReadResponse response;
            response.set_instance(instance);
            uint64_t inline_total = 0;
            for (const BlockKeyProto& key_proto : request->keys()) {
              ReadGrantProto* grant = response.add_grants();
              absl::StatusOr<BlockKey> key = FromProto(key_proto);
              absl::StatusOr<ReadGrant> g = key.ok() ? store->OpenRead(*key, WaitDeadline(*call))
                                                     : absl::StatusOr<ReadGrant>(key.status());
              ToProto(g.status(), grant->mutable_status());
              if (!g.ok()) continue;
              grant->set_size(g->where.size);
              // Small blocks travel in the response (up to the frame budget), without a lease.
              if (g->where.size <= inline_max &&
                  inline_total + g->where.size <= options.max_piece_bytes) {
                grant->set_data(reinterpret_cast<const char*>(g->memory.data()), g->memory.size());
                inline_total += g->where.size;
                (void)store->Release(g->lease);
                continue;
              }
              grant->set_lease(g->lease);
              grant->set_arena(g->where.arena);
              grant->set_offset(g->where.offset);
            }
            return response.SerializeAsString();
          });
  });

  server->RegisterUnary(kReadMethod, [this](std::shared_ptr<ServerCall> call) {
    auto request = std::make_shared<ReadRequest>();
    if (!request->ParseFromString(call->request())) return call->Finish(Malformed("read"));
    if (request->length() > options.max_piece_bytes) {
      return call->Finish(absl::InvalidArgumentError("read piece over the store's limit"));
    }
    Serve(call, "read", request->length() > kHeavyBytes,
          [this, request]() -> absl::StatusOr<std::string> {
            std::string data(request->length(), '\0');
            KVASIR_RETURN_IF_ERROR(
                store->Read(request->lease(), request->offset(),
                            std::as_writable_bytes(std::span<char>(data.data(), data.size()))));
            return data;
          });
  });

  const auto key_method = [this](const char* method, std::string_view op,
                                 absl::Status (BlockStore::*fn)(const BlockKey&)) {
    server->RegisterUnary(method, [this, op, fn](std::shared_ptr<ServerCall> call) {
      Serve(call, op, false, [this, call, op, fn]() -> absl::StatusOr<std::string> {
        KeyList request;
        if (!request.ParseFromString(call->request())) return Malformed(op);
        KVASIR_RETURN_IF_ERROR(CheckItems(request.keys(), op));
        StatusList response;
        for (const BlockKeyProto& key_proto : request.keys()) {
          absl::StatusOr<BlockKey> key = FromProto(key_proto);
          ToProto(key.ok() ? (store.get()->*fn)(*key) : key.status(), response.add_statuses());
        }
        return response.SerializeAsString();
      });
    });
  };
  key_method(kPinMethod, "pin", &BlockStore::Pin);
  key_method(kUnpinMethod, "unpin", &BlockStore::Unpin);
  key_method(kRemoveMethod, "remove", &BlockStore::Remove);

  server->RegisterUnary(kStatsMethod, [this](std::shared_ptr<ServerCall> call) {
    const StoreStats s = store->stats();
    StatsResponse r;
    r.set_memory_bytes(s.memory_bytes);
    r.set_memory_blocks(s.memory_blocks);
    r.set_memory_capacity_bytes(s.memory_capacity_bytes);
    r.set_disk_bytes(s.disk_bytes);
    r.set_disk_blocks(s.disk_blocks);
    r.set_disk_capacity_bytes(s.disk_capacity_bytes);
    r.set_hits(s.hits);
    r.set_misses(s.misses);
    r.set_evictions_memory(s.evictions_memory);
    r.set_evictions_disk(s.evictions_disk);
    r.set_lease_expiries(s.expiries_reservation + s.expiries_read);
    r.set_checksum_failures(s.checksum_failures);
    r.set_active_reservations(s.active_reservations);
    r.set_active_read_leases(s.active_read_leases);
    r.set_pinned_blocks(s.pinned_blocks);
    r.set_bytes_in(s.bytes_in);
    r.set_bytes_out(s.bytes_out);
    call->Finish(r.SerializeAsString());
  });
}

void StoreService::Impl::HandleHttp(transport::http::HttpRequest request,
                                    std::shared_ptr<transport::http::HttpResponder> responder) {
  if (request.method != "GET" && request.method != "HEAD") {
    responder->Send({.status = 405, .body = R"({"error":"only GET is served"})"});
    return;
  }
  if (request.path == "/health") {
    if (stopping.load()) {
      responder->Send({.status = 503, .body = R"({"status":"stopping"})"});
    } else {
      responder->Send({.status = 200, .body = R"({"status":"ok"})"});
    }
    return;
  }
  if (request.path == "/ready") {
    // Serving: the RPC server and the data path are up (they are once Start returned) and the
    // memory tier has room for a block at all. Stopping: not ready.
    const StoreStats s = store->stats();
    const bool ready = !stopping.load() && s.memory_capacity_bytes > 0;
    responder->Send({.status = ready ? 200 : 503,
                     .body = absl::StrCat(
                         R"({"status":")", ready ? "ready" : "not ready", R"(","data_path":")",
                         ucx ? ucx->name() : std::string("rpc"), R"(","memory_bytes":)",
                         s.memory_bytes, R"(,"memory_capacity_bytes":)", s.memory_capacity_bytes,
                         R"(,"disk_bytes":)", s.disk_bytes, R"(,"read_leases":)",
                         s.active_read_leases, R"(,"reservations":)", s.active_reservations, "}")});
    return;
  }
  if (request.path == "/metrics") {
    metrics->Update(store->stats());
    responder->Send({.status = 200,
                     .content_type = "text/plain; version=0.0.4; charset=utf-8",
                     .body = MetricsText(registry, "cachestore")});
    return;
  }
  responder->Send(
      {.status = 404, .body = R"({"error":"not found; try /health, /ready or /metrics"})"});
}

StoreService::StoreService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

StoreService::~StoreService() { Stop(); }

absl::StatusOr<std::unique_ptr<StoreService>> StoreService::Start(ServiceOptions options) {
  if (options.worker_threads < 1) return absl::InvalidArgumentError("worker threads must be >= 1");
  if (options.max_piece_bytes == 0 || options.max_piece_bytes > (8u << 20)) {
    return absl::InvalidArgumentError("max piece bytes must be in 1 B .. 8 MiB");
  }
  options.max_inline_bytes = std::min(options.max_inline_bytes, options.max_piece_bytes);
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  Impl* raw = impl.get();

  HelloResponse hello;
  BlockStore::ArenaAllocator allocate;
  if (options.ucx != UcxMode::kOff) {
    absl::StatusOr<std::unique_ptr<transport::ucx::UcxTransport>> ucx =
        transport::ucx::UcxTransport::Create(
            {.tls = options.ucx_tls, .busy_poll = options.ucx_busy_poll});
    if (ucx.ok()) {
      impl->ucx = *std::move(ucx);
      allocate = [raw](uint64_t bytes) -> absl::StatusOr<std::span<std::byte>> {
        KVASIR_ASSIGN_OR_RETURN(auto region, raw->ucx->AllocateMemory(bytes));
        raw->regions.push_back(region.first);
        return region.second;
      };
    } else if (options.ucx == UcxMode::kOn) {
      return Annotate(ucx.status(), "cachestore: UCX");
    } else {
      KVASIR_LOG_SUBSYS(WARN, kCachestore,
                        "UCX unavailable (%s); serving block data over the control plane only",
                        ucx.status().ToString());
    }
  }
  absl::StatusOr<std::unique_ptr<BlockStore>> store = BlockStore::Create(options.store, allocate);
  if (!store.ok() && impl->ucx != nullptr && options.ucx == UcxMode::kAuto &&
      store.status().code() != absl::StatusCode::kInvalidArgument) {
    KVASIR_LOG_SUBSYS(WARN, kCachestore,
                      "UCX could not allocate the arenas (%s); using heap memory and the control "
                      "plane for data",
                      store.status().ToString());
    impl->ucx->Stop();
    impl->ucx.reset();
    impl->regions.clear();
    store = BlockStore::Create(options.store);
  }
  if (!store.ok()) return Annotate(store.status(), "cachestore");
  impl->store = *std::move(store);
  if (impl->ucx) {
    hello.set_ucx_address(impl->ucx->address());
    hello.set_transport(impl->ucx->name());
    for (size_t i = 0; i < impl->regions.size(); ++i) {
      KVASIR_ASSIGN_OR_RETURN(transport::RemoteRegion region,
                              impl->ucx->ExportRegion(impl->regions[i]));
      ArenaProto* arena = hello.add_arenas();
      arena->set_id(static_cast<uint32_t>(i));
      arena->set_address(region.address);
      arena->set_size(region.size_bytes);
      arena->set_key(region.key);
    }
  } else {
    hello.set_transport("rpc");
  }
  hello.set_lease_ttl_us(
      static_cast<uint64_t>(absl::ToInt64Microseconds(impl->store->options().lease_ttl)));
  hello.set_max_block_bytes(impl->store->options().max_block_bytes);
  hello.set_max_inline_bytes(options.max_inline_bytes);
  hello.set_max_piece_bytes(options.max_piece_bytes);
  impl->instance = std::mt19937_64(std::random_device{}())() | 1;
  hello.set_instance(impl->instance);
  impl->hello = hello.SerializeAsString();

  impl->metrics = std::make_unique<StoreMetrics>(impl->registry);
  impl->metrics->Update(impl->store->stats());
  impl->pool = std::make_unique<asio::thread_pool>(options.worker_threads);

  transport::rpc::RpcServer::Options rpc;
  rpc.host = options.host;
  rpc.port = options.port;
  rpc.handshake = CachestoreHandshake("cachestore", options.name);
  rpc.max_frame_bytes = options.max_piece_bytes + (1u << 20);
  KVASIR_ASSIGN_OR_RETURN(impl->server, transport::rpc::RpcServer::Create(rpc));
  impl->RegisterHandlers();

  if (options.http) {
    transport::http::HttpServer::Options http;
    http.host = options.http_host.empty() ? options.host : options.http_host;
    http.port = options.http_port;
    http.max_body_bytes = 64 << 10;
    KVASIR_ASSIGN_OR_RETURN(
        impl->http, transport::http::HttpServer::Start(
                        http, [raw](transport::http::HttpRequest request,
                                    std::shared_ptr<transport::http::HttpResponder> responder) {
                          raw->HandleHttp(std::move(request), std::move(responder));
                        }));
  }
  impl->control = std::thread([raw] { raw->ControlLoop(); });
  std::unique_ptr<StoreService> service(new StoreService(std::move(impl)));
  KVASIR_RETURN_IF_ERROR(service->impl_->server->Start());
  KVASIR_LOG_SUBSYS(INFO, kCachestore,
                    "cachestore %s listening on %s:%d (data path %s, memory %d arenas, disk %s)",
                    options.name, options.host, service->port(), service->data_path(),
                    static_cast<int>(service->impl_->store->num_arenas()),
                    options.store.disk_dir.empty() ? "off" : options.store.disk_dir);
  return service;
}

uint16_t StoreService::port() const { return impl_->server->port(); }

uint16_t StoreService::http_port() const { return impl_->http ? impl_->http->port() : 0; }

std::string StoreService::data_path() const {
  return impl_->ucx ? impl_->ucx->name() : std::string("rpc");
}

BlockStore& StoreService::store() { return *impl_->store; }

void StoreService::Stop() {
  Impl* impl = impl_.get();
  {
    absl::MutexLock lock(&impl->stop_mu);
    if (impl->stopped) return;
    impl->stopped = true;
  }
  impl->stopping = true;
  if (impl->server) impl->server->Stop();
  if (impl->http) impl->http->Stop();
  if (impl->pool) impl->pool->join();  // queued commits finish their disk writes
  {
    absl::MutexLock lock(&impl->control_mu);
    impl->control_stop = true;
  }
  if (impl->control.joinable()) impl->control.join();
  impl->store.reset();  // before UCX, which owns the arenas
  if (impl->ucx) impl->ucx->Stop();
  KVASIR_LOG_SUBSYS(INFO, kCachestore, "cachestore %s stopped", impl->options.name);
}

}  // namespace kvasir::cachestore
