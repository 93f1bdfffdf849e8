# One setup path for everything; every target below runs it first (idempotent).
PY := .venv/bin/python

.PHONY: setup test
setup:
	bash tools/setup.sh

test: setup
	$(PY) -m pytest -q tests
