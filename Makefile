# Every target creates and uses .venv itself: a fresh clone needs only Python, pip and git.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo lab screenshots test lint bench reliability clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# The benchmark smoke run comes first so that the test runner's summary closes the output.
test: lint
	$(BIN)/python -m bench --tiny
	$(BIN)/python -m pytest $(PYTEST_ARGS)


demo: $(STAMP)
	$(BIN)/python -m nbdurable demo

# JupyterLab comes with the dev extra; the notebooks keep their store in notebooks/.nbdurable
# unless NBDURABLE_STORE names another. Root (as on CI and the dev machines) needs --allow-root.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# PNGs of the run view's states, taken in JupyterLab by Debian's chromium (apt-get install -y chromium).
screenshots: $(STAMP)
	$(BIN)/python tests/browser/screenshots.py docs/img

bench: $(STAMP)
	$(BIN)/python -m bench --write docs/BENCHMARKS.md

reliability: $(STAMP)
	NBDURABLE_TRIALS=$${NBDURABLE_TRIALS:-200} $(BIN)/python -m pytest tests/reliability -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .nbdurable .mypy_cache .ruff_cache .pytest_cache
