// Communicator over Gloo's TCP transport, for CPU tensor-parallel groups (one process per rank).
// Ranks find each other through a RendezvousStore (normally RpcRendezvousStore, i.e. over the
// control plane). Buffers are host memory.
//
// Gloo reports failures by throwing; this class is the boundary where its exceptions become
// absl::Status (and the store adapter handed to Gloo is the one place our code throws, because
// Gloo's Store interface has no other way to report a timeout).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/collectives/communicator.h"
#include "transport/collectives/rendezvous.h"

namespace gloo {
class Context;
}

namespace kvasir::transport::collectives {

struct GlooOptions {
  int rank = 0;
  int size = 1;
  RendezvousStore* store = nullptr;            // used during Create only
  std::string key_prefix = "gloo";             // distinct per group sharing a store
  std::string hostname = "127.0.0.1";          // the address this rank listens on
  absl::Duration timeout = absl::Seconds(30);  // for Create and for each collective
};

class GlooCommunicator final : public Communicator {
 public:
  // Connects the full mesh; blocks until every rank has joined or the timeout passes.
  static absl::StatusOr<std::unique_ptr<GlooCommunicator>> Create(const GlooOptions& options);
  ~GlooCommunicator() override;

  // Call from one thread at a time.
  std::string name() const override { return "gloo"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status AllReduceSum(std::span<std::byte> data, DType dtype) override;
  absl::Status AllGather(std::span<const std::byte> input, std::span<std::byte> output) override;
  absl::Status Broadcast(std::span<std::byte> data, int root) override;
  absl::Status Barrier() override;

 private:
  GlooCommunicator(std::shared_ptr<gloo::Context> context, int rank, int size,
                   absl::Duration timeout);
  uint32_t NextTag() { return next_tag_++; }

  std::shared_ptr<gloo::Context> context_;
  const int rank_;
  const int size_;
  const absl::Duration timeout_;
  uint32_t next_tag_ = 1;
  bool broken_ = false;
};

}  // namespace kvasir::transport::collectives
