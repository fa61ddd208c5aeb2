"""SimDETR's hand-off: everything but the pseudo-class layer, in Detectron2's names, loads into stock
Faster R-CNN and Mask R-CNN with no missing backbone, FPN, RPN or box-head key; the regressor
too where both regress class-agnostically; the exporter tells SimDETR checkpoints from others'."""
import os

import pytest
import torch
from detectron2.modeling import build_model

from soco_d2.export import export_trunk, find_export_spec
from soco_d2.methods import registered_exports
from soco_d2.methods.simdetr.export import KEEP, REGRESSION, simdetr_export
from test_aligndet_export import make_cfg
from train_helpers import REPO_ROOT, load_with_report, perturb_weights

SIMDETR = os.path.join(REPO_ROOT, "configs", "simdetr")
TRANSFER = os.path.join(REPO_ROOT, "configs", "transfer")
BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN"]
TRUNK = ("backbone.", "proposal_generator.", "roi_heads.box_head.")


def pretrained(tmp_path, config, opts=()):
    """A 'trained' SimDETR checkpoint (every tensor moved off its init) and its state_dict."""
    state = perturb_weights(build_model(make_cfg(os.path.join(SIMDETR, config), opts)))
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 3}, path)
    return path, state


def check_loads(state, trunk_path, transfer_config, may_miss, opts=()):
    """The trunk into a stock detector: nothing unexpected, no trunk key missing, only ``may_miss``
    missing, the loaded tensors the pretrained ones. Returns the load report."""
    cfg = make_cfg(os.path.join(TRANSFER, transfer_config), ["MODEL.WEIGHTS", str(trunk_path), *opts])
    detector = build_model(cfg)
    assert type(detector).__name__ == "GeneralizedRCNN"
    report = load_with_report(detector, cfg.MODEL.WEIGHTS)
    assert report.unexpected_keys == []
    assert [k for k in report.missing_keys if k.startswith(TRUNK)] == []
    assert all(k.startswith(may_miss) for k in report.missing_keys), report.missing_keys
    loaded = detector.state_dict()
    shapes = {k for k, *_ in report.incorrect_shapes}
    for k in torch.load(trunk_path, weights_only=True)["model"]:
        if k not in shapes:
            assert torch.equal(loaded[k], state[k]), k
    return report


def test_export_loads_into_stock_faster_and_mask_rcnn(tmp_path):
    ckpt, state = pretrained(tmp_path, "Base-SimDETR-RCNN-R50-FPN.yaml", BN)
    summary = export_trunk(str(ckpt), str(tmp_path / "trunk.pth"), registered_exports())
    assert summary["method"] == "SimDETRRCNN" and summary["renamed"] == 0
    assert summary["dropped"] == {"roi_heads": 2, "simdetr_round": 1}  # cls_score weight and bias
    kept = set(torch.load(tmp_path / "trunk.pth", weights_only=True)["model"])
    assert kept == {k for k in state if k.startswith(KEEP + REGRESSION)}
    assert not any(k.startswith("roi_heads.box_predictor.cls_score") for k in kept)
    # Class-agnostic fine-tuning: the regressor loads too; only the classifier starts random.
    report = check_loads(state, tmp_path / "trunk.pth", "faster_rcnn_R50_FPN_1x_aligndet.yaml",
                         ("roi_heads.box_predictor.cls_score.",), ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True])
    assert report.incorrect_shapes == []
    # Stock class-specific Mask R-CNN: the 4-output regressor is skipped for its shape (80 x 4 outputs).
    report = check_loads(state, tmp_path / "trunk.pth", "mask_rcnn_R50_FPN_1x.yaml",
                         ("roi_heads.box_predictor.", "roi_heads.mask_head."))
    assert {k for k, *_ in report.incorrect_shapes} == {"roi_heads.box_predictor.bbox_pred.weight",
                                                         "roi_heads.box_predictor.bbox_pred.bias"}


def test_cpu_recipe_loads_into_the_real_photo_fine_tuning_config(tmp_path):
    ckpt, state = pretrained(tmp_path, "simdetr_R18_FPN_aquarium_cpu.yaml", ["MODEL.WEIGHTS", ""])
    trunk = tmp_path / "trunk.pth"
    export_trunk(str(ckpt), str(trunk), simdetr_export(True))
    check_loads(state, trunk, "faster_rcnn_R18_FPN_aquarium.yaml", ("roi_heads.box_predictor.",),
                ["MODEL.WEIGHTS", str(trunk)])


def test_class_specific_pretraining_keeps_its_regressor_out(tmp_path):
    ckpt, state = pretrained(tmp_path, "simdetr_instant_test.yaml", ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False])
    assert state["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 4 * 3
    export_trunk(str(ckpt), str(tmp_path / "trunk.pth"), simdetr_export(False))
    kept = set(torch.load(tmp_path / "trunk.pth", weights_only=True)["model"])
    assert kept == {k for k in state if k.startswith(KEEP)}


def test_exporter_tells_simdetr_from_the_others():
    t = torch.ones(1)
    simdetr = {"backbone.a": t, "roi_heads.box_predictor.cls_score.weight": t, "simdetr_round": t}
    assert find_export_spec(list(simdetr), registered_exports()).method == "SimDETRRCNN"
    for other, method in (({"backbone.a": t, "projector.fc1.weight": t, "target.backbone.a": t}, "SoCo"),
                          ({"backbone.a": t, "roi_heads.box_predictor.cls_score.fc1.weight": t}, "AlignDetRCNN")):
        assert find_export_spec(list(other), registered_exports()).method == method
    with pytest.raises(ValueError, match="nor a SimDETRRCNN checkpoint \\(no simdetr_round\\* keys\\)"):
        find_export_spec(["backbone.a", "roi_heads.box_predictor.cls_score.weight"], registered_exports())
