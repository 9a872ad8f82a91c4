// GlooCommunicator (see gloo_communicator.h). Every Gloo call is wrapped in Guard(), which turns
// Gloo's exceptions into Status and marks the communicator broken.
#include "transport/collectives/gloo_communicator.h"

#include <chrono>
#include <exception>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"

namespace kvasir::transport::collectives {
namespace {

std::chrono::milliseconds ToMillis(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

// Gloo's view of our store. Gloo expects failures as exceptions.
class StoreAdapter final : public gloo::rendezvous::Store {
 public:
  StoreAdapter(RendezvousStore& store, std::string prefix, absl::Duration timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    absl::Status s = store_.Set(Key(key), std::string_view(data.data(), data.size()));
    if (!s.ok()) throw gloo::IoException(std::string(s.message()));
  }

  std::vector<char> get(const std::string& key) override {
    absl::StatusOr<std::string> value = store_.Get(Key(key), timeout_);
    if (!value.ok()) throw gloo::IoException(std::string(value.status().message()));
    return std::vector<char>(value->begin(), value->end());
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, ToMillis(timeout_)); }

  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    for (const std::string& key : keys) {
      absl::StatusOr<std::string> value = store_.Get(Key(key), absl::Milliseconds(timeout.count()));
      if (!value.ok()) throw gloo::IoException(std::string(value.status().message()));
    }
  }

 private:
  std::string Key(const std::string& key) const { return absl::StrCat(prefix_, "/", key); }

  RendezvousStore& store_;
  const std::string prefix_;
  const absl::Duration timeout_;
};

absl::Status FromException(const std::exception& e, std::string_view what) {
  const std::string message = absl::StrCat("gloo ", ToAbsl(what), ": ", e.what());
  if (absl::StrContains(e.what(), "Timed out") || absl::StrContains(e.what(), "timed out") ||
      absl::StrContains(e.what(), "not set within")) {
    return absl::DeadlineExceededError(message);
  }
  return absl::UnavailableError(message);
}

}  // namespace

GlooCommunicator::GlooCommunicator(std::shared_ptr<gloo::Context> context, int rank, int size,
                                   absl::Duration timeout)
    : context_(std::move(context)), rank_(rank), size_(size), timeout_(timeout) {}

GlooCommunicator::~GlooCommunicator() = default;

absl::StatusOr<std::unique_ptr<GlooCommunicator>> GlooCommunicator::Create(
    const GlooOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("gloo: rank ", options.rank, " of ", options.size));
  }
  if (options.store == nullptr) return absl::InvalidArgumentError("gloo: no rendezvous store");
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    auto context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.size);
    context->setTimeout(ToMillis(options.timeout));
    StoreAdapter store(*options.store, options.key_prefix, options.timeout);
    context->connectFullMesh(store, device);
    return std::unique_ptr<GlooCommunicator>(
        new GlooCommunicator(std::move(context), options.rank, options.size, options.timeout));
  } catch (const std::exception& e) {
    return FromException(e, "connect");
  }
}

namespace {

template <typename F>
absl::Status Guard(bool& broken, std::string_view what, F&& fn) {
  if (broken) return absl::UnavailableError("gloo communicator broken by an earlier failure");
  try {
    fn();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    broken = true;
    return FromException(e, what);
  }
}

}  // namespace

absl::Status GlooCommunicator::AllReduceSum(std::span<std::byte> data, DType dtype) {
  KVASIR_RETURN_IF_ERROR(CheckAllReduceArgs(data, dtype));
  if (data.empty()) return absl::OkStatus();
  std::vector<float> widened;
  float* values = reinterpret_cast<float*>(data.data());
  size_t count = data.size() / 4;
  if (dtype == DType::kBF16) {
    widened.resize(data.size() / 2);
    Bf16ToF32(data, widened);
    values = widened.data();
    count = widened.size();
  }
  KVASIR_RETURN_IF_ERROR(Guard(broken_, "all-reduce", [&] {
    gloo::AllreduceOptions opts(context_);
    opts.setOutput(values, count);
    opts.setReduceFunction(
        static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    opts.setTag(NextTag());
    opts.setTimeout(ToMillis(timeout_));
    gloo::allreduce(opts);
  }));
  if (dtype == DType::kBF16) F32ToBf16(widened, data);
  return absl::OkStatus();
}

absl::Status GlooCommunicator::AllGather(std::span<const std::byte> input,
                                         std::span<std::byte> output) {
  KVASIR_RETURN_IF_ERROR(CheckAllGatherArgs(input, output, size_));
  if (input.empty()) return absl::OkStatus();
  return Guard(broken_, "all-gather", [&] {
    gloo::AllgatherOptions opts(context_);
    opts.setInput(const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(input.data())),
                  input.size());
    opts.setOutput(reinterpret_cast<uint8_t*>(output.data()), output.size());
    opts.setTag(NextTag());
    opts.setTimeout(ToMillis(timeout_));
    gloo::allgather(opts);
  });
}

absl::Status GlooCommunicator::Broadcast(std::span<std::byte> data, int root) {
  KVASIR_RETURN_IF_ERROR(CheckRoot(root, size_));
  if (data.empty()) return absl::OkStatus();
  return Guard(broken_, "broadcast", [&] {
    gloo::BroadcastOptions opts(context_);
    opts.setOutput(reinterpret_cast<uint8_t*>(data.data()), data.size());
    opts.setRoot(root);
    opts.setTag(NextTag());
    opts.setTimeout(ToMillis(timeout_));
    gloo::broadcast(opts);
  });
}

absl::Status GlooCommunicator::Barrier() {
  return Guard(broken_, "barrier", [&] {
    gloo::BarrierOptions opts(context_);
    opts.setTag(NextTag());
    opts.setTimeout(ToMillis(timeout_));
    gloo::barrier(opts);
  });
}

}  // namespace kvasir::transport::collectives
