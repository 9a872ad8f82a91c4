// Fuzz target for the KV block codec's decode path (kvcache/codec.h): DecodeBlockHeader on every
// block, then DecodeSequence into a small cache under one of the policies, which also feeds the
// policy's LoadState. Input: byte 0 picks the policy, byte 1 holds flags, the rest is one or more
// blocks, each starting with the block magic "KVKB" (a new block starts at every later "KVKB").
// With flag bit 0 the target rewrites each block's payload size and both checksums to match its
// bytes, so that mutations get past the checksums into the header checks, the payload parser and
// LoadState. A sequence that decodes must encode again and decode to the same token count, and
// nothing may stay allocated after a refusal.
// Seeds (fuzz_seeds/kv_codec): snapshots of the codec's own encoding under each policy; the
// target writes them itself when KVASIR_FUZZ_WRITE_SEEDS names a folder (then it exits):
//   KVASIR_FUZZ_WRITE_SEEDS=tests/kvcache/fuzz_seeds/kv_codec build/fuzz/kv_codec_fuzz
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/codec.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"
#include "tests/testing/fuzz_util.h"
#include "tests/testing/kv_block_fixup.h"

namespace {

using namespace kvasir::kvcache;  // NOLINT

constexpr std::string_view kMagic = "KVKB";
constexpr uint64_t kFingerprint = 0x1234;
// The policies a snapshot may name (their specs must be canonical: the header must match).
constexpr const char* kSpecs[] = {"full",
                                  "streaming:sink=1,window=4",
                                  "h2o:budget=4,recent=1",
                                  "dmc:mode=free,ratio=2,recent=2,window=2,sink=1",
                                  "lococo:slots=4,chunk=2",
                                  "pod:sink=1,window=2,group_size=2"};

KvGeometry Geometry() {
  KvGeometry g;
  g.n_layer = 2;
  g.n_head = 2;
  g.n_head_kv = 1;
  g.head_dim = 4;
  g.n_rot = 4;
  return g;
}

// Encodes a sequence of `slots` slots per table under each policy and writes the input that
// carries it (a whole snapshot, and for "full" one cut into small blocks).
bool WriteSeeds(const std::string& dir) {
  const KvGeometry g = Geometry();
  for (size_t p = 0; p < std::size(kSpecs); ++p) {
    std::shared_ptr<const KvPolicy> policy = *ParsePolicy(kSpecs[p], g);
    KvCacheOptions options;
    options.page_size = 4;
    options.capacity_bytes = 64 << 10;
    std::unique_ptr<KvCache> cache = *KvCache::Create(g, options);
    for (int32_t slots : {3, 1, 0}) {
      SequenceKv& seq = cache->CreateSequence(policy);
      float value = 0.25f;
      for (int32_t l = 0; l < g.n_layer; ++l) {
        for (HeadTable* t : {&seq.k(l, 0), &seq.v(l, 0)}) {
          if (!cache->Reserve(*t, slots, 0).ok()) return false;
          t->length = slots;
          for (int32_t s = 0; s < slots; ++s) {
            const float v[4] = {value, -value, 2 * value, 0.5f};
            cache->WriteSlot(*t, s, v);
            value += 0.25f;
          }
        }
      }
      seq.set_n_tokens(slots);
      SnapshotInfo info;
      info.model_fingerprint = kFingerprint;
      info.prefix_hash = 0xabc;
      info.max_block_bytes = p == 0 ? 120 : 4 << 20;
      absl::StatusOr<std::vector<std::string>> blocks = EncodeSequence(*cache, seq, info);
      cache->FreeSequence(seq.id());
      if (!blocks.ok()) continue;
      absl::StatusOr<SequenceKv*> back = DecodeSequence(*cache, *blocks, policy, kFingerprint);
      if (!back.ok()) continue;  // this policy's state refuses such tables: try fewer slots
      cache->FreeSequence((*back)->id());
      std::string input = {static_cast<char>(p), 0};
      for (const std::string& b : *blocks) input += b;
      std::string name = kSpecs[p];
      name = name.substr(0, name.find(':')) + ".bin";
      std::ofstream(dir + "/" + name, std::ios::binary) << input;
      std::printf("%s: %zu blocks, %d slots per table\n", name.c_str(), blocks->size(), slots);
      break;
    }
  }
  return true;
}

const bool kSeedsWritten = kvasir::testing::WriteSeedsIfAsked(WriteSeeds);

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const KvGeometry g = Geometry();
  const char* spec = kSpecs[data[0] % std::size(kSpecs)];
  const bool fix = (data[1] & 1) != 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 2, size - 2);

  std::vector<std::string> blocks;
  size_t begin = 0;
  while (begin <= bytes.size() && blocks.size() < 64) {
    size_t next = bytes.find(kMagic, begin + 1);
    if (next == std::string_view::npos) next = bytes.size();
    blocks.emplace_back(bytes.substr(begin, next - begin));
    if (next == bytes.size()) break;
    begin = next;
  }
  for (std::string& b : blocks) {
    if (fix) kvasir::testing::FixKvBlockChecksums(b);
    (void)DecodeBlockHeader(b);
  }

  absl::StatusOr<std::shared_ptr<const KvPolicy>> policy = ParsePolicy(spec, g);
  if (!policy.ok()) __builtin_trap();  // the fixed specs are valid
  KvCacheOptions options;
  options.page_size = 4;
  options.capacity_bytes = 64 << 10;
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(g, options);
  if (!cache.ok()) __builtin_trap();
  absl::StatusOr<SequenceKv*> seq = DecodeSequence(**cache, blocks, *policy, kFingerprint);
  if (!seq.ok()) {
    // A refusal leaves nothing behind.
    if ((*cache)->num_sequences() != 0 || (*cache)->pool().pages_used() != 0) __builtin_trap();
    return 0;
  }
  // What decoded encodes again (whole, in small blocks) and decodes to the same sequence.
  SnapshotInfo info;
  info.model_fingerprint = kFingerprint;
  info.max_block_bytes = 97;
  absl::StatusOr<std::vector<std::string>> again = EncodeSequence(**cache, **seq, info);
  if (!again.ok()) __builtin_trap();
  absl::StatusOr<SequenceKv*> copy = DecodeSequence(**cache, *again, *policy, kFingerprint);
  if (!copy.ok() && copy.status().code() != absl::StatusCode::kResourceExhausted) __builtin_trap();
  if (copy.ok()) {
    if ((*copy)->n_tokens() != (*seq)->n_tokens()) __builtin_trap();
    (*cache)->FreeSequence((*copy)->id());
  }
  (*cache)->FreeSequence((*seq)->id());
  if ((*cache)->pool().pages_used() != 0) __builtin_trap();
  return 0;
}
