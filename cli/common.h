// Helpers shared by the subcommands: error printing, the model-loading progress line and the
// engine options every command accepts.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "cli/args.h"
#include "worker/engine.h"
#include "worker/tensor_parallel.h"

namespace kvasir::cli {

// Prints "<command>: <message>" on one line to stderr and returns `exit_code` (1 for runtime
// errors, 2 for usage errors).
int Fail(const std::string& command, const absl::Status& status, int exit_code = 1);

// Options that load an engine, shared by generate, eval and bench.
struct EngineFlags {
  std::string model = "default";
  int32_t threads = 0;
  std::string kv_cache_memory;  // "" = automatic
  std::string kv_dtype = "f32";
  std::string device = "cpu";
  bool quiet = false;
  // Not a flag: a retrofit adapter to merge (worker/adapter.h), from the command's KV policy.
  std::string adapter;
  // Set by LoadRankEngine and RunFollower, not by flags: this rank of a tensor-parallel group.
  int32_t tp_size = 1;
  int32_t tp_rank = 0;
  bool tp_replicate_vocab = false;
  transport::collectives::Communicator* comm = nullptr;

  void Register(ArgParser& parser);
  // Engine options with a progress line on stderr (unless quiet).
  absl::StatusOr<worker::EngineOptions> ToOptions() const;
};

// Loads the engine, printing "loading <model>: 42% (38.6/92.0 MiB)" while the weights are read
// and a summary line when done (unless quiet).
absl::StatusOr<std::unique_ptr<worker::Engine>> LoadEngine(const EngineFlags& flags);

// Tensor parallelism for a command that runs one engine (`kvasir generate`, `kvasir-worker`):
// with --tensor-parallel-size N this process is rank 0 and starts ranks 1..N-1 as copies of
// itself (the same arguments plus --tp-rank R --tp-rendezvous HOST:PORT, flags for those copies
// only), which load their shard and run the steps rank 0 sends (worker/tensor_parallel.h).
struct TpFlags {
  int32_t size = 1;
  int32_t rank = 0;
  std::string rendezvous;
  bool replicate_vocab = false;  // --tp-replicate-vocab

  void Register(ArgParser& parser);
  bool follower() const { return rank > 0; }
  // InvalidArgument for a size or rank out of range, or a follower without its rendezvous.
  absl::Status Check() const;
};

// This rank's engine; on rank 0 of a group also the group (destroyed after the engine, whose
// runner tells the followers to stop) and the leader runner (lost() when the group broke).
struct RankEngine {
  std::unique_ptr<worker::TpGroup> group;
  std::unique_ptr<worker::Engine> engine;
  worker::TpLeaderRunner* leader = nullptr;
};

// Rank 0 (or no tensor parallelism): starts the group when tp.size > 1, then loads its engine.
// `command` is how this process was started, without the executable (the followers are started
// as `<this executable> <command...> --tp-rank R --tp-rendezvous ...`).
absl::StatusOr<RankEngine> LoadRankEngine(const EngineFlags& flags, const TpFlags& tp,
                                          const std::vector<std::string>& command);

// A follower: joins the group, loads its shard and runs rank 0's steps until rank 0 stops.
// `resolve` gives the KV policy of a spec rank 0 sends (null: the engine's parser). Returns the
// process's exit code (0 when rank 0 stopped it, 1 on a failure, printed with `name`).
int RunFollower(const std::string& name, const EngineFlags& flags, const TpFlags& tp,
                const std::function<worker::PolicyResolver(worker::Engine&)>& resolver = nullptr);

}  // namespace kvasir::cli
