"""AlignDet's models and loss (tiny R18-FPN, 64-96 px views, CPU): InfoNCE against a hand
computation, the frozen backbone, ids, regression targets, Detectron2's samplers, RetinaNet."""
import math
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

from soco_d2 import add_config
from soco_d2.config import load_config
from soco_d2.evaluation.probe import BoxFeatureTrunk
from soco_d2.methods.aligndet.loss import info_nce
from soco_d2.methods.aligndet.meta_arch import batch_instance_ids
from soco_d2.solver import build_soco_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = os.path.join(REPO, "configs", "aligndet", "aligndet_instant_test.yaml")
RETINANET = [
    "MODEL.META_ARCHITECTURE", "AlignDetRetinaNet",
    "MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone",
    "MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"], "MODEL.FPN.IN_FEATURES", ["res3", "res4", "res5"],
    "MODEL.ANCHOR_GENERATOR.SIZES", [[32, 40, 50], [64, 80, 101], [128, 161, 203], [256, 322, 406], [512, 645, 812]],
    "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", 0.0, "MODEL.ALIGNDET.DENSE_NUM_SAMPLES", 512,
]


def make_cfg(opts=()):
    cfg = add_config(get_cfg())
    load_config(cfg, INSTANT)
    cfg.merge_from_list(list(opts))
    return cfg


def build(opts=(), seed=0):
    torch.manual_seed(seed)
    model = build_model(make_cfg(opts))
    model.train()
    return model


def inputs(num_images=2, seed=0, ids_offset=0):
    """Mapper-like dicts: two views (different sizes) of random images, 3 pseudo-boxes each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(num_images):
        views = []
        for h, w in ((64, 80), (80, 96)):
            s = torch.tensor([w / 80, h / 64, w / 80, h / 64])
            boxes = torch.tensor([[4.0, 4, 40, 36], [30, 10, 76, 60], [10, 30, 50, 62]]) * s
            views.append({
                "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                "boxes": Boxes(boxes),
                "ids": torch.tensor([0, 5, 7]) + ids_offset,
            })
        out.append({"file_name": f"img{i}", "image_id": i, "views": views})
    return out


# ------------------------------------------------------------------ InfoNCE


def _spec_loss(q, q_ids, k, k_ids, t, extra=()):
    """ALIGNDET_SPEC.md's formula, with Python loops."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    q, k, extra = [unit(v) for v in q], [unit(v) for v in k], [unit(v) for v in extra]
    losses = []
    for kid in sorted(set(q_ids)):
        queries = [v for v, i in zip(q, q_ids) if i == kid]
        positives = [v for v, i in zip(k, k_ids) if i == kid] or queries
        negatives = [v for v, i in zip(q + k, q_ids + k_ids) if i != kid] + extra
        pair = []
        for a in queries:
            neg = sum(math.exp(dot(a, n) / t) for n in negatives)
            for p in positives:
                pos = math.exp(dot(a, p) / t)
                pair.append(-math.log(pos / (pos + neg)))
        losses.append(sum(pair) / len(pair))
    return sum(losses) / len(losses)


def test_info_nce_against_a_hand_computed_value():
    q = [[1.0, 0.2, 0.0], [0.8, 0.5, 0.1], [0.0, 1.0, 0.3], [0.2, 0.1, 1.0]]
    q_ids = [3, 3, 8, 9]            # id 9 has no key: its positive is Q_9 itself
    k = [[0.9, 0.3, 0.1], [0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [0.5, -0.2, 0.4]]
    k_ids = [3, 8, 8, 11]           # id 11 has no query: a negative for everyone
    for t in (0.5, 0.2):
        loss, stats = info_nce(torch.tensor(q), torch.tensor(q_ids), torch.tensor(k), torch.tensor(k_ids), t)
        assert float(loss) == pytest.approx(_spec_loss(q, q_ids, k, k_ids, t), rel=1e-5)
        assert stats["num_ids"] == 3
    extra = [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    loss, _ = info_nce(torch.tensor(q), torch.tensor(q_ids), torch.tensor(k), torch.tensor(k_ids), 0.5,
                       torch.tensor(extra))
    assert float(loss) == pytest.approx(_spec_loss(q, q_ids, k, k_ids, 0.5, extra), rel=1e-5)
    # by hand, one query, one positive, one negative: -log(e^(1/t) / (e^(1/t) + e^(0/t)))
    loss, stats = info_nce(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), torch.tensor([[2.0, 0.0], [0.0, 3.0]]),
                           torch.tensor([0, 1]), 0.5)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)
    assert stats["accuracy"] == 1 and stats["pos_sim"] == pytest.approx(1.0) and stats["neg_sim"] == pytest.approx(0.0)


def test_info_nce_gradient_reaches_the_queries_only():
    q = torch.randn(6, 4, requires_grad=True)
    k = torch.randn(5, 4, requires_grad=True)
    loss, _ = info_nce(q, torch.tensor([0, 0, 1, 1, 2, 2]), k, torch.tensor([0, 1, 1, 2, 3]), 0.5)
    loss.backward()
    assert q.grad.abs().sum() > 0 and k.grad is None
    empty, _ = info_nce(q[:0], torch.zeros(0, dtype=torch.int64), k, torch.tensor([0, 1, 1, 2, 3]), 0.5)
    assert float(empty.detach()) == 0 and empty.requires_grad


def test_instance_ids_are_unique_in_the_batch():
    views = [{"ids": torch.tensor([0, 4, 2])}, {"ids": torch.tensor([1, 0])}, {"ids": torch.tensor([3])}]
    ids = batch_instance_ids(views)
    assert [i.tolist() for i in ids] == [[0, 4, 2], [6, 5], [10]]  # offsets 0, 5, 5 + 2


# ------------------------------------------------------------------ R-CNN


def test_frozen_backbone_is_bit_identical_after_steps():
    model = build()
    bottom_up = model.backbone.bottom_up
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bottom_up.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bottom_up.modules())
    assert not any(p.requires_grad for p in bottom_up.parameters())
    assert not any(k.startswith("target.backbone.bottom_up.") for k in model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_soco_optimizer(make_cfg(["SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.5"]), model)
    with EventStorage():
        for step in range(3):
            losses = model(inputs(seed=step))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            model.update_target(0.9)
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith("backbone.bottom_up."):
            assert torch.equal(v, after[k]), k
    changed = lambda prefix: any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith(prefix))  # noqa: E731
    for prefix in ("backbone.fpn_", "proposal_generator.", "roi_heads.box_head.", "roi_heads.box_predictor.",
                   "target.backbone.fpn_", "target.roi_heads.box_head."):
        assert changed(prefix), prefix


def test_unfrozen_backbone_trains_and_has_its_own_target_copy():
    model = build(["MODEL.ALIGNDET.FREEZE_BACKBONE", "False"])
    assert any(k.startswith("target.backbone.bottom_up.") for k in model.state_dict())
    key = "backbone.bottom_up.stem.conv1.weight"
    before = model.state_dict()[key].clone()
    optimizer = build_soco_optimizer(make_cfg(["SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.5"]), model)
    with EventStorage():
        sum(model(inputs()).values()).backward()
    optimizer.step()
    model.update_target(0.0)
    assert not torch.equal(before, model.state_dict()[key])
    assert torch.equal(model.state_dict()[key], model.state_dict()["target." + key])


def test_foreground_rois_take_the_id_and_regression_target_of_their_pseudo_box():
    model = build()
    batch = inputs(ids_offset=300)  # ids >= 256 are regressed too (unlike the official code)
    with EventStorage():
        torch.manual_seed(1)  # the same samples in both calls
        out = model.training_outputs(batch)
        torch.manual_seed(1)
        losses = model(batch)
    rois, deltas = out["rois"], out["deltas"]
    transform = Box2BoxTransform(weights=model.roi_heads.box_predictor.box2box_transform.weights)
    expected = []
    for i, r in enumerate(rois):
        pseudo = batch[i]["views"][0]["boxes"]
        iou = pairwise_iou(r.proposal_boxes, pseudo)  # (R_i, 3)
        best = iou.argmax(dim=1)
        assert (iou.max(dim=1).values >= 0.5).all(), "foreground RoIs only"
        assert torch.equal(r.gt_boxes.tensor, pseudo.tensor[best])
        offset = 0 if i == 0 else 308  # batch_instance_ids: previous image's largest id + 1
        assert torch.equal(r.gt_ids, batch[i]["views"][0]["ids"][best] + offset)
        expected.append(transform.get_deltas(r.proposal_boxes.tensor, r.gt_boxes.tensor))
    assert len(out["query_ids"]) >= 6  # every pseudo-box is a proposal of itself
    target = torch.cat(expected)
    l1 = (deltas - target).abs().sum() / len(target)
    assert float(losses["loss_box_reg"].detach()) == pytest.approx(float(l1), rel=1e-5)
    assert set(out["key_ids"].tolist()) <= {300, 305, 307, 608, 613, 615}
    assert set(out["query_ids"].tolist()) == {300, 305, 307, 608, 613, 615}


def test_losses_monitors_and_probe_trunk():
    model = build()
    with EventStorage():
        losses = model(inputs())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_contrast", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    mon = model.monitors()
    assert set(mon) == {"aligndet/accuracy", "aligndet/pos_sim", "aligndet/neg_sim", "aligndet/num_ids",
                        "aligndet/fg_rois_per_image"}
    assert 0 <= mon["aligndet/accuracy"] <= 1 and mon["aligndet/num_ids"] == 6
    trunk = model.probe_trunk()
    assert isinstance(trunk, BoxFeatureTrunk) and trunk.backbone is model.backbone
    assert trunk.head is model.roi_heads.box_head
    model = build(["MODEL.ALIGNDET.REGRESSION", "False"])
    with EventStorage():
        assert "loss_box_reg" not in model(inputs())
    model.eval()
    out = model(inputs())
    assert out[0]["embeddings"].shape == (3, 32) and out[0]["deltas"].shape == (3, 4)


def test_classifier_is_replaced_by_the_projection_mlp():
    model = build(["MODEL.ALIGNDET.PROJ_HIDDEN_DIM", "48", "MODEL.ALIGNDET.EMBED_DIM", "24"])
    head = model.roi_heads.box_predictor.cls_score
    assert (head.fc1.in_features, head.fc1.out_features, head.fc2.out_features) == (64, 48, 24)
    assert head.norm is None and isinstance(head.relu, torch.nn.ReLU)
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 4  # class-agnostic


def test_rpn_samples_all_positives_first():
    cfg = make_cfg()
    base = make_cfg(["MODEL.RPN.BATCH_SIZE_PER_IMAGE", "4096"])
    assert (base.MODEL.RPN.POSITIVE_FRACTION, base.MODEL.ROI_HEADS.POSITIVE_FRACTION) == (1.0, 1.0)
    model = build()
    rpn = model.proposal_generator
    with EventStorage():
        images = model.preprocess_image(inputs()[0]["views"][:1])
        features = model.backbone(images.tensor)
        anchors = rpn.anchor_generator([features[f] for f in rpn.in_features])
    gt = model._pseudo_gt(inputs()[0]["views"][:1], images, [torch.tensor([0, 1, 2])])
    all_anchors = Boxes.cat(anchors)
    _, matcher_labels = rpn.anchor_matcher(pairwise_iou(gt[0].gt_boxes, all_anchors))
    num_pos, num_neg = int((matcher_labels == 1).sum()), int((matcher_labels == 0).sum())
    for batch_size in (cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE, num_pos - 2, 4096):
        rpn.batch_size_per_image = batch_size
        labels, _ = rpn.label_and_sample_anchors(anchors, gt)
        pos, neg = int((labels[0] == 1).sum()), int((labels[0] == 0).sum())
        assert pos == min(num_pos, batch_size), batch_size  # positive fraction 1.0
        assert neg == min(num_neg, batch_size - pos)


# ------------------------------------------------------------------ RetinaNet


def test_retinanet_losses_sampling_and_regression():
    model = build(RETINANET)
    assert type(model).__name__ == "AlignDetRetinaNet"
    assert model.head.cls_score.conv2.out_channels == 9 * 32  # A x D
    assert {"target.head.cls_subnet.0.weight", "target.backbone.top_block.p6.weight"} <= set(model.state_dict())
    assert not any(k.startswith("target.backbone.bottom_up.") for k in model.state_dict())
    batch = inputs()
    with EventStorage():
        torch.manual_seed(1)  # the same samples in both calls
        out = model.training_outputs(batch)
        torch.manual_seed(1)
        losses = model(batch)
    assert set(losses) == {"loss_contrast", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    transform = model.box2box_transform
    l1 = (out["deltas"] - transform.get_deltas(out["anchors"], out["targets"])).abs().sum() / len(out["deltas"])
    assert float(losses["loss_box_reg"].detach()) == pytest.approx(float(l1), rel=1e-5)
    assert (pairwise_iou(Boxes(out["anchors"]), Boxes(out["targets"])).diagonal() > 0).all()
    # positives first, negatives fill the rest: all positive when there are more than the samples
    images = model.preprocess_image([b["views"][0] for b in batch])
    anchors, _, _ = model.dense_outputs(model.backbone(images.tensor), model.head)
    gt = model._pseudo_gt([b["views"][0] for b in batch], images, batch_instance_ids([b["views"][0] for b in batch]))
    _, labels = model.anchor_matcher(pairwise_iou(gt[0].gt_boxes, anchors))
    for num_samples in (64, int((labels == 1).sum()) - 3):
        model.num_samples = num_samples
        pos, matched, neg = model.sample_anchors(anchors, gt[0])
        assert len(pos) == min(int((labels == 1).sum()), num_samples) and len(pos) + len(neg) == num_samples
        assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(out["extra_negatives"]) > 0
    assert model.monitors()["aligndet/pos_anchors_per_image"] > 0
    assert model.probe_trunk().head is None


@pytest.mark.parametrize("arch", ["rcnn", "retinanet"])
def test_target_copy_follows_the_momentum(arch):
    model = build(RETINANET if arch == "retinanet" else ())
    online = "head.cls_subnet.0.weight" if arch == "retinanet" else "roi_heads.box_head.conv1.weight"
    with torch.no_grad():
        model.state_dict()[online].add_(1.0)
    t = model.state_dict()["target." + online].clone()
    model.update_target(1.0)
    assert torch.equal(model.state_dict()["target." + online], t)
    model.update_target(0.0)
    assert torch.equal(model.state_dict()["target." + online], model.state_dict()[online])
    assert np.isclose(model.base_momentum, 0.996)
