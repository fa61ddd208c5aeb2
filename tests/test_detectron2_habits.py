"""Habits Detectron2 users rely on work here too."""
import os

import pytest


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning")
def test_model_zoo_works_in_the_shipped_environment():
    # model_zoo imports pkg_resources: requirements-lock.txt pins setuptools below 81 for it.
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)
