# ae-pipeline: the two commands of the README, and the ones around them.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test lint format bench bench-deps bench-quick soak kafka-up kafka-down clean

setup:  ## virtual env, jars, Prism, data sets (idempotent; fast on a second run)
	@bash deploy/local/bootstrap.sh

demo: setup  ## the main job end to end on embedded defaults (local files, local broker, local runner)
	$(PY) -m pipelines.demo

test: setup  ## lint, then the whole test suite against the real broker, Prism and Flink
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench-deps: setup  ## extra packages the benchmarks compare against (PyOD, river, Beam 2.70's Prism)
	@bash deploy/local/beam_anomaly_env.sh .venv --prism
	@if [ -f requirements/bench.txt ]; then .venv/bin/pip install -q --disable-pip-version-check -c requirements/lock.txt -r requirements/bench.txt; fi

bench: bench-deps  ## every benchmark; figures under benchmarks/results/, report in REPORT.md
	$(PY) -m benchmarks.run
	@if [ -f benchmarks/report.py ]; then $(PY) -m benchmarks.report; fi

bench-quick: bench-deps  ## the same at small sizes (minutes), to keep the scripts alive
	$(PY) -m benchmarks.run --quick

soak: setup
	$(PY) -m pytest -m soak tests/

kafka-up: setup  ## a local broker for manual use (prints its address)
	$(PY) -m ae_pipeline.local.kafka_broker start

kafka-down:
	$(PY) -m ae_pipeline.local.kafka_broker stop

clean:
	rm -rf .pytest_cache .ruff_cache out logs
