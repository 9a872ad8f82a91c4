// Fault decorators (see fault_decorators.h). Apply() turns a schedule decision into "go ahead"
// (OK, after any delay) or the status the caller sees.
#include "transport/fault/fault_decorators.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace kvasir::transport::fault {
namespace {

// Sleeps for `d`, or until `cancel` fires. Returns false when cancelled.
bool SleepFor(absl::Duration d, const std::shared_ptr<rpc::CancelToken>& cancel) {
  const absl::Time end = absl::Now() + d;
  while (absl::Now() < end) {
    if (cancel && cancel->cancelled()) return false;
    absl::SleepFor(std::min(end - absl::Now(), absl::Milliseconds(5)));
  }
  return true;
}

absl::Status Dropped(std::string_view op, absl::Duration waited) {
  return absl::DeadlineExceededError(absl::StrCat(
      "injected drop of ", ToAbsl(op), ": no answer within ", absl::FormatDuration(waited)));
}

// OK means: perform the operation now (and, when *corrupt is set, damage what it delivered).
absl::Status Apply(FaultSchedule& schedule, std::string_view op, absl::Duration timeout,
                   const std::shared_ptr<rpc::CancelToken>& cancel = nullptr,
                   bool* corrupt = nullptr) {
  const FaultDecision d = schedule.Next(op);
  switch (d.action) {
    case FaultAction::kNone:
      return absl::OkStatus();
    case FaultAction::kCorrupt:
      if (corrupt != nullptr) *corrupt = true;
      return absl::OkStatus();
    case FaultAction::kFail:
      return d.error.ok() ? absl::UnavailableError("injected fault") : d.error;
    case FaultAction::kDrop:
      if (!SleepFor(timeout, cancel)) return absl::CancelledError("call cancelled");
      return Dropped(op, timeout);
    case FaultAction::kDelay:
      if (d.delay >= timeout) {
        if (!SleepFor(timeout, cancel)) return absl::CancelledError("call cancelled");
        return Dropped(op, timeout);
      }
      if (!SleepFor(d.delay, cancel)) return absl::CancelledError("call cancelled");
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PeerId> FaultBulkTransport::Connect(std::string_view peer_address) {
  if (absl::Status s = Apply(*schedule_, "connect", absl::Seconds(1)); !s.ok()) return s;
  return inner_.Connect(peer_address);
}

absl::Status FaultBulkTransport::Put(PeerId peer, const RemoteRegion& remote,
                                     std::span<const RmaOp> ops, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  if (absl::Status s = Apply(*schedule_, "put", timeout); !s.ok()) return s;
  return inner_.Put(peer, remote, ops, timeout - (absl::Now() - start));
}

absl::Status FaultBulkTransport::Get(PeerId peer, const RemoteRegion& remote,
                                     std::span<const RmaOp> ops, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  bool corrupt = false;
  if (absl::Status s = Apply(*schedule_, "get", timeout, nullptr, &corrupt); !s.ok()) return s;
  absl::Status s = inner_.Get(peer, remote, ops, timeout - (absl::Now() - start));
  if (s.ok() && corrupt && !ops.empty()) CorruptBytes(ops.front().local);
  return s;
}

absl::Status FaultBulkTransport::SendMessage(PeerId peer, uint16_t id, std::string_view header,
                                             std::string_view payload, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  if (absl::Status s = Apply(*schedule_, "send", timeout); !s.ok()) return s;
  return inner_.SendMessage(peer, id, header, payload, timeout - (absl::Now() - start));
}

absl::StatusOr<rpc::CallOptions> FaultRpcChannel::ApplyToCall(std::string_view kind,
                                                              std::string_view method,
                                                              const rpc::CallOptions& options) {
  const absl::Duration timeout =
      options.timeout > absl::ZeroDuration() ? options.timeout : default_timeout_;
  const absl::Time start = absl::Now();
  KVASIR_RETURN_IF_ERROR(
      Apply(*schedule_, absl::StrCat(ToAbsl(kind), ":", ToAbsl(method)), timeout, options.cancel));
  rpc::CallOptions rest = options;
  rest.timeout = timeout - (absl::Now() - start);
  return rest;
}

absl::StatusOr<std::string> FaultRpcChannel::Call(std::string_view method, std::string_view request,
                                                  const rpc::CallOptions& options) {
  KVASIR_ASSIGN_OR_RETURN(rpc::CallOptions rest, ApplyToCall("call", method, options));
  return inner_.Call(method, request, rest);
}

absl::StatusOr<std::unique_ptr<rpc::ClientStream>> FaultRpcChannel::OpenStream(
    std::string_view method, std::string_view request, const rpc::CallOptions& options) {
  KVASIR_ASSIGN_OR_RETURN(rpc::CallOptions rest, ApplyToCall("stream", method, options));
  return inner_.OpenStream(method, request, rest);
}

namespace {
// Collectives have no per-call timeout here: a drop waits the rule's delay.
absl::Status ApplyCollective(FaultSchedule& schedule, std::string_view op) {
  const FaultDecision d = schedule.Next(op);
  switch (d.action) {
    case FaultAction::kNone:
    case FaultAction::kCorrupt:
      return absl::OkStatus();
    case FaultAction::kFail:
      return d.error.ok() ? absl::UnavailableError("injected fault") : d.error;
    case FaultAction::kDrop:
      absl::SleepFor(d.delay);
      return Dropped(op, d.delay);
    case FaultAction::kDelay:
      absl::SleepFor(d.delay);
      return absl::OkStatus();
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status FaultCommunicator::AllReduceSum(std::span<std::byte> data, DType dtype) {
  if (absl::Status s = ApplyCollective(*schedule_, "all_reduce"); !s.ok()) return s;
  return inner_.AllReduceSum(data, dtype);
}

absl::Status FaultCommunicator::AllGather(std::span<const std::byte> input,
                                          std::span<std::byte> output) {
  if (absl::Status s = ApplyCollective(*schedule_, "all_gather"); !s.ok()) return s;
  return inner_.AllGather(input, output);
}

absl::Status FaultCommunicator::Broadcast(std::span<std::byte> data, int root) {
  if (absl::Status s = ApplyCollective(*schedule_, "broadcast"); !s.ok()) return s;
  return inner_.Broadcast(data, root);
}

absl::Status FaultCommunicator::Barrier() {
  if (absl::Status s = ApplyCollective(*schedule_, "barrier"); !s.ok()) return s;
  return inner_.Barrier();
}

}  // namespace kvasir::transport::fault
