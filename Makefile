# Two commands on a fresh machine: `make quickstart` (set up, then the main job) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip -qq --disable-pip-version-check

.PHONY: setup quickstart test bench clean browser

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	HF_HUB_OFFLINE=1 $(BIN)/fsl quickstart

# The demo's browser test drives Debian's headless Chromium; without it that one test is skipped.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "WARNING: could not install chromium + chromium-driver; the browser test will be skipped" >&2

test: setup browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .fsl results runs
