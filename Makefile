# The README's quick start: `make train` and `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lightning_micro-installed

.PHONY: install train test lint bench-baselines clean-runs

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml changes; otherwise the stamp makes the set-up a no-op.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) train.py $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

lint: install
	$(PY) -m ruff check .

# Dense MNIST baselines (needs LM_DATA_DIR pointing at MNIST; about 5 minutes on 2 cores).
bench-baselines: install
	$(PY) bench/baselines.py

clean-runs:
	rm -rf logs
