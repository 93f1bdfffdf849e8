# One setup path for everything; every target below runs it first (idempotent).
PY := .venv/bin/python
# The official detectron2 (upstream main) venv, made by setup when ../shared/wheels has its wheel.
PY_D2MAIN := .venv-d2main/bin/python
# gpu-check runs on a GPU machine's own Python (with its torch), not on .venv.
GPU_PY ?= python3
GPU_WHEELS := .gpu-wheels

.PHONY: setup test demo bench results ablation ablation-report gpu-check gpu-wheels
setup:
	bash tools/setup.sh

# The suite runs in TEST_WORKERS pytest-xdist processes (one torch thread each, tests/conftest.py),
# a test file per worker (--dist loadfile: a module's fixtures are built once), in the order
# tests/conftest.py gives (files with the most slow tests first; xdist's own reorder, by test count,
# is off).
TEST_WORKERS ?= 2
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The suite's temporary folder (TMPDIR of pytest, hence of its tmp_paths): /dev/shm where it has at
# least 4 GiB free, else $$TMPDIR or /tmp. The resume tests write and fsync a checkpoint every
# iteration; in RAM that costs no disk wait (test_resume_nae.py: 30 s instead of 43 s of wall time).
SUITE_TMPDIR ?= $(shell [ -d /dev/shm ] && [ "$$(df -P -BG /dev/shm | awk 'NR==2 {print $$4+0}')" -ge 4 ] \
	&& echo /dev/shm || echo "$${TMPDIR:-/tmp}")

# One leg of the suite: $(1) the venv's Python, $(2) what it runs on, $(3) more pytest options.
# It prints the temp folder's free space first (the legs' tmp_paths live there) and its wall time
# last, and sets status=1 on failure, so the other leg still runs.
suite_leg = echo "== the suite on $(2); free space for its tmp_paths in $(SUITE_TMPDIR):"; \
	df -h "$(SUITE_TMPDIR)" | tail -1; \
	start=$$(date +%s); \
	TMPDIR="$(SUITE_TMPDIR)" $(1) -m pytest -q --tb=short $(PYTEST_PARALLEL) $(3) tests || status=1; \
	echo "== wall time of the suite on $(2): $$(( $$(date +%s) - start )) s"

# Lint (ruff, configured in pyproject.toml), then the suite with its slowest tests listed, on
# pb1-detectron2 0.6 (.venv) and, where setup made it, on the official detectron2 (.venv-d2main);
# both legs run, and the target fails if either does.
test: setup
	$(PY) -m ruff check .
	@status=0; \
	$(call suite_leg,$(PY),pb1-detectron2 0.6 (.venv),--durations=15); \
	if [ -x $(PY_D2MAIN) ]; then \
	  $(call suite_leg,$(PY_D2MAIN),the official detectron2 (upstream main wheel in .venv-d2main),-p no:cacheprovider); \
	else \
	  echo "note: no .venv-d2main (../shared/wheels absent): the suite ran on pb1-detectron2 0.6 only"; \
	fi; \
	exit $$status

# The suite without the tests marked slow (setup.cfg), on .venv: every package module still runs.
test-fast: setup
	@start=$$(date +%s); status=0; \
	TMPDIR="$(SUITE_TMPDIR)" $(PY) -m pytest -q --tb=short $(PYTEST_PARALLEL) -m "not slow" --durations=10 tests || status=1; \
	echo "== wall time of the fast suite: $$(( $$(date +%s) - start )) s"; \
	exit $$status

# GALW end to end on CPU: SynthPS, untrained baseline, both GALW trainings, evaluation, report.
demo: setup
	$(PY) tools/demo.py

# Every benchmark, figures printed (BENCH_ARGS e.g. "--scale full", "--device cuda --amp").
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# The docs' results tables rewritten from results/<category>/<name>.json (tools/render_results.py).
results: setup
	$(PY) tools/render_results.py

# The ablation study (tools/ablation_spec.yaml) on each of its datasets in turn, ABLATION_JOBS runs side
# by side; finished runs are skipped and killed ones resume, so it can be stopped and started again; then
# the report. Runs in output/ablation, their result files in results/ablation/<data>/.
ABLATION_JOBS ?= 2
ABLATION_DATA = data0 data1 data0_long
ablation: setup
	for d in $(ABLATION_DATA); do $(PY) tools/ablation.py --jobs $(ABLATION_JOBS) --out output/ablation --data $$d || exit 1; done
	$(MAKE) ablation-report

# The study's tables, figures and docs from the committed result files alone (trains nothing).
ablation-report: setup
	for d in $(ABLATION_DATA); do $(PY) tools/ablation.py --report --data $$d || exit 1; done
	$(PY) tools/render_results.py

# On a fresh GPU machine (no setup, no internet): gpu tests, ROI-AlignPS* R-50 AMP training with
# GALW probing, inference beside torchvision; one table (benchmarks/gpu_check.py).
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py

# Where a package registry is reachable: the wheels gpu-check installs from (Python 3.12,
# Linux x86_64), plus detectron2's source when ../shared/wheels has it. Bring .gpu-wheels along.
gpu-wheels:
	$(GPU_PY) -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
	  -d $(GPU_WHEELS) "numpy>=1.26,<3" "scipy>=1.13,<2" "scikit-learn>=1.5,<2" "opencv-python-headless>=4.10,<5" \
	  "pycocotools==2.0.10" "iopath==0.1.9" "yacs==0.1.8" "matplotlib>=3.9,<4" "tqdm>=4.66,<5" "pytest>=8,<10" \
	  "Pillow>=10" cloudpickle tabulate termcolor "omegaconf>=2.1,<2.4" "hydra-core>=1.1" pyyaml setuptools wheel
	$(GPU_PY) -m pip download -q --no-deps --no-binary=:all: -d $(GPU_WHEELS) "fvcore==0.1.5.post20221221"
	-cp ../shared/wheels/detectron2-main-*.tar.gz $(GPU_WHEELS)/ 2>/dev/null
