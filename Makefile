# One setup path for everything; every target below runs it first (idempotent).
PY := .venv/bin/python

.PHONY: setup test demo
setup:
	bash tools/setup.sh

test: setup
	$(PY) -m pytest -q tests

# GALW end to end on CPU (< 20 min on 2 cores): SynthPS, untrained baseline, both GALW trainings, report.
demo: setup
	$(PY) tools/demo.py
