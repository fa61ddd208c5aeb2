import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # train_net.py and tools/ are scripts, not package modules
    sys.path.insert(0, REPO_ROOT)

COCO_SAMPLE = os.path.join(REPO_ROOT, "..", "shared", "data", "coco_sample")


@pytest.fixture
def coco_sample():
    """Path of ../shared/data/coco_sample, or skip when it is absent."""
    if not os.path.isfile(os.path.join(COCO_SAMPLE, "instances.json")):
        pytest.skip("../shared/data/coco_sample is not present")
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory):
    """(json_file, image_root) of 8 small synthetic scenes, shared by the training tests."""
    from train_helpers import make_tiny_images

    return make_tiny_images(tmp_path_factory.mktemp("tiny_syn"))


@pytest.fixture
def one_thread():
    """One torch thread: exact CPU arithmetic order, and no fight for a shared machine's cores."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
