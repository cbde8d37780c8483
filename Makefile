# Two commands do all the set-up: `make run` starts the service, `make test` passes the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-use bench-replica bench-audit clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/keyledger serve $(ARGS)

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m scripts.bench_ledger $(ARGS)

bench-use: $(STAMP)
	$(BIN)/python -m scripts.bench_key_use $(ARGS)

bench-replica: $(STAMP)
	$(BIN)/python -m scripts.bench_replica $(ARGS)

bench-audit: $(STAMP)
	$(BIN)/python -m scripts.bench_audit $(ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
