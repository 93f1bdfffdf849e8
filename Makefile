# One setup path for everything; every target below runs it first (idempotent).
PY := .venv/bin/python

.PHONY: setup test
setup:
	bash tools/setup.sh

test: setup
	$(PY) -m pytest -q tests

# Every benchmark, figures printed (BENCH_ARGS e.g. "--scale full", "--device cuda --amp").
.PHONY: bench
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)
