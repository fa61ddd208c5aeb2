"""Helpers for the tests that go through train_net.py's setup()/main() and the trainers."""
import os

from soco_d2.data.synthetic import generate_synthetic_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = os.path.join(REPO_ROOT, "configs", "soco", "soco_instant_test.yaml")


class TrainArgs:
    """What train_net.py's argument parser hands to setup() and main()."""

    def __init__(self, opts=(), config_file=INSTANT, resume=False, eval_only=False):
        self.config_file, self.opts = config_file, list(opts)
        self.eval_only, self.resume = eval_only, resume
        self.num_gpus, self.num_machines, self.machine_rank = 1, 1, 0


def make_tiny_images(out_dir):
    """8 small synthetic training scenes; returns (json_file, image_root)."""
    paths = generate_synthetic_dataset(str(out_dir), num_train=8, num_val=0, min_size=96, max_size=128)
    return paths["train"]


def dataset_opts(name, tiny_images):
    """Config overrides that register ``tiny_images`` as pretraining set ``name`` and use it."""
    json_file, image_root = tiny_images
    return [
        "DATASETS.TRAIN", f"('{name}',)",
        "DATASETS.SOCO_REGISTER", f"[('{name}', '{image_root}', '', '{json_file}')]",
    ]
