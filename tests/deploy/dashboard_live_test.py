#!/usr/bin/env python3
"""The Grafana dashboard against a live cluster: starts `kvasir up` (1 prefill and 1 decode worker,
cachestore) on loopback, a real Prometheus (Debian's package) that scrapes it with
deploy/prometheus/prometheus.yml and loads the alert rules, drives a short load with
`kvasir bench serve` (plus one bad request, so that the error series exist), then runs every query
of deploy/grafana/kvasir.json through Prometheus' HTTP API and asserts that it returns data.

Queries that are empty on a healthy local run are listed in EXPECTED_EMPTY with the reason.
With KVASIR_DASHBOARD_PNG=FILE it also renders the panels to FILE (deploy/grafana/render.py);
KVASIR_DASHBOARD_NUM_PROMPTS and KVASIR_DASHBOARD_REQUEST_RATE make the load longer for that,
KVASIR_DEPLOY_TEST_MODEL picks another model than stories260K.

Skips (exit 77) without the prometheus binary, the kvasir binaries or a model.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploytest  # noqa: E402

sys.path.insert(0, os.path.join(deploytest.DEPLOY, "prometheus"))
import local_targets  # noqa: E402

DASHBOARD = os.path.join(deploytest.DEPLOY, "grafana", "kvasir.json")
PROM_DIR = os.path.join(deploytest.DEPLOY, "prometheus")
RATE_WINDOW = "1m"

# (panel title, legend) -> why the query has no data on a healthy local run.
EXPECTED_EMPTY = {
    ("Disaggregation fallbacks", "{{reason}}"):
        "no fallback happens on a healthy run; the series appear with the first fallback",
    ("Process restarts", "{{pod}} (Kubernetes)"):
        "kube_pod_container_status_restarts_total comes from kube-state-metrics, on Kubernetes only",
}


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def prom_query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(http_get(url))
    if body.get("status") != "success":
        raise AssertionError(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def has_data(result):
    for series in result:
        value = float(series["value"][1])
        if value == value:  # not NaN
            return True
    return False


def panel_queries(dashboard):
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        for target in panel["targets"]:
            yield panel["title"], target["legendFormat"], target["expr"].replace("$__rate_interval", RATE_WINDOW)


def find_model():
    if os.environ.get("KVASIR_DEPLOY_TEST_MODEL"):
        return os.environ["KVASIR_DEPLOY_TEST_MODEL"]
    path = os.path.join(deploytest.REPO, "..", "shared", "models", "stories260K.gguf")
    return os.path.abspath(path) if os.path.exists(path) else None


class Cluster:
    """`kvasir up` in its own process group, read until it is ready."""

    def __init__(self, kvasir, model, log_path):
        self.log = open(log_path, "w+")
        self.proc = subprocess.Popen(
            [kvasir, "up", "--model", model, "--host", "127.0.0.1", "--port", "0",
             "--prefill-workers", "1", "--decode-workers", "1", "--threads", "1",
             "--kv-cache-memory", "64MiB", "--cachestore-capacity", "256MiB", "--ready-timeout-s", "60"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
        self.lines = []
        deadline = time.time() + 90
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if "kvasir up: ready" in line:
                return
        self.stop()
        self.log.seek(0)
        raise AssertionError("kvasir up did not become ready:\n" + "".join(self.lines) + self.log.read()[-4000:])

    def coordinator(self):
        for line in self.lines:
            m = re.match(r"kvasir up: coordinator pid=\d+ http=(\S+)", line)
            if m:
                return m.group(1)
        raise AssertionError("no coordinator line")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def main():
    prometheus = deploytest.need_tool("prometheus", "apt-get install prometheus; scripts/install-deps.sh does")
    bin_dir = deploytest.build_bin()
    kvasir = os.path.join(bin_dir, "kvasir")
    if not os.access(kvasir, os.X_OK):
        deploytest.skip(f"{kvasir} is not built")
    model = find_model()
    if model is None:
        deploytest.skip("no model: ../shared/models/stories260K.gguf is missing (or set KVASIR_DEPLOY_TEST_MODEL)")
    dashboard = json.loads(deploytest.read(DASHBOARD))

    work = tempfile.mkdtemp(prefix="kvasir-dashboard-test-")
    cluster = prom = None
    failures = []
    try:
        cluster = Cluster(kvasir, model, os.path.join(work, "kvasir-up.log"))
        targets = local_targets.targets(cluster.lines)
        components = sorted(t["labels"]["component"] for t in targets)
        assert components == ["cachestore", "coordinator", "decode", "prefill"], components

        # The committed scrape config and rules, with a 1 s scrape interval for a short test.
        os.makedirs(os.path.join(work, "rules"))
        shutil.copy(os.path.join(PROM_DIR, "rules", "kvasir-alerts.yml"), os.path.join(work, "rules"))
        config = deploytest.read(os.path.join(PROM_DIR, "prometheus.yml"))
        config = re.sub(r"(scrape_interval|evaluation_interval): 5s", r"\1: 1s", config)
        config = config.replace("refresh_interval: 5s", "refresh_interval: 1s")
        open(os.path.join(work, "prometheus.yml"), "w").write(config)
        json.dump(targets, open(os.path.join(work, "targets.json"), "w"))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        prom_log = open(os.path.join(work, "prometheus.log"), "w")
        prom = subprocess.Popen(
            [prometheus, f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT, start_new_session=True)

        # Every target scraped.
        deadline = time.time() + 30
        while True:
            try:
                up = prom_query(base, 'up{job="kvasir"}')
                if len(up) == 4 and all(r["value"][1] == "1" for r in up):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise AssertionError(f"Prometheus did not scrape the 4 targets: {deploytest.read(prom_log.name)[-2000:]}")
            time.sleep(0.5)
        rules = json.loads(http_get(f"{base}/api/v1/rules"))["data"]["groups"]
        alerts = [r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"]
        assert len(alerts) >= 7, alerts

        # One request the coordinator refuses (400, counted as invalid_request), then the load.
        req = urllib.request.Request(f"http://{cluster.coordinator()}/v1/completions", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("a malformed body was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400, e.code
        host, cport = cluster.coordinator().rsplit(":", 1)
        t0 = time.time()
        bench = subprocess.run(
            [kvasir, "bench", "serve", "--host", host, "--port", cport,
             "--num-prompts", os.environ.get("KVASIR_DASHBOARD_NUM_PROMPTS", "24"),
             "--request-rate", os.environ.get("KVASIR_DASHBOARD_REQUEST_RATE", "8"),
             "--max-concurrency", "4", "--input-len", "48", "--output-len", "24", "--seed", "1"],
            capture_output=True, text=True, timeout=600)
        print(bench.stdout[-1500:])
        assert bench.returncode == 0, bench.stdout + bench.stderr
        load_s = time.time() - t0
        # A rate needs two scrapes of a series: wait (at most 20 s, the machine may be busy) until
        # every query that should have data has it, then report each one.
        queries = list(panel_queries(dashboard))
        deadline = time.time() + 20
        while time.time() < deadline:
            time.sleep(1)
            if all(has_data(prom_query(base, e)) for t, l, e in queries if (t, l) not in EXPECTED_EMPTY):
                break

        checked = empty_ok = 0
        for title, legend, expr in queries:
            result = prom_query(base, expr)
            reason = EXPECTED_EMPTY.get((title, legend))
            if reason is not None:
                empty_ok += 1
                print(f"  excluded  {title} / {legend}: {reason} ({len(result)} series now)")
                continue
            checked += 1
            if has_data(result):
                print(f"  data      {title} / {legend}: {len(result)} series")
            else:
                failures.append(f"{title} / {legend}: no data for {expr}")
                print(f"  NO DATA   {title} / {legend}")
        print(f"{checked} queries checked, {empty_ok} excluded, load took {load_s:.1f} s")
        assert checked >= 30, checked
        # One restart series per process of the cluster (a target label must not shadow the
        # metric's own `process` label).
        restarts = prom_query(base, 'kvasir_process_restarts_total{component="coordinator"}')
        processes = sorted(s["metric"].get("process", "") for s in restarts)
        if processes != ["cachestore", "coordinator", "decode-0", "prefill-0"]:
            failures.append(f"kvasir_process_restarts_total by process: {processes}")
        # No alert fired on a healthy run (the latency SLOs are not reached by the tiny model).
        firing = [a for a in json.loads(http_get(f"{base}/api/v1/alerts"))["data"]["alerts"]
                  if a["state"] == "firing"]
        if firing:
            failures.append(f"alerts firing on a healthy run: {firing}")

        png = os.environ.get("KVASIR_DASHBOARD_PNG")
        if png:
            end = time.time()
            subprocess.run([sys.executable, os.path.join(deploytest.DEPLOY, "grafana", "render.py"),
                            "--prometheus", base, "--start", str(t0 - 10), "--end", str(end),
                            "--rate-interval", "15s", "--output", png], check=True, timeout=180)
    finally:
        if cluster is not None:
            cluster.stop()
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(prom.pid, signal.SIGKILL)
        if not failures and not os.environ.get("KVASIR_KEEP_TEST_DIR"):
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures) + f"\n(logs in {work})")
        return 1
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
