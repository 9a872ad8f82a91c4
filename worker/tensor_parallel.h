// Tensor-parallel groups of processes (docs/parallelism.md): one process per rank, as on GPUs.
// Rank 0 is the worker the coordinator sees; it starts ranks 1..N-1 itself (TpGroup), joins a
// Gloo group with them, and its runner (TpLeaderRunner) sends every step to them before running
// its own shard; each of them runs RunTpFollower, which mirrors the sequences of rank 0's cache
// in its own (its KV heads) and runs the same steps. Collectives go through the Communicator.
//
//   rank 0:  KVASIR_ASSIGN_OR_RETURN(auto group, TpGroup::Start(n, follower_argv));
//            engine options: tp_size = n, tp_rank = 0, comm = &group->comm()
//            engine->WrapRunner(...TpLeaderRunner...)
//   rank r:  KVASIR_ASSIGN_OR_RETURN(auto comm, JoinTpGroup(r, n, rendezvous));
//            engine options: tp_rank = r, comm = comm.get(); then RunTpFollower(engine, *comm, ..)
//
// What rank 0 sends (worker/tensor_parallel.proto): each step (the sequences freed since the last
// message, those new to the group with their KV policy spec, the batch); requests to encode a
// sequence's KV (each rank its KV heads; rank 0 gathers the blocks, which name the model's heads,
// so that a group of another size, or one process, restores them) and to restore one from such
// blocks (each rank takes the heads it holds). A sequence that enters a step must be empty or
// restored that way: the followers cannot rebuild KV they did not compute (pages shared from the
// prefix cache), so such a step fails with FailedPrecondition before anything is sent. When
// rank 0 is idle it sends a keepalive every second, so that the followers' waits (bounded by
// the group's timeout) do not expire; when a collective fails the group is lost (lost()), and
// the worker leaves service.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "model/shard_plan.h"
#include "transport/child_process.h"
#include "transport/collectives/communicator.h"
#include "transport/collectives/rendezvous.h"
#include "transport/rpc/server.h"
#include "worker/engine.h"
#include "worker/model_runner.h"

namespace kvasir::worker {

namespace tp {
class Message;
}  // namespace tp

// Rank 0's side of a group: the rendezvous it serves, the processes of ranks 1..size-1 it
// started, and its communicator.
class TpGroup {
 public:
  // Starts the rendezvous on 127.0.0.1, then `follower_argv` + "--tp-rank R --tp-rendezvous
  // 127.0.0.1:PORT" for every other rank, and joins the Gloo group as rank 0 (waiting up to
  // `timeout` for everyone). Unavailable when a rank does not join.
  static absl::StatusOr<std::unique_ptr<TpGroup>> Start(int32_t size,
                                                        std::vector<std::string> follower_argv,
                                                        absl::Duration timeout = absl::Seconds(60));
  ~TpGroup();  // stops the followers (SIGTERM, then SIGKILL)

  transport::collectives::Communicator& comm() { return *comm_; }
  int32_t size() const { return size_; }

 private:
  TpGroup() = default;
  int32_t size_ = 1;
  transport::collectives::RendezvousService rendezvous_;
  std::unique_ptr<transport::rpc::RpcServer> server_;
  std::vector<transport::ChildProcess> followers_;
  std::unique_ptr<transport::collectives::Communicator> comm_;
};

// Rank `rank` (> 0) joins the group whose rendezvous is at `rendezvous` (HOST:PORT).
absl::StatusOr<std::unique_ptr<transport::collectives::Communicator>> JoinTpGroup(
    int32_t rank, int32_t size, const std::string& rendezvous,
    absl::Duration timeout = absl::Seconds(60));

// Rank 0's runner: sends each step to the followers, then runs `inner` (this rank's shard).
class TpLeaderRunner final : public ModelRunner {
 public:
  // `model`: the whole model's config (every rank's plan is drawn from it).
  TpLeaderRunner(std::unique_ptr<ModelRunner> inner, kvcache::KvCache& cache,
                 const model::ModelConfig& model, transport::collectives::Communicator& comm);
  ~TpLeaderRunner() override;  // tells the followers to stop

  absl::Status Forward(std::span<const StepSequence> batch, std::vector<float>& logits,
                       const LayerDoneHook& on_layer_done) override;
  using ModelRunner::Forward;
  const model::ModelConfig& config() const override { return inner_->config(); }
  int num_threads() const override { return inner_->num_threads(); }
  CollectiveStats collective_stats() const override { return inner_->collective_stats(); }
  // Every rank encodes (restores) its KV heads; `info`'s head fields are each rank's own. A rank
  // that fails fails the whole (its status, naming the rank); nothing stays restored then.
  absl::StatusOr<std::vector<std::string>> EncodeKv(const kvcache::KvCache& cache,
                                                    const kvcache::SequenceKv& seq,
                                                    const kvcache::SnapshotInfo& info) override;
  absl::StatusOr<kvcache::SequenceKv*> DecodeKv(kvcache::KvCache& cache,
                                                std::span<const std::string> blocks,
                                                std::shared_ptr<const kvcache::KvPolicy> policy,
                                                uint64_t model_fingerprint) override;
  // The distinct KV-head ranges of the ranks ({0, 2, 4}: two parts; replicas count once).
  std::vector<int32_t> KvHeadParts(const kvcache::KvCache& cache) const override;
  // A collective failed (a rank died or hung): the group can run no more steps.
  bool lost() const { return lost_.load(); }

 private:
  absl::Status Send(const tp::Message& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the group lost when `status` is an error (a collective failed); passes it on.
  absl::Status Lost(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  template <typename T>
  absl::StatusOr<T> Lost(absl::StatusOr<T> result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!result.ok()) (void)Lost(result.status());
    return result;
  }
  void KeepAlive();  // the keepalive thread

  std::unique_ptr<ModelRunner> inner_;
  kvcache::KvCache& cache_;
  transport::collectives::Communicator& comm_;
  const int32_t model_kv_heads_;
  std::vector<model::ShardPlan> plans_;  // every rank's, by rank
  absl::Mutex mu_;                       // one collective sequence at a time (steps, keepalives)
  absl::flat_hash_map<kvcache::SeqId, int64_t> known_ ABSL_GUARDED_BY(mu_);  // id -> n_tokens
  absl::Time last_send_ ABSL_GUARDED_BY(mu_) = absl::Now();
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> lost_{false};
  std::thread keepalive_;
};

// A follower's loop: runs the steps rank 0 sends on `engine` (rank r's shard) until rank 0 says
// stop (OK) or the group fails (the error). `resolve` gives the KV policy of a spec rank 0 sent.
using PolicyResolver =
    std::function<absl::StatusOr<std::shared_ptr<const kvcache::KvPolicy>>(std::string_view spec)>;
absl::Status RunTpFollower(Engine& engine, transport::collectives::Communicator& comm,
                           const PolicyResolver& resolve);

}  // namespace kvasir::worker
