#!/usr/bin/env bash
# One setup path for everything (make setup, make test, make demo, CI).
# Idempotent: a stamp holding the hash of this script and setup.cfg skips work
# when nothing changed, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.galw-setup-stamp
want=$(cat tools/setup.sh setup.cfg | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$VENV/bin/python" -c "import galw, detectron2.modeling" 2>/dev/null; then
  echo "[setup] .venv is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
# torch/torchvision are served from this platform's disk for Python 3.11.
$PIP install -q "torch==2.14.1" "torchvision==0.29.1"
$PIP install -q "numpy>=1.26,<3" "fvcore==0.1.5.post20221221" "iopath==0.1.9" \
  "pycocotools==2.0.10" "scipy>=1.13,<2" "scikit-learn>=1.5,<2" \
  "opencv-python-headless>=4.10,<5" "yacs==0.1.8" "tensorboard>=2.17,<3" \
  "matplotlib>=3.9,<4" "tqdm>=4.66,<5" "pytest>=8,<10" "Pillow>=10" \
  "cloudpickle" "tabulate" "termcolor" "omegaconf>=2.1,<2.4" "hydra-core>=1.1" \
  "pyyaml" "setuptools" "wheel" "ruff==0.17.6"
# detectron2: keep an importable build with compiled ops; otherwise install the
# PyPI sdist pb1-detectron2==0.6 in pure-Python mode (its C++ sources are absent).
if ! "$VENV/bin/python" -c "import detectron2._C" 2>/dev/null; then
  if ! "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
    tmp=$(mktemp -d)
    $PIP download -q --no-deps --no-build-isolation -d "$tmp" "pb1-detectron2==0.6"
    tar -xzf "$tmp"/pb1-detectron2-0.6.tar.gz -C "$tmp"
    src="$tmp/pb1-detectron2-0.6"
    "$VENV/bin/python" tools/patch_detectron2_setup.py "$src/setup.py"
    $PIP install -q --no-deps --no-build-isolation "$src"
    rm -rf "$tmp"
  fi
fi
$PIP install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import galw, detectron2.modeling; print('[setup] galw and detectron2 import OK')"
echo "$want" > "$STAMP"
