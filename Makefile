# Two commands for a fresh machine:  `make app` (the dashboard on the bundled sample model)
# and `make test` (the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: app eval test test-all lint samples clean

$(BIN)/squeezelab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" || $(BIN)/python -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install --quiet -e ".[dev,gguf,ray]"
	touch $@

app: $(BIN)/squeezelab
	$(BIN)/squeezelab app

eval: $(BIN)/squeezelab
	$(BIN)/squeezelab eval --model sample:teacher

test: $(BIN)/squeezelab
	$(BIN)/python -m pytest

test-all: $(BIN)/squeezelab
	$(BIN)/python -m pytest -m ""

lint: $(BIN)/squeezelab
	$(BIN)/ruff check .

samples: $(BIN)/squeezelab
	$(BIN)/squeezelab build-samples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
