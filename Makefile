# The two commands a newcomer needs:   make run   (the main job)   and   make test   (every test).
# Both create the virtualenv first when it is missing or older than the pinned requirements.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench services clean chaos

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# The embedded minute pipeline until Ctrl-C (MINUTES=N stops after N minutes). The first run
# backfills 42 days of simulated history and trains the champion (a few minutes on 2 cores).
# The threshold is the simulator's: its champion is rarely 60 % sure of anything (docs/SIGNALS.md).
run: $(STAMP)
	MLSIG_ML_INTEGRATION__SIGNALS__CONFIDENCE_THRESHOLD=$${MLSIG_ML_INTEGRATION__SIGNALS__CONFIDENCE_THRESHOLD:-0.45} \
	$(BIN)/mlsignals run --minutes $(or $(MINUTES),0)

services:
	scripts/ensure-services.sh

test: $(STAMP) services
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest --cov --cov-report=term --cov-fail-under=80

bench: $(STAMP) services
	$(BIN)/python -m benchmarks.bench_simulator
	$(BIN)/python -m benchmarks.bench_ingest
	$(BIN)/python -m benchmarks.bench_features
	$(BIN)/python -m benchmarks.bench_model
	$(BIN)/python -m benchmarks.bench_pipeline --symbols 50 100 500 --minutes 10
	$(BIN)/python -m benchmarks.bench_rest
	$(BIN)/python -m benchmarks.bench_stream
	$(BIN)/python -m benchmarks.bench_pipeline --source exchange --rest-latency-ms 150 --symbols 100 500 --minutes 10
	$(BIN)/python -m benchmarks.bench_orders

# The chaos suite: single faults against the real distributed deployment on both brokers (private
# Redis and RabbitMQ, their own databases), about 29 minutes; tables in var/chaos/summary-*.md and
# docs/RELIABILITY.md. `make test` runs only its CI subset (marker chaos_ci).
chaos: $(STAMP) services
	MLSIG_CHAOS_FULL=1 $(BIN)/pytest tests/chaos -m chaos

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .coverage
