// `kvasir bench <subject>`: benchmarks that print a table, or one JSON object with --json.
#include "cachestore/bench.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cachestore/service.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/serve_bench.h"
#include "common/units.h"
#include "kvcache/policy.h"
#include "nlohmann/json.hpp"
#include "transport/bench.h"
#include "transport/http/server.h"
#include "worker/adapter.h"
#include "worker/engine_bench.h"
#include "worker/handoff_bench.h"

namespace kvasir::cli {
namespace {

absl::StatusOr<std::vector<int32_t>> ParseIntList(const std::string& text) {
  std::vector<int32_t> out;
  if (text.empty()) return out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      return absl::InvalidArgumentError(
          "expected a comma-separated list of positive integers, got '" + text + "'");
    }
    out.push_back(v);
  }
  return out;
}

int RunBenchEngine(int argc, char** argv) {
  const std::string cmd = "kvasir bench engine";
  ArgParser p("kvasir bench engine [options]",
              "Measures prefill and decode speed of the engine on this machine: prefill of a "
              "512-token prompt, decode at batch 1 and aggregate decode with 4 and 16 concurrent "
              "sequences (128-token prompts, 128 new tokens each), the memory read bandwidth and "
              "the fraction of it batch-1 decode reaches. Each figure is the median of --repeats "
              "runs after a warm-up.");
  EngineFlags flags;
  flags.Register(p);
  std::string kv = "full", contexts, budget, batches = "1,4,16";
  int32_t repeats = 3, prefill = 512, decode = 128, prompt = 128;
  bool json = false;
  p.AddString("kv", &kv, "POLICY", "KV cache policy of the benchmark sequences");
  p.AddInt32("repeats", &repeats, "timed runs per figure");
  p.AddInt32("prefill-tokens", &prefill, "prompt length of the prefill figure");
  p.AddInt32("decode-tokens", &decode, "tokens generated per sequence");
  p.AddInt32("batch-prompt", &prompt, "prompt length of each sequence in the decode figures");
  p.AddString("batches", &batches, "N,N",
              "concurrent sequences of the decode figures (1 is batch-1 decode)");
  p.AddString("contexts", &contexts, "N,N",
              "also decode after prompts of these lengths (default with --kv other than full: "
              "2048,4096 or what the context allows)");
  p.AddString("kv-budget", &budget, "BYTES",
              "count how many sequences of the first --contexts length fit in this much KV memory");
  p.AddBool("json", &json, "print one JSON object");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  worker::EngineBenchOptions o;
  o.kv_policy = kv;
  o.repeats = repeats;
  o.prefill_tokens = prefill;
  o.decode_tokens = decode;
  o.batch_prompt = prompt;
  auto batch_list = ParseIntList(batches);
  if (!batch_list.ok()) return Fail(cmd, batch_list.status(), 2);
  if (batch_list->empty() ||
      std::any_of(batch_list->begin(), batch_list->end(), [](int32_t b) { return b < 1; })) {
    return Fail(cmd, absl::InvalidArgumentError("--batches takes positive counts, e.g. 1,16,64"),
                2);
  }
  o.batches = *batch_list;
  auto ctx = ParseIntList(contexts);
  if (!ctx.ok()) return Fail(cmd, ctx.status(), 2);
  o.long_contexts = *ctx;
  if (!budget.empty()) {
    auto b = ParseByteSize(budget);
    if (!b.ok()) return Fail(cmd, b.status(), 2);
    o.capacity_budget_bytes = *b;
  }
  auto adapter = worker::AdapterOfSpec(kv);  // learned dmc's weights=FILE
  if (!adapter.ok()) return Fail(cmd, adapter.status(), 2);
  flags.adapter = *adapter;
  auto engine = LoadEngine(flags);
  if (!engine.ok()) return Fail(cmd, engine.status());
  if (o.long_contexts.empty() && kv != "full") {
    for (int32_t c : {2048, 4096}) {
      if (c + decode <= (*engine)->config().context_length) o.long_contexts.push_back(c);
    }
  }
  if (!o.long_contexts.empty() && o.capacity_budget_bytes == 0) o.capacity_budget_bytes = 1LL << 30;
  if (!flags.quiet) std::fprintf(stderr, "benchmarking (this takes a minute)...\n");
  auto r = worker::RunEngineBench(**engine, o);
  if (!r.ok()) return Fail(cmd, r.status());
  if (json) {
    nlohmann::json j;
    j["model"] = r->model;
    j["isa"] = r->isa;
    j["repacked_weight_bytes"] = r->repacked_weight_bytes;
    j["device"] = r->device;
    j["threads"] = r->threads;
    j["kv_policy"] = r->kv_policy;
    j["prefill_tps"] = r->prefill_tps;
    j["decode_tps_b1"] = r->decode_tps_b1;
    for (const auto& [streams, tps] : r->decode_tps_batched) {
      j["decode_tps_b" + std::to_string(streams)] = tps;
    }
    j["mem_read_gbps"] = r->mem_read_gbps;
    j["llc_bytes"] = r->llc_bytes;
    j["cache_read_gbps"] = r->cache_read_gbps;
    j["bound"] = r->bound;
    j["decode_bytes_per_token"] = r->decode_bytes_per_token;
    j["decode_bw_fraction"] = r->decode_bw_fraction;
    if (!r->decode_tps_at_context.empty()) {
      nlohmann::json at = nlohmann::json::array();
      for (size_t i = 0; i < r->decode_tps_at_context.size(); ++i) {
        at.push_back({{"context", r->decode_tps_at_context[i].first},
                      {"decode_tps", r->decode_tps_at_context[i].second},
                      {"kv_ratio", r->kv_ratio_at_context[i].second}});
      }
      j["long_context"] = at;
      j["kv_budget_bytes"] = o.capacity_budget_bytes;
      j["sequences_in_budget"] = r->sequences_in_budget;
      j["full_sequences_in_budget"] = r->full_sequences_in_budget;
    }
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::printf("model     %s\ndevice    %s\nthreads   %d (%s)\nweights   %s\nkv        %s\n\n",
              r->model.c_str(), r->device.c_str(), r->threads, r->isa.c_str(),
              r->repacked_weight_bytes > 0 ? absl::StrFormat("%.1f MiB repacked for decode (rows8)",
                                                             r->repacked_weight_bytes / 1048576.0)
                                                 .c_str()
                                           : "as mapped",
              r->kv_policy.c_str());
  std::printf("%-36s %12s\n", "figure", "tokens/s");
  std::printf("%-36s %12.1f\n", absl::StrFormat("prefill, %d-token prompt", prefill).c_str(),
              r->prefill_tps);
  if (r->decode_tps_b1 > 0) {
    std::printf("%-36s %12.1f\n", absl::StrFormat("decode, batch 1, %d tokens", decode).c_str(),
                r->decode_tps_b1);
  }
  for (const auto& [streams, tps] : r->decode_tps_batched) {
    std::printf("%-36s %12.1f\n", absl::StrFormat("decode, %d streams, aggregate", streams).c_str(),
                tps);
  }
  for (size_t i = 0; i < r->decode_tps_at_context.size(); ++i) {
    std::printf(
        "%-36s %12.1f   (KV held %.1f%% of full)\n",
        absl::StrFormat("decode after %d tokens of context", r->decode_tps_at_context[i].first)
            .c_str(),
        r->decode_tps_at_context[i].second, 100 * r->kv_ratio_at_context[i].second);
  }
  std::printf("\nweights read per token    %s\n", FormatBytes(r->decode_bytes_per_token).c_str());
  if (r->mem_read_gbps > 0) {  // the host's memory: measured for the CPU only
    std::printf("memory read bandwidth     %.1f GB/s (DRAM)\n", r->mem_read_gbps);
    if (r->cache_read_gbps > 0) {
      std::printf("cache read bandwidth      %.1f GB/s (the weights fit the %s last-level cache)\n",
                  r->cache_read_gbps, FormatBytes(r->llc_bytes).c_str());
    }
    std::printf("batch-1 decode reaches    %.0f%% of the %s bandwidth bound\n",
                100 * r->decode_bw_fraction, r->bound == "cache" ? "cache" : "DRAM");
  }
  if (!o.long_contexts.empty()) {
    std::printf("sequences of %d tokens in %s of KV: %lld with %s, %lld with full\n",
                o.long_contexts[0], FormatBytes(o.capacity_budget_bytes).c_str(),
                static_cast<long long>(r->sequences_in_budget), r->kv_policy.c_str(),
                static_cast<long long>(r->full_sequences_in_budget));
  }
  return 0;
}

int RunBenchTransport(int argc, char** argv) {
  const std::string cmd = "kvasir bench transport";
  ArgParser p("kvasir bench transport [--tls tcp|shm] [--json]",
              "Measures UCX put and get bandwidth for 64 KiB to 16 MiB messages against a peer "
              "process on one transport, and RPC round-trip latency and message rate. With "
              "--perftest it also runs ucx_perftest (put bandwidth) at 1 MiB and 16 MiB on the "
              "same transport, for the ratio.");
  std::string tls = "tcp";
  bool json = false, perftest = false;
  p.AddString("tls", &tls, "NAME", "UCX transport: tcp or shm");
  p.AddBool("perftest", &perftest, "compare with ucx_perftest at 1 MiB and 16 MiB");
  p.AddBool("json", &json, "print one JSON object");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (tls != "tcp" && tls != "shm") {
    return Fail(cmd, absl::InvalidArgumentError("--tls must be tcp or shm, got '" + tls + "'"), 2);
  }
  transport::TransportBenchOptions o;
  o.tls = tls;
  if (perftest) o.perftest_sizes = {1 << 20, 16 << 20};
  auto r = transport::RunTransportBench(o);
  if (!r.ok()) return Fail(cmd, r.status());
  if (json) {
    std::cout << transport::TransportBenchJson(*r).dump() << "\n";
  } else {
    std::cout << transport::TransportBenchTable(*r);
  }
  return 0;
}

int RunBenchCachestore(int argc, char** argv) {
  const std::string cmd = "kvasir bench cachestore";
  ArgParser p("kvasir bench cachestore [--store HOST:PORT] [--json]",
              "Measures put and get GB/s of 64 KiB to 16 MiB blocks and small (4 KiB) block "
              "operations per second with p50/p99 latency, with 1 and 8 concurrent clients. "
              "Without --store it starts its own kvasir-cachestore. In the same run it measures "
              "raw UCX gets of the store's memory for the get/raw ratio; --redis adds "
              "redis-benchmark against a local redis-server at the same value size.");
  std::string store, ucx_tls;
  bool json = false, redis = false, rpc = false, verify = false;
  int64_t time_ms = 1000;
  p.AddString("store", &store, "HOST:PORT", "a running kvasir-cachestore (default: start one)");
  p.AddString("ucx-tls", &ucx_tls, "LIST", "UCX_TLS for the started store and the clients");
  p.AddBool("rpc", &rpc, "carry data over the control plane instead of UCX");
  p.AddBool("verify", &verify, "verify every block read (checksums)");
  p.AddBool("redis", &redis, "also run redis-benchmark against a local redis-server");
  p.AddInt("time-ms", &time_ms, "time per measured point in milliseconds");
  p.AddBool("json", &json, "print one JSON object");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (time_ms <= 0) {
    return Fail(cmd, absl::InvalidArgumentError("--time-ms must be positive"), 2);
  }
  cachestore::CachestoreBenchOptions o;
  o.store = store;
  o.ucx_tls = ucx_tls;
  o.redis = redis;
  o.verify_reads = verify;
  if (rpc) o.data_path = cachestore::DataPath::kRpc;
  o.time_per_point = absl::Milliseconds(time_ms);
  auto r = cachestore::RunCachestoreBench(o);
  if (!r.ok()) return Fail(cmd, r.status());
  if (json) {
    std::cout << cachestore::CachestoreBenchJson(*r).dump() << "\n";
  } else {
    std::cout << cachestore::CachestoreBenchTable(*r);
  }
  return 0;
}

int RunBenchHandoff(int argc, char** argv) {
  const std::string cmd = "kvasir bench handoff";
  ArgParser p("kvasir bench handoff [options] [--json]",
              "Measures a prefill -> decode hand-off per KV policy: prefill a prompt, push its KV "
              "to a cachestore as codec blocks, pull it back (verified) into a new sequence. "
              "Reports the bytes moved per prompt token against the policy's own KV bytes, push "
              "and pull time and GB/s (medians of --repeats prompts), and whether a decode step "
              "after the pull gives the original's logits bit for bit. Without --store it starts "
              "a cachestore in this process.");
  EngineFlags flags;
  flags.Register(p);
  std::string store, ucx_tls, kv;
  int32_t tokens = 2048, repeats = 3;
  bool json = false;
  p.AddInt32("prompt-tokens", &tokens, "prompt length");
  p.AddString("kv", &kv, "SPEC;SPEC", "the policies, ';'-separated (default: one of each kind)");
  p.AddInt32("repeats", &repeats, "hand-offs per policy");
  p.AddString("store", &store, "HOST:PORT", "a running kvasir-cachestore (default: start one)");
  p.AddString("ucx-tls", &ucx_tls, "LIST", "UCX_TLS of the started store and the client");
  p.AddBool("json", &json, "print one JSON object");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (repeats < 1) return Fail(cmd, absl::InvalidArgumentError("--repeats must be >= 1"), 2);
  worker::HandoffBenchOptions o;
  o.prompt_tokens = tokens;
  o.repeats = repeats;
  if (!kv.empty()) o.policies = absl::StrSplit(kv, ';', absl::SkipEmpty());
  std::unique_ptr<cachestore::StoreService> service;
  cachestore::ClientOptions co;
  co.name = "bench-handoff";
  co.ucx_tls = ucx_tls;
  co.timeout = absl::Seconds(30);
  if (store.empty()) {
    cachestore::ServiceOptions so;
    so.http = false;
    so.ucx_tls = ucx_tls;
    so.store.memory_capacity_bytes = uint64_t{2} << 30;
    auto started = cachestore::StoreService::Start(so);
    if (!started.ok()) return Fail(cmd, started.status());
    service = std::move(*started);
    co.port = service->port();
  } else {
    auto hp = transport::http::ParseHostPort(store);
    if (!hp.ok()) return Fail(cmd, hp.status(), 2);
    co.host = hp->first;
    co.port = hp->second;
  }
  auto client = cachestore::StoreClient::Connect(co);
  if (!client.ok()) return Fail(cmd, client.status());
  auto engine = LoadEngine(flags);
  if (!engine.ok()) return Fail(cmd, engine.status());
  if (!flags.quiet) std::fprintf(stderr, "benchmarking %zu policies...\n", o.policies.size());
  auto r = worker::RunHandoffBench(**engine, **client, o);
  if (!r.ok()) return Fail(cmd, r.status());
  if (json) {
    nlohmann::json rows = nlohmann::json::array();
    for (const worker::HandoffBenchRow& row : r->rows) {
      rows.push_back({{"policy", row.policy},
                      {"tokens", row.tokens},
                      {"kv_bytes", row.kv_bytes},
                      {"full_bytes", row.full_bytes},
                      {"wire_bytes", row.wire_bytes},
                      {"wire_bytes_per_token", row.wire_bytes_per_token()},
                      {"overhead", row.overhead()},
                      {"blocks", row.blocks},
                      {"push_s", row.push_s},
                      {"pull_s", row.pull_s},
                      {"exact", row.exact}});
    }
    std::cout
        << nlohmann::json{{"model", r->model}, {"data_path", r->data_path}, {"rows", rows}}.dump()
        << "\n";
    return 0;
  }
  std::cout << absl::StrFormat("hand-off bench: %s, %d-token prompts, data path %s\n\n", r->model,
                               tokens, r->data_path);
  std::cout << absl::StrFormat("%10s %8s %9s %7s %8s %8s %9s %9s %6s  %s\n", "wire B/tok",
                               "vs full", "overhead", "blocks", "push ms", "pull ms", "push GB/s",
                               "pull GB/s", "exact", "policy");
  for (const worker::HandoffBenchRow& row : r->rows) {
    const double gb = static_cast<double>(row.wire_bytes) / 1e9;
    std::cout << absl::StrFormat(
        "%10.0f %7.3fx %8.4fx %7d %8.1f %8.1f %9.2f %9.2f %6s  %s\n", row.wire_bytes_per_token(),
        row.full_bytes > 0 ? static_cast<double>(row.wire_bytes) / row.full_bytes : 0.0,
        row.overhead(), row.blocks, row.push_s * 1e3, row.pull_s * 1e3,
        row.push_s > 0 ? gb / row.push_s : 0.0, row.pull_s > 0 ? gb / row.pull_s : 0.0,
        row.exact ? "yes" : "NO", row.policy);
  }
  return 0;
}

int RunBenchServe(int argc, char** argv) {
  const std::string cmd = "kvasir bench serve";
  ArgParser p("kvasir bench serve [--host H] [--port P] [options] [--json]",
              "Load against a running coordinator (started by 'kvasir up' or 'make serve'), "
              "shaped like vLLM's benchmark_serving: --num-prompts streamed /v1/completions "
              "requests with random prompts of common words, arriving as a Poisson process at "
              "--request-rate (inf: all at once), at most --max-concurrency in flight, each "
              "generating exactly --output-len tokens (ignore_eos). Reports request and token "
              "throughput, and mean, median and p99 of time to first token, time per output "
              "token, inter-token latency and end-to-end latency.");
  ServeBenchOptions o;
  int32_t port = o.port, timeout_s = 300;
  int64_t seed = 0;
  std::string rate = "inf";
  bool json = false;
  p.AddString("host", &o.host, "HOST", "the coordinator's address");
  p.AddInt32("port", &port, "the coordinator's HTTP port");
  p.AddString("model", &o.model, "NAME", "served model name (default: the first of /v1/models)");
  p.AddInt32("num-prompts", &o.num_prompts, "requests to send");
  p.AddBool("chat", &o.chat, "use /v1/chat/completions (the prompt as one user message)");
  p.AddString("request-rate", &rate, "R",
              "requests per second, Poisson arrivals; inf (or 0) sends all at once");
  p.AddInt32("max-concurrency", &o.max_concurrency, "requests in flight at most");
  p.AddInt32("input-len", &o.input_words, "prompt length in words (about one token each)");
  float long_fraction = 0;
  p.AddFloat("long-fraction", &long_fraction,
             "a mixed workload: this fraction of the prompts is --long-input-len words long");
  p.AddInt32("long-input-len", &o.long_input_words, "length of the long prompts, in words");
  p.AddInt32("shared-prefix-len", &o.shared_prefix_words,
             "a shared-prefix workload: every prompt starts with one of --num-prefixes "
             "prefixes of this many words (0: none)");
  p.AddInt32("num-prefixes", &o.num_prefixes,
             "shared prefixes (request i takes prefix i mod this)");
  p.AddInt32("output-len", &o.output_tokens, "tokens generated per request");
  p.AddString("kv-policy", &o.kv_policy, "NAME|SPEC",
              "kv_policy of every request (a configured name or a spec; default: the server's)");
  p.AddInt("seed", &seed, "seed of the prompts and arrival times");
  p.AddString("api-key", &o.api_key, "KEY", "bearer token (default: $OPENAI_API_KEY)");
  p.AddInt32("request-timeout-s", &timeout_s, "deadline of each request");
  p.AddBool("json", &json, "print one JSON object");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (port < 1 || port > 65535) {
    return Fail(cmd, absl::InvalidArgumentError("--port must be in 1..65535"), 2);
  }
  o.port = static_cast<uint16_t>(port);
  if (rate != "inf" && (!absl::SimpleAtod(rate, &o.request_rate) ||
                        !std::isfinite(o.request_rate) || o.request_rate < 0)) {
    return Fail(
        cmd,
        absl::InvalidArgumentError(absl::StrCat(
            "--request-rate wants a number of requests per second or inf, got '", rate, "'")),
        2);
  }
  o.seed = static_cast<uint64_t>(seed);
  o.long_fraction = long_fraction;
  o.request_timeout = absl::Seconds(timeout_s);
  if (o.api_key.empty()) {
    if (const char* key = std::getenv("OPENAI_API_KEY")) o.api_key = key;
  }
  if (absl::Status s = CheckServeBenchOptions(o); !s.ok()) return Fail(cmd, s, 2);
  if (!json) {
    std::fprintf(stderr, "%s: %d requests against %s:%d ...\n", cmd.c_str(), o.num_prompts,
                 o.host.c_str(), port);
  }
  auto r = RunServeBench(o);
  if (!r.ok()) {
    return Fail(cmd, r.status(), absl::IsInvalidArgument(r.status()) ? 2 : 1);
  }
  if (json) {
    std::cout << ServeBenchJson(*r).dump() << "\n";
  } else {
    std::cout << FormatServeBench(*r);
  }
  return r->failed == 0 ? 0 : 1;
}

}  // namespace

int RunBench(int argc, char** argv) {
  const std::string usage =
      "usage: kvasir bench <subject> [options]\n\nsubjects:\n"
      "  engine      prefill and decode tokens/s, memory bandwidth\n"
      "  transport   UCX put/get bandwidth by message size, RPC round trip\n"
      "  cachestore  block put/get GB/s and small-block ops/s of kvasir-cachestore\n"
      "  handoff     KV hand-off per policy: bytes per token, push/pull GB/s, exactness\n"
      "  serve       load against a running coordinator: throughput, TTFT, ITL\n"
      "\nRun 'kvasir bench <subject> --help' for its options.\n";
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fputs(usage.c_str(), argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string subject = argv[1];
  if (subject == "engine") return RunBenchEngine(argc - 1, argv + 1);
  if (subject == "transport") return RunBenchTransport(argc - 1, argv + 1);
  if (subject == "cachestore") return RunBenchCachestore(argc - 1, argv + 1);
  if (subject == "serve") return RunBenchServe(argc - 1, argv + 1);
  if (subject == "handoff") return RunBenchHandoff(argc - 1, argv + 1);
  std::fprintf(stderr, "kvasir bench: unknown subject '%s'\n\n%s", subject.c_str(), usage.c_str());
  return 2;
}

}  // namespace kvasir::cli
