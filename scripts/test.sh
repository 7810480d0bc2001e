#!/usr/bin/env bash
# Run the test suite (no network, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest "$@"
