"""Montage through train_net.py: the configs, config errors that name the key at start, and tiny
CPU runs of both variants (soco_d2/methods/montage/config.py, trainer.py)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

from soco_d2.config import ConfigError
from soco_d2.methods.montage import MontageTrainer
from train_helpers import REPO_ROOT, TrainArgs, dataset_opts
from train_net import main, setup

CONFIGS = os.path.join(REPO_ROOT, "configs", "montage")
INSTANT = os.path.join(CONFIGS, "montage_instant_test.yaml")
TINY_DET = "montage_test_tiny_det"


def _setup(tmp_path, *opts, config=INSTANT):
    return setup(TrainArgs(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path), *opts], config_file=config))


@pytest.fixture(scope="module")
def tiny_det(tiny_images):
    if TINY_DET not in DatasetCatalog.list():
        json_file, image_root = tiny_images
        register_coco_instances(TINY_DET, {}, json_file, image_root)
    return TINY_DET


def test_published_style_and_demo_configs(tmp_path):
    coco = _setup(tmp_path, config=os.path.join(CONFIGS, "montage_R50_coco_2017_train.yaml"))
    assert coco.MODEL.META_ARCHITECTURE == "Montage" and coco.MODEL.RESNETS.DEPTH == 50
    assert coco.MODEL.BACKBONE.NAME == "build_resnet_backbone" and coco.MODEL.RESNETS.OUT_FEATURES == ["res5"]
    assert coco.DATASETS.TRAIN == ("coco_2017_train",) and coco.MODEL.MONTAGE.NUM_CLASSES == 80
    assert coco.INPUT.MONTAGE.CANVAS_SIZE == 224 and coco.INPUT.MONTAGE.SAMPLES == "gt"
    assert not coco.MODEL.RESNETS.STRIDE_IN_1X1 and coco.INPUT.FORMAT == "RGB"
    free = _setup(tmp_path, config=os.path.join(CONFIGS, "montage_free_R50_coco_2017_train.yaml"))
    assert free.INPUT.MONTAGE.SAMPLES == "proposals" and free.DATASETS.TRAIN == ("coco_2017_train_soco",)
    assert free.MODEL.MONTAGE.PSEUDO.REFRESH_PERIOD > 0 and free.MODEL.WEIGHTS.endswith("model_final_trunk.pth")
    demo = _setup(tmp_path, config=os.path.join(CONFIGS, "montage_demo_synthetic.yaml"))
    assert demo.MODEL.RESNETS.DEPTH == 18 and demo.DATASETS.TRAIN == ("soco_synthetic_det_train",)
    assert demo.MODEL.MONTAGE.NUM_CLASSES == 4 and demo.INPUT.MONTAGE.CANVAS_SIZE <= 128
    free_demo = _setup(tmp_path, config=os.path.join(CONFIGS, "montage_free_demo_synthetic.yaml"))
    assert free_demo.DATASETS.TRAIN == ("soco_synthetic_train",)
    assert free_demo.INPUT.MONTAGE.SAMPLES == "proposals"


@pytest.mark.parametrize("key, value, message", [
    ("INPUT.MONTAGE.CANVAS_SIZE", "100", "INPUT.MONTAGE.CANVAS_SIZE must be a multiple of 32"),
    ("INPUT.MONTAGE.MIN_REGION_SIZE", "16", "INPUT.MONTAGE.MIN_REGION_SIZE must be in [32, "),
    ("INPUT.MONTAGE.SAMPLES", "boxes", "INPUT.MONTAGE.SAMPLES must be one of ['gt', 'proposals']"),
    ("INPUT.MONTAGE.GROUP_BOUNDS", "(1.5, 0.5)", "INPUT.MONTAGE.GROUP_BOUNDS must satisfy 0 < lo < 1 < hi"),
    ("INPUT.MONTAGE.BACKGROUND_PROB", "1.5", "INPUT.MONTAGE.BACKGROUND_PROB must be in [0, 1]"),
    ("INPUT.MONTAGE.CONTEXT", "(0.5, 0.1)", "INPUT.MONTAGE.CONTEXT must satisfy"),
    ("MODEL.MONTAGE.TAU", "1.5", "MODEL.MONTAGE.TAU (tau) must be in [0, 1], got 1.5"),
    ("MODEL.MONTAGE.ERF_SIGMA", "0.0", "MODEL.MONTAGE.ERF_SIGMA must be > 0"),
    ("MODEL.MONTAGE.NUM_CLASSES", "0", "MODEL.MONTAGE.NUM_CLASSES must be >= 1"),
    ("MODEL.MONTAGE.IN_FEATURE", "res4", "MODEL.MONTAGE.IN_FEATURE 'res4' must be one of"),
    ("MODEL.MONTAGE.PSEUDO.FEATURES", "fpn", "MODEL.MONTAGE.PSEUDO.FEATURES must be one of"),
])
def test_bad_value_names_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match="Invalid Montage config") as e:
        _setup(tmp_path, key, value)
    assert message in str(e.value)


def test_label_free_settings_are_checked(tmp_path):
    free = ["INPUT.MONTAGE.SAMPLES", "proposals"]
    with pytest.raises(ConfigError) as e:
        _setup(tmp_path, *free, "MODEL.MONTAGE.PSEUDO.FEATURES", "trunk",
               "MODEL.MONTAGE.PSEUDO.REFRESH_PERIOD", "10")
    text = str(e.value)
    assert "MODEL.MONTAGE.PSEUDO.TRUNK_CONFIG must name a file" in text
    assert "MODEL.MONTAGE.PSEUDO.TRUNK_WEIGHTS must name a file" in text
    assert "MODEL.MONTAGE.PSEUDO.REFRESH_PERIOD must be 0 with FEATURES 'trunk'" in text
    with pytest.raises(ConfigError, match="INPUT.MONTAGE.MAX_IMAGES must be >= 0, and 0 when SOLVER.EPOCHS"):
        _setup(tmp_path, "INPUT.MONTAGE.MAX_IMAGES", "10", "SOLVER.EPOCHS", "2")


def test_data_that_does_not_fit_fails_before_the_model_is_built(tmp_path, tiny_images, tiny_det, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(MontageTrainer, "build_model", classmethod(no_model))
    # labelled samples from a pretraining set without labels
    cfg = _setup(tmp_path, *dataset_opts("montage_test_unlabelled", tiny_images))
    with pytest.raises(ConfigError, match="INPUT.MONTAGE.SAMPLES is 'gt' but DATASETS.TRAIN 'montage_test_unlabelled'"):
        MontageTrainer(cfg)
    # a SoCo trunk that is not there
    cfg = _setup(tmp_path, *dataset_opts("montage_test_unlabelled", tiny_images), "INPUT.MONTAGE.SAMPLES",
                 "proposals", "MODEL.WEIGHTS", str(tmp_path / "no_trunk.pth"))
    with pytest.raises(ConfigError, match=r"MODEL\.WEIGHTS: file does not exist: .*no_trunk\.pth"):
        MontageTrainer(cfg)
    # category count: the builtin synthetic set has 4 categories
    cfg = _setup(tmp_path, "MODEL.MONTAGE.NUM_CLASSES", "3")
    with pytest.raises(ConfigError, match="MODEL.MONTAGE.NUM_CLASSES is 3 but dataset 'soco_synthetic_det_train' has 4"):
        MontageTrainer(cfg)


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_labelled_variant_trains_and_exports(tmp_path, tiny_det, one_thread):
    out = tmp_path / "run"
    main(TrainArgs(["OUTPUT_DIR", str(out), "DATASETS.TRAIN", f"('{tiny_det}',)", "SEED", "0"],
                   config_file=INSTANT))
    metrics = read_metrics(out)
    last = metrics[-1]
    assert last["iteration"] == 1 and "total_loss" in last and "montage/accuracy" in last
    trunk = torch.load(out / "model_final_trunk.pth", weights_only=True)["model"]
    assert "backbone.stem.conv1.weight" in trunk and "backbone.bottom_up.stem.conv1.weight" in trunk
    assert not any(k.startswith("dense_classifier.") for k in trunk)


def write_proposals(json_file, path):
    """Two proposals per image (left and right halves) in Detectron2's proposal-file format."""
    with open(json_file) as f:
        images = json.load(f)["images"]
    boxes = [np.array([[0, 0, im["width"] / 2, im["height"]], [im["width"] / 2, 0, im["width"], im["height"]]],
                      np.float32) for im in images]
    with open(path, "wb") as f:
        pickle.dump({"ids": [im["id"] for im in images], "boxes": boxes,
                     "objectness_logits": [np.zeros(2, np.float32)] * len(images), "bbox_mode": 0}, f)


def test_label_free_variant_trains_with_refreshed_pseudo_labels(tmp_path, tiny_images, one_thread):
    out = tmp_path / "run"
    json_file, image_root = tiny_images
    write_proposals(json_file, tmp_path / "proposals.pkl")
    register = f"[('montage_test_free', '{image_root}', '{tmp_path / 'proposals.pkl'}', '{json_file}')]"
    main(TrainArgs(["OUTPUT_DIR", str(out), "DATASETS.TRAIN", "('montage_test_free',)",
                    "DATASETS.SOCO_REGISTER", register,
                    "INPUT.MONTAGE.SAMPLES", "proposals", "MODEL.MONTAGE.NUM_CLASSES", "2",
                    "MODEL.MONTAGE.PSEUDO.REFRESH_PERIOD", "1", "SEED", "0"], config_file=INSTANT))
    log = (out / "log.txt").read_text()
    assert "Pseudo-labels at iteration 0" in log and "Pseudo-labels at iteration 1" in log
    last = read_metrics(out)[-1]
    assert "pseudo/largest_cluster" in last and "total_loss" in last
    checkpoint = torch.load(out / "model_final.pth", weights_only=True)
    table = checkpoint["trainer"]["hooks"]["PseudoLabelHook"]
    assert table["iteration"] == 1 and len(table["labels"]) == 16  # 8 images, 2 proposals each
