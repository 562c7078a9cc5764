# make train   — set up .venv (first time) and train the 2-minute recipe (experiment=recipe_2min, the tuned
#                LFByteTransformer for that budget) on the embedded default corpus; RECIPE=... picks another
# make test    — set up .venv (first time), lint, and run the whole test suite (fast, then slow)
# TORCH=...    — the torch requirement; the default pin takes the CPU wheel on CPU-only dev boxes.
#                On a GPU machine: make setup TORCH=torch   (pulls the CUDA build)
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
RECIPE ?= recipe_2min

.PHONY: setup train test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,cluster]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(PY) -m lfbyte.train experiment=$(RECIPE) data=text trainer.progress=true

lint: setup
	$(PY) -m ruff check lfbyte tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

test: lint
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
