# jobgate: `make run` (everything on embedded defaults) and `make test` (the whole gate).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Exact versions with their hashes, written by `make lock`: the runtime's for the image, and
# runtime + embedded + dev extras (the same pins) for the venv of `make run` and `make test`.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock

.PHONY: run test check lock fmt unit integration e2e bench chaos clean

# Everything from the dev lock, hash-checked, then jobgate itself without dependencies, built
# by the lock's setuptools (no build isolation, so no unpinned download at any step).
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# The lock's own pip first (hash-checked): an older pip in require-hashes mode reads an
	# extra's requirement (pip-audit's CacheControl[filecache]) as unpinned and fails whenever
	# the index has a newer release of it.
	awk '/^pip==/{p=1;print;next} p&&/^[a-z]/{exit} p' $(DEV_LOCK) > $(VENV)/pip.lock
	$(BIN)/python -m pip install --quiet --require-hashes -r $(VENV)/pip.lock
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## make run: set up, migrate and start API + worker + simulated upstream + Redis on embedded defaults
run: $(STAMP)
	$(BIN)/jobgate dev

## make test: set up, then the formatter check, linter, type checker, import contracts and all tests
test: $(STAMP) check
	$(BIN)/python -m pytest -q

# Known vulnerabilities accepted in the locks: one `--ignore-vuln ID` per line, each with its
# reason in a comment beside it. None today.
AUDIT_IGNORE :=

## make check: formatter, linter, types, import contracts, known vulnerabilities in the locked
## versions (pip-audit, at most 5 min) and the code's security lint (bandit, fails on high)
check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	timeout 300 $(BIN)/pip-audit --disable-pip --require-hashes --timeout 30 --progress-spinner off \
		$(AUDIT_IGNORE) -r $(LOCK) -r $(DEV_LOCK)
	$(BIN)/bandit -q -c pyproject.toml -r . --severity-level high

# What installs the project is locked with it: pip, and setuptools for the build above.
LOCK_TOOLS := "pip>=24" "setuptools>=70.1"
LOCK_FLAGS ?=
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(LOCK_FLAGS)

## make lock: resolve pyproject.toml's ranges into the lock files again, keeping each pin that
## still fits (make lock LOCK_FLAGS=--upgrade moves every pin to the newest release allowed)
lock: $(STAMP)
	printf '%s\n' $(LOCK_TOOLS) | $(UV_COMPILE) pyproject.toml - --extra embedded --extra dev --extra azure -o $(DEV_LOCK)
	printf '%s\n' $(LOCK_TOOLS) | $(UV_COMPILE) pyproject.toml - -c $(DEV_LOCK) -o $(LOCK)

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
