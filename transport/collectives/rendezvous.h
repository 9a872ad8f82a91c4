// The rendezvous key-value store that collectives bootstrap through (Gloo exchanges its pair
// addresses, NCCL its unique id). RendezvousService serves one over the control plane
// ("rendezvous.Set", "rendezvous.Get"); RpcRendezvousStore is its client; InMemoryRendezvousStore
// serves threads of one process.
//
//   // On the coordinator (or rank 0):
//   RendezvousService service;
//   service.Register(*server);  // before server->Start(); service outlives the server
//   // On every rank:
//   RpcRendezvousStore store(*client);
//   KVASIR_ASSIGN_OR_RETURN(auto comm, GlooCommunicator::Create({.rank = r, .size = n,
//                                                                .store = &store}));
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/rpc/channel.h"
#include "transport/rpc/server.h"

namespace kvasir::transport::collectives {

class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  // Sets (or replaces) a key. Safe from any thread.
  virtual absl::Status Set(std::string_view key, std::string_view value) = 0;
  // The key's value, waiting up to `timeout` for it to be set (DeadlineExceeded otherwise).
  // Safe from any thread.
  virtual absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) = 0;
};

class InMemoryRendezvousStore final : public RendezvousStore {
 public:
  absl::Status Set(std::string_view key, std::string_view value) override;
  absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) override;

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

// A client of RendezvousService over `channel`, which must outlive it.
class RpcRendezvousStore final : public RendezvousStore {
 public:
  explicit RpcRendezvousStore(rpc::RpcChannel& channel) : channel_(channel) {}
  absl::Status Set(std::string_view key, std::string_view value) override;
  absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) override;

 private:
  rpc::RpcChannel& channel_;
};

// The store behind "rendezvous.Set" and "rendezvous.Get". A Get of a missing key is held until
// the key is set or the caller's deadline passes. Must outlive the servers it is registered with
// (stop them first).
class RendezvousService {
 public:
  static constexpr std::string_view kSetMethod = "rendezvous.Set";
  static constexpr std::string_view kGetMethod = "rendezvous.Get";
  // Keys and values are bounded so a misbehaving client cannot grow the store without limit.
  static constexpr size_t kMaxKeyBytes = 1024;
  static constexpr size_t kMaxValueBytes = 1 << 20;
  static constexpr size_t kMaxKeys = 1 << 16;

  void Register(rpc::RpcServer& server);

 private:
  void HandleSet(std::shared_ptr<rpc::ServerCall> call);
  void HandleGet(std::shared_ptr<rpc::ServerCall> call);

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::vector<std::shared_ptr<rpc::ServerCall>>> waiters_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace kvasir::transport::collectives
