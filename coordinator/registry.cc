// WorkerRegistry (see registry.h).
#include "coordinator/registry.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "transport/http/server.h"

namespace kvasir::coordinator {

WorkerRegistry::~WorkerRegistry() { Clear(); }

absl::StatusOr<uint64_t> WorkerRegistry::Register(const serving::WorkerInfo& info) {
  if (info.name().empty()) return absl::InvalidArgumentError("the worker has no name");
  if (!options_.model.empty() && info.model() != options_.model) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", info.name(), " serves model '",
                                                      info.model(), "', the coordinator serves '",
                                                      options_.model, "'"));
  }
  if (options_.n_vocab > 0 && info.n_vocab() != options_.n_vocab) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker ", info.name(), " has a vocabulary of ", info.n_vocab(),
                     " tokens, the coordinator's tokenizer ", options_.n_vocab));
  }
  KVASIR_ASSIGN_OR_RETURN(auto address, transport::http::ParseHostPort(info.rpc_address()));
  KVASIR_ASSIGN_OR_RETURN(WorkerChannel channel, factory_(address.first, address.second));
  Entry entry;
  entry.view.name = info.name();
  entry.view.rpc_address = info.rpc_address();
  entry.view.http_address = info.http_address();
  entry.view.role = info.role();
  entry.view.kv_policies.assign(info.kv_policies().begin(), info.kv_policies().end());
  entry.prefix_block_tokens = info.prefix_block_tokens();
  entry.prefix_store = info.prefix_store();
  entry.view.last_heartbeat = absl::Now();
  // It connected to its cachestore (when it has one) before it registered.
  entry.view.load.set_fabric_ok(true);
  entry.channel = std::move(channel);
  WorkerChannel replaced;  // destroyed outside the lock
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = workers_.begin(); it != workers_.end(); ++it) {
      if (it->second.view.name == info.name()) {
        replaced = std::move(it->second.channel);
        workers_.erase(it);
        break;
      }
    }
    id = next_id_++;
    entry.view.id = id;
    workers_[id] = std::move(entry);
  }
  KVASIR_LOG_SUBSYS(INFO, kCoordinator, "worker registered name=%s id=%d rpc=%s http=%s role=%s",
                    info.name(), id, info.rpc_address(), info.http_address(), info.role());
  return id;
}

bool WorkerRegistry::Heartbeat(uint64_t id, std::string_view name, const serving::WorkerLoad& load,
                               const serving::PrefixCacheEvents* prefix) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(id);
  if (it == workers_.end() || it->second.view.name != name) return false;
  if (prefix != nullptr) {
    absl::flat_hash_set<uint64_t>& blocks = it->second.prefix_blocks;
    if (prefix->reset()) blocks.clear();
    for (uint64_t h : prefix->removed()) blocks.erase(h);
    blocks.insert(prefix->added().begin(), prefix->added().end());
    if (stored_blocks_.size() + prefix->stored_size() > kMaxStoredBlocks) stored_blocks_.clear();
    stored_blocks_.insert(prefix->stored().begin(), prefix->stored().end());
  }
  it->second.view.load = load;
  it->second.view.draining |= load.draining();
  it->second.view.last_heartbeat = absl::Now();
  return true;
}

std::vector<std::string> WorkerRegistry::Sweep(absl::Time now) {
  std::vector<std::string> dead;
  std::vector<WorkerChannel> dropped;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (now - it->second.view.last_heartbeat > options_.heartbeat_timeout) {
        dead.push_back(it->second.view.name);
        dropped.push_back(std::move(it->second.channel));
        if (!it->second.view.draining) ++deaths_;
        workers_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (const std::string& name : dead) {
    KVASIR_LOG_SUBSYS(WARN, kCoordinator, "worker %s missed its heartbeats; marked dead", name);
  }
  return dead;
}

void WorkerRegistry::MarkDead(uint64_t id, const absl::Status& why) {
  WorkerChannel dropped;
  std::string name;
  bool drained = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(id);
    if (it == workers_.end()) return;
    name = it->second.view.name;
    dropped = std::move(it->second.channel);
    drained = it->second.view.draining;
    if (!drained) ++deaths_;
    workers_.erase(it);
  }
  if (drained) {
    KVASIR_LOG_SUBSYS(INFO, kCoordinator, "drained worker %s left", name);
  } else {
    KVASIR_LOG_SUBSYS(WARN, kCoordinator, "worker %s marked dead: %s", name, why.ToString());
  }
}

std::map<std::string, serving::KvPolicyInfo> WorkerRegistry::KvPolicies() const {
  std::map<std::string, serving::KvPolicyInfo> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, entry] : workers_) {
    for (const serving::KvPolicyInfo& p : entry.view.kv_policies) out.emplace(p.name(), p);
  }
  return out;
}

bool WorkerRegistry::HasRole(std::string_view role) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, entry] : workers_) {
    if (entry.view.role == role && !entry.view.draining && entry.channel.connected &&
        entry.channel.connected()) {
      return true;
    }
  }
  return false;
}

std::optional<WorkerRegistry::Lease> WorkerRegistry::Pick(
    const absl::flat_hash_set<uint64_t>& exclude, std::string_view role,
    std::span<const uint64_t> chain, int32_t block_tokens, int64_t* matched, int64_t* stored) {
  absl::MutexLock lock(&mu_);
  Entry* best = nullptr;
  // The leading blocks of the chain that a worker holds, and those after them in the store
  // that it would read.
  auto held = [&](const Entry& e) {
    std::pair<int64_t, int64_t> run{0, 0};
    if (!options_.kv_routing || block_tokens <= 0 || e.prefix_block_tokens != block_tokens) {
      return run;
    }
    const int64_t n = static_cast<int64_t>(chain.size());
    while (run.first < n && e.prefix_blocks.contains(chain[run.first])) ++run.first;
    while (e.prefix_store && run.first + run.second < n &&
           stored_blocks_.contains(chain[run.first + run.second])) {
      ++run.second;
    }
    return run;
  };
  auto key = [&](const Entry& e) {
    const auto [local, store] = held(e);
    const int64_t cost = kStoreBlockDivisor * (static_cast<int64_t>(chain.size()) - local - store +
                                               kLoadWeightBlocks * e.view.inflight) +
                         store;
    return std::make_tuple(cost, e.view.load.kv_usage(), e.last_pick);
  };
  decltype(key(std::declval<const Entry&>())) best_key;
  for (auto& [id, entry] : workers_) {
    if (exclude.contains(id)) continue;
    if (!role.empty() && entry.view.role != role) continue;
    if (entry.view.draining) continue;
    if (!entry.channel.connected || !entry.channel.connected()) continue;
    const auto k = key(entry);  // once per worker: it walks the chain
    if (best == nullptr || k < best_key) {
      best = &entry;
      best_key = k;
    }
  }
  if (best == nullptr) return std::nullopt;
  const auto [local, store] = held(*best);
  if (matched != nullptr) *matched = local;
  if (stored != nullptr) *stored = store;
  ++best->view.inflight;
  best->last_pick = ++picks_;
  return Lease{best->view.id, best->view.name, best->channel.channel};
}

std::optional<WorkerRegistry::Lease> WorkerRegistry::BeginDrain(std::string_view name) {
  absl::MutexLock lock(&mu_);
  for (auto& [id, entry] : workers_) {
    if (entry.view.name != name) continue;
    entry.view.draining = true;
    ++entry.view.inflight;
    return Lease{entry.view.id, entry.view.name, entry.channel.channel};
  }
  return std::nullopt;
}

void WorkerRegistry::Release(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(id);
  if (it != workers_.end() && it->second.view.inflight > 0) --it->second.view.inflight;
}

std::vector<WorkerView> WorkerRegistry::Snapshot() const {
  std::vector<std::pair<WorkerView, std::function<bool()>>> views;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, entry] : workers_) {
      views.emplace_back(entry.view, entry.channel.connected);
    }
  }
  std::vector<WorkerView> out;
  for (auto& [view, connected] : views) {
    view.connected = connected && connected();
    out.push_back(std::move(view));
  }
  std::sort(out.begin(), out.end(),
            [](const WorkerView& a, const WorkerView& b) { return a.id < b.id; });
  return out;
}

int64_t WorkerRegistry::deaths() const {
  absl::MutexLock lock(&mu_);
  return deaths_;
}

void WorkerRegistry::Clear() {
  absl::flat_hash_map<uint64_t, Entry> all;
  {
    absl::MutexLock lock(&mu_);
    all.swap(workers_);
  }
}

}  // namespace kvasir::coordinator
