// The cachestore's RPC surface shared by the service and the client: method names, the handshake
// both sides present, and per-item status conversion for batched calls. Messages are in
// cachestore.proto.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "cachestore/cachestore.pb.h"
#include "transport/rpc/handshake.h"

namespace kvasir::cachestore {

inline constexpr char kHelloMethod[] = "cachestore.Hello";
inline constexpr char kLookupMethod[] = "cachestore.Lookup";
inline constexpr char kLookupRunMethod[] = "cachestore.LookupRun";
inline constexpr char kReserveMethod[] = "cachestore.Reserve";
inline constexpr char kWriteMethod[] = "cachestore.Write";
inline constexpr char kCommitMethod[] = "cachestore.Commit";
inline constexpr char kAbortMethod[] = "cachestore.Abort";
inline constexpr char kPutInlineMethod[] = "cachestore.PutInline";
inline constexpr char kOpenReadMethod[] = "cachestore.OpenRead";
inline constexpr char kReadMethod[] = "cachestore.Read";
inline constexpr char kReleaseMethod[] = "cachestore.Release";
inline constexpr char kPinMethod[] = "cachestore.Pin";
inline constexpr char kUnpinMethod[] = "cachestore.Unpin";
inline constexpr char kRemoveMethod[] = "cachestore.Remove";
inline constexpr char kStatsMethod[] = "cachestore.Stats";

// Most items one batched request may carry, and most prefix hashes one Lookup may carry.
inline constexpr int kMaxBatchItems = 4096;
inline constexpr int kMaxLookupHashes = 1 << 20;

// The control-plane handshake: protocol version and the KV prefix hash test vector
// (kvcache::PrefixHashTestVector), so a client that hashes prefixes differently is refused.
transport::rpc::HandshakeInfo CachestoreHandshake(std::string role, std::string name);

void ToProto(const absl::Status& status, ItemStatus* out);
absl::Status FromProto(const ItemStatus& status);

}  // namespace kvasir::cachestore
