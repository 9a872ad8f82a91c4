// LocalGroup (see local_group.h). Each collective is two barriers: ranks publish their buffers,
// compute their own results from everyone's inputs, meet again, then write their results, so no
// rank overwrites a buffer another rank is still reading.
#include "transport/collectives/local_group.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"

namespace kvasir::transport::collectives {
namespace {

struct Shared {
  explicit Shared(int n, absl::Duration t) : size(n), timeout(t), inputs(n) {}
  const int size;
  const absl::Duration timeout;
  absl::Mutex mu;
  uint64_t generation ABSL_GUARDED_BY(mu) = 0;
  int arrived ABSL_GUARDED_BY(mu) = 0;
  bool broken ABSL_GUARDED_BY(mu) = false;
  std::vector<std::span<const std::byte>> inputs;  // written before, read after a barrier
};

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<Shared> shared, int rank)
      : shared_(std::move(shared)), rank_(rank) {}

  std::string name() const override { return "local"; }
  int rank() const override { return rank_; }
  int size() const override { return shared_->size; }

  absl::Status AllReduceSum(std::span<std::byte> data, DType dtype) override {
    KVASIR_RETURN_IF_ERROR(CheckAllReduceArgs(data, dtype));
    shared_->inputs[rank_] = data;
    KVASIR_RETURN_IF_ERROR(Meet());
    const size_t n = data.size() / (dtype == DType::kF32 ? 4 : 2);
    std::vector<float> sum(n, 0.0f), part(n);
    for (int r = 0; r < size(); ++r) {
      std::span<const std::byte> in = shared_->inputs[r];
      if (in.size() != data.size()) {
        Break();
        return absl::InvalidArgumentError("all-reduce buffers differ in size between ranks");
      }
      if (dtype == DType::kF32) {
        std::memcpy(part.data(), in.data(), in.size());
      } else {
        Bf16ToF32(in, part);
      }
      for (size_t i = 0; i < n; ++i) sum[i] += part[i];
    }
    KVASIR_RETURN_IF_ERROR(Meet());
    if (dtype == DType::kF32) {
      std::memcpy(data.data(), sum.data(), data.size());
    } else {
      F32ToBf16(sum, data);
    }
    return absl::OkStatus();
  }

  absl::Status AllGather(std::span<const std::byte> input, std::span<std::byte> output) override {
    KVASIR_RETURN_IF_ERROR(CheckAllGatherArgs(input, output, size()));
    shared_->inputs[rank_] = input;
    KVASIR_RETURN_IF_ERROR(Meet());
    std::vector<std::byte> result(output.size());
    for (int r = 0; r < size(); ++r) {
      if (shared_->inputs[r].size() != input.size()) {
        Break();
        return absl::InvalidArgumentError("all-gather inputs differ in size between ranks");
      }
      std::memcpy(result.data() + r * input.size(), shared_->inputs[r].data(), input.size());
    }
    KVASIR_RETURN_IF_ERROR(Meet());
    std::memcpy(output.data(), result.data(), result.size());
    return absl::OkStatus();
  }

  absl::Status Broadcast(std::span<std::byte> data, int root) override {
    KVASIR_RETURN_IF_ERROR(CheckRoot(root, size()));
    shared_->inputs[rank_] = data;
    KVASIR_RETURN_IF_ERROR(Meet());
    std::vector<std::byte> copy;
    const std::span<const std::byte> src = shared_->inputs[root];
    if (src.size() != data.size()) {
      Break();
      return absl::InvalidArgumentError("broadcast buffers differ in size between ranks");
    }
    if (rank_ != root) copy.assign(src.begin(), src.end());
    KVASIR_RETURN_IF_ERROR(Meet());
    if (rank_ != root) std::memcpy(data.data(), copy.data(), copy.size());
    return absl::OkStatus();
  }

  absl::Status Barrier() override { return Meet(); }

 private:
  // A barrier of all ranks with the group's timeout. A timeout breaks the group for everyone.
  absl::Status Meet() {
    Shared& s = *shared_;
    absl::MutexLock lock(&s.mu);
    if (s.broken) return absl::UnavailableError("local group broken by an earlier failure");
    const uint64_t generation = s.generation;
    if (++s.arrived == s.size) {
      s.arrived = 0;
      ++s.generation;
      return absl::OkStatus();
    }
    auto released = [&s, generation]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return s.generation != generation || s.broken;
    };
    if (!s.mu.AwaitWithTimeout(absl::Condition(&released), s.timeout)) {
      s.broken = true;
      return absl::DeadlineExceededError(absl::StrCat(
          "rank ", rank_, ": other ranks did not arrive within ", absl::FormatDuration(s.timeout)));
    }
    if (s.generation == generation) {
      return absl::UnavailableError("local group broken by another rank's failure");
    }
    return absl::OkStatus();
  }

  void Break() {
    absl::MutexLock lock(&shared_->mu);
    shared_->broken = true;
  }

  std::shared_ptr<Shared> shared_;
  const int rank_;
};

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateLocalGroup(
    int size, absl::Duration timeout) {
  if (size < 1) return absl::InvalidArgumentError("a group needs at least one rank");
  auto shared = std::make_shared<Shared>(size, timeout);
  std::vector<std::unique_ptr<Communicator>> ranks;
  for (int r = 0; r < size; ++r) ranks.push_back(std::make_unique<LocalCommunicator>(shared, r));
  return ranks;
}

}  // namespace kvasir::transport::collectives
