#!/usr/bin/env bash
# Sets up ./.venv with the test extras if needed, then runs the whole test suite (slow real conversions included).
# Quick loop: scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh --test
exec .venv/bin/python -m pytest "$@"
