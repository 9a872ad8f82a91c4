"""Shared helpers of the deploy tests: where the repository and the tools are, and how to skip.

A test that lacks a tool exits with SKIP (77), which tests/deploy/CMakeLists.txt registers as
ctest's SKIP_RETURN_CODE, after printing the reason.
"""
import os
import shutil
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(REPO, "deploy")
TOOLS_BIN = os.path.join(REPO, ".deps", "deploy", "bin")
TOOLS_PY = os.path.join(REPO, ".deps", "deploy", "python")
SKIP = 77

if os.path.isdir(TOOLS_PY) and TOOLS_PY not in sys.path:
    sys.path.insert(0, TOOLS_PY)


def skip(reason):
    print(f"SKIPPED: {reason}", flush=True)
    sys.exit(SKIP)


def find_tool(name):
    """The tool from .deps/deploy/bin (scripts/install-deploy-tools.sh), else from PATH."""
    local = os.path.join(TOOLS_BIN, name)
    if os.access(local, os.X_OK):
        return local
    return shutil.which(name)


def need_tool(name, how):
    path = find_tool(name)
    if path is None:
        skip(f"{name} not found ({how})")
    return path


def need_module(name, how="scripts/install-deploy-tools.sh installs it into .deps/deploy/python"):
    try:
        return __import__(name)
    except ImportError:
        skip(f"Python module {name} not found ({how})")


def build_bin():
    """The build's bin/ folder: KVASIR_BUILD_BIN, else <repo>/build/bin."""
    return os.environ.get("KVASIR_BUILD_BIN", os.path.join(REPO, "build", "bin"))


def read(path):
    with open(path) as f:
        return f.read()
