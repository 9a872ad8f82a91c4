// Decorators that run every operation of a BulkTransport, an RpcChannel or a Communicator past a
// FaultSchedule before (maybe) passing it on, for tests of retries and failover in the layers
// above. The wrapped object is borrowed and must outlive the decorator.
#pragma once

#include <memory>
#include <string>

#include "transport/bulk_transport.h"
#include "transport/collectives/communicator.h"
#include "transport/fault/fault_schedule.h"
#include "transport/rpc/channel.h"

namespace kvasir::transport::fault {

class FaultBulkTransport final : public BulkTransport {
 public:
  FaultBulkTransport(BulkTransport& inner, std::shared_ptr<FaultSchedule> schedule)
      : inner_(inner), schedule_(std::move(schedule)) {}

  std::string name() const override { return "fault(" + inner_.name() + ")"; }
  std::string address() const override { return inner_.address(); }
  bool SupportsMemory(MemoryKind kind) const override { return inner_.SupportsMemory(kind); }
  absl::StatusOr<PeerId> Connect(std::string_view peer_address) override;
  void Disconnect(PeerId peer) override { inner_.Disconnect(peer); }
  absl::StatusOr<RegionId> RegisterMemory(std::span<std::byte> memory,
                                          MemoryKind kind = MemoryKind::kHost) override {
    return inner_.RegisterMemory(memory, kind);
  }
  absl::StatusOr<std::pair<RegionId, std::span<std::byte>>> AllocateMemory(
      size_t size_bytes) override {
    return inner_.AllocateMemory(size_bytes);
  }
  absl::Status DeregisterMemory(RegionId region) override {
    return inner_.DeregisterMemory(region);
  }
  absl::StatusOr<RemoteRegion> ExportRegion(RegionId region) override {
    return inner_.ExportRegion(region);
  }
  absl::Status Put(PeerId peer, const RemoteRegion& remote, std::span<const RmaOp> ops,
                   absl::Duration timeout) override;
  absl::Status Get(PeerId peer, const RemoteRegion& remote, std::span<const RmaOp> ops,
                   absl::Duration timeout) override;
  absl::Status SetMessageHandler(uint16_t id, MessageHandler handler) override {
    return inner_.SetMessageHandler(id, std::move(handler));
  }
  absl::Status SendMessage(PeerId peer, uint16_t id, std::string_view header,
                           std::string_view payload, absl::Duration timeout) override;

 private:
  BulkTransport& inner_;
  std::shared_ptr<FaultSchedule> schedule_;
};

class FaultRpcChannel final : public rpc::RpcChannel {
 public:
  FaultRpcChannel(rpc::RpcChannel& inner, std::shared_ptr<FaultSchedule> schedule,
                  absl::Duration default_timeout = absl::Seconds(10))
      : inner_(inner), schedule_(std::move(schedule)), default_timeout_(default_timeout) {}

  // Operations are named "call:<method>" and "stream:<method>".
  absl::StatusOr<std::string> Call(std::string_view method, std::string_view request,
                                   const rpc::CallOptions& options = {}) override;
  absl::StatusOr<std::unique_ptr<rpc::ClientStream>> OpenStream(
      std::string_view method, std::string_view request,
      const rpc::CallOptions& options = {}) override;

 private:
  // Applies the schedule to operation "<kind>:<method>"; the options for the inner channel, with
  // the time the fault took off the deadline, or the fault's error.
  absl::StatusOr<rpc::CallOptions> ApplyToCall(std::string_view kind, std::string_view method,
                                               const rpc::CallOptions& options);

  rpc::RpcChannel& inner_;
  std::shared_ptr<FaultSchedule> schedule_;
  absl::Duration default_timeout_;  // the deadline a dropped call waits out if it set none
};

class FaultCommunicator final : public collectives::Communicator {
 public:
  FaultCommunicator(collectives::Communicator& inner, std::shared_ptr<FaultSchedule> schedule)
      : inner_(inner), schedule_(std::move(schedule)) {}

  std::string name() const override { return "fault(" + inner_.name() + ")"; }
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  // A dropped collective waits the rule's delay and returns DeadlineExceeded.
  absl::Status AllReduceSum(std::span<std::byte> data, DType dtype) override;
  absl::Status AllGather(std::span<const std::byte> input, std::span<std::byte> output) override;
  absl::Status Broadcast(std::span<std::byte> data, int root) override;
  absl::Status Barrier() override;

 private:
  collectives::Communicator& inner_;
  std::shared_ptr<FaultSchedule> schedule_;
};

}  // namespace kvasir::transport::fault
