# One setup path for everything; every target below runs it first (idempotent).
PY := .venv/bin/python

.PHONY: setup test demo bench
setup:
	bash tools/setup.sh

# Lint (ruff, configured in pyproject.toml), then the suite with its slowest tests listed.
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=15 tests

# GALW end to end on CPU: SynthPS, untrained baseline, both GALW trainings, evaluation, report.
demo: setup
	$(PY) tools/demo.py

# Every benchmark, figures printed (BENCH_ARGS e.g. "--scale full", "--device cuda --amp").
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)
