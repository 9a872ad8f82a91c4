// Tensor-parallel groups of processes (see tensor_parallel.h).
#include "worker/tensor_parallel.h"

#include <signal.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "kvcache/prefix_hash.h"
#include "transport/collectives/gloo_communicator.h"
#include "transport/rpc/client.h"

namespace kvasir::worker {
namespace {

namespace coll = transport::collectives;

constexpr char kGroupKey[] = "kvasir-tp";
constexpr absl::Duration kKeepAlive = absl::Seconds(1);

transport::rpc::HandshakeInfo Handshake(const std::string& name) {
  transport::rpc::HandshakeInfo h;
  h.prefix_hash_test_vector = kvcache::PrefixHashTestVector();
  h.role = "tp-rank";
  h.name = name;
  return h;
}

// The step message: little-endian fields, appended and read in order.
enum class MessageKind : uint32_t { kStep = 0, kKeepAlive = 1, kStop = 2 };

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void PutBytes(std::string_view s) {
    Put(static_cast<uint32_t>(s.size()));
    out_.append(s);
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  template <typename T>
  bool Get(T& v) {
    if (in_.size() < sizeof(T)) return false;
    std::memcpy(&v, in_.data(), sizeof(T));
    in_.remove_prefix(sizeof(T));
    return true;
  }
  bool GetBytes(std::string& s, size_t max) {
    uint32_t n = 0;
    if (!Get(n) || n > max || in_.size() < n) return false;
    s.assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

// Rank 0's message to every rank: its size, then its bytes (a broadcast needs equal sizes).
absl::Status BroadcastMessage(coll::Communicator& comm, std::string& message) {
  uint64_t size = message.size();
  KVASIR_RETURN_IF_ERROR(comm.Broadcast(std::as_writable_bytes(std::span<uint64_t>(&size, 1)), 0));
  if (comm.rank() != 0) {
    if (size > (uint64_t{1} << 30)) return absl::DataLossError("a step message over 1 GiB");
    message.resize(size);
  }
  if (size == 0) return absl::OkStatus();
  return comm.Broadcast(std::as_writable_bytes(std::span<char>(message.data(), message.size())), 0);
}

}  // namespace

absl::StatusOr<std::unique_ptr<TpGroup>> TpGroup::Start(int32_t size,
                                                        std::vector<std::string> follower_argv,
                                                        absl::Duration timeout) {
  std::unique_ptr<TpGroup> g(new TpGroup());
  g->size_ = size;
  KVASIR_ASSIGN_OR_RETURN(
      g->server_, transport::rpc::RpcServer::Create({.port = 0, .handshake = Handshake("rank-0")}));
  g->rendezvous_.Register(*g->server_);
  KVASIR_RETURN_IF_ERROR(g->server_->Start());
  const std::string rendezvous = absl::StrCat("127.0.0.1:", g->server_->port());
  for (int32_t r = 1; r < size; ++r) {
    std::vector<std::string> argv = follower_argv;
    argv.insert(argv.end(), {"--tp-rank", std::to_string(r), "--tp-rendezvous", rendezvous});
    KVASIR_ASSIGN_OR_RETURN(transport::ChildProcess child, transport::ChildProcess::Spawn(argv));
    g->followers_.push_back(std::move(child));
  }
  KVASIR_ASSIGN_OR_RETURN(auto client,
                          transport::rpc::RpcClient::Create(
                              {.port = g->server_->port(), .handshake = Handshake("rank-0")}));
  coll::RpcRendezvousStore store(*client);
  auto comm = coll::GlooCommunicator::Create(
      {.rank = 0, .size = size, .store = &store, .key_prefix = kGroupKey, .timeout = timeout});
  if (!comm.ok()) {
    return absl::UnavailableError(absl::StrCat("the tensor-parallel group of ", size,
                                               " ranks did not form: ", comm.status().message()));
  }
  g->comm_ = std::move(*comm);
  return g;
}

TpGroup::~TpGroup() {
  comm_.reset();
  for (transport::ChildProcess& f : followers_) f.Signal(SIGTERM);
  for (transport::ChildProcess& f : followers_) (void)f.Wait(absl::Seconds(5));
  if (server_ != nullptr) server_->Stop();
}

absl::StatusOr<std::unique_ptr<coll::Communicator>> JoinTpGroup(int32_t rank, int32_t size,
                                                                const std::string& rendezvous,
                                                                absl::Duration timeout) {
  const size_t colon = rendezvous.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(rendezvous.substr(colon + 1), &port) ||
      port == 0 || port > 65535) {
    return absl::InvalidArgumentError("--tp-rendezvous wants HOST:PORT");
  }
  KVASIR_ASSIGN_OR_RETURN(auto client, transport::rpc::RpcClient::Create(
                                           {.host = rendezvous.substr(0, colon),
                                            .port = static_cast<uint16_t>(port),
                                            .handshake = Handshake(absl::StrCat("rank-", rank))}));
  coll::RpcRendezvousStore store(*client);
  KVASIR_ASSIGN_OR_RETURN(auto comm, coll::GlooCommunicator::Create({.rank = rank,
                                                                     .size = size,
                                                                     .store = &store,
                                                                     .key_prefix = kGroupKey,
                                                                     .timeout = timeout}));
  return std::unique_ptr<coll::Communicator>(std::move(comm));
}

TpLeaderRunner::TpLeaderRunner(std::unique_ptr<ModelRunner> inner, kvcache::KvCache& cache,
                               coll::Communicator& comm)
    : inner_(std::move(inner)), cache_(cache), comm_(comm) {
  keepalive_ = std::thread([this] { KeepAlive(); });
}

TpLeaderRunner::~TpLeaderRunner() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    if (!lost_.load()) {
      Writer w;
      w.Put(MessageKind::kStop);
      (void)Send(w.out());
    }
  }
  keepalive_.join();
}

absl::Status TpLeaderRunner::Send(std::string_view message) {
  std::string m(message);
  absl::Status s = BroadcastMessage(comm_, m);
  last_send_ = absl::Now();
  if (!s.ok()) {
    if (!lost_.exchange(true)) {
      KVASIR_LOG_SUBSYS(ERROR, kWorker, "the tensor-parallel group is lost: %s", s.ToString());
    }
  }
  return s;
}

void TpLeaderRunner::KeepAlive() {
  absl::MutexLock lock(&mu_);
  while (!stop_ && !lost_.load()) {
    auto quiet = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stop_ || absl::Now() - last_send_ >= kKeepAlive;
    };
    mu_.AwaitWithTimeout(absl::Condition(&quiet), kKeepAlive);
    if (stop_ || absl::Now() - last_send_ < kKeepAlive) continue;
    Writer w;
    w.Put(MessageKind::kKeepAlive);
    (void)Send(w.out());
  }
}

absl::Status TpLeaderRunner::Forward(std::span<const StepSequence> batch,
                                     std::vector<float>& logits,
                                     const LayerDoneHook& on_layer_done) {
  absl::MutexLock lock(&mu_);
  if (lost_.load()) return absl::UnavailableError("the tensor-parallel group is lost");
  Writer w;
  w.Put(MessageKind::kStep);
  // Sequences freed since the last step.
  std::vector<kvcache::SeqId> freed;
  for (const auto& [id, n] : known_) {
    if (cache_.Find(id) == nullptr) freed.push_back(id);
  }
  w.Put(static_cast<uint32_t>(freed.size()));
  for (kvcache::SeqId id : freed) {
    w.Put(id);
    known_.erase(id);
  }
  // New sequences: they must start empty (the followers compute all their KV).
  std::vector<const kvcache::SequenceKv*> fresh;
  for (const StepSequence& s : batch) {
    if (s.seq == nullptr) return absl::InvalidArgumentError("a step sequence has no sequence");
    auto it = known_.find(s.seq->id());
    const int64_t expected = it == known_.end() ? 0 : it->second;
    if (s.seq->n_tokens() != expected) {
      return absl::FailedPreconditionError(
          "a sequence holds KV the other tensor-parallel ranks did not compute (prefix caching or "
          "a KV hand-off); they are not supported with tensor parallelism yet");
    }
    if (it == known_.end()) fresh.push_back(s.seq);
  }
  w.Put(static_cast<uint32_t>(fresh.size()));
  for (const kvcache::SequenceKv* seq : fresh) {
    w.Put(seq->id());
    w.PutBytes(seq->policy().spec());
  }
  w.Put(static_cast<uint32_t>(batch.size()));
  for (const StepSequence& s : batch) {
    w.Put(s.seq->id());
    w.Put(static_cast<uint8_t>(s.all_logits ? 1 : 0));
    w.Put(static_cast<uint32_t>(s.tokens.size()));
    for (int32_t t : s.tokens) w.Put(t);
  }
  KVASIR_RETURN_IF_ERROR(Send(w.out()));
  absl::Status status = inner_->Forward(batch, logits, on_layer_done);
  // Every rank reached the same outcome (a lack of KV room is agreed on inside Forward).
  for (const StepSequence& s : batch) known_[s.seq->id()] = s.seq->n_tokens();
  if (!status.ok() && !absl::IsResourceExhausted(status) && !absl::IsInvalidArgument(status)) {
    if (!lost_.exchange(true)) {
      KVASIR_LOG_SUBSYS(ERROR, kWorker, "the tensor-parallel group is lost: %s", status.ToString());
    }
  }
  return status;
}

absl::Status RunTpFollower(Engine& engine, coll::Communicator& comm,
                           const PolicyResolver& resolve) {
  kvcache::KvCache& cache = engine.cache();
  absl::flat_hash_map<kvcache::SeqId, kvcache::SequenceKv*> seqs;  // rank 0's id -> ours
  std::vector<float> logits;
  std::vector<std::vector<int32_t>> tokens;
  std::vector<StepSequence> batch;
  while (true) {
    std::string message;
    KVASIR_RETURN_IF_ERROR(BroadcastMessage(comm, message));
    Reader r(message);
    MessageKind kind;
    if (!r.Get(kind)) return absl::DataLossError("an empty step message");
    if (kind == MessageKind::kStop) return absl::OkStatus();
    if (kind == MessageKind::kKeepAlive) continue;
    if (kind != MessageKind::kStep) return absl::DataLossError("an unknown step message");
    auto malformed = [] { return absl::DataLossError("a malformed step message"); };
    uint32_t n = 0;
    if (!r.Get(n)) return malformed();
    for (uint32_t i = 0; i < n; ++i) {
      kvcache::SeqId id;
      if (!r.Get(id)) return malformed();
      auto it = seqs.find(id);
      if (it != seqs.end()) {
        cache.FreeSequence(it->second->id());
        seqs.erase(it);
      }
    }
    if (!r.Get(n)) return malformed();
    for (uint32_t i = 0; i < n; ++i) {
      kvcache::SeqId id;
      std::string spec;
      if (!r.Get(id) || !r.GetBytes(spec, 1 << 16)) return malformed();
      KVASIR_ASSIGN_OR_RETURN(auto policy, resolve(spec));
      seqs[id] = &cache.CreateSequence(std::move(policy));
    }
    if (!r.Get(n)) return malformed();
    batch.clear();
    tokens.resize(std::max<size_t>(tokens.size(), n));
    for (uint32_t i = 0; i < n; ++i) {
      kvcache::SeqId id;
      uint8_t all = 0;
      uint32_t count = 0;
      if (!r.Get(id) || !r.Get(all) || !r.Get(count)) return malformed();
      auto it = seqs.find(id);
      if (it == seqs.end()) return absl::DataLossError("a step names an unknown sequence");
      tokens[i].resize(count);
      for (uint32_t k = 0; k < count; ++k) {
        if (!r.Get(tokens[i][k])) return malformed();
      }
      batch.push_back({it->second, tokens[i], all != 0});
    }
    if (!r.done()) return malformed();
    absl::Status s = engine.runner().Forward(batch, logits);
    // Rank 0 saw the same outcome; a lack of KV room is retried with another batch.
    if (!s.ok() && !absl::IsResourceExhausted(s) && !absl::IsInvalidArgument(s)) return s;
  }
}

}  // namespace kvasir::worker
