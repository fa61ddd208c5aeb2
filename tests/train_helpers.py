"""Helpers for the tests that go through train_net.py's setup()/main() and the trainers, for
the export tests, and for the tests of scripts (tools/, benchmarks/)."""
import importlib.util
import os
import socket

import torch
from detectron2.checkpoint import DetectionCheckpointer

from soco_d2.data.synthetic import generate_synthetic_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = os.path.join(REPO_ROOT, "configs", "soco", "soco_instant_test.yaml")


def load_script(relpath: str, name: str = None):
    """A script of the repository (e.g. ``"tools/probe.py"``) imported as a module, so that tests
    call its functions and ``main(argv)``; ``name`` defaults to the file name without ``.py``."""
    path = os.path.join(REPO_ROOT, relpath)
    spec = importlib.util.spec_from_file_location(name or os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def perturb_weights(model, seed=0):
    """Move every tensor of ``model``'s state_dict off its initial value, in place, as training
    would (+-5 %, exact zeros moved off zero, integer counters + 7); returns a copy of the
    state_dict."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():  # these tensors are the parameters / buffers
            if t.is_floating_point():
                noise = torch.rand(t.shape, generator=g) - 0.5
                t.mul_(1 + 0.1 * noise).add_(1e-3 * noise)
            else:
                t.add_(7)  # num_batches_tracked
    return {k: v.clone() for k, v in model.state_dict().items()}


def train_in_two_processes(fn, args, dump_dir):
    """``fn(*args)`` in 2 gloo processes (Detectron2's ``launch``), each saving its model's
    state_dict to ``dump_dir/rank<r>.pth``; checks both states are identical and returns rank 0's."""
    from detectron2.engine import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(fn, 2, num_machines=1, machine_rank=0, dist_url=f"tcp://127.0.0.1:{port}", args=tuple(args))
    s0 = torch.load(os.path.join(dump_dir, "rank0.pth"), weights_only=True)
    s1 = torch.load(os.path.join(dump_dir, "rank1.pth"), weights_only=True)
    for k in s0:
        torch.testing.assert_close(s0[k], s1[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")
    return s0


def load_with_report(model, path):
    """DetectionCheckpointer.load(path), returning its incompatible-keys report."""
    checkpointer = DetectionCheckpointer(model)
    load_model = checkpointer._load_model
    report = {}

    def spy(checkpoint):
        report["keys"] = load_model(checkpoint)
        return report["keys"]

    checkpointer._load_model = spy
    checkpointer.load(path)
    return report["keys"]
