# jobgate: `make run` (everything on embedded defaults) and `make test` (the whole gate).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check fmt unit integration e2e bench chaos clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

## make run: set up, migrate and start API + worker + simulated upstream + Redis on embedded defaults
run: $(STAMP)
	$(BIN)/jobgate dev

## make test: set up, then the formatter check, linter, type checker, import contracts and all tests
test: $(STAMP) check
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

## make bench: every benchmark in bench/, figures as ratios to baselines run beside them
bench: $(STAMP)
	$(BIN)/jobgate bench

## make chaos: the full-size chaos run (5,000 jobs, workers SIGKILLed, Redis crashed once)
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
