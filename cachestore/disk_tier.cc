// The disk tier's files (see disk_tier.h).
#include "cachestore/disk_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/mmap_file.h"
#include "common/status_macros.h"

namespace kvasir::cachestore {
namespace {

constexpr std::string_view kSuffix = ".kvb";
constexpr std::string_view kTempMarker = ".tmp.";

absl::Status Errno(std::string_view what, const std::string& path) {
  const int err = errno;
  const std::string message = absl::StrCat(std::string(what), " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Lists the names in a directory (without "." and "..").
absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return Errno("opendir", path);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    const std::string_view name(e->d_name);
    if (name != "." && name != "..") names.emplace_back(name);
  }
  ::closedir(d);
  return names;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DiskTier>> DiskTier::Open(Options options) {
  if (options.dir.empty()) return absl::InvalidArgumentError("disk tier: no directory");
  while (options.dir.size() > 1 && options.dir.back() == '/') options.dir.pop_back();
  if (::mkdir(options.dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return Annotate(Errno("mkdir", options.dir), "disk tier");
  }
  struct stat st;
  if (::stat(options.dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk tier: ", options.dir, " is not a directory"));
  }
  for (int i = 0; i < 256; ++i) {
    const std::string sub = absl::StrFormat("%s/%02x", options.dir, i);
    if (::mkdir(sub.c_str(), 0755) != 0 && errno != EEXIST) {
      return Annotate(Errno("mkdir", sub), "disk tier");
    }
  }
  if (::access(options.dir.c_str(), W_OK) != 0) {
    return Annotate(Errno("access", options.dir), "disk tier is not writable");
  }
  return std::unique_ptr<DiskTier>(new DiskTier(std::move(options)));
}

std::string DiskTier::PathOf(const BlockKey& key) const {
  const uint64_t digest = key.Digest();
  return absl::StrFormat("%s/%02x/%016x%s", options_.dir, digest >> 56, digest,
                         std::string(kSuffix));
}

absl::Status DiskTier::SyncDir(const std::string& path) const {
  if (!options_.fsync) return absl::OkStatus();
  Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return Errno("open", path);
  if (::fsync(fd.get()) != 0) return Errno("fsync", path);
  return absl::OkStatus();
}

absl::StatusOr<DiskTier::ScanResult> DiskTier::Scan() const {
  ScanResult result;
  for (int i = 0; i < 256; ++i) {
    const std::string sub = absl::StrFormat("%s/%02x", options_.dir, i);
    KVASIR_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(sub));
    for (const std::string& name : names) {
      const std::string path = absl::StrCat(sub, "/", name);
      if (name.find(kTempMarker) != std::string::npos) {
        ::unlink(path.c_str());
        ++result.temp_removed;
        continue;
      }
      if (!EndsWith(name, kSuffix)) continue;  // not ours: leave it alone
      absl::StatusOr<MappedFile> file = MappedFile::Open(path);
      absl::StatusOr<std::pair<BlockKey, kvcache::KvBlockHeader>> parsed =
          absl::InternalError("unreadable");
      if (file.ok()) {
        // Only the header's pages are touched: the payload is verified when it is read.
        parsed =
            ParseBlock(std::string_view(reinterpret_cast<const char*>(file->data()), file->size()));
      }
      if (parsed.ok() && PathOf(parsed->first) != path) {
        parsed = absl::DataLossError("file name does not match the block's key");
      }
      if (!parsed.ok()) {
        KVASIR_LOG_SUBSYS(WARN, kCachestore, "disk tier: dropping %s: %s", path,
                          (file.ok() ? parsed.status() : file.status()).ToString());
        ::unlink(path.c_str());
        ++result.corrupt_removed;
        continue;
      }
      struct stat st;
      absl::Time modified = absl::UnixEpoch();
      if (::stat(path.c_str(), &st) == 0) modified = absl::TimeFromTimespec(st.st_mtim);
      result.blocks.push_back(ScannedBlock{parsed->first, file->size(), parsed->second.chunk_count,
                                           parsed->second.snapshot_bytes, modified});
    }
  }
  return result;
}

absl::Status DiskTier::Write(const BlockKey& key, std::span<const std::byte> block) const {
  static std::atomic<uint64_t> counter{0};
  const std::string path = PathOf(key);
  const std::string temp =
      absl::StrCat(path, std::string(kTempMarker), ::getpid(), ".", counter.fetch_add(1));
  {
    Fd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) return Errno("open", temp);
    size_t done = 0;
    while (done < block.size()) {
      const ssize_t n = ::write(fd.get(), block.data() + done, block.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        absl::Status s = Errno("write", temp);
        ::unlink(temp.c_str());
        return s;
      }
      done += static_cast<size_t>(n);
    }
    if (options_.fsync && ::fsync(fd.get()) != 0) {
      absl::Status s = Errno("fsync", temp);
      ::unlink(temp.c_str());
      return s;
    }
    if (::close(fd.Release()) != 0) {
      absl::Status s = Errno("close", temp);
      ::unlink(temp.c_str());
      return s;
    }
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    absl::Status s = Errno("rename", temp);
    ::unlink(temp.c_str());
    return s;
  }
  return SyncDir(path.substr(0, path.rfind('/')));
}

absl::Status DiskTier::Read(const BlockKey& key, std::span<std::byte> out) const {
  const std::string path = PathOf(key);
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Errno("open", path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Errno("fstat", path);
  if (static_cast<uint64_t>(st.st_size) != out.size()) {
    return absl::DataLossError(absl::StrCat(path, ": ", st.st_size, " bytes on disk, expected ",
                                            out.size(), " (truncated or replaced)"));
  }
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n =
        ::pread(fd.get(), out.data() + done, out.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("read", path);
    if (n == 0) return absl::DataLossError(absl::StrCat(path, ": file shorter than its size"));
    done += static_cast<size_t>(n);
  }
  absl::StatusOr<std::pair<BlockKey, kvcache::KvBlockHeader>> verified =
      VerifyBlock(std::string_view(reinterpret_cast<const char*>(out.data()), out.size()));
  if (!verified.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": ", verified.status().message()));
  }
  if (!(verified->first == key)) {
    return absl::DataLossError(absl::StrCat(path, ": holds another block"));
  }
  return absl::OkStatus();
}

absl::Status DiskTier::Remove(const BlockKey& key) const {
  const std::string path = PathOf(key);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Errno("unlink", path);
  return absl::OkStatus();
}

}  // namespace kvasir::cachestore
