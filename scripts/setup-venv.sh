#!/usr/bin/env bash
# Creates ./.venv (once) and installs rknn-dropbox with rknn-toolkit2 and a CPU-only torch.
# Idempotent: re-running does nothing unless requirements/ or pyproject.toml changed.
# Usage: scripts/setup-venv.sh [--test] [--tensorflow]   (--test includes TensorFlow: CI runs the real TF tests,
#        and installs chromium and bindfs with apt when missing and run as root: the status page tests and the
#        share-outage test use them)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${RKNN_DROPBOX_VENV:-.venv}
# torch: the toolkit only needs `import torch` to work, and a CPU build is enough.  torch==2.13.0 is a CPU
# wheel where the machine's pip offers one (this project's build boxes); elsewhere point TORCH_INDEX_URL at a
# CPU-only index so pip never pulls the multi-GB CUDA stack.
TORCH_SPEC=${RKNN_DROPBOX_TORCH:-torch==2.13.0}
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="${extras:+$extras,}test,tensorflow" ;;
    --tensorflow) extras="${extras:+$extras,}tensorflow" ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done
# The status page tests drive a real headless chromium (Debian's package): installed with apt when it is missing
# and this runs as root (CI does); otherwise those tests skip and say why.
ensure_chromium() {
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (apt) for the status page tests" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 ||
      echo "setup: warning: apt could not install chromium; the status page tests will skip" >&2
  else
    echo "setup: no chromium (the status page tests will skip): run 'apt-get install chromium' as root" >&2
  fi
}
# The share-outage test mounts a real FUSE share (bindfs) and unmounts it under a running daemon.
ensure_bindfs() {
  if command -v bindfs >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing bindfs and fuse3 (apt) for the share-outage test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bindfs fuse3; } >/dev/null 2>&1 ||
      echo "setup: warning: apt could not install bindfs; the share-outage test will skip" >&2
  else
    echo "setup: no bindfs (the share-outage test will skip): run 'apt-get install bindfs fuse3' as root" >&2
  fi
}
if [[ "$extras" == *test* ]]; then ensure_chromium; ensure_bindfs; fi
stamp_input="$(cat pyproject.toml requirements/*.txt config.example.toml; echo "$extras $TORCH_SPEC")"
stamp="$VENV/.rknn-dropbox-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(printf '%s' "$stamp_input" | sha256sum)" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v -e "^WARNING: Location" -e "dependency conflicts" -e "requires torch<=2.4.0" -e "requires setuptools>=" -e "requires opencv-python>=" -e "pip's dependency resolver" || true; }
"$VENV/bin/python" -c "import torch" 2>/dev/null || {
  echo "setup: installing $TORCH_SPEC (CPU)" >&2
  if [ -n "${TORCH_INDEX_URL:-}" ]; then pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"; else pip install "$TORCH_SPEC"; fi
}
# Never let a later resolve swap the CPU torch for the toolkit's pinned CUDA one.
pin="$VENV/.torch-pin.txt"
"$VENV/bin/python" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > "$pin"
echo "setup: installing rknn-toolkit2 (--no-deps) and its dependencies" >&2
pip install -c "$pin" -r requirements/toolkit.txt
pip install --no-deps -r requirements/rknn-toolkit2.txt
if [[ "$extras" == *tensorflow* ]]; then pip install --no-deps -r requirements/tensorflow.txt; fi
# the tests' model corpus (tests/zoo.py): torchvision + ultralytics, build-only, never the daemon's runtime
if [[ "$extras" == *test* ]]; then pip install --no-deps -c "$pin" -r requirements/test-models.txt; fi
pip install -c "$pin" -e ".${extras:+[$extras]}"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, sys
import torch
from rknn.api import RKNN  # noqa: F401  (fails loudly if the toolkit cannot import)
if torch.version.cuda:
    print(f"setup: warning: torch {torch.__version__} is a CUDA build; a CPU build is enough", file=sys.stderr)
print(f"setup: rknn-toolkit2 {md.version('rknn-toolkit2')}, torch {torch.__version__}, numpy {md.version('numpy')}", file=sys.stderr)
PY
# Every other rknn-toolkit2 version listed in config.example.toml's [toolkits] goes (--no-deps) into
# $VENV/toolkits/<version>/, through the same command users run: rknn-dropbox toolkits install VERSION.
others=$("$VENV/bin/python" - <<'PY'
import importlib.metadata as md, tomllib
versions = tomllib.load(open("config.example.toml", "rb")).get("toolkits", {}).get("versions", [])
print(" ".join(v for v in versions if v != md.version("rknn-toolkit2")))
PY
)
if [ -n "$others" ]; then
  echo "setup: installing rknn-toolkit2 $others beside it (.venv/toolkits/)" >&2
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m rknn_dropbox toolkits install $others
fi
printf '%s' "$stamp_input" | sha256sum > "$stamp"
