# Two commands for a new user: `make serve` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch for export and tests; on a GPU host set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
MODEL ?= Qwen/Qwen3-Embedding-0.6B
MODEL_REPOSITORY ?= model_repository
MODEL_NAME ?= qwen3_embedding
BACKEND ?= python
PRECISION ?= fp32
GRPC_PORT ?= 50051
HTTP_PORT ?= 8080
DEV_MODEL_DIR ?= .cache/dev-model
PYTEST_ARGS ?=

export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: serve test venv proto lint export clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]" "$(TORCH_SPEC)"
	# The wheel holds service/ only; export/ and devtools/ (the `export`, `dev-model`, `bench` commands)
	# are imported from this checkout, so put it on the venv's path.
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "qwen3-embed-checkout.pth").write_text("$(CURDIR)\n")'
	touch $@

venv: $(BIN)/.installed

proto: venv
	$(BIN)/python -m devtools.proto_gen

# `make serve`: set-up, export of MODEL when the repository lacks it, then Triton + facade.
serve: venv
	$(BIN)/qwen3-embed serve --model $(MODEL) --model-repository $(MODEL_REPOSITORY) --name $(MODEL_NAME) \
		--backend $(BACKEND) --precision $(PRECISION) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT)

test: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy service export devtools indexing

clean:
	rm -rf $(VENV) .cache
