#include "kvcache/codec.h"

#include <algorithm>
#include <cstring>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "common/status_macros.h"

namespace kvasir::kvcache {
namespace {

// Little-endian writer and bounds-checked reader.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  template <typename T>
  void Put(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) {
      out_.push_back(static_cast<char>(static_cast<uint64_t>(v) >> (8 * i)));
    }
  }
  void Bytes(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }

 private:
  std::string& out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  template <typename T>
  bool Get(T* v) {
    if (in_.size() - pos_ < sizeof(T)) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      x |= static_cast<uint64_t>(static_cast<uint8_t>(in_[pos_ + i])) << (8 * i);
    }
    *v = static_cast<T>(x);
    pos_ += sizeof(T);
    return true;
  }
  bool Bytes(size_t n, std::string_view* out) {
    if (in_.size() - pos_ < n) return false;
    *out = in_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  size_t pos() const { return pos_; }
  size_t left() const { return in_.size() - pos_; }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

// Writes a byte stream across the payload parts of a list of blocks, each block starting with
// `header_bytes` of room for its header and holding at most `chunk` payload bytes.
class ChunkWriter {
 public:
  ChunkWriter(std::vector<std::string>& blocks, size_t header_bytes, uint64_t total, uint64_t chunk)
      : blocks_(blocks), header_bytes_(header_bytes), total_(total), chunk_(chunk) {}
  template <typename T>
  void Put(T v) {
    char bytes[sizeof(T)];
    for (size_t i = 0; i < sizeof(T); ++i) {
      bytes[i] = static_cast<char>(static_cast<uint64_t>(v) >> (8 * i));
    }
    Bytes(bytes, sizeof(T));
  }
  void Bytes(const void* p, size_t n) {
    const char* src = static_cast<const char*>(p);
    while (n > 0) {
      if (room_ == 0) NextBlock();
      const size_t take = std::min<size_t>(n, room_);
      blocks_.back().append(src, take);
      src += take;
      n -= take;
      room_ -= take;
    }
  }

 private:
  void NextBlock() {
    const uint64_t payload = std::min<uint64_t>(chunk_, total_ - written_);
    written_ += payload;
    blocks_.emplace_back();
    blocks_.back().reserve(header_bytes_ + payload);
    blocks_.back().append(header_bytes_, '\0');  // the header, written once the payload is
    room_ = payload;
  }
  std::vector<std::string>& blocks_;
  const size_t header_bytes_;
  const uint64_t total_, chunk_;
  uint64_t written_ = 0;  // payload bytes of the blocks started so far
  size_t room_ = 0;       // payload bytes the current block still takes
};

// Reads a byte stream across the payload parts of blocks given in chunk order.
class ChunkReader {
 public:
  explicit ChunkReader(std::vector<std::string_view> parts) : parts_(std::move(parts)) {
    for (std::string_view p : parts_) left_ += p.size();
  }
  template <typename T>
  bool Get(T* v) {
    unsigned char bytes[sizeof(T)];
    if (!Bytes(bytes, sizeof(T))) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) x |= static_cast<uint64_t>(bytes[i]) << (8 * i);
    *v = static_cast<T>(x);
    return true;
  }
  // Copies the next n bytes to `out`; false (nothing read) when fewer are left.
  bool Bytes(void* out, size_t n) {
    if (n > left_) return false;
    char* dst = static_cast<char*>(out);
    left_ -= n;
    while (n > 0) {
      while (pos_ == parts_[part_].size()) {
        ++part_;
        pos_ = 0;
      }
      const size_t take = std::min(n, parts_[part_].size() - pos_);
      std::memcpy(dst, parts_[part_].data() + pos_, take);
      dst += take;
      pos_ += take;
      n -= take;
    }
    return true;
  }
  uint64_t left() const { return left_; }

 private:
  std::vector<std::string_view> parts_;
  size_t part_ = 0, pos_ = 0;
  uint64_t left_ = 0;
};

// The snapshot payload: n_tokens, then for each layer in range and KV head in range, the K
// table (length, slots) and the V table (length, slots), then the policy state (length, bytes).
uint64_t PayloadBytes(const KvCache& cache, const SequenceKv& seq, int32_t l0, int32_t l1,
                      int32_t h0, int32_t h1, size_t state_bytes) {
  uint64_t n = sizeof(int64_t) + sizeof(uint64_t) + state_bytes;
  const size_t slot_bytes = cache.pool().slot_bytes();
  for (int32_t l = l0; l < l1; ++l) {
    for (int32_t h = h0; h < h1; ++h) {
      for (const HeadTable* t : {&seq.k(l, h), &seq.v(l, h)}) {
        n += sizeof(int32_t) + static_cast<uint64_t>(t->length) * slot_bytes;
      }
    }
  }
  return n;
}

void WritePayload(const KvCache& cache, const SequenceKv& seq, int64_t n_tokens, int32_t l0,
                  int32_t l1, int32_t h0, int32_t h1, const std::string& state, ChunkWriter& w) {
  w.Put<int64_t>(n_tokens);
  const size_t slot_bytes = cache.pool().slot_bytes();
  std::vector<uint8_t> staging;
  for (int32_t l = l0; l < l1; ++l) {
    for (int32_t h = h0; h < h1; ++h) {
      for (const HeadTable* t : {&seq.k(l, h), &seq.v(l, h)}) {
        w.Put<int32_t>(t->length);
        cache.ForEachPageRun(0, t->length, [&](int32_t s, int32_t n) {
          const size_t bytes = static_cast<size_t>(n) * slot_bytes;
          if (cache.pool().host_addressable()) {
            w.Bytes(cache.SlotPtr(*t, s), bytes);
            return;
          }
          // Pages in GPU memory: staged through host memory, one page run at a time.
          staging.resize(std::max(staging.size(), bytes));
          cache.pool().backend()->Download(staging.data(), cache.SlotPtr(*t, s), bytes);
          w.Bytes(staging.data(), bytes);
        });
      }
    }
  }
  w.Put<uint64_t>(state.size());
  w.Bytes(state.data(), state.size());
}

std::string EncodeHeader(const KvBlockHeader& h) {
  std::string out;
  Writer w(out);
  w.Put<uint32_t>(kKvBlockMagic);
  w.Put<uint16_t>(h.layout_version);
  w.Put<uint64_t>(h.model_fingerprint);
  w.Put<uint64_t>(h.prefix_hash);
  w.Put<int64_t>(h.n_tokens);
  for (int32_t v :
       {h.n_layer, h.n_head_kv, h.head_dim, h.layer_begin, h.layer_end, h.head_begin, h.head_end}) {
    w.Put<int32_t>(v);
  }
  w.Put<uint32_t>(static_cast<uint32_t>(h.dtype));
  w.Put<uint16_t>(static_cast<uint16_t>(h.policy_spec.size()));
  w.Bytes(h.policy_spec.data(), h.policy_spec.size());
  w.Put<uint32_t>(h.chunk_index);
  w.Put<uint32_t>(h.chunk_count);
  w.Put<uint64_t>(h.payload_offset);
  w.Put<uint64_t>(h.payload_bytes);
  w.Put<uint64_t>(h.snapshot_bytes);
  w.Put<uint64_t>(h.payload_xxh3);
  w.Put<uint64_t>(Xxh3(out.data(), out.size()));
  return out;
}

// The policy state a part carries: the state split by KV heads (KvPolicy::SaveSplitState), with
// the records of the part's heads [h0, h1) of the cache, every layer's:
//   u32 kSplitStateMagic, u32 shared bytes, shared, then per layer, per head: u32 bytes, record
// Empty for a policy without state.
constexpr uint32_t kSplitStateMagic = 0x5353564B;  // "KVSS" little-endian

absl::Status EncodeState(const SequenceKv& seq, const KvGeometry& g, int32_t h0, int32_t h1,
                         std::string& out) {
  out.clear();
  std::string shared;
  std::vector<std::string> heads;
  KVASIR_RETURN_IF_ERROR(seq.policy().SaveSplitState(seq, shared, heads));
  if (shared.empty() && heads.empty()) return absl::OkStatus();
  if (heads.size() != static_cast<size_t>(g.n_layer) * g.n_head_kv) {
    return absl::InternalError(absl::StrCat("KV policy '", seq.policy().spec(), "' saved ",
                                            heads.size(), " head states for a cache of ",
                                            g.n_layer * g.n_head_kv));
  }
  Writer w(out);
  w.Put<uint32_t>(kSplitStateMagic);
  w.Put<uint32_t>(static_cast<uint32_t>(shared.size()));
  w.Bytes(shared.data(), shared.size());
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = h0; h < h1; ++h) {
      const std::string& record = heads[static_cast<size_t>(l) * g.n_head_kv + h];
      w.Put<uint32_t>(static_cast<uint32_t>(record.size()));
      w.Bytes(record.data(), record.size());
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> EncodeSequence(const KvCache& cache, const SequenceKv& seq,
                                                        const SnapshotInfo& info) {
  const KvGeometry& g = cache.geometry();
  const int32_t l0 = info.layer_begin, l1 = info.layer_end < 0 ? g.n_layer : info.layer_end;
  const int32_t h0 = info.head_begin, h1 = info.head_end < 0 ? g.n_head_kv : info.head_end;
  if (l0 < 0 || l0 >= l1 || l1 > g.n_layer || h0 < 0 || h0 >= h1 || h1 > g.n_head_kv) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad layer range [", l0, ", ", l1, ") or head range [", h0, ", ", h1, ")"));
  }
  if (info.max_block_bytes <= 0) return absl::InvalidArgumentError("max block bytes must be > 0");
  const std::string spec = seq.policy().spec();
  if (spec.size() > 65535) return absl::InvalidArgumentError("policy spec too long");
  const int64_t n_tokens = info.n_tokens < 0 ? seq.n_tokens() : info.n_tokens;
  const int32_t total = info.total_heads < 0 ? g.n_head_kv : info.total_heads;
  if (info.head_offset < 0 || info.head_offset + g.n_head_kv > total) {
    return absl::InvalidArgumentError(absl::StrCat("the cache's heads at ", info.head_offset,
                                                   " do not fit in ", total, " KV heads"));
  }
  // A part that ends the layer range carries the policy state of its KV heads (of every layer);
  // the state is whole only between steps.
  const bool with_state = l1 == g.n_layer;
  if (with_state && n_tokens != seq.n_tokens()) {
    return absl::FailedPreconditionError(
        "a KV snapshot part with the policy state can only be taken between steps");
  }
  std::string state;
  if (with_state) KVASIR_RETURN_IF_ERROR(EncodeState(seq, g, h0, h1, state));
  const uint64_t payload_bytes = PayloadBytes(cache, seq, l0, l1, h0, h1, state.size());

  KvBlockHeader h;
  h.layout_version = kKvLayoutVersion;
  h.model_fingerprint = info.model_fingerprint;
  h.prefix_hash = info.prefix_hash;
  h.n_tokens = n_tokens;
  h.n_layer = g.n_layer;
  h.n_head_kv = total;
  h.head_dim = g.head_dim;
  h.layer_begin = l0;
  h.layer_end = l1;
  h.head_begin = info.head_offset + h0;
  h.head_end = info.head_offset + h1;
  h.dtype = cache.pool().dtype();
  h.policy_spec = spec;
  h.snapshot_bytes = payload_bytes;
  const uint64_t chunk = static_cast<uint64_t>(info.max_block_bytes);
  h.chunk_count = static_cast<uint32_t>(std::max<uint64_t>(1, (payload_bytes + chunk - 1) / chunk));
  // The payload goes straight into the blocks, after room for each header (its size does not
  // depend on the values), then each header is written with its chunk's checksum.
  const size_t header_bytes = EncodeHeader(h).size();
  std::vector<std::string> blocks;
  blocks.reserve(h.chunk_count);
  ChunkWriter w(blocks, header_bytes, payload_bytes, chunk);
  WritePayload(cache, seq, n_tokens, l0, l1, h0, h1, state, w);
  if (blocks.size() != h.chunk_count) {
    return absl::InternalError("KV snapshot: the payload did not fill its blocks as computed");
  }
  for (uint32_t i = 0; i < h.chunk_count; ++i) {
    std::string& block = blocks[i];
    h.chunk_index = i;
    h.payload_offset = i * chunk;
    h.payload_bytes = block.size() - header_bytes;
    h.payload_xxh3 = Xxh3(block.data() + header_bytes, h.payload_bytes);
    const std::string header = EncodeHeader(h);
    std::memcpy(block.data(), header.data(), header_bytes);
  }
  return blocks;
}

absl::StatusOr<KvBlockHeader> DecodeBlockHeader(std::string_view block) {
  Reader r(block);
  KvBlockHeader h;
  uint32_t magic = 0;
  auto truncated = [] { return absl::InvalidArgumentError("KV block truncated in its header"); };
  if (!r.Get(&magic)) return truncated();
  if (magic != kKvBlockMagic)
    return absl::InvalidArgumentError("not a Kvasir KV block (bad magic)");
  if (!r.Get(&h.layout_version)) return truncated();
  if (h.layout_version != kKvLayoutVersion) {
    return absl::InvalidArgumentError(absl::StrCat("KV block layout version ", h.layout_version,
                                                   ", this build reads ", kKvLayoutVersion));
  }
  uint32_t dtype = 0;
  uint16_t spec_len = 0;
  std::string_view spec;
  if (!r.Get(&h.model_fingerprint) || !r.Get(&h.prefix_hash) || !r.Get(&h.n_tokens) ||
      !r.Get(&h.n_layer) || !r.Get(&h.n_head_kv) || !r.Get(&h.head_dim) || !r.Get(&h.layer_begin) ||
      !r.Get(&h.layer_end) || !r.Get(&h.head_begin) || !r.Get(&h.head_end) || !r.Get(&dtype) ||
      !r.Get(&spec_len) || !r.Bytes(spec_len, &spec) || !r.Get(&h.chunk_index) ||
      !r.Get(&h.chunk_count) || !r.Get(&h.payload_offset) || !r.Get(&h.payload_bytes) ||
      !r.Get(&h.snapshot_bytes) || !r.Get(&h.payload_xxh3)) {
    return truncated();
  }
  const size_t checked = r.pos();
  uint64_t header_xxh3 = 0;
  if (!r.Get(&header_xxh3)) return truncated();
  if (header_xxh3 != Xxh3(block.data(), checked)) {
    return absl::DataLossError("KV block header checksum mismatch (corrupted block)");
  }
  h.policy_spec = std::string(spec);
  h.dtype = static_cast<DType>(dtype);
  h.header_bytes = r.pos();
  if (r.left() != h.payload_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV block carries ", r.left(), " payload bytes, its header says ", h.payload_bytes));
  }
  if (h.chunk_count == 0 || h.chunk_index >= h.chunk_count || h.payload_offset > h.snapshot_bytes ||
      h.payload_bytes > h.snapshot_bytes - h.payload_offset) {
    return absl::InvalidArgumentError("KV block header is inconsistent");
  }
  return h;
}

namespace {

// The blocks of one part of a snapshot (a layer range), verified: the chunks tile its payload
// with no gap or overlap, and every payload checksum holds. `parts` gets the payloads in chunk
// order.
absl::Status VerifyPart(std::span<const std::string> blocks, std::span<const KvBlockHeader> headers,
                        std::span<const size_t> members, std::vector<std::string_view>& parts) {
  const KvBlockHeader& first = headers[members[0]];
  if (members.size() != first.chunk_count) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV snapshot part of layers [", first.layer_begin, ", ", first.layer_end,
                     ") has ", first.chunk_count, " blocks, got ", members.size()));
  }
  // A header's snapshot size is only a claim: check the tiling before anything is allocated.
  std::vector<const KvBlockHeader*> by_chunk(first.chunk_count, nullptr);
  for (size_t i : members) {
    const KvBlockHeader& h = headers[i];
    if (h.snapshot_bytes != first.snapshot_bytes || h.chunk_count != first.chunk_count ||
        by_chunk[h.chunk_index] != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV block ", i, " belongs to another snapshot or repeats a chunk"));
    }
    by_chunk[h.chunk_index] = &h;
  }
  uint64_t covered = 0;
  for (const KvBlockHeader* h : by_chunk) {
    if (h->payload_offset != covered) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV snapshot chunk ", h->chunk_index, " starts at byte ", h->payload_offset,
                       " of the snapshot, not at ", covered, " where the chunk before it ends"));
    }
    covered += h->payload_bytes;
  }
  if (covered != first.snapshot_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("KV snapshot chunks hold ", covered,
                                                   " payload bytes, the headers say ",
                                                   first.snapshot_bytes));
  }
  parts.assign(first.chunk_count, std::string_view());
  for (size_t i : members) {
    const KvBlockHeader& h = headers[i];
    const std::string_view data(blocks[i].data() + h.header_bytes, h.payload_bytes);
    if (Xxh3(data.data(), data.size()) != h.payload_xxh3) {
      return absl::DataLossError(absl::StrCat("KV block ", i, " (chunk ", h.chunk_index, " of ",
                                              h.chunk_count,
                                              "): payload checksum mismatch (corrupted block)"));
    }
    parts[h.chunk_index] = data;
  }
  return absl::OkStatus();
}

// Reads one part's payload into the tables of its layers and of the model's KV heads the cache
// holds ([head_offset, head_offset + n_head_kv); the part's other heads are skipped); `state`
// gets its policy state.
absl::Status ReadPart(KvCache& cache, SequenceKv& seq, const KvBlockHeader& header,
                      std::vector<std::string_view> payload, int32_t head_offset,
                      std::string& state) {
  ChunkReader r(std::move(payload));
  int64_t n_tokens = 0;
  if (!r.Get(&n_tokens) || n_tokens != header.n_tokens || n_tokens < 0) {
    return absl::InvalidArgumentError("KV snapshot: bad token count");
  }
  const size_t slot_bytes = cache.pool().slot_bytes();
  const int32_t held = cache.geometry().n_head_kv;
  std::vector<char> skip;
  for (int32_t l = header.layer_begin; l < header.layer_end; ++l) {
    for (int32_t h = header.head_begin; h < header.head_end; ++h) {
      const int32_t local = h - head_offset;
      for (int kv = 0; kv < 2; ++kv) {
        int32_t length = 0;
        if (!r.Get(&length) || length < 0 ||
            static_cast<uint64_t>(length) * slot_bytes > r.left()) {
          return absl::InvalidArgumentError("KV snapshot: bad table length");
        }
        if (local < 0 || local >= held) {  // another rank's head
          skip.resize(std::max(skip.size(), static_cast<size_t>(length) * slot_bytes));
          r.Bytes(skip.data(), static_cast<size_t>(length) * slot_bytes);
          continue;
        }
        HeadTable* t = kv == 0 ? &seq.k(l, local) : &seq.v(l, local);
        KVASIR_RETURN_IF_ERROR(cache.Reserve(*t, length, 0));
        t->length = length;
        // The length was checked against what is left, so every read succeeds.
        cache.ForEachPageRun(0, length, [&](int32_t s, int32_t n) {
          const size_t bytes = static_cast<size_t>(n) * slot_bytes;
          if (cache.pool().host_addressable()) {
            r.Bytes(cache.SlotPtr(*t, s), bytes);
            return;
          }
          // Pages in GPU memory: staged through host memory, one page run at a time.
          skip.resize(std::max(skip.size(), bytes));
          r.Bytes(skip.data(), bytes);
          cache.pool().backend()->Upload(cache.SlotPtr(*t, s), skip.data(), bytes);
        });
      }
    }
  }
  uint64_t state_len = 0;
  if (!r.Get(&state_len) || state_len != r.left()) {
    return absl::InvalidArgumentError("KV snapshot: bad policy state length");
  }
  state.resize(state_len);
  r.Bytes(state.data(), state_len);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SequenceKv*> DecodeSequence(KvCache& cache, std::span<const std::string> blocks,
                                           std::shared_ptr<const KvPolicy> policy,
                                           uint64_t model_fingerprint, int32_t head_offset) {
  if (blocks.empty()) return absl::InvalidArgumentError("no KV blocks");
  std::vector<KvBlockHeader> headers;
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto h = DecodeBlockHeader(blocks[i]);
    if (!h.ok()) return Annotate(h.status(), absl::StrCat("KV block ", i));
    headers.push_back(*h);
  }
  const KvBlockHeader& first = headers[0];
  const KvGeometry& g = cache.geometry();
  if (first.model_fingerprint != model_fingerprint) {
    return absl::InvalidArgumentError("KV blocks belong to another model (fingerprint mismatch)");
  }
  if (first.policy_spec != policy->spec()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV blocks were written by policy '", first.policy_spec, "', not '", policy->spec(), "'"));
  }
  // The blocks name the model's KV heads; this cache holds [head_offset, head_end).
  const int32_t head_end = head_offset + g.n_head_kv;
  if (first.n_layer != g.n_layer || head_offset < 0 || head_end > first.n_head_kv ||
      first.head_dim != g.head_dim || first.dtype != cache.pool().dtype()) {
    return absl::InvalidArgumentError("KV blocks have another cache geometry or element type");
  }
  // Every block of one snapshot; grouped into parts by their layer and head ranges.
  std::vector<std::vector<size_t>> by_part;  // block indices
  for (size_t i = 0; i < blocks.size(); ++i) {
    const KvBlockHeader& h = headers[i];
    if (h.model_fingerprint != first.model_fingerprint || h.prefix_hash != first.prefix_hash ||
        h.n_tokens != first.n_tokens || h.policy_spec != first.policy_spec ||
        h.n_layer != first.n_layer || h.n_head_kv != first.n_head_kv ||
        h.head_dim != first.head_dim || h.dtype != first.dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV block ", i, " belongs to another snapshot"));
    }
    if (h.layer_begin < 0 || h.layer_end <= h.layer_begin || h.layer_end > g.n_layer ||
        h.head_begin < 0 || h.head_end <= h.head_begin || h.head_end > first.n_head_kv) {
      return absl::InvalidArgumentError(absl::StrCat("KV block ", i, " has a bad range"));
    }
    auto part = std::find_if(by_part.begin(), by_part.end(), [&](const std::vector<size_t>& p) {
      const KvBlockHeader& o = headers[p[0]];
      return o.layer_begin == h.layer_begin && o.layer_end == h.layer_end &&
             o.head_begin == h.head_begin && o.head_end == h.head_end;
    });
    if (part == by_part.end()) {
      by_part.push_back({i});
    } else {
      part->push_back(i);
    }
  }
  // Each layer of each head this cache holds is in exactly one part; parts outside it are not
  // read.
  std::vector<int32_t> cover(static_cast<size_t>(g.n_layer) * g.n_head_kv, 0);
  std::vector<size_t> used;  // indices into by_part, in layer order
  for (size_t p = 0; p < by_part.size(); ++p) {
    const KvBlockHeader& h = headers[by_part[p][0]];
    if (h.head_end <= head_offset || h.head_begin >= head_end) continue;
    used.push_back(p);
    for (int32_t l = h.layer_begin; l < h.layer_end; ++l) {
      for (int32_t k = std::max(h.head_begin, head_offset); k < std::min(h.head_end, head_end);
           ++k) {
        ++cover[static_cast<size_t>(l) * g.n_head_kv + (k - head_offset)];
      }
    }
  }
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t k = 0; k < g.n_head_kv; ++k) {
      const int32_t n = cover[static_cast<size_t>(l) * g.n_head_kv + k];
      if (n == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "KV snapshot lacks layer ", l, " of KV head ", head_offset + k, " (parts missing)"));
      }
      if (n > 1) {
        return absl::InvalidArgumentError(absl::StrCat("KV snapshot parts overlap in layer ", l,
                                                       " of KV head ", head_offset + k));
      }
    }
  }
  std::sort(used.begin(), used.end(), [&](size_t a, size_t b) {
    const KvBlockHeader& x = headers[by_part[a][0]];
    const KvBlockHeader& y = headers[by_part[b][0]];
    return std::tie(x.layer_begin, x.head_begin) < std::tie(y.layer_begin, y.head_begin);
  });
  // Check every chunk of every part read before anything is allocated.
  std::vector<std::vector<std::string_view>> payloads(used.size());
  for (size_t u = 0; u < used.size(); ++u) {
    KVASIR_RETURN_IF_ERROR(VerifyPart(blocks, headers, by_part[used[u]], payloads[u]));
  }

  // Parse into a new sequence; free it on any error.
  SequenceKv& seq = cache.CreateSequence(std::move(policy));
  auto fail = [&](absl::Status s) {
    cache.FreeSequence(seq.id());
    return s;
  };
  // The policy state: the shared part (the same in every part that has one) and a record per
  // (layer, KV head) of this cache, from the parts that end the layer range.
  std::vector<std::string> states(used.size());
  std::string_view shared;
  bool any_state = false;
  std::vector<std::string_view> records(static_cast<size_t>(g.n_layer) * g.n_head_kv);
  std::vector<int32_t> have(records.size(), 0);
  for (size_t u = 0; u < used.size(); ++u) {
    const KvBlockHeader& h = headers[by_part[used[u]][0]];
    if (absl::Status s = ReadPart(cache, seq, h, std::move(payloads[u]), head_offset, states[u]);
        !s.ok()) {
      return fail(s);
    }
    if (states[u].empty()) continue;
    if (h.layer_end != g.n_layer) {
      return fail(absl::InvalidArgumentError(
          "KV snapshot: a part that does not end the layers carries policy state"));
    }
    Reader r(states[u]);
    uint32_t magic = 0, shared_bytes = 0;
    std::string_view part_shared;
    if (!r.Get(&magic) || magic != kSplitStateMagic || !r.Get(&shared_bytes) ||
        !r.Bytes(shared_bytes, &part_shared) || (any_state && part_shared != shared)) {
      return fail(absl::InvalidArgumentError("KV snapshot: bad or disagreeing policy state"));
    }
    shared = part_shared;
    any_state = true;
    for (int32_t l = 0; l < g.n_layer; ++l) {
      for (int32_t k = h.head_begin; k < h.head_end; ++k) {
        uint32_t n = 0;
        std::string_view record;
        if (!r.Get(&n) || !r.Bytes(n, &record)) {
          return fail(absl::InvalidArgumentError("KV snapshot: truncated policy state"));
        }
        if (k < head_offset || k >= head_end) continue;  // another rank's head
        const size_t at = static_cast<size_t>(l) * g.n_head_kv + (k - head_offset);
        records[at] = record;
        ++have[at];
      }
    }
    if (r.left() != 0) {
      return fail(absl::InvalidArgumentError("KV snapshot: trailing bytes in the policy state"));
    }
  }
  if (any_state && std::any_of(have.begin(), have.end(), [](int32_t n) { return n != 1; })) {
    return fail(
        absl::InvalidArgumentError("KV snapshot: the policy state of some KV heads is missing"));
  }
  seq.set_n_tokens(first.n_tokens);
  const absl::Status loaded = any_state
                                  ? seq.policy().LoadSplitState(shared, records, g.n_head_kv, seq)
                                  : seq.policy().LoadState("", seq);
  if (!loaded.ok()) return fail(Annotate(loaded, "KV snapshot policy state"));
  return &seq;
}

}  // namespace kvasir::kvcache
