import glob
import os

import pytest
import yaml

from train_helpers import TrainArgs
from train_net import setup

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))


def test_configs_exist():
    names = {os.path.relpath(p, CONFIG_DIR) for p in CONFIGS}
    for required in (
        "soco/Base-SoCo-R50-FPN.yaml",
        "soco/soco_R50_FPN_100ep.yaml",
        "soco/soco_R50_FPN_400ep.yaml",
        "soco/soco_star_R50_FPN_400ep.yaml",
        "soco/soco_R50_C4_100ep.yaml",
    ):
        assert required in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, CONFIG_DIR))
def test_every_config_loads_through_setup(path, tmp_path):
    cfg = setup(TrainArgs(config_file=path, opts=["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)]))
    assert cfg.is_frozen()
    assert cfg.MODEL.DEVICE == "cpu"
    with open(path) as f:
        raw = yaml.safe_load(f)
    if "SOLVER" in raw and "EPOCHS" in raw["SOLVER"]:
        assert cfg.SOLVER.EPOCHS == raw["SOLVER"]["EPOCHS"]
    # default_setup() records the merged config next to the logs
    assert os.path.isfile(os.path.join(tmp_path, "config.yaml"))


def test_published_run_defaults():
    path = os.path.join(CONFIG_DIR, "soco", "soco_R50_FPN_100ep.yaml")
    cfg = setup(TrainArgs(config_file=path, opts=["MODEL.DEVICE", "cpu"]))
    s = cfg.INPUT.SOCO
    assert (s.VIEW1_SIZE, s.VIEW2_SIZE, s.VIEW3_SIZE, s.VIEW4_SIZE) == (224, 224, 112, 0)
    assert s.VIEW3_MODE == "crop" and s.NUM_PROPOSALS == 4 and s.CUTOUT_IN_BOX
    assert tuple(cfg.MODEL.SOCO.LEVEL_THRESHOLDS) == (48, 96, 192)
    assert cfg.MODEL.SOCO.MOMENTUM == 0.99
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_CONV == 4 and cfg.MODEL.ROI_BOX_HEAD.NUM_FC == 1
    assert cfg.SOLVER.OPTIMIZER == "LARS" and cfg.SOLVER.WEIGHT_DECAY == 1e-5
    assert cfg.SOLVER.IMS_PER_BATCH == 2048 and cfg.SOLVER.WARMUP_EPOCHS == 10
    # The collapse guards are this project's, not the paper's: off in the published configs.
    assert cfg.MODEL.SOCO.SPREAD_WEIGHT == 0 and cfg.MODEL.SOCO.DECORR_WEIGHT == 0


def test_cpu_imagenette_recipe_turns_the_collapse_guards_on():
    path = os.path.join(CONFIG_DIR, "soco", "soco_R18_FPN_imagenette_cpu.yaml")
    cfg = setup(TrainArgs(config_file=path, opts=["MODEL.DEVICE", "cpu"]))
    assert cfg.MODEL.SOCO.SPREAD_WEIGHT > 0 and cfg.MODEL.SOCO.DECORR_WEIGHT > 0
    assert cfg.MODEL.SOCO.LOSS == "infonce" and not cfg.MODEL.SOCO.SAME_IMAGE_NEGATIVES


def test_unknown_key_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "%s"\nINPUT:\n  SOCO:\n    NUM_PROPOSAL: 4\n'
                   % os.path.join(CONFIG_DIR, "soco", "Base-SoCo-R50-FPN.yaml"))
    with pytest.raises(KeyError, match="NUM_PROPOSAL"):
        setup(TrainArgs(config_file=str(bad), opts=["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)]))


def test_cuda_device_without_cuda_says_what_to_do(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(RuntimeError, match="MODEL.DEVICE cpu"):
        path = os.path.join(CONFIG_DIR, "soco", "soco_R50_FPN_100ep.yaml")
        setup(TrainArgs(config_file=path, opts=["OUTPUT_DIR", str(tmp_path)]))


def test_shared_keys_are_added_once():
    from detectron2.config import get_cfg

    from soco_d2 import add_config
    from soco_d2.config import add_common_config

    cfg = add_common_config(get_cfg())
    cfg.SOLVER.EPOCHS, cfg.DATASETS.SOCO_REGISTER = 7, [("a", "b", "")]
    add_config(add_common_config(cfg))  # every method asks for the shared keys again
    assert cfg.SOLVER.EPOCHS == 7 and cfg.DATASETS.SOCO_REGISTER == [("a", "b", "")]
    assert cfg.INPUT.SOCO.NUM_PROPOSALS == 4 and cfg.MODEL.SOCO.MOMENTUM == 0.99


def _cfg(name, tmp_path):
    path = glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "*", name))
    assert len(path) == 1, name
    return setup(TrainArgs(config_file=path[0], opts=["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)]))


def test_aquarium_pretraining_configs_hand_on_an_rpn_for_the_fine_tuning_anchors(tmp_path):
    """AlignDet and SimDETR pretrain the RPN that fine-tuning on Aquarium takes over: same anchors;
    SimDETR trains the whole detector, at the fine-tuning views too."""
    finetune = _cfg("faster_rcnn_R18_FPN_aquarium.yaml", tmp_path)
    for name in ("aligndet_R18_FPN_aquarium_cpu.yaml", "simdetr_R18_FPN_aquarium_cpu.yaml"):
        cfg = _cfg(name, tmp_path)
        assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == finetune.MODEL.ANCHOR_GENERATOR.SIZES, name
        assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == finetune.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS, name
    simdetr = _cfg("simdetr_R18_FPN_aquarium_cpu.yaml", tmp_path)
    for key in ("MIN_SIZE_TRAIN", "MAX_SIZE_TRAIN", "MIN_SIZE_TEST", "MAX_SIZE_TEST"):
        assert simdetr.INPUT[key] == finetune.INPUT[key], key
    assert (simdetr.SOLVER.IMS_PER_BATCH, simdetr.SOLVER.BASE_LR) == (finetune.SOLVER.IMS_PER_BATCH,
                                                                     finetune.SOLVER.BASE_LR)
