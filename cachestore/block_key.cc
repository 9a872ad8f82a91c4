// Block keys (see block_key.h).
#include "cachestore/block_key.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace kvasir::cachestore {
namespace {

constexpr size_t kMaxPolicySpecBytes = 65535;  // the codec stores its length in 16 bits

template <typename T>
void AppendLe(std::string& out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) {
    out.push_back(static_cast<char>(static_cast<uint64_t>(v) >> (8 * i)));
  }
}

}  // namespace

uint64_t BlockKey::Digest() const {
  std::string canonical = "kvasir-cachestore-key-v1";
  AppendLe<uint64_t>(canonical, space.model_fingerprint);
  AppendLe<uint32_t>(canonical, space.layout_version);
  for (int32_t v : {space.layer_begin, space.layer_end, space.head_begin, space.head_end}) {
    AppendLe<int32_t>(canonical, v);
  }
  AppendLe<uint64_t>(canonical, prefix_hash);
  AppendLe<uint32_t>(canonical, chunk_index);
  AppendLe<uint32_t>(canonical, static_cast<uint32_t>(space.policy_spec.size()));
  canonical += space.policy_spec;
  return Xxh3(canonical);
}

std::string BlockKey::ToString() const {
  return absl::StrFormat(
      "fp=%016x,spec=%s,layout=%d,layers=[%d,%d),heads=[%d,%d),prefix=%016x,chunk=%d",
      space.model_fingerprint, space.policy_spec, space.layout_version, space.layer_begin,
      space.layer_end, space.head_begin, space.head_end, prefix_hash, chunk_index);
}

KeySpace KeySpaceFromHeader(const kvcache::KvBlockHeader& header) {
  KeySpace s;
  s.model_fingerprint = header.model_fingerprint;
  s.policy_spec = header.policy_spec;
  s.layout_version = header.layout_version;
  s.layer_begin = header.layer_begin;
  s.layer_end = header.layer_end;
  s.head_begin = header.head_begin;
  s.head_end = header.head_end;
  return s;
}

BlockKey KeyFromHeader(const kvcache::KvBlockHeader& header) {
  return BlockKey{KeySpaceFromHeader(header), header.prefix_hash, header.chunk_index};
}

absl::StatusOr<std::pair<BlockKey, kvcache::KvBlockHeader>> ParseBlock(std::string_view block) {
  KVASIR_ASSIGN_OR_RETURN(kvcache::KvBlockHeader header, kvcache::DecodeBlockHeader(block));
  return std::make_pair(KeyFromHeader(header), std::move(header));
}

absl::StatusOr<std::pair<BlockKey, kvcache::KvBlockHeader>> VerifyBlock(std::string_view block) {
  KVASIR_ASSIGN_OR_RETURN(auto parsed, ParseBlock(block));
  const kvcache::KvBlockHeader& h = parsed.second;
  const std::string_view payload = block.substr(h.header_bytes);
  if (payload.size() != h.payload_bytes) {  // DecodeBlockHeader checks it too
    return absl::InvalidArgumentError("KV block payload size differs from its header");
  }
  if (Xxh3(payload) != h.payload_xxh3) {
    return absl::DataLossError(absl::StrCat("KV block ", parsed.first.ToString(),
                                            ": payload checksum mismatch (corrupted block)"));
  }
  return parsed;
}

void ToProto(const KeySpace& space, KeySpaceProto* out) {
  out->set_model_fingerprint(space.model_fingerprint);
  out->set_policy_spec(space.policy_spec);
  out->set_layout_version(space.layout_version);
  out->set_layer_begin(space.layer_begin);
  out->set_layer_end(space.layer_end);
  out->set_head_begin(space.head_begin);
  out->set_head_end(space.head_end);
}

void ToProto(const BlockKey& key, BlockKeyProto* out) {
  ToProto(key.space, out->mutable_space());
  out->set_prefix_hash(key.prefix_hash);
  out->set_chunk_index(key.chunk_index);
}

absl::StatusOr<KeySpace> FromProto(const KeySpaceProto& proto) {
  if (proto.policy_spec().size() > kMaxPolicySpecBytes) {
    return absl::InvalidArgumentError("policy spec longer than 65535 bytes");
  }
  KeySpace s;
  s.model_fingerprint = proto.model_fingerprint();
  s.policy_spec = proto.policy_spec();
  s.layout_version = proto.layout_version();
  s.layer_begin = proto.layer_begin();
  s.layer_end = proto.layer_end();
  s.head_begin = proto.head_begin();
  s.head_end = proto.head_end();
  if (s.layer_begin < 0 || s.layer_begin >= s.layer_end || s.head_begin < 0 ||
      s.head_begin >= s.head_end) {
    return absl::InvalidArgumentError(absl::StrCat("bad key space: layers [", s.layer_begin, ", ",
                                                   s.layer_end, "), heads [", s.head_begin, ", ",
                                                   s.head_end, ")"));
  }
  return s;
}

absl::StatusOr<BlockKey> FromProto(const BlockKeyProto& proto) {
  KVASIR_ASSIGN_OR_RETURN(KeySpace space, FromProto(proto.space()));
  return BlockKey{std::move(space), proto.prefix_hash(), proto.chunk_index()};
}

}  // namespace kvasir::cachestore
