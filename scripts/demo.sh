#!/usr/bin/env bash
# Set up and run the main job offline: "What is a loss function?" over the bundled demo
# corpus, on the embedded model (SmolLM2-135M-Instruct served by llama.cpp on 127.0.0.1).
# With OPENAI_BASE_URL set (and OPENAI_API_KEY, DEEPSTEP_MODEL), that server is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/deepstep run "${1:-What is a loss function?}"
