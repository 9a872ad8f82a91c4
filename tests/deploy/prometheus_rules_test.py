#!/usr/bin/env python3
"""Tests of deploy/prometheus: `promtool check config` on the local scrape config, `promtool check
rules` and `promtool test rules` on the alert rules and their unit tests, and two consistency
checks: every alert has a unit test that makes it fire, and every kvasir_ metric that the rules and
the dashboard query is exported by the code (coordinator/, worker/, cachestore/).

Skips (exit 77) without promtool (Debian's prometheus package).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploytest  # noqa: E402

PROMTOOL = deploytest.need_tool("promtool", "apt-get install prometheus; scripts/install-deps.sh does")
PROM = os.path.join(deploytest.DEPLOY, "prometheus")
RULES = os.path.join(PROM, "rules", "kvasir-alerts.yml")
RULE_TESTS = os.path.join(PROM, "tests", "kvasir-alerts.test.yml")
DASHBOARD = os.path.join(deploytest.DEPLOY, "grafana", "kvasir.json")
SOURCES = ("coordinator", "worker", "cachestore")


def promtool(*args):
    r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def exported_metrics():
    """kvasir_ metric names registered in the C++ sources (.Name("...") or a family helper)."""
    names = set()
    for top in SOURCES:
        for root, _, files in os.walk(os.path.join(deploytest.REPO, top)):
            for f in files:
                if f.endswith((".cc", ".h")):
                    names.update(re.findall(r'"(kvasir_[a-z0-9_]+)"', deploytest.read(os.path.join(root, f))))
    return names


def queried_metrics(text):
    """kvasir_ series names in PromQL text, with histogram suffixes mapped to the family."""
    out = set()
    for name in re.findall(r"\b(kvasir_[a-z0-9_]+)", text):
        out.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return out


class PrometheusRulesTest(unittest.TestCase):
    def test_check_config(self):
        work = tempfile.mkdtemp(prefix="kvasir-promtool-")
        try:
            shutil.copy(os.path.join(PROM, "prometheus.yml"), work)
            shutil.copytree(os.path.join(PROM, "rules"), os.path.join(work, "rules"))
            with open(os.path.join(work, "targets.json"), "w") as f:
                json.dump([{"targets": ["127.0.0.1:8000"], "labels": {"component": "coordinator"}}], f)
            rc, out = promtool("check", "config", os.path.join(work, "prometheus.yml"))
            self.assertEqual(rc, 0, out)
            self.assertNotIn("WARNING", out)
        finally:
            shutil.rmtree(work)

    def test_check_rules(self):
        rc, out = promtool("check", "rules", RULES)
        self.assertEqual(rc, 0, out)

    def test_unit_tests(self):
        rc, out = promtool("test", "rules", RULE_TESTS)
        self.assertEqual(rc, 0, out)
        self.assertIn("SUCCESS", out)

    def test_every_alert_fires_in_a_unit_test(self):
        alerts = re.findall(r"^\s*- alert: (\w+)", deploytest.read(RULES), re.M)
        self.assertGreaterEqual(len(alerts), 7)
        tests = deploytest.read(RULE_TESTS)
        # An alert_rule_test entry naming the alert with a non-empty exp_alerts list.
        fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", tests))
        self.assertEqual(sorted(set(alerts) - fired), [], "alerts without a firing unit test")
        quiet = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts: \[\]", tests))
        # Most alerts also have a case where they must stay quiet.
        self.assertGreaterEqual(len(quiet & set(alerts)), len(alerts) - 3, sorted(set(alerts) - quiet))

    def test_queried_metrics_exist_in_the_code(self):
        code = exported_metrics()
        self.assertIn("kvasir_time_to_first_token_seconds", code)
        queried = queried_metrics(deploytest.read(RULES))
        dash = json.loads(deploytest.read(DASHBOARD))
        for p in dash["panels"]:
            for t in p.get("targets", []):
                queried |= queried_metrics(t["expr"])
        self.assertEqual(sorted(queried - code), [], "queried but not exported by any service")


if __name__ == "__main__":
    unittest.main(verbosity=2)
