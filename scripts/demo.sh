#!/usr/bin/env bash
# Set up and run the main job: "What is a loss function?" over the scikit-learn user guide
# (fetched once from Debian's python-sklearn-doc; without network the bundled demo corpus is
# used), on the embedded model (SmolLM2-135M-Instruct served by llama.cpp on 127.0.0.1).
# With OPENAI_BASE_URL set (and OPENAI_API_KEY, DEEPSTEP_MODEL), that server is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/deepstep corpus fetch sklearn \
    || echo "demo: cannot fetch the scikit-learn user guide (see above); using the bundled demo corpus" >&2
exec .venv/bin/deepstep run "${1:-What is a loss function?}"
