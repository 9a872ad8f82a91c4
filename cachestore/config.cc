// kvasir-cachestore flags (see config.h).
#include "cachestore/config.h"

#include <functional>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "common/units.h"

namespace kvasir::cachestore {
namespace {

absl::Status Bad(const std::string& flag, const std::string& value, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value, ": ", std::string(why)));
}

absl::StatusOr<uint64_t> Bytes(const std::string& flag, const std::string& value) {
  absl::StatusOr<int64_t> v = ParseByteSize(value);
  if (!v.ok() || *v < 0) return Bad(flag, value, "expected a size such as 4GiB or 1048576");
  return static_cast<uint64_t>(*v);
}

absl::StatusOr<int64_t> Int(const std::string& flag, const std::string& value, int64_t lo,
                            int64_t hi) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(value, &v) || v < lo || v > hi) {
    return Bad(flag, value, absl::StrCat("expected an integer in ", lo, "..", hi));
  }
  return v;
}

absl::StatusOr<bool> Bool(const std::string& flag, const std::string& value) {
  if (value == "true" || value == "1" || value == "yes") return true;
  if (value == "false" || value == "0" || value == "no") return false;
  return Bad(flag, value, "expected true or false");
}

absl::StatusOr<absl::Duration> Duration(const std::string& flag, const std::string& value) {
  absl::Duration d;
  if (!absl::ParseDuration(value, &d) || d <= absl::ZeroDuration()) {
    return Bad(flag, value, "expected a positive duration such as 30s or 500ms");
  }
  return d;
}

}  // namespace

std::string Usage() {
  return R"(usage: kvasir-cachestore [options]

Keeps compressed KV blocks so that decode nodes pull what prefill nodes computed and requests that
share a prefix skip recomputing it. Clients move block bytes over UCX (one-sided put/get into the
store's memory); the control plane (protobuf over TCP) carries metadata only, or the bytes too
where UCX is not available. Prints "PORT <rpc port> HTTP <http port>" once listening; stops
cleanly on SIGTERM or SIGINT.

options:
  --host ADDR              control-plane listen address (default 127.0.0.1)
  --port N                 control-plane port; 0 picks a free one (default 8300)
  --http-port N            /health and /metrics port; 0 picks a free one (default 8301)
  --no-http                do not serve HTTP
  --capacity BYTES         memory tier capacity, e.g. 4GiB (default 1GiB)
  --arena-bytes BYTES      memory is allocated and exported in arenas of this size (default 256MiB)
  --max-block-bytes BYTES  largest block accepted (default 64MiB)
  --disk-dir DIR           disk tier directory (write-through; survives restarts). Default: none
  --disk-capacity BYTES    disk tier capacity; 0 = what the file system holds (default 0)
  --disk-fsync BOOL        fsync block files and directories (default true)
  --lease-ttl DURATION     lease of a reservation or read in progress, e.g. 30s (default 30s)
  --max-leases N           reservations and reads in flight at once (default 65536)
  --ucx auto|on|off        UCX data path: auto falls back to the control plane (default auto)
  --ucx-tls LIST           UCX transports, as UCX_TLS (default: UCX's choice)
  --ucx-busy-poll          progress UCX continuously (needs a spare core)
  --worker-threads N       threads for checksums, disk I/O and inline copies (default 2)
  --max-inline-bytes BYTES largest block sent inside an RPC (default 64KiB)
  --name NAME              instance name for logs (default cachestore)
  --help                   this text

metrics (GET /metrics): kvasir_cachestore_{hits,misses}_total{op}, _stored_bytes{tier},
_stored_blocks{tier}, _evictions_total{tier}, _transferred_bytes_total{direction},
_throughput_bytes_per_second{direction}, _lease_expiries_total{kind}, _checksum_failures_total,
_request_duration_seconds{op}, and more; see docs/cachestore.md.
)";
}

absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv) {
  CommandLine out;
  out.options.port = 8300;
  out.options.http_port = 8301;
  ServiceOptions& o = out.options;
  bool max_block_set = false;
  using Setter = std::function<absl::Status(const std::string&, const std::string&)>;
  const std::map<std::string, Setter> valued = {
      {"host",
       [&](auto&, auto& v) {
         o.host = v;
         return absl::OkStatus();
       }},
      {"port",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(int64_t p, Int(f, v, 0, 65535));
         o.port = static_cast<uint16_t>(p);
         return absl::OkStatus();
       }},
      {"http-port",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(int64_t p, Int(f, v, 0, 65535));
         o.http_port = static_cast<uint16_t>(p);
         return absl::OkStatus();
       }},
      {"capacity",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(o.store.memory_capacity_bytes, Bytes(f, v));
         if (o.store.memory_capacity_bytes < 4096) return Bad(f, v, "must be at least 4KiB");
         return absl::OkStatus();
       }},
      {"arena-bytes",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(o.store.arena_bytes, Bytes(f, v));
         if (o.store.arena_bytes < 4096) return Bad(f, v, "must be at least 4KiB");
         return absl::OkStatus();
       }},
      {"max-block-bytes",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(o.store.max_block_bytes, Bytes(f, v));
         if (o.store.max_block_bytes == 0) return Bad(f, v, "must be > 0");
         max_block_set = true;
         return absl::OkStatus();
       }},
      {"disk-dir",
       [&](auto& f, auto& v) {
         if (v.empty()) return Bad(f, v, "empty directory");
         o.store.disk_dir = v;
         return absl::OkStatus();
       }},
      {"disk-capacity",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(o.store.disk_capacity_bytes, Bytes(f, v));
         return absl::OkStatus();
       }},
      {"disk-fsync",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(o.store.disk_fsync, Bool(f, v));
         return absl::OkStatus();
       }},
      {"lease-ttl",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(o.store.lease_ttl, Duration(f, v));
         return absl::OkStatus();
       }},
      {"max-leases",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(int64_t n, Int(f, v, 1, 1 << 24));
         o.store.max_leases = static_cast<size_t>(n);
         return absl::OkStatus();
       }},
      {"ucx",
       [&](auto& f, auto& v) {
         if (v == "auto") {
           o.ucx = UcxMode::kAuto;
         } else if (v == "on") {
           o.ucx = UcxMode::kOn;
         } else if (v == "off") {
           o.ucx = UcxMode::kOff;
         } else {
           return Bad(f, v, "expected auto, on or off");
         }
         return absl::OkStatus();
       }},
      {"ucx-tls",
       [&](auto&, auto& v) {
         o.ucx_tls = v;
         return absl::OkStatus();
       }},
      {"worker-threads",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(int64_t n, Int(f, v, 1, 256));
         o.worker_threads = static_cast<int>(n);
         return absl::OkStatus();
       }},
      {"max-inline-bytes",
       [&](auto& f, auto& v) {
         KVASIR_ASSIGN_OR_RETURN(o.max_inline_bytes, Bytes(f, v));
         if (o.max_inline_bytes > (4u << 20)) return Bad(f, v, "at most 4MiB");
         return absl::OkStatus();
       }},
      {"name",
       [&](auto& f, auto& v) {
         if (v.empty()) return Bad(f, v, "empty name");
         o.name = v;
         return absl::OkStatus();
       }},
  };
  const std::map<std::string, std::function<void(bool)>> flags = {
      {"no-http", [&](bool b) { o.http = !b; }},
      {"ucx-busy-poll", [&](bool b) { o.ucx_busy_poll = b; }},
      {"help", [&](bool b) { out.help = b; }},
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h") arg = "--help";
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "' (try --help)"));
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (auto f = flags.find(name); f != flags.end()) {
      bool b = true;
      if (has_value) {
        KVASIR_ASSIGN_OR_RETURN(b, Bool(name, value));
      }
      f->second(b);
      continue;
    }
    auto v = valued.find(name);
    if (v == valued.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown option --", name, " (try --help)"));
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = argv[++i];
    }
    KVASIR_RETURN_IF_ERROR(v->second(name, value));
  }
  if (o.store.max_block_bytes > o.store.memory_capacity_bytes) {
    // The default limit shrinks to a small memory tier; an explicit one must fit.
    if (!max_block_set) {
      o.store.max_block_bytes = o.store.memory_capacity_bytes;
      return out;
    }
    return absl::InvalidArgumentError(absl::StrCat("--max-block-bytes (", o.store.max_block_bytes,
                                                   ") exceeds --capacity (",
                                                   o.store.memory_capacity_bytes, ")"));
  }
  return out;
}

}  // namespace kvasir::cachestore
