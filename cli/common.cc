#include "cli/common.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "worker/device.h"

namespace kvasir::cli {

int Fail(const std::string& command, const absl::Status& status, int exit_code) {
  std::string msg(status.message());
  std::fprintf(stderr, "%s: %s\n", command.c_str(), msg.c_str());
  return exit_code;
}

void EngineFlags::Register(ArgParser& p) {
  p.AddString("model", &model, "PATH",
              "a .gguf file, a Hugging Face folder (config.json, *.safetensors, tokenizer), or "
              "'default' (SmolLM2-135M-Instruct Q4_1)");
  p.AddInt32("threads", &threads, "compute threads (0: all cores)");
  p.AddString("kv-cache-memory", &kv_cache_memory, "BYTES",
              "KV cache size, e.g. 512MiB or 4GiB (default: 4 full-context sequences, <= 4GiB)");
  p.AddString("kv-dtype", &kv_dtype, "TYPE", "KV cache element type: f32 or f16");
  p.AddString("device", &device, "NAME",
              "where the model runs: cpu, or cuda (GPU 0; one GPU, no tensor parallelism yet)");
  p.AddBool("quiet", &quiet, "no progress or timing lines on stderr");
}

absl::StatusOr<worker::EngineOptions> EngineFlags::ToOptions() const {
  worker::EngineOptions o;
  o.model = model;
  o.num_threads = threads;
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (!kv_cache_memory.empty()) {
    KVASIR_ASSIGN_OR_RETURN(o.kv_cache_bytes, ParseByteSize(kv_cache_memory));
  }
  o.tp_size = tp_size;
  o.tp_rank = tp_rank;
  o.tp_replicate_vocab = tp_replicate_vocab;
  o.comm = comm;
  o.adapter = adapter;
  KVASIR_RETURN_IF_ERROR(worker::CheckDeviceName(device));
  o.device = device;
  if (kv_dtype == "f32") {
    o.kv_dtype = DType::kF32;
  } else if (kv_dtype == "f16") {
    o.kv_dtype = DType::kF16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-dtype must be f32 or f16, got '", kv_dtype, "'"));
  }
  return o;
}

absl::StatusOr<std::unique_ptr<worker::Engine>> LoadEngine(const EngineFlags& flags) {
  KVASIR_ASSIGN_OR_RETURN(worker::EngineOptions options, flags.ToOptions());
  const bool tty = ::isatty(STDERR_FILENO);
  const auto start = std::chrono::steady_clock::now();
  int last_percent = -1;
  if (!flags.quiet) {
    options.progress = [&](int64_t done, int64_t total) {
      if (total < (int64_t{32} << 20)) return;  // small models load instantly
      const int percent = total > 0 ? static_cast<int>(100 * done / total) : 100;
      if (percent == last_percent) return;
      // On a terminal one line that updates; in a log a line every 25%.
      if (!tty && percent % 25 != 0 && percent != 100) return;
      last_percent = percent;
      std::fprintf(stderr, "%sloading %s: %3d%% (%s of %s)%s", tty ? "\r" : "", flags.model.c_str(),
                   percent, FormatBytes(done).c_str(), FormatBytes(total).c_str(), tty ? "" : "\n");
      std::fflush(stderr);
    };
  }
  auto engine = worker::Engine::Load(options);
  if (!flags.quiet && last_percent >= 0 && tty) std::fprintf(stderr, "\n");
  if (!engine.ok()) return engine.status();
  if (!flags.quiet) {
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto& c = (*engine)->config();
    const kernels::Backend* gpu = (*engine)->backend();
    const std::string where = gpu != nullptr
                                  ? gpu->Describe()
                                  : absl::StrCat((*engine)->runner().num_threads(), " threads");
    std::fprintf(stderr, "loaded %s (%s, %d layers, %s of weights) in %.2f s, %s%s\n",
                 (*engine)->files().path().c_str(), c.name.c_str(), c.n_layer,
                 FormatBytes((*engine)->weights().bytes).c_str(), secs, where.c_str(),
                 (*engine)->adapter() != nullptr ? ", with its retrofit adapter merged" : "");
  }
  return engine;
}

void TpFlags::Register(ArgParser& p) {
  p.AddInt32("tensor-parallel-size", &size,
             "tensor-parallel ranks: this process and N-1 processes it starts, each holding 1/N of "
             "the weights and of the KV heads (docs/parallelism.md)");
  p.AddBool("tp-replicate-vocab", &replicate_vocab,
            "keep the embedding and output layer whole on every rank (no collective for them, "
            "more memory) instead of splitting them by vocabulary rows");
  p.AddInt32("tp-rank", &rank, "internal: the rank of a process that rank 0 started");
  p.AddString("tp-rendezvous", &rendezvous, "HOST:PORT",
              "internal: where a started rank joins its group");
}

absl::Status TpFlags::Check() const {
  if (size < 1 || size > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tensor-parallel-size ", size, " is out of range [1, 64]"));
  }
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp-rank ", rank, " is outside [0, ", size, ")"));
  }
  if (rank > 0 && rendezvous.empty()) {
    return absl::InvalidArgumentError("--tp-rank needs --tp-rendezvous");
  }
  return absl::OkStatus();
}

absl::StatusOr<RankEngine> LoadRankEngine(const EngineFlags& flags, const TpFlags& tp,
                                          const std::vector<std::string>& command) {
  KVASIR_RETURN_IF_ERROR(tp.Check());
  RankEngine out;
  EngineFlags rank_flags = flags;
  if (tp.size > 1) {
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) return absl::InternalError("cannot find this executable to start the ranks");
    std::vector<std::string> argv = {std::string(self, static_cast<size_t>(n))};
    argv.insert(argv.end(), command.begin(), command.end());
    if (!flags.quiet) {
      std::fprintf(stderr, "starting %d tensor-parallel ranks\n", tp.size - 1);
    }
    KVASIR_ASSIGN_OR_RETURN(out.group, worker::TpGroup::Start(tp.size, argv));
    rank_flags.tp_size = tp.size;
    rank_flags.tp_replicate_vocab = tp.replicate_vocab;
    rank_flags.comm = &out.group->comm();
  }
  KVASIR_ASSIGN_OR_RETURN(out.engine, LoadEngine(rank_flags));
  if (tp.size > 1) {
    worker::Engine& engine = *out.engine;
    engine.WrapRunner([&](std::unique_ptr<worker::ModelRunner> inner) {
      auto leader = std::make_unique<worker::TpLeaderRunner>(std::move(inner), engine.cache(),
                                                             engine.config(), out.group->comm());
      out.leader = leader.get();
      return leader;
    });
  }
  return out;
}

int RunFollower(const std::string& name, const EngineFlags& flags, const TpFlags& tp,
                const std::function<worker::PolicyResolver(worker::Engine&)>& resolver) {
  const std::string who = absl::StrCat(name, " (tensor-parallel rank ", tp.rank, ")");
  if (absl::Status s = tp.Check(); !s.ok()) return Fail(who, s, 2);
  auto comm = worker::JoinTpGroup(tp.rank, tp.size, tp.rendezvous);
  if (!comm.ok()) return Fail(who, comm.status());
  EngineFlags rank_flags = flags;
  rank_flags.quiet = true;
  rank_flags.tp_size = tp.size;
  rank_flags.tp_rank = tp.rank;
  rank_flags.tp_replicate_vocab = tp.replicate_vocab;
  rank_flags.comm = comm->get();
  auto engine = LoadEngine(rank_flags);
  if (!engine.ok()) return Fail(who, engine.status());
  worker::Engine& e = **engine;
  worker::PolicyResolver resolve =
      resolver ? resolver(e) : [&e](std::string_view spec) { return e.Policy(spec); };
  absl::Status s = worker::RunTpFollower(e, **comm, resolve);
  if (!s.ok()) return Fail(who, s);
  return 0;
}

}  // namespace kvasir::cli
