#!/usr/bin/env bash
# Set up and run the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_dreamsboard.sh  # dreamsboard 0.4.0 in its own venv, for the store round-trip tests
.venv/bin/ruff check --quiet src tests benchmarks
.venv/bin/ruff format --check --quiet src tests benchmarks
.venv/bin/mypy  # src/deepstep, configured in pyproject.toml ([tool.mypy])
.venv/bin/python -m pytest -q "$@"
