// `kvasir-coordinator`: the OpenAI-compatible HTTP API and the worker registry
// (coordinator/coordinator.h), until SIGINT or SIGTERM. Prints one line to stdout once serving,
// for scripts and `kvasir up`:
//   kvasir-coordinator: http=127.0.0.1:8000 rpc=127.0.0.1:40123 model=SmolLM2-135M-Instruct.Q4_1
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/args.h"
#include "common/units.h"
#include "coordinator/coordinator.h"

namespace {

int Fail(const absl::Status& status, int code = 1) {
  std::fprintf(stderr, "kvasir-coordinator: %s\n", std::string(status.message()).c_str());
  return code;
}

// One key per line; blank lines and lines starting with '#' are skipped.
// Lines "KEY" or "KEY TENANT" ('#' starts a comment line). Errors name the line, never its text.
absl::Status ReadKeys(const std::string& path, std::vector<std::string>* keys,
                      std::vector<std::string>* tenants) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the API key file ", path));
  std::string line;
  size_t found = 0;
  for (int number = 1; std::getline(in, line); ++number) {
    const absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    const std::vector<std::string> fields =
        absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() > 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " line ", number, ": expected an API key and at most a tenant name"));
    }
    tenants->resize(keys->size());
    keys->push_back(fields[0]);
    tenants->push_back(fields.size() == 2 ? fields[1] : "");
    ++found;
  }
  if (found == 0) return absl::InvalidArgumentError(absl::StrCat(path, " holds no API key"));
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  kvasir::cli::ArgParser p(
      "kvasir-coordinator [options]",
      "The OpenAI-compatible HTTP API: validates, tokenizes and routes requests to the workers "
      "that register with it, and streams their tokens back.");
  kvasir::coordinator::CoordinatorOptions o;
  int32_t port = 8000, rpc_port = 0, tp = 1, timeout_s = 600, worker_timeout_ms = 3000,
          heartbeat_ms = 500;
  std::string api_key_file, max_body = "4MiB";
  std::vector<std::string> keys;
  p.AddString("model", &o.model, "PATH",
              "the model whose tokenizer and chat template to use: a .gguf file, a Hugging Face "
              "folder, or 'default'");
  p.AddStrings("served-model-name", &o.served_model_names, "NAME",
               "model name(s) clients use (default: the model file's name)");
  p.AddString("host", &o.host, "ADDR", "HTTP address to bind");
  p.AddInt32("port", &port, "HTTP port (0: any free port)");
  p.AddString("rpc-host", &o.rpc_host, "ADDR", "address workers register on");
  p.AddInt32("rpc-port", &rpc_port, "RPC port for workers (0: any free port)");
  p.AddStrings("api-key", &keys, "KEY",
               "accept this API key (repeatable; also KVASIR_API_KEY); none: no authentication");
  p.AddString("routing", &o.routing, "kv|load",
              "kv: route by the prompt's KV cached on each worker against its load; load: by "
              "load alone");
  p.AddString("api-key-file", &api_key_file, "PATH",
              "accept the API keys in PATH, one a line: KEY [TENANT] (a tenant's requests share "
              "cached KV only among themselves)");
  p.AddBool("allow-unauthenticated", &o.allow_unauthenticated,
            "serve a non-loopback address without API keys");
  p.AddInt32("max-model-len", &o.max_model_len,
             "tokens of one request at most, prompt plus completion (0: the model's context)");
  p.AddString("max-body-bytes", &max_body, "BYTES", "request bodies over this size get 413");
  p.AddInt32("max-pending-requests", &o.max_pending_requests,
             "generations in flight at most; more get 429 with Retry-After");
  p.AddInt32("request-timeout-s", &timeout_s, "deadline of one generation, in seconds");
  p.AddInt32("worker-timeout-ms", &worker_timeout_ms,
             "a worker without heartbeat for this long is dead");
  p.AddInt32("heartbeat-interval-ms", &heartbeat_ms, "heartbeat period asked of workers");
  p.AddInt32("http-threads", &o.http_threads, "HTTP I/O threads");
  p.AddInt32("tensor-parallel-size", &tp,
             "accepted for vLLM-style command lines: each worker starts and reports its own "
             "ranks (kvasir-worker --tensor-parallel-size); a group is one worker here");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (tp < 1 || tp > 64) {
    return Fail(absl::InvalidArgumentError(
                    absl::StrCat("--tensor-parallel-size ", tp, " is out of range [1, 64]")),
                2);
  }
  if (port < 0 || port > 65535 || rpc_port < 0 || rpc_port > 65535 || timeout_s <= 0 ||
      worker_timeout_ms <= 0 || heartbeat_ms <= 0) {
    return Fail(absl::InvalidArgumentError("a port, timeout or interval is out of range"), 2);
  }
  o.port = static_cast<uint16_t>(port);
  o.rpc_port = static_cast<uint16_t>(rpc_port);
  o.request_timeout = absl::Seconds(timeout_s);
  o.worker_timeout = absl::Milliseconds(worker_timeout_ms);
  o.heartbeat_interval = absl::Milliseconds(heartbeat_ms);
  auto body_bytes = kvasir::ParseByteSize(max_body);
  if (!body_bytes.ok() || *body_bytes < 1) {
    return Fail(absl::InvalidArgumentError("--max-body-bytes wants a size such as 4MiB"), 2);
  }
  o.max_body_bytes = static_cast<size_t>(*body_bytes);
  o.api_keys = keys;
  if (o.api_keys.empty()) {
    if (const char* env = std::getenv("KVASIR_API_KEY"); env != nullptr && *env != '\0') {
      o.api_keys.push_back(env);
    }
  }
  if (!api_key_file.empty()) {
    if (absl::Status s = ReadKeys(api_key_file, &o.api_keys, &o.api_key_tenants); !s.ok()) {
      return Fail(s, 2);
    }
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto coordinator = kvasir::coordinator::Coordinator::Start(o);
  if (!coordinator.ok()) return Fail(coordinator.status());
  std::printf("kvasir-coordinator: http=%s:%d rpc=%s:%d model=%s\n", o.host.c_str(),
              (*coordinator)->http_port(), o.rpc_host.c_str(), (*coordinator)->rpc_port(),
              (*coordinator)->model_name().c_str());
  std::fflush(stdout);
  int signal = 0;
  sigwait(&signals, &signal);
  std::fprintf(stderr, "kvasir-coordinator: %s, stopping\n",
               signal == SIGINT ? "SIGINT" : "SIGTERM");
  (*coordinator)->Stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
