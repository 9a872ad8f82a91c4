// The cachestore service: a BlockStore behind the control plane (transport/rpc, methods in
// protocol.h), with its memory arenas allocated and exported by UCX so that clients put and get
// block bytes one-sided, /health and /metrics over HTTP, and a control thread that reclaims
// expired leases. kvasir-cachestore (main.cc) runs one; tests run one in-process.
//
//   KVASIR_ASSIGN_OR_RETURN(auto service, StoreService::Start(options));
//   ... clients connect to 127.0.0.1:service->port() ...
//   service->Stop();
//
// Threads: the RPC server's I/O thread runs the cheap handlers (lookup, reserve, release, pins);
// checksums, disk I/O and inline copies go to a small worker pool; UCX and HTTP have their own
// I/O threads; the control thread runs the lease timer. Stop() is graceful: it stops accepting,
// lets queued work (commits writing to disk) finish, then releases UCX.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cachestore/store.h"

namespace kvasir::cachestore {

enum class UcxMode {
  kAuto,  // offer the UCX data path when UCX starts; else the RPC fallback alone
  kOn,    // fail to start without UCX
  kOff,   // RPC fallback alone
};

struct ServiceOptions {
  std::string host = "127.0.0.1";  // control-plane listen address
  uint16_t port = 0;               // 0: the OS picks (see port())
  bool http = true;                // serve /health and /metrics
  std::string http_host;           // "" = host
  uint16_t http_port = 0;          // 0: the OS picks (see http_port())
  StoreOptions store;
  UcxMode ucx = UcxMode::kAuto;
  std::string ucx_tls;                   // UCX_TLS for the store's transport ("" = UCX's choice)
  bool ucx_busy_poll = false;            // progress UCX continuously (needs a spare core)
  int worker_threads = 2;                // checksums, disk I/O, inline copies
  uint64_t max_inline_bytes = 64 << 10;  // largest block sent inside an RPC
  uint64_t max_piece_bytes = 4 << 20;    // largest Write/Read piece of the fallback path
  std::string name = "cachestore";       // instance name (handshake, logs)
};

class StoreService {
 public:
  static absl::StatusOr<std::unique_ptr<StoreService>> Start(ServiceOptions options);
  ~StoreService();  // Stop()
  StoreService(const StoreService&) = delete;
  StoreService& operator=(const StoreService&) = delete;

  uint16_t port() const;
  uint16_t http_port() const;  // 0 without HTTP
  // "ucx[...]" or "rpc" (no UCX data path).
  std::string data_path() const;
  BlockStore& store();

  // Stops accepting RPC and HTTP, cancels calls in flight, finishes queued work, stops the
  // control thread and releases the store and UCX. Idempotent; safe from any thread but the
  // service's own.
  void Stop();

  struct Impl;

 private:
  explicit StoreService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvasir::cachestore
