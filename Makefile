# clicklake: `make demo` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The Dagster instance is configured by ./dagster.yaml and keeps its storage in .dagster/, unless
# DAGSTER_HOME is set already (another lake's instance: README, "Your own data, end to end").
export DAGSTER_HOME ?= $(CURDIR)
# Where `make demo` writes its landing zone and lake, and what `make dev` shows.
export CLICKLAKE_ROOT ?= data/demo

.PHONY: install demo test test-deep dev bench lint clean

$(STAMP): pyproject.toml $(wildcard clicklake/platform/*.c)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install clicklake with its dev extra

demo: $(STAMP) ## generate streams and run the main job on the embedded defaults
	$(VENV)/bin/clicklake demo --root $(CLICKLAKE_ROOT)

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -n 2 -q

test-deep: $(STAMP) ## the property tests with 10x their examples (longer: a search, not a gate)
	CLICKLAKE_TEST_DEPTH=10 $(PY) -m pytest -n 2 -q $$(grep -l "^from depth import" tests/test_*.py)

dev: $(STAMP) ## the Dagster web UI on this project (http://127.0.0.1:3000)
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: $(STAMP) ## benchmarks, as ratios against baselines run side by side
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check clicklake tests benchmarks

clean:
	rm -rf .dagster data bench-results
