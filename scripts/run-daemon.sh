#!/usr/bin/env bash
# Sets up ./.venv if needed, then runs the daemon in the foreground on config.example.toml.
# Extra arguments go to `rknn-dropbox run` (e.g. --port 8081 --workers 1 --debug).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
exec .venv/bin/rknn-dropbox run --config config.example.toml "$@"
