# One setup path for everything; every target below runs it first (idempotent).
PY := .venv/bin/python

.PHONY: setup test demo bench
setup:
	bash tools/setup.sh

test: setup
	$(PY) -m pytest -q tests

# GALW end to end on CPU: SynthPS, untrained baseline, both GALW trainings, evaluation, report.
demo: setup
	$(PY) tools/demo.py

# Every benchmark, figures printed (BENCH_ARGS e.g. "--scale full", "--device cuda --amp").
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)
