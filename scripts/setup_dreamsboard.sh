#!/usr/bin/env bash
# The seed's library, dreamsboard 0.4.0, in its own venv (.venv-dreamsboard) for the store
# round-trip tests: it pins langchain 0.1, which cannot share a venv with deepstep's langchain 1.x.
# Idempotent; about 20 s the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-dreamsboard/bin/python ]; then
  "$PYTHON" -m venv .venv-dreamsboard
fi
if ! .venv-dreamsboard/bin/python -c "import dreamsboard.engine.storage.task_step_store.simple_task_step_store" 2>/dev/null; then
  .venv-dreamsboard/bin/python -m pip install --quiet dreamsboard==0.4.0
fi
