# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv and install the project when missing or when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test soak fuzz lint format protos clean bench bench-quick

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Both services in the foreground on embedded defaults (./data); Ctrl-C stops both.
run: $(STAMP)
	$(BIN)/python scripts/run_services.py

test: $(STAMP)
	$(BIN)/python -m pytest

# The crash soak (issue #13, soak/): both shapes (SQLite + embedded Chroma;
# PostgreSQL + a Chroma server with two replicas of each service), drivers
# keeping a ledger of acknowledged operations while a seeded crasher SIGKILLs
# a random process every 2.5 s, 40 kills per shape (3 minutes at most); then nothing lost,
# nothing orphaned. Report on stdout and in soak/results/latest.json.
SOAK_SEED ?= 13
soak: $(STAMP)
	$(BIN)/python -m soak --shape both --seed $(SOAK_SEED) --kill-every 2.5 --p 1 --kills 40 --minutes 3

# The fuzz test of both live services (tests/fuzz), far longer than in
# `make test`: 20x the examples per method, fresh ones each run, and at most
# 20 minutes of fuzzing. Distinct findings also go to data/fuzz-findings.jsonl.
fuzz: $(STAMP)
	FUZZ_EXAMPLES=400 FUZZ_SECONDS=1200 FUZZ_RANDOM=1 FUZZ_REPORT=data/fuzz-findings.jsonl \
		$(BIN)/python -m pytest tests/fuzz

# The benchmark suite (issue #5): writes bench/results/latest.json and latest.md.
bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	scripts/buf.sh lint

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

protos: $(STAMP)
	scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
