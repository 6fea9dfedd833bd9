#!/usr/bin/env bash
# Install nrp-deploy as a user would and run it away from the checkout.
#
# Builds the sdist and, from it, the wheel (so the sdist is proved complete), checks both with
# `twine check --strict`, installs the wheel into a fresh virtual environment outside the checkout with the
# extras the demo uses, and from an unrelated empty folder runs `nrp --version`, `nrp demo` and
# `load_purifier("default")`; then installs it again, with the `cpu` extra only (no torch), into a second
# environment and purifies there with the default purifier (its shipped ONNX; `auto` times the shipped FP32
# and INT8, and `nrp info` must show the recorded choice). Nothing of the checkout is on the path there, so
# a file the package needs at run time but does not carry fails here. The fresh environment gets its
# packages from the same indexes and pip cache as scripts/setup.sh (nothing is shared with .venv, so a
# missing dependency shows).
# Usage: bash scripts/check_wheel.sh        (PY: the interpreter that has `build` and `twine`; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nrp-wheel-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { echo "check_wheel: $*" >&2; }

step "building the sdist and the wheel"
"$PY" -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
"$PY" -m twine check --strict "$WORK"/dist/*
WHEEL=$(ls "$WORK"/dist/*.whl)
VERSION=$("$PY" -c 'import re, sys; print(re.search(r"^__version__ = \"(.+)\"$", open("nrp_deploy/__init__.py").read(), re.M)[1])')
ls -l "$WORK"/dist >&2

step "installing $(basename "$WHEEL") into a fresh virtual environment"
BASE=$("$PY" -c 'import sys; print(sys._base_executable)')
"$BASE" -m venv "$WORK/venv"
V="$WORK/venv/bin"
pip_install() { "$V/python" -m pip install -q "$@" >>"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }; }
pip_install --upgrade pip
pip_install "torch==${NRP_TORCH_VERSION:-2.13.0}"  # the CPU build first, as README says
pip_install "$WHEEL[cpu,export,attacks]"            # what `nrp demo` uses: ONNX Runtime, the exporter, SSP

mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
# a clean artifact cache (the demo exports the default purifier to ONNX) and an empty models folder
export NRP_DEPLOY_CACHE="$WORK/cache" NRP_DEPLOY_MODELS_DIR="$WORK/models"
unset PYTHONPATH
step "nrp --version"
[ "$("$V/nrp" --version)" = "nrp-deploy $VERSION" ]
step "nrp demo (from $PWD)"
"$V/nrp" demo -o demo_out --no-progress
for f in report.json report.md grid_ssp.png; do [ -s "demo_out/$f" ] || { echo "demo wrote no $f" >&2; exit 1; }; done
step "load_purifier(\"default\")"
"$V/python" - <<'PY'
import sysconfig
from pathlib import Path

import numpy as np

import nrp_deploy
from nrp_deploy.models.registry import resolve
from nrp_deploy.runtime import load_purifier

site = Path(sysconfig.get_paths()["purelib"]).resolve()
for what, path in (("package", Path(nrp_deploy.__file__)), ("default purifier", resolve("default").path)):
    assert site in path.resolve().parents, f"the {what} came from {path}, not from the installed wheel in {site}"
purifier = load_purifier("default")
image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
out = purifier(image)
assert out.shape == image.shape and out.dtype == np.uint8
print(f"load_purifier('default'): {purifier.backend_name}, {resolve('default').path}")
PY

step "installing $(basename "$WHEEL")[cpu] alone (no torch) into a second fresh virtual environment"
"$BASE" -m venv "$WORK/slim"
S="$WORK/slim/bin"
"$S/python" -m pip install -q "$WHEEL[cpu]" >>"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }
! "$S/python" -c "import torch" 2>/dev/null || { echo "the cpu extra installed torch" >&2; exit 1; }
export NRP_DEPLOY_CACHE="$WORK/slim-cache"
step "nrp purify --model default without torch (from $PWD)"
"$S/nrp" purify "$("$S/python" -c 'from nrp_deploy.assets import examples_dir; print(examples_dir())')" \
    -o slim_out --model default --no-progress
[ "$(ls slim_out/*.png | wc -l)" -ge 4 ] || { echo "the slim install purified no photos" >&2; exit 1; }
step "nrp info --model default without torch: auto's recorded choice among the shipped FP32 and INT8"
"$S/nrp" info --model default | tee "$WORK/slim-info.txt" | grep '^auto' >&2
grep -q "auto chose onnxruntime .*(cached)" "$WORK/slim-info.txt" || { echo "auto recorded no choice" >&2; exit 1; }
step "passed"
