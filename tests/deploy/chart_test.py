#!/usr/bin/env python3
"""Tests of the Helm chart deploy/helm/kvasir: helm lint, helm template of the default values, of
each example values file and of variants, every rendered object validated against the Kubernetes
schemas (kubernetes-validate, strict), and assertions on what matters: TP size -> GPUs and group
size, probes on every container, the API keys Secret mounted and used, the cachestore's
PersistentVolumeClaim, flags that the binaries know.

The custom resources (PodMonitor, ServiceMonitor, ScaledObject, LeaderWorkerSet) have no schema
in kubernetes-validate: their embedded pod templates are validated as core/v1 PodTemplate objects
and their references (selectors, ports, scale targets) are checked against the rendered objects.

Skips (exit 77) without helm or kubernetes-validate: scripts/install-deploy-tools.sh installs them.
"""
import copy
import os
import re
import subprocess
import sys
import unittest

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploytest  # noqa: E402

HELM = deploytest.need_tool("helm", "scripts/install-deploy-tools.sh installs it into .deps/deploy/bin")
yaml = deploytest.need_module("yaml")
kubernetes_validate = deploytest.need_module("kubernetes_validate")

CHART = os.path.join(deploytest.DEPLOY, "helm", "kvasir")
EXAMPLES = os.path.join(deploytest.DEPLOY, "helm", "examples")
K8S_VERSION = "1.30.0"
CUSTOM_KINDS = {"PodMonitor", "ServiceMonitor", "ScaledObject", "LeaderWorkerSet"}
POD_OWNERS = {"Deployment", "StatefulSet"}


def helm(*args, check=True):
    r = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


def render(*args):
    out = helm("template", "kv", CHART, "--namespace", "serving", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def values_file(name):
    return ["-f", os.path.join(EXAMPLES, name)]


# Name -> helm template arguments. Each case is rendered, validated and checked.
CASES = {
    "default": [],
    "cpu-demo": values_file("cpu-demo.yaml"),
    "llama2-70b": values_file("llama2-70b-8gpu.yaml"),
    # Multi-node groups: 2 pods of 4 GPUs per TP-8 group, HPA instead of KEDA, ServiceMonitor.
    "llama2-70b-lws-hpa": values_file("llama2-70b-8gpu.yaml") + [
        "--set", "workerDefaults.leaderWorkerSet.enabled=true",
        "--set", "workerDefaults.leaderWorkerSet.size=2",
        "--set", "decode.autoscaling.kind=hpa",
        "--set", "monitoring.serviceMonitor.enabled=true"],
    "unauthenticated": ["--set", "allowUnauthenticated=true", "--set", "networkPolicy.enabled=false",
                        "--set", "cachestore.disk.enabled=false"],
}


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind, name):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_templates(objs):
    """(owner, role, template) for every pod template: Deployments, StatefulSets, LWS groups."""
    out = []
    for o in objs:
        if o["kind"] in POD_OWNERS:
            out.append((o, "", o["spec"]["template"]))
        elif o["kind"] == "LeaderWorkerSet":
            lwt = o["spec"]["leaderWorkerTemplate"]
            out.append((o, "leader", lwt["leaderTemplate"]))
            out.append((o, "worker", lwt["workerTemplate"]))
    return out


def component(obj):
    return obj["metadata"]["labels"].get("app.kubernetes.io/component")


def config_args(objs, key):
    cm = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-config")]
    assert len(cm) == 1
    lines = cm[0]["data"][key].splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("#")]


def flag(args, name):
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values


def selector_matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


class ChartTest(unittest.TestCase):
    rendered = {}

    @classmethod
    def setUpClass(cls):
        for name, args in CASES.items():
            cls.rendered[name] = render(*args)

    def test_lint_strict(self):
        helm("lint", "--strict", CHART)
        for f in sorted(os.listdir(EXAMPLES)):
            helm("lint", "--strict", CHART, "-f", os.path.join(EXAMPLES, f))

    def test_every_example_is_a_case(self):
        used = {a for args in CASES.values() for a in args if a.endswith(".yaml")}
        for f in os.listdir(EXAMPLES):
            self.assertIn(os.path.join(EXAMPLES, f), used, f"example {f} is not rendered by a test case")

    def test_schemas(self):
        for case, objs in self.rendered.items():
            kinds = set()
            for o in objs:
                kinds.add(o["kind"])
                with self.subTest(case=case, kind=o["kind"], name=o["metadata"]["name"]):
                    if o["kind"] in CUSTOM_KINDS:
                        self.check_custom(o, objs)
                    else:
                        self.validate(o)
            self.assertTrue({"Deployment", "StatefulSet", "Service", "ConfigMap"} <= kinds, case)

    def validate(self, obj):
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            self.fail(f"{obj['kind']} {obj['metadata']['name']}: {e.message} at {list(e.path)}")

    def check_custom(self, o, objs):
        """What can be checked of a custom resource without its CRD."""
        kind, spec = o["kind"], o["spec"]
        self.assertIn("name", o["metadata"])
        if kind == "LeaderWorkerSet":
            self.assertEqual(o["apiVersion"], "leaderworkerset.x-k8s.io/v1")
            lwt = spec["leaderWorkerTemplate"]
            self.assertGreaterEqual(int(lwt["size"]), 1)
            self.assertIn(lwt["restartPolicy"], ("RecreateGroupOnPodRestart", "None", "Default"))
            for t in ("leaderTemplate", "workerTemplate"):
                self.validate({"apiVersion": "v1", "kind": "PodTemplate",
                               "metadata": {"name": f"{o['metadata']['name']}-{t}"},
                               "template": lwt[t]})
        elif kind == "ScaledObject":
            self.assertEqual(o["apiVersion"], "keda.sh/v1alpha1")
            ref = spec["scaleTargetRef"]
            targets = [x for x in objs if x["kind"] == ref["kind"] and x["metadata"]["name"] == ref["name"]
                       and x["apiVersion"] == ref["apiVersion"]]
            self.assertEqual(len(targets), 1, f"scaleTargetRef {ref} is not rendered")
            self.assertNotIn("replicas", targets[0]["spec"], "an autoscaled group must not pin replicas")
            self.assertLessEqual(int(spec["minReplicaCount"]), int(spec["maxReplicaCount"]))
            (trigger,) = spec["triggers"]
            self.assertEqual(trigger["type"], "prometheus")
            self.assertIn("kvasir_num_requests_waiting", trigger["metadata"]["query"])
            self.assertIn('component="decode"', trigger["metadata"]["query"])
            float(trigger["metadata"]["threshold"])
        elif kind in ("PodMonitor", "ServiceMonitor"):
            self.assertEqual(o["apiVersion"], "monitoring.coreos.com/v1")
            sel = spec["selector"]["matchLabels"]
            endpoints = spec["podMetricsEndpoints"] if kind == "PodMonitor" else spec["endpoints"]
            if kind == "PodMonitor":
                pods = [t for _, _, t in pod_templates(objs) if selector_matches(sel, t["metadata"]["labels"])]
                self.assertEqual(len(pods), len(pod_templates(objs)), "the PodMonitor must select every pod")
                for t in pods:
                    names = {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
                    for ep in endpoints:
                        self.assertIn(ep["port"], names)
            else:
                svcs = [s for s in by_kind(objs, "Service") if selector_matches(sel, s["metadata"]["labels"])]
                self.assertTrue(svcs, "the ServiceMonitor selects no Service")
                for ep in endpoints:
                    self.assertTrue(any(p["name"] == ep["port"] for s in svcs for p in s["spec"]["ports"]))
            for ep in endpoints:
                self.assertEqual(ep["path"], "/metrics")
                targets = {r["targetLabel"] for r in ep["relabelings"]}
                self.assertTrue({"component", "release", "pod"} <= targets, targets)
        else:
            self.fail(f"unexpected custom kind {kind}")

    def test_probes_on_every_container(self):
        for case, objs in self.rendered.items():
            templates = pod_templates(objs)
            self.assertGreaterEqual(len(templates), 4, case)  # coordinator, prefill, decode, cachestore
            for owner, _, t in templates:
                for c in t["spec"]["containers"]:
                    with self.subTest(case=case, owner=owner["metadata"]["name"], container=c["name"]):
                        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                        live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
                        self.assertEqual(live["path"], "/health")
                        self.assertEqual(ready["path"], "/ready")
                        self.assertEqual(c["startupProbe"]["httpGet"]["path"], "/health")
                        for probe in (live, ready):
                            self.assertIn(probe["port"], ports)
                        # The probed port is the one the process serves HTTP on.
                        key = {"coordinator": "coordinator.args", "cachestore": "cachestore.args"}.get(
                            component(t), f"{component(t)}.args")
                        args = config_args(objs, key)
                        http_flag = "port" if component(t) == "coordinator" else "http-port"
                        self.assertEqual(flag(args, http_flag), [str(ports[live["port"]])])
                        sc = c["securityContext"]
                        self.assertFalse(sc["allowPrivilegeEscalation"])
                        self.assertTrue(t["spec"]["securityContext"]["runAsNonRoot"])

    def workers(self, objs, role):
        return [(o, r, t) for o, r, t in pod_templates(objs) if component(t) == role]

    def test_tensor_parallel_gpus_and_group_size(self):
        # StatefulSet mode: one pod per group with nvidia.com/gpu = TP (8), 2 prefill, 4..8 decode.
        objs = self.rendered["llama2-70b"]
        for role, groups in (("prefill", 2), ("decode", None)):
            ws = self.workers(objs, role)
            self.assertEqual(len(ws), 1)
            owner, _, t = ws[0]
            self.assertEqual(owner["kind"], "StatefulSet")
            if groups is not None:
                self.assertEqual(owner["spec"]["replicas"], groups)
            res = t["spec"]["containers"][0]["resources"]
            self.assertEqual(res["limits"]["nvidia.com/gpu"], 8)
            self.assertEqual(res["requests"]["nvidia.com/gpu"], 8)
            self.assertEqual(flag(config_args(objs, f"{role}.args"), "tensor-parallel-size"), ["8"])
            self.assertEqual(t["spec"]["nodeSelector"]["nvidia.com/gpu.present"], "true")
            self.assertTrue(any(tol["key"] == "nvidia.com/gpu" for tol in t["spec"]["tolerations"]))
            self.assertIn("kvasir-cuda", t["spec"]["containers"][0]["image"])
        scaled = one(objs, "ScaledObject", "kv-kvasir-decode")
        self.assertEqual((scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]), (4, 8))
        # Coordinator and cachestore: CPU image, no GPU.
        for _, _, t in pod_templates(objs):
            if component(t) in ("coordinator", "cachestore"):
                c = t["spec"]["containers"][0]
                self.assertNotIn("nvidia.com/gpu", c["resources"].get("limits", {}))
                self.assertNotIn("nodeSelector", t["spec"])
                self.assertNotIn("cuda", c["image"])

        # LeaderWorkerSet mode: groups of 2 pods with 4 GPUs each.
        objs = self.rendered["llama2-70b-lws-hpa"]
        for role in ("prefill", "decode"):
            ws = self.workers(objs, role)
            self.assertEqual([r for _, r, _ in ws], ["leader", "worker"])
            lws = ws[0][0]
            self.assertEqual(lws["kind"], "LeaderWorkerSet")
            self.assertEqual(lws["spec"]["leaderWorkerTemplate"]["size"], 2)
            for _, _, t in ws:
                self.assertEqual(t["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], 4)
        self.assertEqual(one(objs, "LeaderWorkerSet", "kv-kvasir-prefill")["spec"]["replicas"], 2)
        hpa = one(objs, "HorizontalPodAutoscaler", "kv-kvasir-decode")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["kind"], "LeaderWorkerSet")
        self.assertNotIn("replicas", one(objs, "LeaderWorkerSet", "kv-kvasir-decode")["spec"])

        # CPU variants: no GPU anywhere.
        for case in ("default", "cpu-demo", "unauthenticated"):
            for _, _, t in pod_templates(self.rendered[case]):
                for c in t["spec"]["containers"]:
                    self.assertNotIn("nvidia.com/gpu", c.get("resources", {}).get("limits", {}), case)

    def test_api_keys_secret_mounted_and_used(self):
        for case in ("default", "cpu-demo", "llama2-70b"):
            objs = self.rendered[case]
            with self.subTest(case=case):
                dep = one(objs, "Deployment", "kv-kvasir-coordinator")
                spec = dep["spec"]["template"]["spec"]
                vols = {v["name"]: v for v in spec["volumes"]}
                secret_name = vols["api-keys"]["secret"]["secretName"]
                mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
                mount = mounts["api-keys"]["mountPath"]
                key_file = flag(config_args(objs, "coordinator.args"), "api-key-file")
                self.assertEqual(key_file, [f"{mount}/api-keys"])
                self.assertEqual(flag(config_args(objs, "coordinator.args"), "allow-unauthenticated"), [])
                self.assertNotIn("--allow-unauthenticated", config_args(objs, "coordinator.args"))
                if case == "llama2-70b":
                    self.assertEqual(secret_name, "kvasir-api-keys")  # the operator's own Secret
                    self.assertEqual(by_kind(objs, "Secret"), [])
                else:
                    secret = one(objs, "Secret", secret_name)
                    import base64
                    keys = base64.b64decode(secret["data"]["api-keys"]).decode().split()
                    self.assertTrue(keys and all(len(k) >= 16 for k in keys), keys)
                    if case == "cpu-demo":
                        self.assertEqual(keys, ["sk-kvasir-demo-change-me"])
                # Workers and the cachestore never see the keys.
                for _, _, t in pod_templates(objs):
                    if component(t) != "coordinator":
                        self.assertFalse(any("secret" in v for v in t["spec"]["volumes"]))
        objs = self.rendered["unauthenticated"]
        self.assertEqual(by_kind(objs, "Secret"), [])
        self.assertIn("--allow-unauthenticated", config_args(objs, "coordinator.args"))

    def test_cachestore_pvc(self):
        for case in ("default", "cpu-demo", "llama2-70b"):
            objs = self.rendered[case]
            with self.subTest(case=case):
                sts = one(objs, "StatefulSet", "kv-kvasir-cachestore")
                (claim,) = sts["spec"]["volumeClaimTemplates"]
                self.assertEqual(claim["spec"]["accessModes"], ["ReadWriteOnce"])
                self.assertRegex(claim["spec"]["resources"]["requests"]["storage"], r"^\d+(Gi|Ti)$")
                mounts = {m["name"]: m["mountPath"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
                self.assertEqual(flag(config_args(objs, "cachestore.args"), "disk-dir"), [mounts[claim["metadata"]["name"]]])
        big = one(self.rendered["llama2-70b"], "StatefulSet", "kv-kvasir-cachestore")
        self.assertEqual(big["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], "fast-nvme")
        small = one(self.rendered["unauthenticated"], "StatefulSet", "kv-kvasir-cachestore")
        self.assertNotIn("volumeClaimTemplates", small["spec"])
        self.assertEqual(flag(config_args(self.rendered["unauthenticated"], "cachestore.args"), "disk-dir"), [])

    def test_addresses_resolve_to_rendered_services(self):
        for case, objs in self.rendered.items():
            services = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
            for role in ("prefill", "decode"):
                args = config_args(objs, f"{role}.args")
                for name in ("coordinator", "cachestore"):
                    (addr,) = flag(args, name)
                    host, port = addr.rsplit(":", 1)
                    svc = services[host]
                    self.assertIn(int(port), [p["port"] for p in svc["spec"]["ports"]], (case, addr))
                    # Both are dialled before their pod is necessarily ready: the coordinator turns
                    # ready only once a worker registered.
                    if name == "coordinator":
                        self.assertTrue(svc["spec"].get("publishNotReadyAddresses"), case)

    def test_pdbs_and_network_policy(self):
        for case, objs in self.rendered.items():
            templates = pod_templates(objs)
            pdbs = by_kind(objs, "PodDisruptionBudget")
            self.assertEqual(len(pdbs), 4, case)
            for pdb in pdbs:
                sel = pdb["spec"]["selector"]["matchLabels"]
                self.assertTrue(any(selector_matches(sel, t["metadata"]["labels"]) for _, _, t in templates))
            nps = by_kind(objs, "NetworkPolicy")
            if case == "unauthenticated":
                self.assertEqual(nps, [])
                continue
            self.assertEqual(len(nps), 2, case)
            for np in nps:
                for rule in np["spec"]["ingress"]:
                    for p in rule.get("ports", []):
                        # A named port must exist on every selected pod.
                        for _, _, t in templates:
                            if selector_matches(np["spec"]["podSelector"]["matchLabels"], t["metadata"]["labels"]):
                                names = {q["name"] for c in t["spec"]["containers"] for q in c["ports"]}
                                self.assertIn(p["port"], names)

    def test_flags_are_known_to_the_binaries(self):
        bin_dir = deploytest.build_bin()
        programs = {"coordinator.args": "kvasir-coordinator", "prefill.args": "kvasir-worker",
                    "decode.args": "kvasir-worker", "cachestore.args": "kvasir-cachestore"}
        if not all(os.access(os.path.join(bin_dir, p), os.X_OK) for p in programs.values()):
            self.skipTest(f"the binaries are not built in {bin_dir}")
        helps = {p: subprocess.run([os.path.join(bin_dir, p), "--help"], capture_output=True, text=True,
                                   timeout=30).stdout for p in set(programs.values())}
        for case, objs in self.rendered.items():
            for key, program in programs.items():
                for arg in config_args(objs, key):
                    name = re.match(r"--([a-z0-9-]+)", arg)
                    self.assertIsNotNone(name, f"{case} {key}: {arg!r} is not a flag")
                    self.assertRegex(helps[program], rf"--{name.group(1)}\b",
                                     f"{case}: {program} has no flag --{name.group(1)}")

    def test_rendered_flags_start_a_working_cluster(self):
        """The CPU demo's ConfigMap, run through the image's entrypoint with the real binaries on
        loopback: Service names and 0.0.0.0 become 127.0.0.1, ports become free ones, the model
        becomes stories260K, the disk tier a temporary folder. The coordinator must turn ready
        with both workers, answer a completion with the demo key from the Secret, and refuse one
        without it."""
        import base64
        import json
        import shutil
        import signal
        import socket
        import tempfile
        import time
        import urllib.error
        import urllib.request

        bin_dir = deploytest.build_bin()
        model = os.path.abspath(os.path.join(deploytest.REPO, "..", "shared", "models", "stories260K.gguf"))
        if not os.access(os.path.join(bin_dir, "kvasir-worker"), os.X_OK) or not os.path.exists(model):
            self.skipTest("needs the built binaries and ../shared/models/stories260K.gguf")
        objs = self.rendered["cpu-demo"]
        key = base64.b64decode(one(objs, "Secret", "kv-kvasir-api-keys")["data"]["api-keys"]).decode().split()[0]

        def free_port():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        work = tempfile.mkdtemp(prefix="kvasir-chart-flags-")
        ports = {}  # rendered "host:port" or port -> free local port
        procs = []
        try:
            def rewrite(key_name, role):
                out = []
                for arg in config_args(objs, key_name):
                    name, _, value = arg.partition("=")
                    if name in ("--host", "--rpc-host"):
                        value = "127.0.0.1"
                    elif name in ("--port", "--rpc-port", "--http-port"):
                        value = str(ports.setdefault((role, name), free_port()))
                    elif name in ("--coordinator", "--cachestore"):
                        target = "coordinator" if name == "--coordinator" else "cachestore"
                        flag_name = "--rpc-port" if target == "coordinator" else "--port"
                        value = f"127.0.0.1:{ports[(target, flag_name)]}"
                    elif name == "--model":
                        value = model
                    elif name == "--disk-dir":
                        value = os.path.join(work, "disk")
                    elif name == "--api-key-file":
                        value = os.path.join(work, "api-keys")
                    elif name == "--kv-cache-memory":
                        value = "64MiB"
                    elif name == "--threads":
                        value = "1"
                    out.append(f"{name}={value}" if value or "=" in arg else name)
                path = os.path.join(work, f"{role}.args")
                with open(path, "w") as f:
                    f.write("\n".join(out) + "\n")
                return path

            with open(os.path.join(work, "api-keys"), "w") as f:
                f.write(key + "\n")
            entrypoint = os.path.join(deploytest.DEPLOY, "docker", "kvasir-entrypoint.sh")
            log = open(os.path.join(work, "log.txt"), "w")
            for role, key_name, program, extra in (
                    ("cachestore", "cachestore.args", "kvasir-cachestore", ["--name=cachestore"]),
                    ("coordinator", "coordinator.args", "kvasir-coordinator", []),
                    ("prefill", "prefill.args", "kvasir-worker", ["--name=prefill-0", "--advertise-host=127.0.0.1"]),
                    ("decode", "decode.args", "kvasir-worker", ["--name=decode-0", "--advertise-host=127.0.0.1"])):
                args_file = rewrite(key_name, role)
                procs.append(subprocess.Popen(["sh", entrypoint, args_file, os.path.join(bin_dir, program), *extra],
                                              stdout=log, stderr=log, start_new_session=True))
                if role in ("cachestore", "coordinator"):
                    time.sleep(0.5)
            base = f"http://127.0.0.1:{ports[('coordinator', '--port')]}"
            deadline, ready = time.time() + 60, None
            while time.time() < deadline:
                self.assertTrue(all(p.poll() is None for p in procs), deploytest.read(log.name)[-3000:])
                try:
                    with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                        ready = json.load(r)
                        if ready.get("workers_ready", 0) >= 2:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.2)
            self.assertGreaterEqual((ready or {}).get("workers_ready", 0), 2, deploytest.read(log.name)[-3000:])
            body = json.dumps({"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 8,
                               "temperature": 0}).encode()
            req = urllib.request.Request(base + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.load(r)
            self.assertEqual(answer["usage"]["completion_tokens"], 8, answer)
            req = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
            with self.assertRaises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=10)
            self.assertEqual(refused.exception.code, 401)
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            shutil.rmtree(work, ignore_errors=True)

    def test_refused_combinations(self):
        for args, message in (
            (["--set", "decode.enabled=false"], "nothing would generate tokens"),
            (values_file("llama2-70b-8gpu.yaml") + ["--set", "workerDefaults.leaderWorkerSet.enabled=true",
                                                    "--set", "workerDefaults.leaderWorkerSet.size=3"],
             "must divide tensorParallelSize"),
            (["--set", "coordinator.replicas=2"], "coordinator.replicas must be 1"),
            (["--set", "cachestore.enabled=false"], "cachestore.enabled must be true"),
            (["--set", "device=tpu"], "device must be cpu or cuda"),
            (["--set", "kvPolicies.policies.h2o=h2o:budget=64"], "is a policy kind"),
        ):
            r = helm("template", "kv", CHART, *args, check=False)
            self.assertNotEqual(r.returncode, 0, args)
            self.assertIn(message, r.stderr)

    def test_config_change_rolls_pods(self):
        base = {o["metadata"]["name"]: o for o in self.rendered["default"] if o["kind"] in POD_OWNERS}
        changed = {o["metadata"]["name"]: o for o in render("--set", "workerDefaults.maxNumSeqs=7")
                   if o["kind"] in POD_OWNERS}
        for name, o in base.items():
            a = o["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            b = changed[name]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            self.assertNotEqual(a, b, name)


if __name__ == "__main__":
    unittest.main(verbosity=2)
