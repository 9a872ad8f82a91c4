// Move-only RAII owners of UCP handles: context, worker, endpoint, mapped memory and unpacked
// remote keys. Each factory returns StatusOr; destructors log UCX errors and carry on. Owners
// must be destroyed in reverse order of dependence (remote keys and endpoints before their
// worker, memory and workers before their context); UcxTransport declares them in that order.
// None of these are thread-safe: a worker and everything made from it belong to one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ucp/api/ucp.h"

namespace kvasir::transport::ucx {

struct ContextOptions {
  // UCX_TLS for this context only ("" keeps the environment's or UCX's choice): "tcp", "shm",
  // "posix,cma", ... Set through ucp_config_modify, so other contexts are unaffected.
  std::string tls;
  // UCP_FEATURE_WAKEUP: lets the worker be driven from an event fd.
  bool wakeup = true;
};

class UcxContext {
 public:
  static absl::StatusOr<std::unique_ptr<UcxContext>> Create(const ContextOptions& options);
  ~UcxContext();
  UcxContext(const UcxContext&) = delete;
  UcxContext& operator=(const UcxContext&) = delete;

  ucp_context_h get() const { return context_; }
  const std::string& tls() const { return tls_; }
  // True when this UCX build can move memory of `type` (CUDA needs a CUDA-enabled UCX).
  bool SupportsMemoryType(ucs_memory_type_t type) const;

 private:
  UcxContext(ucp_context_h context, uint64_t memory_types, std::string tls)
      : context_(context), memory_types_(memory_types), tls_(std::move(tls)) {}
  ucp_context_h context_;
  uint64_t memory_types_;  // bit per ucs_memory_type_t
  std::string tls_;
};

class UcxWorker {
 public:
  // A single-threaded worker of `context`, which must outlive it.
  static absl::StatusOr<std::unique_ptr<UcxWorker>> Create(UcxContext& context);
  ~UcxWorker();
  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  ucp_worker_h get() const { return worker_; }
  // The packed worker address, for a peer's UcxEndpoint::Create.
  const std::string& address() const { return address_; }
  // The event fd (needs ContextOptions::wakeup); readable when Arm()ed and an event arrives.
  absl::StatusOr<int> EventFd() const;
  // Progresses communication; returns the number of events processed.
  unsigned Progress() { return ucp_worker_progress(worker_); }
  // Arms the event fd. False when events are pending (progress again before sleeping).
  absl::StatusOr<bool> Arm();

 private:
  UcxWorker(ucp_worker_h worker, std::string address)
      : worker_(worker), address_(std::move(address)) {}
  ucp_worker_h worker_;
  std::string address_;
};

class UcxEndpoint {
 public:
  // Connects to the worker whose packed address is `remote_address`. With `peer_errors`, UCX
  // detects a failed peer and `on_error(arg, ep, status)` runs (during Progress); not every
  // transport supports that (UCX 1.13's shared-memory ones do not: then Create fails with
  // Unavailable). `worker` must outlive the endpoint.
  static absl::StatusOr<std::unique_ptr<UcxEndpoint>> Create(UcxWorker& worker,
                                                             std::string_view remote_address,
                                                             bool peer_errors,
                                                             ucp_err_handler_cb_t on_error,
                                                             void* arg);
  // Closes: flushes gracefully unless Close(force) ran before, progressing the worker for at most
  // a second.
  ~UcxEndpoint();
  UcxEndpoint(const UcxEndpoint&) = delete;
  UcxEndpoint& operator=(const UcxEndpoint&) = delete;

  ucp_ep_h get() const { return ep_; }
  // Closes now (force: drop outstanding operations, which complete with UCS_ERR_CANCELED),
  // progressing the worker until done or `timeout`. Idempotent.
  void Close(bool force, absl::Duration timeout = absl::Seconds(1));
  // ucp_ep_print_info: the lanes and transports UCX chose for this endpoint.
  std::string Describe() const;

 private:
  UcxEndpoint(UcxWorker& worker, ucp_ep_h ep) : worker_(worker), ep_(ep) {}
  UcxWorker& worker_;
  ucp_ep_h ep_;
};

// Memory registered with a context: caller memory (Map, not owned) or UCX's own (Allocate).
class UcxMemory {
 public:
  static absl::StatusOr<std::unique_ptr<UcxMemory>> Map(UcxContext& context,
                                                        std::span<std::byte> memory,
                                                        ucs_memory_type_t type);
  // Host memory allocated by UCX (ucp_mem_map with UCP_MEM_MAP_ALLOCATE; shared-memory segments
  // first, per UCX_ALLOC_PRIO), freed when this object goes.
  static absl::StatusOr<std::unique_ptr<UcxMemory>> Allocate(UcxContext& context, size_t size);
  ~UcxMemory();
  UcxMemory(const UcxMemory&) = delete;
  UcxMemory& operator=(const UcxMemory&) = delete;

  ucp_mem_h get() const { return memh_; }
  std::span<std::byte> memory() const { return memory_; }
  // The packed remote key a peer unpacks with UcxRemoteKey::Unpack.
  absl::StatusOr<std::string> PackKey() const;

 private:
  UcxMemory(UcxContext& context, ucp_mem_h memh, std::span<std::byte> memory)
      : context_(context), memh_(memh), memory_(memory) {}
  UcxContext& context_;
  ucp_mem_h memh_;
  std::span<std::byte> memory_;
};

// A peer's remote key, unpacked for one endpoint (which must outlive it).
class UcxRemoteKey {
 public:
  static absl::StatusOr<std::unique_ptr<UcxRemoteKey>> Unpack(UcxEndpoint& ep,
                                                              std::string_view packed);
  ~UcxRemoteKey();
  UcxRemoteKey(const UcxRemoteKey&) = delete;
  UcxRemoteKey& operator=(const UcxRemoteKey&) = delete;
  ucp_rkey_h get() const { return rkey_; }

 private:
  explicit UcxRemoteKey(ucp_rkey_h rkey) : rkey_(rkey) {}
  ucp_rkey_h rkey_;
};

}  // namespace kvasir::transport::ucx
