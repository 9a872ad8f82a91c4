// The disk tier's files: one file per block, `<dir>/<xx>/<digest>.kvb`, holding the block bytes
// exactly as committed. A block is written to a temporary name, fsynced, renamed into place and
// the directory fsynced, so a crash or kill -9 never leaves a partial block under a real name.
// Reads verify the header, the payload XXH3 and the key; the start-up scan verifies headers.
// Stateless apart from its directory: safe from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cachestore/block_key.h"

namespace kvasir::cachestore {

class DiskTier {
 public:
  struct Options {
    std::string dir;    // created if missing
    bool fsync = true;  // fsync files and directories (off: faster, survives kill -9 only)
  };
  struct ScannedBlock {
    BlockKey key;
    uint64_t size = 0;            // file (= block) bytes
    uint32_t chunk_count = 0;     // from the header
    uint64_t snapshot_bytes = 0;  // from the header
    absl::Time modified;          // for the LRU order after a restart
  };
  struct ScanResult {
    std::vector<ScannedBlock> blocks;
    int corrupt_removed = 0;  // files whose header or name did not verify (deleted)
    int temp_removed = 0;     // leftovers of interrupted writes (deleted)
  };

  // Creates the directory layout. InvalidArgument when `dir` is empty or not a directory.
  static absl::StatusOr<std::unique_ptr<DiskTier>> Open(Options options);

  // Lists every block file, deleting temporary and corrupted ones (header checksum, size, key
  // versus file name). Payloads are verified on read, not here.
  absl::StatusOr<ScanResult> Scan() const;

  // Writes `block` (whose key is `key`) atomically; an existing file is replaced.
  absl::Status Write(const BlockKey& key, std::span<const std::byte> block) const;

  // Reads the block into `out` (exactly its size) and verifies header, payload checksum and key.
  // DataLoss when the file is corrupted or truncated (the caller removes it), NotFound when it is
  // missing.
  absl::Status Read(const BlockKey& key, std::span<std::byte> out) const;

  // Deletes the block's file. Missing files are fine.
  absl::Status Remove(const BlockKey& key) const;

  std::string PathOf(const BlockKey& key) const;
  const std::string& dir() const { return options_.dir; }

 private:
  explicit DiskTier(Options options) : options_(std::move(options)) {}
  absl::Status SyncDir(const std::string& path) const;

  Options options_;
};

}  // namespace kvasir::cachestore
