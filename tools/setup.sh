#!/usr/bin/env bash
# One setup path for everything (make setup, make test, make demo, CI).
# Idempotent: a stamp holding the hash of this script and setup.cfg (plus, for the second
# venv, the wheel's name) skips work when nothing changed, so a second run takes seconds.
#
# .venv          pinned deps + detectron2 (an official build already there is kept; otherwise
#                PyPI's pb1-detectron2==0.6 in pure-Python mode, completed by galw_core/compat.py).
# .venv-d2main   only when ../shared/wheels exists (developers, CI): detectron2 upstream main from its
#                wheel over .venv's pinned deps (a .pth adds .venv's site-packages after its own, so the
#                5.5 GB torch is installed once), so `make test` runs the suite on both builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
WHEELS=${GALW_WHEELS:-../shared/wheels}  # a folder elsewhere: GALW_WHEELS=/path make test
want=$(cat tools/setup.sh setup.cfg | sha256sum | cut -d' ' -f1)

up_to_date() {  # venv stamp
  [ -f "$1/.galw-setup-stamp" ] && [ "$(cat "$1/.galw-setup-stamp")" = "$2" ] \
    && "$1/bin/python" -c "import galw, detectron2.modeling" 2>/dev/null
}

pinned_deps() {  # venv
  [ -x "$1/bin/python" ] || "$PY" -m venv "$1"
  local pip="$1/bin/python -m pip --disable-pip-version-check"
  # torch/torchvision are served from this platform's disk for Python 3.11.
  $pip install -q "torch==2.14.1" "torchvision==0.29.1"
  $pip install -q "numpy>=1.26,<3" "fvcore==0.1.5.post20221221" "iopath==0.1.9" \
    "pycocotools==2.0.10" "scipy>=1.13,<2" "scikit-learn>=1.5,<2" \
    "opencv-python-headless>=4.10,<5" "yacs==0.1.8" "tensorboard>=2.17,<3" \
    "matplotlib>=3.9,<4" "tqdm>=4.66,<5" "pytest>=8,<10" "pytest-xdist==3.8.0" "pytest-cov==7.1.0" "Pillow>=10" \
    "cloudpickle" "tabulate" "termcolor" "omegaconf>=2.1,<2.4" "hydra-core>=1.1" \
    "pyyaml" "setuptools" "wheel" "ruff==0.17.6"
  # ONNX export (torch.onnx.export dynamo=True needs onnxscript) and onnxruntime inference (setup.cfg's extra "onnx").
  $pip install -q "onnx==1.23.2" "onnxruntime==1.32.0" "onnxscript==0.7.2"
}

install_project() {  # venv stamp
  "$1/bin/python" -m pip --disable-pip-version-check install -q --no-deps --no-build-isolation -e .
  "$1/bin/python" -c "import galw, detectron2, detectron2.modeling, galw_core.compat as c; \
print('[setup] $1: galw and detectron2 import OK (compiled ops:', c.has_compiled_ops(), ')')"
  echo "$2" > "$1/.galw-setup-stamp"
}

VENV=.venv
if up_to_date "$VENV" "$want"; then
  echo "[setup] $VENV is up to date"
else
  pinned_deps "$VENV"
  PIP="$VENV/bin/python -m pip --disable-pip-version-check"
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
  install_project "$VENV" "$want"
fi

# The official detectron2 (upstream main), from the wheel beside the checkout.
VENV2=.venv-d2main
wheel=$(ls "$WHEELS"/detectron2-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "[setup] note: $WHEELS has no detectron2 wheel (normal on a user's machine):" \
       "the official-detectron2 venv $VENV2 is not made and its test leg is skipped"
  exit 0
fi
want2=$(printf '%s %s' "$want" "$(basename "$wheel")" | sha256sum | cut -d' ' -f1)
if up_to_date "$VENV2" "$want2"; then
  echo "[setup] $VENV2 is up to date"
else
  rm -rf "$VENV2"
  "$PY" -m venv "$VENV2"
  site_packages() { "$1/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }
  # site.addsitedir also runs .venv's own .pth files; this venv's site-packages stays first on sys.path,
  # so its detectron2 is the one imported.
  echo "import site; site.addsitedir('$(site_packages "$VENV")')" > "$(site_packages "$VENV2")/galw_pinned_deps.pth"
  "$VENV2/bin/python" -m pip --disable-pip-version-check install -q --no-deps "$wheel"
  install_project "$VENV2" "$want2"
fi
