// Tensor-parallel groups of processes (see tensor_parallel.h).
#include "worker/tensor_parallel.h"

#include <signal.h>

#include <algorithm>
#include <cstring>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "kvcache/prefix_hash.h"
#include "transport/collectives/gloo_communicator.h"
#include "transport/rpc/client.h"
#include "worker/tensor_parallel.pb.h"

namespace kvasir::worker {
namespace {

namespace coll = transport::collectives;
namespace tp = ::kvasir::worker::tp;

constexpr char kGroupKey[] = "kvasir-tp";
constexpr absl::Duration kKeepAlive = absl::Seconds(1);

transport::rpc::HandshakeInfo Handshake(const std::string& name) {
  transport::rpc::HandshakeInfo h;
  h.prefix_hash_test_vector = kvcache::PrefixHashTestVector();
  h.role = "tp-rank";
  h.name = name;
  return h;
}

// Rank 0's message to every rank: its size, then its bytes (a broadcast needs equal sizes).
absl::Status BroadcastMessage(coll::Communicator& comm, std::string& message) {
  uint64_t size = message.size();
  KVASIR_RETURN_IF_ERROR(comm.Broadcast(std::as_writable_bytes(std::span<uint64_t>(&size, 1)), 0));
  if (comm.rank() != 0) {
    if (size > (uint64_t{16} << 30)) return absl::DataLossError("a step message over 16 GiB");
    message.resize(size);
  }
  if (size == 0) return absl::OkStatus();
  return comm.Broadcast(std::as_writable_bytes(std::span<char>(message.data(), message.size())), 0);
}

absl::Status SendMessage(coll::Communicator& comm, const tp::Message& m) {
  std::string bytes = m.SerializeAsString();
  return BroadcastMessage(comm, bytes);
}

// Every rank's `mine`, gathered on every rank (the sizes first: an all-gather wants equal sizes).
absl::StatusOr<std::vector<std::string>> GatherBytes(coll::Communicator& comm,
                                                     const std::string& mine) {
  const size_t n = static_cast<size_t>(comm.size());
  std::vector<uint64_t> sizes(n);
  const uint64_t size = mine.size();
  KVASIR_RETURN_IF_ERROR(comm.AllGather(std::as_bytes(std::span<const uint64_t>(&size, 1)),
                                        std::as_writable_bytes(std::span<uint64_t>(sizes))));
  const uint64_t max = *std::max_element(sizes.begin(), sizes.end());
  if (max > (uint64_t{16} << 30)) return absl::DataLossError("a rank's reply is over 16 GiB");
  std::string padded = mine;
  padded.resize(max);
  std::string all(max * n, '\0');
  if (max > 0) {
    KVASIR_RETURN_IF_ERROR(comm.AllGather(std::as_bytes(std::span<const char>(padded)),
                                          std::as_writable_bytes(std::span<char>(all))));
  }
  std::vector<std::string> out(n);
  for (size_t r = 0; r < n; ++r) out[r] = all.substr(r * max, sizes[r]);
  return out;
}

// This rank's KV heads of `seq` (null: the rank does not know it) as codec blocks, or why not.
tp::EncodeReply EncodeOnRank(const kvcache::KvCache& cache, const kvcache::SequenceKv* seq,
                             const tp::Encode& e, const model::ShardPlan& plan,
                             int32_t model_kv_heads) {
  tp::EncodeReply reply;
  absl::StatusOr<std::vector<std::string>> blocks =
      absl::FailedPreconditionError("a tensor-parallel rank does not hold the sequence");
  if (seq != nullptr) {
    kvcache::SnapshotInfo info;
    info.model_fingerprint = e.model_fingerprint();
    info.prefix_hash = e.prefix_hash();
    info.layer_begin = e.layer_begin();
    info.layer_end = e.layer_end();
    info.head_offset = plan.kv_head_begin;
    info.total_heads = model_kv_heads;
    info.max_block_bytes = e.max_block_bytes();
    info.n_tokens = e.n_tokens();
    blocks = kvcache::EncodeSequence(cache, *seq, info);
  }
  if (!blocks.ok()) {
    reply.set_code(static_cast<int32_t>(blocks.status().code()));
    reply.set_error(std::string(blocks.status().message()));
    return reply;
  }
  for (std::string& b : *blocks) reply.add_blocks(std::move(b));
  return reply;
}

// Restores this rank's KV heads from `r`'s blocks; OK or why not.
absl::StatusOr<kvcache::SequenceKv*> RestoreOnRank(kvcache::KvCache& cache, tp::Restore& r,
                                                   const PolicyResolver& resolve,
                                                   const model::ShardPlan& plan) {
  KVASIR_ASSIGN_OR_RETURN(auto policy, resolve(r.policy_spec()));
  std::vector<std::string> blocks(std::make_move_iterator(r.mutable_blocks()->begin()),
                                  std::make_move_iterator(r.mutable_blocks()->end()));
  return kvcache::DecodeSequence(cache, blocks, std::move(policy), r.model_fingerprint(),
                                 plan.kv_head_begin);
}

// Every rank's outcome of a restore (its absl::StatusCode, 0: restored), the same on every rank.
absl::StatusOr<std::vector<float>> AgreeOnRestore(coll::Communicator& comm,
                                                  const absl::Status& mine) {
  std::vector<float> codes(static_cast<size_t>(comm.size()), 0.0f);
  codes[static_cast<size_t>(comm.rank())] = static_cast<float>(mine.code());
  KVASIR_RETURN_IF_ERROR(
      comm.AllReduceSum(std::as_writable_bytes(std::span<float>(codes)), DType::kF32));
  return codes;
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
                               const model::ModelConfig& model, coll::Communicator& comm)
    : inner_(std::move(inner)), cache_(cache), comm_(comm), model_kv_heads_(model.n_head_kv) {
  for (int32_t r = 0; r < comm.size(); ++r) {
    // The engine of rank 0 was loaded with the same plan, so it cannot fail here.
    plans_.push_back(model::PlanShard(model, comm.size(), r).value_or(model::ShardPlan{}));
  }
  keepalive_ = std::thread([this] { KeepAlive(); });
}

TpLeaderRunner::~TpLeaderRunner() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    if (!lost_.load()) {
      tp::Message m;
      m.set_stop(true);
      (void)Send(m);
    }
  }
  keepalive_.join();
}

absl::Status TpLeaderRunner::Send(const tp::Message& message) {
  return Lost(SendMessage(comm_, message));
}

absl::Status TpLeaderRunner::Lost(absl::Status status) {
  if (status.ok()) {
    last_send_ = absl::Now();
  } else if (!lost_.exchange(true)) {
    KVASIR_LOG_SUBSYS(ERROR, kWorker, "the tensor-parallel group is lost: %s", status.ToString());
  }
  return status;
}

void TpLeaderRunner::KeepAlive() {
  absl::MutexLock lock(&mu_);
  while (!stop_ && !lost_.load()) {
    auto quiet = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stop_ || absl::Now() - last_send_ >= kKeepAlive;
    };
    mu_.AwaitWithTimeout(absl::Condition(&quiet), kKeepAlive);
    if (stop_ || absl::Now() - last_send_ < kKeepAlive) continue;
    tp::Message m;
    m.set_keepalive(true);
    (void)Send(m);
  }
}

absl::Status TpLeaderRunner::Forward(std::span<const StepSequence> batch,
                                     std::vector<float>& logits,
                                     const LayerDoneHook& on_layer_done) {
  absl::MutexLock lock(&mu_);
  if (lost_.load()) return absl::UnavailableError("the tensor-parallel group is lost");
  tp::Message m;
  tp::Step& step = *m.mutable_step();
  // Sequences freed since the last message.
  for (auto it = known_.begin(); it != known_.end();) {
    if (cache_.Find(it->first) == nullptr) {
      step.add_freed(it->first);
      known_.erase(it++);
    } else {
      ++it;
    }
  }
  // New sequences: they must start empty (the followers compute all their KV), unless
  // DecodeKv restored them on every rank.
  for (const StepSequence& s : batch) {
    if (s.seq == nullptr) return absl::InvalidArgumentError("a step sequence has no sequence");
    auto it = known_.find(s.seq->id());
    const int64_t expected = it == known_.end() ? 0 : it->second;
    if (s.seq->n_tokens() != expected) {
      return absl::FailedPreconditionError(
          "a sequence holds KV the other tensor-parallel ranks do not hold (prefix caching is not "
          "supported with tensor parallelism yet)");
    }
    if (it == known_.end()) {
      tp::NewSequence& fresh = *step.add_fresh();
      fresh.set_id(s.seq->id());
      fresh.set_policy_spec(s.seq->policy().spec());
    }
  }
  for (const StepSequence& s : batch) {
    tp::StepSequence& out = *step.add_batch();
    out.set_id(s.seq->id());
    out.set_all_logits(s.all_logits);
    out.mutable_tokens()->Add(s.tokens.begin(), s.tokens.end());
  }
  KVASIR_RETURN_IF_ERROR(Send(m));
  absl::Status status = inner_->Forward(batch, logits, on_layer_done);
  // Every rank reached the same outcome (a lack of KV room is agreed on inside Forward).
  for (const StepSequence& s : batch) known_[s.seq->id()] = s.seq->n_tokens();
  if (!status.ok() && !absl::IsResourceExhausted(status) && !absl::IsInvalidArgument(status)) {
    (void)Lost(status);
  }
  return status;
}

absl::StatusOr<std::vector<std::string>> TpLeaderRunner::EncodeKv(
    const kvcache::KvCache& cache, const kvcache::SequenceKv& seq,
    const kvcache::SnapshotInfo& info) {
  absl::MutexLock lock(&mu_);
  if (lost_.load()) return absl::UnavailableError("the tensor-parallel group is lost");
  auto it = known_.find(seq.id());
  if (it == known_.end() || it->second != seq.n_tokens()) {
    return absl::FailedPreconditionError(
        "the other tensor-parallel ranks do not hold this sequence's KV");
  }
  tp::Message m;
  tp::Encode& e = *m.mutable_encode();
  e.set_id(seq.id());
  e.set_model_fingerprint(info.model_fingerprint);
  e.set_prefix_hash(info.prefix_hash);
  e.set_layer_begin(info.layer_begin);
  e.set_layer_end(info.layer_end);
  e.set_n_tokens(info.n_tokens);
  e.set_max_block_bytes(info.max_block_bytes);
  KVASIR_RETURN_IF_ERROR(Send(m));
  const tp::EncodeReply mine = EncodeOnRank(cache, &seq, e, plans_[0], model_kv_heads_);
  KVASIR_ASSIGN_OR_RETURN(std::vector<std::string> replies,
                          Lost(GatherBytes(comm_, mine.SerializeAsString())));
  std::vector<std::string> blocks;
  for (size_t r = 0; r < replies.size(); ++r) {
    // Ranks that replicate the KV heads of the rank before them add nothing.
    if (r > 0 && plans_[r].kv_head_begin == plans_[r - 1].kv_head_begin) continue;
    tp::EncodeReply reply;
    if (!reply.ParseFromString(replies[r])) {
      return Lost(absl::DataLossError("a malformed reply from a tensor-parallel rank"));
    }
    if (reply.code() != 0) {
      return absl::Status(static_cast<absl::StatusCode>(reply.code()),
                          absl::StrCat("tensor-parallel rank ", r, ": ", reply.error()));
    }
    for (std::string& b : *reply.mutable_blocks()) blocks.push_back(std::move(b));
  }
  return blocks;
}

absl::StatusOr<kvcache::SequenceKv*> TpLeaderRunner::DecodeKv(
    kvcache::KvCache& cache, std::span<const std::string> blocks,
    std::shared_ptr<const kvcache::KvPolicy> policy, uint64_t model_fingerprint) {
  absl::MutexLock lock(&mu_);
  if (lost_.load()) return absl::UnavailableError("the tensor-parallel group is lost");
  const std::string spec = policy->spec();
  // This rank first: when the blocks do not fit it, the others are not asked.
  KVASIR_ASSIGN_OR_RETURN(kvcache::SequenceKv * seq,
                          kvcache::DecodeSequence(cache, blocks, std::move(policy),
                                                  model_fingerprint, plans_[0].kv_head_begin));
  const kvcache::SeqId id = seq->id();
  tp::Message m;
  tp::Restore& restore = *m.mutable_restore();
  restore.set_id(id);
  restore.set_policy_spec(spec);
  restore.set_model_fingerprint(model_fingerprint);
  for (const std::string& b : blocks) {
    // Only the blocks some other rank takes heads from.
    auto header = kvcache::DecodeBlockHeader(b);
    bool wanted = !header.ok();  // theirs to refuse
    for (size_t r = 1; r < plans_.size() && !wanted; ++r) {
      wanted =
          header->head_begin < plans_[r].kv_head_end && header->head_end > plans_[r].kv_head_begin;
    }
    if (wanted) restore.add_blocks(b);
  }
  const absl::Status sent = Send(m);
  absl::StatusOr<std::vector<float>> codes = sent.ok()
                                                 ? Lost(AgreeOnRestore(comm_, absl::OkStatus()))
                                                 : absl::StatusOr<std::vector<float>>(sent);
  if (!codes.ok()) {
    cache.FreeSequence(id);
    return codes.status();
  }
  for (size_t r = 0; r < codes->size(); ++r) {
    if ((*codes)[r] != 0) {
      cache.FreeSequence(id);
      return absl::Status(static_cast<absl::StatusCode>(static_cast<int>((*codes)[r])),
                          absl::StrCat("tensor-parallel rank ", r, " could not restore the KV"));
    }
  }
  known_[id] = seq->n_tokens();
  return seq;
}

std::vector<int32_t> TpLeaderRunner::KvHeadParts(const kvcache::KvCache&) const {
  std::vector<int32_t> bounds = {0};
  for (const model::ShardPlan& p : plans_) {
    if (p.kv_head_end > bounds.back()) bounds.push_back(p.kv_head_end);
  }
  return bounds;
}

absl::Status RunTpFollower(Engine& engine, coll::Communicator& comm,
                           const PolicyResolver& resolve) {
  kvcache::KvCache& cache = engine.cache();
  const model::ShardPlan& plan = engine.shard();
  absl::flat_hash_map<kvcache::SeqId, kvcache::SequenceKv*> seqs;  // rank 0's id -> ours
  auto free_seq = [&](kvcache::SeqId id) {
    auto it = seqs.find(id);
    if (it == seqs.end()) return;
    cache.FreeSequence(it->second->id());
    seqs.erase(it);
  };
  std::vector<float> logits;
  std::vector<StepSequence> batch;
  tp::Message m;
  while (true) {
    std::string bytes;
    KVASIR_RETURN_IF_ERROR(BroadcastMessage(comm, bytes));
    if (!m.ParseFromString(bytes)) return absl::DataLossError("a malformed step message");
    switch (m.kind_case()) {
      case tp::Message::kStop:
        return absl::OkStatus();
      case tp::Message::kKeepalive:
        break;
      case tp::Message::kEncode: {
        auto it = seqs.find(m.encode().id());
        const tp::EncodeReply reply = EncodeOnRank(cache, it == seqs.end() ? nullptr : it->second,
                                                   m.encode(), plan, engine.config().n_head_kv);
        KVASIR_RETURN_IF_ERROR(GatherBytes(comm, reply.SerializeAsString()).status());
        break;
      }
      case tp::Message::kRestore: {
        const kvcache::SeqId id = m.restore().id();
        free_seq(id);
        absl::StatusOr<kvcache::SequenceKv*> seq =
            RestoreOnRank(cache, *m.mutable_restore(), resolve, plan);
        KVASIR_ASSIGN_OR_RETURN(std::vector<float> codes, AgreeOnRestore(comm, seq.status()));
        const bool all = std::all_of(codes.begin(), codes.end(), [](float c) { return c == 0; });
        if (seq.ok() && all) {
          seqs[id] = *seq;
        } else if (seq.ok()) {
          cache.FreeSequence((*seq)->id());
        }
        break;
      }
      case tp::Message::kStep: {
        const tp::Step& step = m.step();
        for (kvcache::SeqId id : step.freed()) free_seq(id);
        for (const tp::NewSequence& fresh : step.fresh()) {
          KVASIR_ASSIGN_OR_RETURN(auto policy, resolve(fresh.policy_spec()));
          free_seq(fresh.id());
          seqs[fresh.id()] = &cache.CreateSequence(std::move(policy));
        }
        batch.clear();
        for (const tp::StepSequence& s : step.batch()) {
          auto it = seqs.find(s.id());
          if (it == seqs.end()) return absl::DataLossError("a step names an unknown sequence");
          batch.push_back({it->second,
                           std::span<const int32_t>(s.tokens().data(), s.tokens().size()),
                           s.all_logits()});
        }
        absl::Status st = engine.runner().Forward(batch, logits);
        // Rank 0 saw the same outcome; a lack of KV room is retried with another batch.
        if (!st.ok() && !absl::IsResourceExhausted(st) && !absl::IsInvalidArgument(st)) return st;
        break;
      }
      default:
        return absl::DataLossError("an unknown step message");
    }
  }
}

}  // namespace kvasir::worker
