"""Habits Detectron2 users rely on work here too."""
import os
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning")
def test_model_zoo_works_in_the_shipped_environment():
    # model_zoo imports pkg_resources: requirements-lock.txt pins setuptools below 81 for it.
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)


def test_importing_the_package_registers_everything():
    # A fresh interpreter: nothing else imported first (Detectron2 projects register on import).
    code = textwrap.dedent("""
        import soco_d2
        from detectron2.data import DatasetCatalog
        from detectron2.modeling import META_ARCH_REGISTRY

        print(META_ARCH_REGISTRY.get("SoCo").__module__)
        print(" ".join(sorted(DatasetCatalog.list())))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0] == "soco_d2.methods.soco.meta_arch"
    for name in ("soco_synthetic_train", "soco_synthetic_det_val", "imagenet_train_soco",
                 "coco_2017_train_soco", "coco_sample_train", "coco_sample_val", "coco_sample_soco"):
        assert name in out[1].split()


def test_method_registry_and_trainer_choice():
    from detectron2.config import get_cfg

    from soco_d2 import add_config
    from soco_d2.engine import DetectionTrainer
    from soco_d2.methods import get_method, registered_methods
    from soco_d2.methods.soco import SoCoTrainer, add_soco_config, validate_soco_config
    from soco_d2.methods.soco.export import ONLINE_TRUNK_PREFIXES, SOCO_EXPORT, SOCO_ONLY_PREFIXES
    from train_net import trainer_class

    soco = get_method("SoCo")
    assert soco in registered_methods() and get_method("GeneralizedRCNN") is None
    assert (soco.trainer, soco.add_config, soco.validate_config) == (
        SoCoTrainer, add_soco_config, validate_soco_config)
    assert soco.export is SOCO_EXPORT and SOCO_EXPORT.method == "SoCo"
    assert (SOCO_EXPORT.keep, SOCO_EXPORT.marks, SOCO_EXPORT.renames) == (
        ONLINE_TRUNK_PREFIXES, SOCO_ONLY_PREFIXES, ())
    cfg = add_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "SoCo"
    assert trainer_class(cfg) is SoCoTrainer
    assert SoCoTrainer.export_spec(cfg) is SOCO_EXPORT  # the trainer is given its export, not looking it up
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    assert trainer_class(cfg) is DetectionTrainer
