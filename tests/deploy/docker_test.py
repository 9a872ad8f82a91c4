#!/usr/bin/env python3
"""Tests of deploy/docker: hadolint on both Dockerfiles (with deploy/docker/.hadolint.yaml), the
entrypoint that turns the chart's args files into flags, and the curl-less health check against a
real HTTP server. The image build itself is not run here (see docs/deploy.md: no container engine
can run images in this sandbox, and a build compiles the whole project).

Skips (exit 77) only when hadolint is missing and nothing else could run: the entrypoint and
health check tests need nothing but sh and bash.
"""
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import unittest

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploytest  # noqa: E402

DOCKER = os.path.join(deploytest.DEPLOY, "docker")
ENTRYPOINT = os.path.join(DOCKER, "kvasir-entrypoint.sh")
HEALTHCHECK = os.path.join(DOCKER, "kvasir-healthcheck.sh")
HADOLINT = deploytest.find_tool("hadolint")


class DockerTest(unittest.TestCase):
    @unittest.skipIf(HADOLINT is None, "hadolint not found (scripts/install-deploy-tools.sh installs it)")
    def test_hadolint(self):
        for name in ("Dockerfile", "Dockerfile.cuda"):
            r = subprocess.run([HADOLINT, "--no-color", "--config", os.path.join(DOCKER, ".hadolint.yaml"),
                                os.path.join(DOCKER, name)], capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, f"{name}:\n{r.stdout}{r.stderr}")

    @unittest.skipIf(HADOLINT is None, "hadolint not found (scripts/install-deploy-tools.sh installs it)")
    def test_hadolint_catches_a_bad_dockerfile(self):
        with tempfile.NamedTemporaryFile("w", suffix=".Dockerfile") as f:
            f.write("FROM debian:12\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
            f.flush()
            r = subprocess.run([HADOLINT, "--no-color", "--config", os.path.join(DOCKER, ".hadolint.yaml"), f.name],
                               capture_output=True, text=True, timeout=60)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("DL3015", r.stdout)  # --no-install-recommends
            self.assertIn("DL3002", r.stdout)  # last USER root

    def test_images_run_as_non_root_with_health_checks(self):
        for name in ("Dockerfile", "Dockerfile.cuda"):
            text = deploytest.read(os.path.join(DOCKER, name))
            stages = text.split("\nFROM ")
            runtime = stages[-1]
            self.assertIn("AS runtime", runtime.splitlines()[0], name)
            self.assertIn("USER 10001:10001", runtime, name)
            self.assertIn("HEALTHCHECK", runtime, name)
            self.assertIn("COPY --from=build", runtime, name)
            self.assertNotIn("build-essential", runtime, name)

    def entrypoint(self, args_text, *extra):
        with tempfile.NamedTemporaryFile("w", suffix=".args", delete=False) as f:
            f.write(args_text)
        try:
            # The program is printf, whose format is the file's first line ("%s|"): it prints every
            # argument it receives followed by "|".
            r = subprocess.run(["sh", ENTRYPOINT, f.name, "printf", *extra], capture_output=True, text=True,
                               timeout=10)
            return r.returncode, r.stdout, r.stderr
        finally:
            os.unlink(f.name)

    def test_entrypoint_passes_flags_in_order_then_extra_args(self):
        rc, out, _ = self.entrypoint("%s|\n--a=1\n\n# comment\n--b=two words\n--c='q'\n--d=$HOME\n--last",
                                     "--name=pod-0", "--x")
        self.assertEqual(rc, 0)
        self.assertEqual(out, "--a=1|--b=two words|--c='q'|--d=$HOME|--last|--name=pod-0|--x|")

    def test_entrypoint_refuses_bad_usage(self):
        r = subprocess.run(["sh", ENTRYPOINT, "/nonexistent.args", "true"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot read", r.stderr)
        r = subprocess.run(["sh", ENTRYPOINT], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)

    def test_healthcheck(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            status = 200

            def do_GET(self):
                self.send_response(Handler.status if self.path == "/health" else 404)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = dict(os.environ, KVASIR_HEALTH_PORT=str(server.server_address[1]))
        try:
            self.assertEqual(subprocess.run(["bash", HEALTHCHECK], env=env, timeout=10).returncode, 0)
            Handler.status = 503
            r = subprocess.run(["bash", HEALTHCHECK], env=env, capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 1)
            self.assertIn("503", r.stderr)
        finally:
            server.shutdown()
            server.server_close()
        with socket_closed_port() as port:
            r = subprocess.run(["bash", HEALTHCHECK], env=dict(os.environ, KVASIR_HEALTH_PORT=str(port)),
                               capture_output=True, timeout=10)
            self.assertNotEqual(r.returncode, 0)


class socket_closed_port:
    """A loopback port with nothing listening on it."""

    def __enter__(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    unittest.main(verbosity=2)
