# Two commands do all the set-up:  `make demo` (main job)  and  `make test` (test suite).
# Both create .venv with the exact pins of requirements-lock.txt when it is missing or stale.

SHELL := /bin/bash
# Detectron2's registry wheel (sal-detectron2) is cp310 only: find a Python 3.10.
PYTHON ?= $(shell for p in "$$(pyenv root 2>/dev/null)/versions/3.10.13/bin/python" python3.10; do \
            command -v "$$p" >/dev/null 2>&1 && "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo "$$p"; break; }; done)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA := datasets
WORKERS ?= 2

.PHONY: env demo demo-data demo-real test lock clean gpu-wheels

env: $(STAMP)

$(STAMP): requirements-lock.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.10 not found: set PYTHON=/path/to/python3.10"; exit 1; }
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -r requirements-lock.txt
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	$(VPY) -m pip check
	touch $(STAMP)

# Embedded data: synthetic scenes + their selective-search proposals (both skip finished work).
demo-data: $(STAMP)
	$(VPY) tools/make_synthetic_dataset.py --out $(DATA)/soco_synthetic
	$(VPY) tools/generate_proposals.py --coco-json $(DATA)/soco_synthetic/annotations/instances_train.json \
	    --image-root $(DATA)/soco_synthetic/train --output $(DATA)/soco_synthetic/proposals_train.pkl --workers $(WORKERS)

demo: demo-data
	DETECTRON2_DATASETS=$(DATA) $(VPY) train_net.py --config-file configs/soco/soco_demo_synthetic.yaml --num-gpus 1

# SoCo on real photos: the CPU recipe on the Imagenette train photos of ../shared/data (their
# proposals made once, resumable), probed on Imagenette val. IMAGES=/path/to/photos pretrains on
# any folder of photos instead (proposals in $(DATA)/demo_real/; the probe stays Imagenette's
# when ../shared/data/imagenette_160 is present, and is off otherwise).
IMAGENETTE := $(or $(SOCO_SHARED_DATA),../shared/data)/imagenette_160
REAL_CONFIG := configs/soco/soco_R18_FPN_imagenette_cpu.yaml
demo-real: $(STAMP)
ifeq ($(IMAGES),)
	@test -d "$(IMAGENETTE)/train" || { echo "$(IMAGENETTE) not found: set IMAGES=/path/to/photos (or SOCO_SHARED_DATA)"; exit 1; }
	$(VPY) tools/generate_proposals.py --image-dir $(IMAGENETTE)/train \
	    --output $(DATA)/imagenette_160/proposals_train.pkl --workers $(WORKERS)
	DETECTRON2_DATASETS=$(DATA) $(VPY) train_net.py --config-file $(REAL_CONFIG) --num-gpus 1
else
	@test -d "$(IMAGES)" || { echo "IMAGES=$(IMAGES) is not a folder"; exit 1; }
	$(VPY) tools/generate_proposals.py --image-dir $(IMAGES) --output $(DATA)/demo_real/proposals.pkl --workers $(WORKERS)
	DETECTRON2_DATASETS=$(DATA) $(VPY) train_net.py --config-file $(REAL_CONFIG) --num-gpus 1 \
	    DATASETS.SOCO_REGISTER "[('demo_real_images', '$(abspath $(IMAGES))', '$(DATA)/demo_real/proposals.pkl')]" \
	    DATASETS.TRAIN "('demo_real_images',)" OUTPUT_DIR output/demo_real \
	    $(if $(wildcard $(IMAGENETTE)/val),,TEST.PROBE.DATASET "")
endif

test: $(STAMP)
	$(VPY) -m pytest -q

# --all: setuptools too, which plain `pip freeze` leaves out; it must stay below 81, because
# `from detectron2 import model_zoo` imports pkg_resources (removed in setuptools 81).
lock: $(STAMP)
	{ echo "# Exact pins of the tested environment (Python 3.10.13, CPU or CUDA 13)."; \
	  echo "# Regenerate with: make lock"; \
	  $(VPY) -m pip freeze --all --exclude-editable | grep -v -E '^(soco|pip==)'; } > requirements-lock.txt

# The lent GPU machine has no package registry: copy the wheels it needs into .gpu_wheels/
# (git-ignored), carry that folder, and run tools/gpu_env.sh there (docs/gpu.md).
gpu-wheels:
	mkdir -p .gpu_wheels && cp ../shared/gpu/wheels/*.whl .gpu_wheels/

clean:
	rm -rf $(VENV) $(DATA)/soco_synthetic output
