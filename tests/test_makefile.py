"""The Makefile's `demo-real` target: what it runs, and its errors before any work starts.

Run with ``STAMP=`` (no environment prerequisite) and, where it would train, ``make -n`` (print
the recipe, run nothing).
"""
import os
import shutil
import subprocess

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(*args, shared="/nonexistent-shared-data"):
    env = dict(os.environ, SOCO_SHARED_DATA=shared)
    return subprocess.run(["make", "--no-print-directory", "STAMP=", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_demo_real_without_imagenette_or_images_says_what_to_set():
    done = _make("demo-real")
    assert done.returncode != 0
    assert "/nonexistent-shared-data/imagenette_160 not found: set IMAGES=/path/to/photos" in done.stdout + done.stderr


def test_demo_real_with_a_missing_images_folder_names_it(tmp_path):
    done = _make("demo-real", f"IMAGES={tmp_path / 'nope'}")
    assert done.returncode != 0
    assert f"IMAGES={tmp_path / 'nope'} is not a folder" in done.stdout + done.stderr


def test_demo_real_on_a_folder_registers_it_and_drops_the_probe_without_imagenette(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    done = _make("-n", "demo-real", f"IMAGES={photos}")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"tools/generate_proposals.py --image-dir {photos} --output datasets/demo_real/proposals.pkl" in text
    assert "--config-file configs/soco/soco_R18_FPN_imagenette_cpu.yaml" in text
    assert f"('demo_real_images', '{photos}', 'datasets/demo_real/proposals.pkl')" in text
    assert "OUTPUT_DIR output/demo_real" in text
    # no Imagenette val to probe on: the probe is switched off, not failing at start
    assert 'TEST.PROBE.DATASET ""' in text


def test_demo_real_on_imagenette_makes_its_proposals_then_trains_the_recipe(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "imagenette_160" / split).mkdir(parents=True)
    done = _make("-n", "demo-real", shared=str(tmp_path))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"--image-dir {tmp_path}/imagenette_160/train" in text
    assert "--output datasets/imagenette_160/proposals_train.pkl" in text
    assert "train_net.py --config-file configs/soco/soco_R18_FPN_imagenette_cpu.yaml --num-gpus 1" in text
    assert "TEST.PROBE.DATASET" not in text
