# Two commands for a new user: `make serve` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch for export and tests; on a GPU host set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
MODEL ?= Qwen/Qwen3-Embedding-0.6B
# MODEL=dev (random weights) gets a repository of its own, so a later `make serve` of a real model never finds
# the dev export under the real model's Triton name; and the dev reranker beside it, so every README example runs.
ifeq ($(MODEL),dev)
MODEL_REPOSITORY ?= .cache/dev-repository
RERANK_MODEL ?= dev
else
MODEL_REPOSITORY ?= model_repository
# e.g. Qwen/Qwen3-Reranker-0.6B: exported (when missing) and served beside MODEL
RERANK_MODEL ?=
endif
MODEL_NAME ?= qwen3_embedding
RERANK_NAME ?= qwen3_reranker
BACKEND ?= python
PRECISION ?= fp32
GRPC_PORT ?= 50051
HTTP_PORT ?= 8080
# Where RERANK_MODEL=dev builds its checkpoint; its basename is the name the reranker is served as.
DEV_RERANKER_DIR ?= .cache/dev-reranker
PYTEST_ARGS ?=

export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: serve test venv serve-venv proto lint export clean

# The wheel holds service/ only; export/ and devtools/ (the `export`, `dev-model`, `bench` commands) are imported
# from this checkout, so put it on the venv's path.
CHECKOUT_ON_PATH = $(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "qwen3-embed-checkout.pth").write_text("$(CURDIR)\n")'

# `make serve`: what serving and export need (the serve and export extras, CPU torch), nothing else.
$(BIN)/.installed-serve: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[serve,export]" "$(TORCH_SPEC)"
	$(CHECKOUT_ON_PATH)
	touch $@

# `make test` and the tools: the dev extra (serve, export, bench, index, the client libraries the docs use,
# pytest, ruff, mypy). It holds everything serving needs, so it counts as the serve install too.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]" "$(TORCH_SPEC)"
	$(CHECKOUT_ON_PATH)
	touch $@ $(BIN)/.installed-serve

venv: $(BIN)/.installed

serve-venv: $(BIN)/.installed-serve

proto: venv
	$(BIN)/python -m devtools.proto_gen

# `make serve`: set-up, export of RERANK_MODEL and MODEL when the repository lacks them, then Triton + facade.
serve: serve-venv
ifneq ($(RERANK_MODEL),)
	@if [ ! -f "$(MODEL_REPOSITORY)/$(RERANK_NAME)/config.pbtxt" ]; then \
	  if [ "$(RERANK_MODEL)" = dev ]; then \
	    [ -f "$(DEV_RERANKER_DIR)/config.json" ] || $(BIN)/qwen3-embed dev-model --reranker --output "$(DEV_RERANKER_DIR)" || exit; \
	    source="$(DEV_RERANKER_DIR)"; \
	  else source="$(RERANK_MODEL)"; fi; \
	  $(BIN)/qwen3-embed export --model "$$source" --output "$(MODEL_REPOSITORY)" --name $(RERANK_NAME) \
	    --backend $(BACKEND) --precision $(PRECISION); \
	else echo "using the existing export in $(MODEL_REPOSITORY)/$(RERANK_NAME)"; fi
endif
	$(BIN)/qwen3-embed serve --model $(MODEL) --model-repository $(MODEL_REPOSITORY) --name $(MODEL_NAME) \
		--backend $(BACKEND) --precision $(PRECISION) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT)

test: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy service export devtools indexing benchmarks

clean:
	rm -rf $(VENV) .cache
