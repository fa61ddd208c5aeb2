"""Wrong configs fail at start (train_net.setup / SoCoTrainer, before the model is built) with
a message that names the key or the path. Unknown keys in a YAML file: tests/test_config.py."""
import os

import pytest

from soco_d2.config import WEIGHTS_PLACEHOLDER, ConfigError
from train_helpers import REPO_ROOT, TrainArgs
from train_net import main, setup

TRANSFER = os.path.join(REPO_ROOT, "configs", "transfer", "mask_rcnn_R18_FPN_synthetic.yaml")


def _setup(tmp_path, *opts):
    return setup(TrainArgs(["OUTPUT_DIR", str(tmp_path), *opts]))


def test_unknown_key_on_the_command_line(tmp_path):
    # yacs checks command-line keys with an assert (a YAML file's unknown key: KeyError)
    with pytest.raises(AssertionError, match=r"Non-existent key: INPUT\.SOCO\.VIEW5_SIZE"):
        _setup(tmp_path, "INPUT.SOCO.VIEW5_SIZE", "64")


@pytest.mark.parametrize("key, value, message", [
    ("INPUT.SOCO.NUM_PROPOSALS", "0", "INPUT.SOCO.NUM_PROPOSALS (K) must be >= 1, got 0"),
    ("INPUT.SOCO.VIEW1_SIZE", "0", "INPUT.SOCO.VIEW1_SIZE must be >= 32 "),
    ("INPUT.SOCO.VIEW2_SIZE", "-64", "INPUT.SOCO.VIEW2_SIZE must be >= 32 "),
    ("INPUT.SOCO.VIEW3_SIZE", "16", "or 0 for no V3; got 16"),
    ("INPUT.SOCO.VIEW4_SIZE", "24", "or 0 for no V4; got 24"),
    ("INPUT.SOCO.VIEW3_MODE", "resize",
     "INPUT.SOCO.VIEW3_MODE must be one of ['crop', 'downsample'], got 'resize'"),
    ("MODEL.SOCO.LEVEL_ASSIGNMENT", "fancy", "MODEL.SOCO.LEVEL_ASSIGNMENT must be one of "),
    ("MODEL.SOCO.LEVEL_THRESHOLDS", "(96, 48, 192)",
     "MODEL.SOCO.LEVEL_THRESHOLDS must be positive and strictly increasing, got (96, 48, 192)"),
    ("MODEL.SOCO.LEVEL_THRESHOLDS", "(48, 48, 192)", "strictly increasing, got (48, 48, 192)"),
    ("MODEL.SOCO.HEAD_NORM", "LN", "MODEL.SOCO.HEAD_NORM must be one of "),
    ("SOLVER.OPTIMIZER", "Adam", "SOLVER.OPTIMIZER must be 'LARS' or 'SGD', got 'Adam'"),
    ("SOLVER.AMP.PRECISION", "float8",
     "SOLVER.AMP.PRECISION must be one of ['float16', 'bfloat16'], got 'float8'"),
    ("INPUT.SOCO.CROP_SCALE", "(0.5, 1.5)", "INPUT.SOCO.CROP_SCALE must satisfy 0 < lo <= hi <= 1"),
    ("INPUT.SOCO.FLIP_PROB", "2.0", "INPUT.SOCO.FLIP_PROB must be in [0, 1], got 2.0"),
    ("MODEL.SOCO.MOMENTUM", "1.5", "MODEL.SOCO.MOMENTUM must be in [0, 1], got 1.5"),
    ("SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD must be >= 1, got 0"),
])
def test_bad_value_names_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError) as e:
        _setup(tmp_path, key, value)
    assert message in str(e.value) and value.strip("()").split(",")[0] in str(e.value)


def test_all_problems_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        _setup(tmp_path, "INPUT.SOCO.NUM_PROPOSALS", "0", "INPUT.SOCO.VIEW3_SIZE", "8",
               "SOLVER.OPTIMIZER", "adamw")
    text = str(e.value)
    assert text.startswith("Invalid SoCo config")
    assert "NUM_PROPOSALS" in text and "VIEW3_SIZE" in text and "SOLVER.OPTIMIZER" in text


def test_valid_edge_values_pass(tmp_path):
    cfg = _setup(tmp_path, "INPUT.SOCO.VIEW3_SIZE", "32", "INPUT.SOCO.VIEW4_SIZE", "0",
                 "INPUT.SOCO.NUM_PROPOSALS", "1", "SOLVER.OPTIMIZER", "sgd")
    assert cfg.INPUT.SOCO.VIEW3_SIZE == 32


# ------------------------------------------------------------------ data on disk


def _trainer_fails_before_the_model(cfg, monkeypatch):
    from soco_d2.methods.soco import SoCoTrainer

    def no_model(cls, cfg):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(SoCoTrainer, "build_model", classmethod(no_model))
    with pytest.raises(ConfigError) as e:
        SoCoTrainer(cfg)
    return str(e.value)


def test_unregistered_dataset_lists_registered_names(tmp_path, monkeypatch):
    cfg = _setup(tmp_path, "DATASETS.TRAIN", "('imagenet_trian_soco',)")
    text = _trainer_fails_before_the_model(cfg, monkeypatch)
    assert "DATASETS.TRAIN: dataset 'imagenet_trian_soco' is not registered" in text
    assert "imagenet_train_soco" in text and "DATASETS.SOCO_REGISTER" in text


def test_missing_image_folder_and_proposal_file_are_named(tmp_path, monkeypatch):
    images, props = tmp_path / "no_images", tmp_path / "no_props.pkl"
    cfg = _setup(tmp_path, "DATASETS.TRAIN", "('test_cfg_err_missing',)", "DATASETS.SOCO_REGISTER",
                 f"[('test_cfg_err_missing', '{images}', '{props}')]")
    text = _trainer_fails_before_the_model(cfg, monkeypatch)
    assert f"dataset 'test_cfg_err_missing': image folder does not exist: {images}" in text
    assert f"dataset 'test_cfg_err_missing': proposal file does not exist: {props}" in text


def test_missing_detectron2_proposal_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    cfg = _setup(tmp_path, "DATASETS.TRAIN", "('test_cfg_err_d2props',)", "DATASETS.SOCO_REGISTER",
                 f"[('test_cfg_err_d2props', '{tmp_path / 'imgs'}', '')]", "MODEL.LOAD_PROPOSALS",
                 "True", "DATASETS.PROPOSAL_FILES_TRAIN", f"('{tmp_path / 'gone.pkl'}',)")
    text = _trainer_fails_before_the_model(cfg, monkeypatch)
    assert f"DATASETS.PROPOSAL_FILES_TRAIN: file does not exist: {tmp_path / 'gone.pkl'}" in text


def test_transfer_config_without_weights_fails_in_main(tmp_path):
    args = TrainArgs(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)], config_file=TRANSFER)
    with pytest.raises(ValueError) as e:
        main(args)
    assert f"MODEL.WEIGHTS is still the placeholder '{WEIGHTS_PLACEHOLDER}'" in str(e.value)
    assert "mask_rcnn_R18_FPN_synthetic.yaml" in str(e.value)
