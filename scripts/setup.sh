#!/usr/bin/env bash
# Set up everything circuitsim needs on a fresh Debian machine with Python 3.11:
# ngspice + libngspice (for the reference harness and tests), CPU torch 2.13.0, the package.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ngspice >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q 'libngspice\.so '; then
    echo "setup: installing ngspice and libngspice0-dev (apt)" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ngspice libngspice0-dev >/dev/null
fi

PY=${PYTHON:-python3}
# torch first and pinned: 2.13.0 is the CPU build (a bare `torch` would pull a multi-GB CUDA build)
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore torch==2.13.0
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test]"
