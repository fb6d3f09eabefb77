# The README's quick start: `make train` and `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lightning_micro-installed

.PHONY: install train test lint docs bench-baselines clean-runs

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

# The suite runs in one process per core (at most 4: each holds torch), a test file per worker so that a file's
# shared fixtures run once; every test process and the runs they start use one thread (tests/conftest.py).
# It covers tests/ and the examples in lightning_micro's docstrings (testpaths), and lists the 25 slowest tests.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25 --doctest-modules $(ARGS)

lint: install
	$(PY) -m ruff check .

# The docs site (mkdocs.yml, docs/) into site/. --strict turns every warning (a broken link or anchor, an API
# reference that does not resolve, a docstring griffe cannot read) into a failure; CI builds it the same way.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Dense MNIST baselines (needs LM_DATA_DIR pointing at MNIST; about 5 minutes on 2 cores).
bench-baselines: install
	$(PY) bench/baselines.py

clean-runs:
	rm -rf logs
