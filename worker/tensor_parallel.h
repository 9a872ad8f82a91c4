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
// What a step carries: the sequences rank 0 freed since the last one, the sequences new to the
// group (their id and KV policy spec), and the batch (sequence, tokens, whether all rows'
// logits are wanted). A sequence must start empty on rank 0 (no prefix-cache pages, no KV
// restored from the cachestore): the followers cannot rebuild KV they did not compute, so such
// a step fails with FailedPrecondition before anything is sent. When rank 0 is idle it sends a
// keepalive every second, so that the followers' waits (bounded by the group's timeout) do not
// expire; when a collective fails the group is lost (lost()), and the worker leaves service.
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
#include "transport/child_process.h"
#include "transport/collectives/communicator.h"
#include "transport/collectives/rendezvous.h"
#include "transport/rpc/server.h"
#include "worker/engine.h"
#include "worker/model_runner.h"

namespace kvasir::worker {

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
  TpLeaderRunner(std::unique_ptr<ModelRunner> inner, kvcache::KvCache& cache,
                 transport::collectives::Communicator& comm);
  ~TpLeaderRunner() override;  // tells the followers to stop

  absl::Status Forward(std::span<const StepSequence> batch, std::vector<float>& logits,
                       const LayerDoneHook& on_layer_done) override;
  using ModelRunner::Forward;
  const model::ModelConfig& config() const override { return inner_->config(); }
  int num_threads() const override { return inner_->num_threads(); }
  CollectiveStats collective_stats() const override { return inner_->collective_stats(); }
  // A collective failed (a rank died or hung): the group can run no more steps.
  bool lost() const { return lost_.load(); }

 private:
  absl::Status Send(std::string_view message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void KeepAlive();  // the keepalive thread

  std::unique_ptr<ModelRunner> inner_;
  kvcache::KvCache& cache_;
  transport::collectives::Communicator& comm_;
  absl::Mutex mu_;  // one collective sequence at a time (steps, keepalives)
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
