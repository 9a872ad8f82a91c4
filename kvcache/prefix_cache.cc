// PrefixCache (see prefix_cache.h).
#include "kvcache/prefix_cache.h"

#include <algorithm>

#include "common/hash.h"
#include "common/status_macros.h"
#include "kvcache/prefix_hash.h"

namespace kvasir::kvcache {

PrefixCache::PrefixCache(KvCache& cache) : cache_(cache) {
  cache_.set_reclaimer([this](int64_t pages) { return Evict(pages); });
}

PrefixCache::~PrefixCache() {
  cache_.set_reclaimer(nullptr);
  for (auto& [hash, entry] : entries_) {
    for (int32_t page : entry.pages) cache_.pool().Unref(page);
  }
}

namespace {

// Journal entries kept between two TakeEvents at most; past it the next one is a reset.
constexpr size_t kMaxJournal = 1 << 16;

// The chain's seed: the salt and the policy, so that blocks of another tenant or policy never
// meet.
uint64_t ChainSeed(std::string_view policy_spec, uint64_t salt) {
  return Xxh3(policy_spec, PrefixHashSeed() ^ salt);
}

// Extends `hashes` (the chain of the first hashes.size() blocks) to `blocks` whole blocks.
void ExtendChain(std::span<const int32_t> tokens, std::string_view policy_spec, uint64_t salt,
                 int32_t block_tokens, int64_t blocks, std::vector<uint64_t>& hashes) {
  while (static_cast<int64_t>(hashes.size()) < blocks) {
    const uint64_t prev = hashes.empty() ? ChainSeed(policy_spec, salt) : hashes.back();
    const size_t begin = hashes.size() * static_cast<size_t>(block_tokens);
    hashes.push_back(PrefixHashNext(prev, tokens.subspan(begin, block_tokens)));
  }
}

}  // namespace

bool PrefixCache::Shares(const KvPolicy& policy) { return SharesSpec(policy.spec()); }

std::vector<uint64_t> PrefixCache::ChainOf(std::span<const int32_t> tokens,
                                           std::string_view policy_spec, uint64_t salt,
                                           int32_t block_tokens, int64_t max_blocks) {
  std::vector<uint64_t> chain;
  if (block_tokens <= 0) return chain;
  ExtendChain(tokens, policy_spec, salt, block_tokens,
              std::min<int64_t>(max_blocks, static_cast<int64_t>(tokens.size()) / block_tokens),
              chain);
  return chain;
}

void PrefixCache::Events::Merge(Events later) {
  stored.insert(stored.end(), later.stored.begin(), later.stored.end());
  later.stored.clear();
  if (later.reset) {
    later.stored = std::move(stored);
    *this = std::move(later);
    return;
  }
  absl::flat_hash_map<uint64_t, bool> state;
  for (uint64_t h : added) state[h] = true;
  for (uint64_t h : removed) state[h] = false;
  for (uint64_t h : later.added) state[h] = true;
  for (uint64_t h : later.removed) state[h] = false;
  added.clear();
  removed.clear();
  for (const auto& [h, kept] : state) (kept ? added : removed).push_back(h);
}

void PrefixCache::Journal(uint64_t hash, bool kept) {
  if (resync_) return;  // the next TakeEvents lists everything anyway
  if (journal_.size() >= kMaxJournal && !journal_.contains(hash)) {
    resync_ = true;
    journal_.clear();
    return;
  }
  journal_[hash] = kept;
}

PrefixCache::Events PrefixCache::TakeEvents() {
  Events out;
  if (resync_) {
    resync_ = false;
    out.reset = true;
    out.added.reserve(entries_.size());
    for (const auto& [hash, entry] : entries_) out.added.push_back(hash);
  } else {
    for (const auto& [hash, kept] : journal_) (kept ? out.added : out.removed).push_back(hash);
  }
  journal_.clear();
  return out;
}

void PrefixCache::Touch(uint64_t hash, Entry& entry) {
  lru_.erase(entry.last_use);
  entry.last_use = ++clock_;
  lru_[entry.last_use] = hash;
}

int64_t PrefixCache::Attach(SequenceKv& seq, std::span<const int32_t> tokens, uint64_t salt,
                            int64_t max_tokens, Chain& chain) {
  chain = Chain{.salt = salt};
  if (!Shares(seq.policy()) || seq.n_tokens() != 0) return 0;
  const int32_t n = block_tokens();
  const int64_t most = std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size())) / n;
  const std::string spec = seq.policy().spec();
  std::vector<Entry*> hit;
  for (int64_t b = 0; b < most; ++b) {
    ExtendChain(tokens, spec, chain.salt, n, b + 1, chain.hashes);
    auto it = entries_.find(chain.hashes.back());
    if (it == entries_.end()) {
      chain.hashes.pop_back();
      break;
    }
    Touch(it->first, it->second);
    hit.push_back(&it->second);
  }
  if (hit.empty()) return 0;
  const KvGeometry& g = cache_.geometry();
  for (const Entry* e : hit) {
    size_t i = 0;
    for (int32_t l = 0; l < g.n_layer; ++l) {
      for (int32_t h = 0; h < g.n_head_kv; ++h) {
        for (HeadTable* t : {&seq.k(l, h), &seq.v(l, h)}) {
          cache_.pool().Ref(e->pages[i]);
          t->pages.push_back(e->pages[i++]);
        }
      }
    }
  }
  const int64_t held = static_cast<int64_t>(hit.size()) * n;
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      seq.k(l, h).length = seq.v(l, h).length = static_cast<int32_t>(held);
    }
  }
  seq.set_n_tokens(held);
  return held;
}

bool PrefixCache::Keep(uint64_t hash, const SequenceKv& seq, int64_t block) {
  auto [it, added] = entries_.try_emplace(hash);
  if (!added) {
    Touch(hash, it->second);
    return false;
  }
  const KvGeometry& g = cache_.geometry();
  Entry& e = it->second;
  e.pages.reserve(size_t{2} * g.n_layer * g.n_head_kv);
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      for (const HeadTable* t : {&seq.k(l, h), &seq.v(l, h)}) {
        const int32_t page = t->pages[block];
        cache_.pool().Ref(page);
        e.pages.push_back(page);
      }
    }
  }
  Touch(hash, e);
  Journal(hash, true);
  return true;
}

std::vector<int64_t> PrefixCache::Insert(const SequenceKv& seq, std::span<const int32_t> tokens,
                                         int64_t n_tokens, Chain& chain) {
  std::vector<int64_t> kept;
  if (!Shares(seq.policy())) return kept;
  const int32_t n = block_tokens();
  const int64_t blocks =
      std::min<int64_t>({n_tokens, seq.n_tokens(), static_cast<int64_t>(tokens.size())}) / n;
  const size_t known = chain.hashes.size();
  ExtendChain(tokens, seq.policy().spec(), chain.salt, n, blocks, chain.hashes);
  for (int64_t b = static_cast<int64_t>(known); b < blocks; ++b) {
    if (Keep(chain.hashes[b], seq, b)) kept.push_back(b);
  }
  return kept;
}

int64_t PrefixCache::CachedRun(std::span<const uint64_t> hashes) const {
  int64_t run = 0;
  while (run < static_cast<int64_t>(hashes.size()) && entries_.contains(hashes[run])) ++run;
  return run;
}

absl::StatusOr<std::vector<std::string>> PrefixCache::EncodeBlock(
    uint64_t hash, std::shared_ptr<const KvPolicy> policy, SnapshotInfo info) {
  auto it = entries_.find(hash);
  if (it == entries_.end()) return absl::NotFoundError("the block is not cached");
  const KvGeometry& g = cache_.geometry();
  SequenceKv& one = cache_.CreateSequence(std::move(policy));
  size_t i = 0;
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      for (HeadTable* t : {&one.k(l, h), &one.v(l, h)}) {
        cache_.pool().Ref(it->second.pages[i]);
        t->pages.push_back(it->second.pages[i++]);
        t->length = block_tokens();
      }
    }
  }
  one.set_n_tokens(block_tokens());
  info.prefix_hash = hash;
  info.n_tokens = -1;
  auto blocks = EncodeSequence(cache_, one, info);
  cache_.FreeSequence(one.id());
  return blocks;
}

absl::Status PrefixCache::AdoptBlock(uint64_t hash, std::span<const std::string> blocks,
                                     std::shared_ptr<const KvPolicy> policy,
                                     uint64_t model_fingerprint) {
  if (entries_.contains(hash)) return absl::OkStatus();
  if (blocks.empty()) return absl::InvalidArgumentError("no blocks");
  KVASIR_ASSIGN_OR_RETURN(const KvBlockHeader header, DecodeBlockHeader(blocks.front()));
  if (header.prefix_hash != hash || header.n_tokens != block_tokens()) {
    return absl::InvalidArgumentError("the snapshot is not the one of this block");
  }
  KVASIR_ASSIGN_OR_RETURN(SequenceKv * one,
                          DecodeSequence(cache_, blocks, std::move(policy), model_fingerprint));
  if (one->n_tokens() == block_tokens() && Shares(one->policy())) Keep(hash, *one, 0);
  const bool kept = entries_.contains(hash);
  cache_.FreeSequence(one->id());
  return kept ? absl::OkStatus()
              : absl::InvalidArgumentError("the snapshot is not the one of this block");
}

int64_t PrefixCache::UnusedPages() const {
  // A block's pages are taken and given back together (Attach, Insert, and a sequence that
  // frees its tables), so its first page's count stands for all of them.
  int64_t unused = 0;
  for (const auto& [hash, entry] : entries_) {
    if (cache_.pool().refcount(entry.pages[0]) == 1) {
      unused += static_cast<int64_t>(entry.pages.size());
    }
  }
  return unused;
}

int64_t PrefixCache::Evict(int64_t pages) {
  int64_t freed = 0;
  while (freed < pages && !lru_.empty()) {
    const uint64_t hash = lru_.begin()->second;
    lru_.erase(lru_.begin());
    auto it = entries_.find(hash);
    for (int32_t page : it->second.pages) {
      freed += cache_.pool().refcount(page) == 1 ? 1 : 0;
      cache_.pool().Unref(page);
    }
    entries_.erase(it);
    Journal(hash, false);
  }
  return freed;
}

}  // namespace kvasir::kvcache
