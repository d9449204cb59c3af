# ae-pipeline: the two commands of the README, and the ones around them.
SHELL := /bin/bash
PY := .venv/bin/python
# The Flink-compatible environment (Beam 2.62.0): README "Beam versions".
PY_262 := .venv-beam-2.62/bin/python
PYTEST_ARGS ?=
# Which tests run where: everything but the tests that need Beam 2.62's Java jars on Beam 2.77;
# those (Flink runner, KafkaIO expansion service) and the version-gate tests on Beam 2.62.
MAIN_TESTS := not flink and not beam_jars
PINNED_TESTS := flink or beam_jars or both_beams

.PHONY: setup demo test lint format bench bench-deps bench-quick soak kafka-up kafka-down clean

setup:  ## virtual env, jars, Prism, data sets (idempotent; fast on a second run)
	@bash deploy/local/bootstrap.sh

demo: setup  ## the main job end to end on embedded defaults (local files, local broker, local runner)
	$(PY) -m pipelines.demo

test: setup  ## lint, then the test suite on Beam 2.77 (FnApiRunner, Prism), then Flink on Beam 2.62
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(PY) -m pytest -m "$(MAIN_TESTS)" $(PYTEST_ARGS)
	$(PY_262) -m pytest -m "$(PINNED_TESTS)" $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench-deps: setup  ## extra packages the benchmarks compare against (PyOD, river, sktime)
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
