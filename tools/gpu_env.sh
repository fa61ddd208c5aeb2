#!/usr/bin/env bash
# Make soco-d2 importable on the lent GPU machine (Python 3.12 with torch, torchvision, numpy,
# OpenCV preinstalled; no package registry there). Needs the wheels of ../shared/gpu/wheels
# copied into .gpu_wheels/ of this checkout (`make gpu-wheels`, a git-ignored folder) and
# carried along (device tool: carry [".gpu_wheels"]). Then, in the same command:
#
#     bash tools/gpu_env.sh && . .gpu_site/env.sh && python benchmarks/gpu_step.py --out "$OUT/gpu_step.json"
#
# What it does (ENVIRONMENT.md's verified recipe): pip-installs every wheel except
# sal-detectron2 with --no-deps (pip refuses sal's cp310 tag, and one refused wheel makes pip
# install nothing), unzips only the detectron2/ package of the sal wheel (its compiled _C is for
# another torch; Detectron2 falls back to torchvision ops) into .gpu_site/, adds setuptools 80.9
# when pkg_resources is missing (detectron2.model_zoo imports it), and writes .gpu_site/env.sh,
# which puts .gpu_site and the repository on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=.gpu_wheels
[ -d "$wheels" ] || { echo "no $wheels/: run 'make gpu-wheels' here and carry .gpu_wheels" >&2; exit 1; }
py=${PYTHON:-python}
others=$(ls "$wheels"/*.whl | grep -v -e sal_detectron2 -e setuptools)
$py -m pip install -q --no-deps --no-index $others
$py -c "import pkg_resources" 2>/dev/null || $py -m pip install -q --no-deps --no-index "$wheels"/setuptools-*.whl
rm -rf .gpu_site && mkdir -p .gpu_site
$py - "$wheels" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/sal_detectron2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith("detectron2/") and not m.endswith(".so")]
    z.extractall(".gpu_site", members)
print(f"detectron2 ({len(members)} files) from {wheel} -> .gpu_site/")
PY
echo "export PYTHONPATH=$PWD/.gpu_site:$PWD\${PYTHONPATH:+:\$PYTHONPATH}" > .gpu_site/env.sh
PYTHONPATH=$PWD/.gpu_site:$PWD $py -c "import torch, detectron2, soco_d2; from detectron2 import model_zoo; \
print('soco_d2 ready: torch', torch.__version__, 'cuda', torch.cuda.is_available())"
