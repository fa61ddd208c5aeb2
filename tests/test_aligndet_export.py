"""AlignDet's hand-off: the exported FPN, RPN and box head / RetinaNet subnets load by name into
stock Faster R-CNN, Mask R-CNN and RetinaNet built from the transfer configs; the exporter tells
AlignDet checkpoints from SoCo ones; the fine-tuning configs carry AlignDet's lr and wd."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from soco_d2 import add_config
from soco_d2.config import WEIGHTS_PLACEHOLDER, load_config
from soco_d2.export import export_trunk, find_export_spec
from soco_d2.methods import registered_exports
from soco_d2.methods.aligndet.export import RCNN_KEEP, RETINANET_KEEP, aligndet_export
from test_export import load_with_report, save_trained_soco_checkpoint
from train_helpers import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALIGNDET = os.path.join(REPO, "configs", "aligndet")
TRANSFER = os.path.join(REPO, "configs", "transfer")
# Plain BN in pretraining (as on CPU), SyncBN in the fine-tuning configs: same names.
BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN"]
SMALL_PROJECTOR = ["MODEL.ALIGNDET.PROJ_HIDDEN_DIM", 64, "MODEL.ALIGNDET.EMBED_DIM", 16]


def make_cfg(path, opts=()):
    cfg = add_config(get_cfg())
    load_config(cfg, path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def pretrained(tmp_path, config, opts=()):
    """A 'trained' AlignDet checkpoint (every tensor moved off its init, target != online) and
    its state_dict."""
    cfg = make_cfg(os.path.join(ALIGNDET, config), BN + SMALL_PROJECTOR + list(opts))
    path = tmp_path / "model_final.pth"
    return path, save_trained_soco_checkpoint(cfg, path)


def check_loads(state, trunk_path, transfer_config, pretrained_prefixes, may_miss, opts=()):
    det_cfg = make_cfg(os.path.join(TRANSFER, transfer_config), ["MODEL.WEIGHTS", str(trunk_path), *opts])
    detector = build_model(det_cfg)
    report = load_with_report(detector, det_cfg.MODEL.WEIGHTS)
    assert report.unexpected_keys == [] and report.incorrect_shapes == []
    assert [k for k in report.missing_keys if k.startswith(pretrained_prefixes)] == []
    assert all(k.startswith(may_miss) for k in report.missing_keys), report.missing_keys
    loaded = detector.state_dict()
    exported = torch.load(trunk_path, weights_only=True)["model"]
    for k in exported:
        assert torch.equal(loaded[k], state[k]), k  # the online weights, not the target's
        if state[k].is_floating_point() and not k.startswith("backbone.bottom_up."):
            assert not torch.equal(state[k], state["target." + k]), k
    return detector


def test_rcnn_export_loads_into_stock_faster_and_mask_rcnn(tmp_path):
    ckpt, state = pretrained(tmp_path, "Base-AlignDet-RCNN-R50-FPN.yaml")
    summary = export_trunk(str(ckpt), str(tmp_path / "trunk.pth"), registered_exports())
    assert summary["method"] == "AlignDetRCNN" and summary["renamed"] == 0
    assert {"roi_heads", "target.backbone", "target.proposal_generator", "target.roi_heads"} == set(summary["dropped"])
    kept = set(torch.load(tmp_path / "trunk.pth", weights_only=True)["model"])
    assert kept == {k for k in state if k.startswith(RCNN_KEEP)}
    assert any(k.startswith("backbone.bottom_up.") for k in kept) and any(k.startswith("backbone.fpn_") for k in kept)
    assert any(k.startswith("proposal_generator.rpn_head.") for k in kept)
    pretrained_parts = ("backbone.", "proposal_generator.", "roi_heads.box_head.")
    faster = check_loads(state, tmp_path / "trunk.pth", "faster_rcnn_R50_FPN_1x_aligndet.yaml",
                         pretrained_parts, ("roi_heads.box_predictor.",))
    assert faster.roi_heads.box_predictor.cls_score.out_features == 81  # the stock classifier
    check_loads(state, tmp_path / "trunk.pth", "mask_rcnn_R50_FPN_1x_aligndet.yaml",
                pretrained_parts, ("roi_heads.box_predictor.", "roi_heads.mask_head."))


def test_rcnn_regression_layer_exports_on_request_into_a_class_agnostic_detector(tmp_path):
    ckpt, state = pretrained(tmp_path, "Base-AlignDet-RCNN-R50-FPN.yaml")
    export_trunk(str(ckpt), str(tmp_path / "trunk.pth"), aligndet_export("AlignDetRCNN", keep_regression=True))
    kept = set(torch.load(tmp_path / "trunk.pth", weights_only=True)["model"])
    assert {"roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"} <= kept
    assert not any(k.startswith("roi_heads.box_predictor.cls_score") for k in kept)
    check_loads(state, tmp_path / "trunk.pth", "faster_rcnn_R50_FPN_1x_aligndet.yaml",
                ("backbone.", "proposal_generator.", "roi_heads.box_head.", "roi_heads.box_predictor.bbox_pred."),
                ("roi_heads.box_predictor.cls_score.",), ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True])


def test_retinanet_export_loads_into_stock_retinanet(tmp_path):
    ckpt, state = pretrained(tmp_path, "Base-AlignDet-RetinaNet-R50-FPN.yaml")
    summary = export_trunk(str(ckpt), str(tmp_path / "trunk.pth"), registered_exports())
    assert summary["method"] == "AlignDetRetinaNet"
    kept = set(torch.load(tmp_path / "trunk.pth", weights_only=True)["model"])
    assert kept == {k for k in state if k.startswith(RETINANET_KEEP)}
    assert "backbone.top_block.p6.weight" in kept
    detector = check_loads(state, tmp_path / "trunk.pth", "retinanet_R50_FPN_1x_aligndet.yaml",
                           RETINANET_KEEP, ("head.cls_score.", "head.bbox_pred."))
    assert type(detector).__name__ == "RetinaNet"
    export_trunk(str(ckpt), str(tmp_path / "trunk_reg.pth"), aligndet_export("AlignDetRetinaNet", True))
    check_loads(state, tmp_path / "trunk_reg.pth", "retinanet_R50_FPN_1x_aligndet.yaml",
                RETINANET_KEEP + ("head.bbox_pred.",), ("head.cls_score.",))


def test_exporter_tells_aligndet_from_soco():
    t = torch.ones(1)
    soco = {"backbone.a": t, "projector.fc1.weight": t, "predictor.fc1.weight": t, "target.backbone.a": t}
    rcnn = {"backbone.a": t, "roi_heads.box_predictor.cls_score.fc1.weight": t, "target.backbone.fpn_x": t}
    retina = {"backbone.a": t, "head.cls_score.conv1.weight": t, "target.head.x": t}
    assert find_export_spec(list(soco), registered_exports()).method == "SoCo"
    assert find_export_spec(list(rcnn), registered_exports()).method == "AlignDetRCNN"
    assert find_export_spec(list(retina), registered_exports()).method == "AlignDetRetinaNet"
    with pytest.raises(ValueError, match=r"is not a SoCo checkpoint .*nor an AlignDetRCNN checkpoint "
                                         r"\(no roi_heads\.box_predictor\.cls_score\.fc1\.\* keys\)"):
        find_export_spec(["backbone.a", "roi_heads.box_predictor.cls_score.weight"], registered_exports(),
                         "mask_rcnn.pth")


def test_converter_also_keeps_the_regression_layer(tmp_path, capsys):
    cli = load_script("tools/convert_to_d2.py")
    t = torch.ones(2)
    state = {"backbone.a": t, "roi_heads.box_head.fc1.weight": t, "roi_heads.box_predictor.bbox_pred.weight": t,
             "roi_heads.box_predictor.cls_score.fc1.weight": t, "target.backbone.a": t}
    torch.save({"model": state}, tmp_path / "model_final.pth")
    assert cli.main([str(tmp_path / "model_final.pth"), str(tmp_path / "a.pth")]) == 0
    assert "roi_heads.box_predictor.bbox_pred.weight" not in torch.load(tmp_path / "a.pth", weights_only=True)["model"]
    assert cli.main([str(tmp_path / "model_final.pth"), str(tmp_path / "b.pth"),
                     "--also-keep", "roi_heads.box_predictor.bbox_pred."]) == 0
    assert set(torch.load(tmp_path / "b.pth", weights_only=True)["model"]) == {
        "backbone.a", "roi_heads.box_head.fc1.weight", "roi_heads.box_predictor.bbox_pred.weight"}


@pytest.mark.parametrize("name, lr, wd, arch", [
    ("faster_rcnn_R50_FPN_1x_aligndet.yaml", 0.03, 5e-5, "GeneralizedRCNN"),
    ("mask_rcnn_R50_FPN_1x_aligndet.yaml", 0.03, 5e-5, "GeneralizedRCNN"),
    ("retinanet_R50_FPN_1x_aligndet.yaml", 0.015, 5e-5, "RetinaNet"),
    ("faster_rcnn_R18_FPN_synthetic_aligndet.yaml", 0.03, 1.25e-5, "GeneralizedRCNN"),
    ("retinanet_R18_FPN_synthetic_aligndet.yaml", 0.015, 1.25e-5, "RetinaNet"),
])
def test_fine_tuning_configs_use_alignDets_lr_and_weight_decay(name, lr, wd, arch):
    cfg = make_cfg(os.path.join(TRANSFER, name))
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == (pytest.approx(lr), pytest.approx(wd))
    assert cfg.MODEL.META_ARCHITECTURE == arch and cfg.MODEL.WEIGHTS == WEIGHTS_PLACEHOLDER
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert cfg.MODEL.FPN.NORM == ("BN" if "R18" in name else "SyncBN")
    if "R18" in name:  # the trunk of the CPU pretraining recipes
        assert cfg.MODEL.FPN.OUT_CHANNELS == 128 and cfg.DATASETS.TRAIN == ("soco_synthetic_det_train_100",)
