#!/usr/bin/env bash
# Set up and run the main job offline: "What is a loss function?" over the bundled demo corpus.
# Until the embedded local model lands, the model is deepstep's deterministic fake
# OpenAI-compatible server on 127.0.0.1 (it proves the plumbing, not answer quality).
# With OPENAI_BASE_URL set (and OPENAI_API_KEY, DEEPSTEP_MODEL), that server is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
QUESTION=${1:-"What is a loss function?"}
if [ -z "${OPENAI_BASE_URL:-}" ]; then
  log=$(mktemp)
  .venv/bin/python -m deepstep.testing.fake_llm --port 0 --latency-ms 50 >"$log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
  for _ in $(seq 1 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
  OPENAI_BASE_URL=$(grep -o 'http://127.0.0.1:[0-9]*/v1' "$log" | head -n 1)
  export OPENAI_BASE_URL
  echo "model: deepstep's fake test server at $OPENAI_BASE_URL (no real model configured)" >&2
fi
.venv/bin/deepstep run "$QUESTION"
