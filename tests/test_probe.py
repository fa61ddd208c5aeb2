"""The probe (soco_d2/evaluation/probe.py) and tools/probe.py."""
import copy
import json
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch import nn

from soco_d2 import add_config
from soco_d2.config import load_config
from soco_d2.evaluation.probe import (
    ProbeImage,
    balanced_accuracy,
    dead_fraction,
    effective_rank,
    extract_box_features,
    knn_accuracy,
    knn_predict,
    linear_probe_accuracy,
    linear_probe_predict,
    load_probe_images,
    probe_trunk,
    reestimate_bn,
    trunk_from_detector,
)
from train_helpers import load_script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSFER = os.path.join(REPO_ROOT, "configs", "transfer", "mask_rcnn_R18_FPN_synthetic.yaml")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def clustered(num_images=30, per_image=3, classes=3, dim=8, spread=0.05, seed=0):
    """Features around one centre per class; labels; image index of each box."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    labels = torch.randint(0, classes, (num_images * per_image,), generator=g)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    owner = torch.arange(num_images).repeat_interleave(per_image)
    return feats, labels, owner


def test_knn_and_linear_separate_clusters_and_fall_to_chance_on_noise():
    feats, labels, owner = clustered()
    assert knn_accuracy(feats, labels, owner) == 1.0
    assert linear_probe_accuracy(feats, labels, owner) == 1.0
    noise = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))
    assert knn_accuracy(noise, labels, owner) < 0.6
    assert linear_probe_accuracy(noise, labels, owner) < 0.6


def test_balanced_accuracy_is_the_mean_recall_of_the_classes():
    labels = torch.tensor([0] * 9 + [1])
    always_commonest = torch.zeros(10, dtype=torch.int64)
    assert float((always_commonest == labels).float().mean()) == pytest.approx(0.9)
    assert balanced_accuracy(always_commonest, labels) == pytest.approx(0.5)  # chance for 2 classes
    assert balanced_accuracy(labels.clone(), labels) == 1.0
    # one of 3 class-1 boxes right, all 2 of class 2, half of class 0: mean(1/2, 1/3, 1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 0, 2, 2, 2])
    assert balanced_accuracy(pred, labels) == pytest.approx((0.5 + 1 / 3 + 1.0) / 3)


def test_unbalanced_probe_set_balanced_figures_stay_at_chance_for_noise():
    # 90% of the boxes in class 0 and features carrying no class at all: plain kNN accuracy
    # is high by guessing the commonest class, the balanced one stays near 1/3.
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 270 + [1] * 15 + [2] * 15)
    feats = torch.randn(300, 16, generator=g)
    owner = torch.arange(300)
    pred = knn_predict(feats, labels, owner)
    assert float((pred == labels).float().mean()) > 0.8
    assert balanced_accuracy(pred, labels) < 0.45
    accuracy, linear = linear_probe_predict(feats, labels, owner)
    assert (linear >= 0).all()  # every box was tested in one of the two folds
    assert accuracy == pytest.approx(linear_probe_accuracy(feats, labels, owner))
    assert balanced_accuracy(linear, labels) < 0.5


def test_effective_rank_counts_the_directions_boxes_spread_along():
    g = torch.Generator().manual_seed(0)
    # k orthogonal directions with equal spread: erank close to k, whatever C is
    for k in (1, 3, 10):
        basis = torch.linalg.qr(torch.randn(64, k, generator=g))[0]  # (64, k) orthonormal columns
        codes = torch.randn(4000, k, generator=g)
        assert effective_rank(codes @ basis.t()) == pytest.approx(k, rel=0.05)
    # a common offset (the mean) does not count, and collapse to one point is 0
    line = torch.randn(500, 1, generator=g) * torch.ones(1, 32) + 100.0
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.ones(50, 32)) == 0.0
    # one strong direction among weak ones: well below the number of dimensions
    skewed = torch.randn(2000, 16, generator=g) * torch.tensor([10.0] + [0.1] * 15)
    assert 1.0 < effective_rank(skewed) < 4.0


def test_dead_fraction_counts_units_zero_for_every_box():
    x = torch.relu(torch.randn(100, 8, generator=torch.Generator().manual_seed(0)))
    x[:, :3] = 0.0
    x[5, 3] = 0.0  # zero for one box only: alive
    assert dead_fraction(x) == pytest.approx(3 / 8)


def test_knn_never_uses_boxes_of_the_same_image():
    """Each image holds one box of each class, duplicated: from its own image alone every box
    would be classified perfectly, from the others (random features) it cannot."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20, 2, 16, generator=g)  # 20 images, 2 boxes, no class structure
    feats = torch.cat([base, base], dim=1).reshape(-1, 16)  # each box twice in its image
    labels = torch.tensor([0, 1, 0, 1]).repeat(20)
    owner = torch.arange(20).repeat_interleave(4)
    assert knn_accuracy(feats, labels, owner, k=1) < 0.8
    # without the mask (every box its own image) the duplicate gives it away
    assert knn_accuracy(feats, labels, torch.arange(len(labels)), k=1) == 1.0


def test_bn_reestimation_is_the_exact_mean_and_leaves_eval_mode():
    torch.manual_seed(0)
    backbone_bn = nn.BatchNorm2d(3)

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = backbone_bn

        def forward(self, images, boxes):
            return self.bn(torch.stack([i.float() for i in images]))

    trunk = Trunk()
    images = [ProbeImage(torch.randint(0, 255, (3, 4, 4), dtype=torch.uint8), torch.zeros(0, 4),
                         torch.zeros(0, dtype=torch.int64)) for _ in range(5)]
    assert reestimate_bn(trunk, images, batch_size=2) == 1
    assert not trunk.training
    x = torch.stack([i.image.float() for i in images])
    batches = [x[0:2], x[2:4], x[4:5]]
    torch.testing.assert_close(trunk.bn.running_mean, torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0))


def _detector():
    cfg = add_config(get_cfg())
    load_config(cfg, TRANSFER)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.FPN.OUT_CHANNELS", "32",
                         "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def test_probe_trunk_leaves_the_model_untouched(tiny_images):
    from detectron2.data.datasets import load_coco_json

    cfg, model = _detector()
    images = load_probe_images(load_coco_json(*tiny_images), cfg.INPUT.FORMAT, min_size=96)
    assert all(min(i.image.shape[-2:]) == 96 for i in images)
    before = copy.deepcopy(model.state_dict())
    result = probe_trunk(trunk_from_detector(model), images)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert result["num_images"] == len(images) and result["num_boxes"] >= len(images)
    feats, labels, owner = extract_box_features(trunk_from_detector(model), images)
    assert feats["head"].shape == (result["num_boxes"], 64) and feats["pooled"].shape[1] == 32
    for key in ("knn_head", "linear_head", "knn_pooled", "linear_pooled", "dead_head",
                "knn_head_bal", "linear_head_bal", "knn_pooled_bal", "linear_pooled_bal"):
        assert 0.0 <= result[key] <= 1.0
    assert 1.0 <= result["erank_head"] <= min(result["num_boxes"], 64)


def test_probe_tool_compares_trunks(tiny_images, tmp_path, capsys):
    
    cfg, model = _detector()
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    tool = load_script("tools/probe.py", "probe_tool")
    json_file, image_root = tiny_images
    out = tmp_path / "probe.json"
    rc = tool.main(["--config-file", TRANSFER, "--json", json_file, "--image-root", image_root,
                    "--weights", "random", str(tmp_path / "w.pth"), "--out", str(out),
                    "MODEL.WEIGHTS", "", "MODEL.FPN.OUT_CHANNELS", "32",
                    "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "knn_head" in printed and str(tmp_path / "w.pth") in printed
    data = json.loads(out.read_text())
    rows = {r["trunk"]: r for r in data["results"]}
    assert set(rows) == {"random", str(tmp_path / "w.pth")}
    # the saved weights ARE the random initialisation of seed 0: same figures
    assert rows["random"]["knn_head"] == rows[str(tmp_path / "w.pth")]["knn_head"]


def test_linear_folds_do_not_follow_a_periodic_image_order():
    # Classes taking turns image by image (as the Imagenette probe sets are ordered): folds by
    # image parity would train on the odd classes only and test on the even ones (accuracy 0).
    labels = torch.arange(200) % 10
    feats = torch.nn.functional.one_hot(labels, 16).float() * 3
    feats = feats + torch.randn(feats.shape, generator=torch.Generator().manual_seed(0))
    owner = torch.arange(200)
    accuracy, pred = linear_probe_predict(feats, labels, owner)
    assert accuracy > 0.5 and balanced_accuracy(pred, labels) > 0.5  # chance 0.1
