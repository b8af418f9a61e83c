# Two commands on a fresh machine:
#   make serve   install sqlgate and serve the bundled example project (DuckDB, no external service)
#   make test    install the test dependencies and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# the example's database is built here, not inside the package template examples/shop links to
STATE  ?= .state

.PHONY: serve test lint bench profile install install-test install-bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

# compileall: bytecode for the editable source, also where PYTHONDONTWRITEBYTECODE is set (else every
# server and CLI process a test starts compiles sqlgate's modules again)
install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m compileall -q src
	cd tests/idp && npm ci --no-audit --no-fund --loglevel=error
	cd tests/conformance && npm ci --no-audit --no-fund --loglevel=error

serve: install
	@echo "sqlgate is installed as $(CURDIR)/$(BIN)/sqlgate; to use it elsewhere: export PATH=\"$(CURDIR)/$(BIN):\$$PATH\""
	SQLGATE_DB_PATH="$(CURDIR)/$(STATE)/shop.duckdb" SQLGATE_AUDIT_DATABASE="$(CURDIR)/$(STATE)/audit.db" \
		$(BIN)/sqlgate serve --project examples/shop --transport http --host $(HOST) --port $(PORT)

lint: install-test
	$(BIN)/ruff check .

test: install-test lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

install-bench: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"

# the whole comparison (~10 min on 2 cores), and the README's benchmark table regenerated from it
bench: install-bench
	$(BIN)/python benchmarks/run.py --write-readme

# where a call's CPU goes: py-spy's top frames for the trivial call, 1,000 rows, JWT and OAuth-proxy tokens
profile: install-bench
	$(BIN)/python benchmarks/profile_calls.py

clean:
	rm -rf $(VENV) $(STATE) .pytest_cache .ruff_cache src/*.egg-info
