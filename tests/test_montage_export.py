"""Montage's hand-off: the exported backbone loads by name into stock Detectron2 detectors (C4 and
FPN), and detector / SoCo trunks load into the Montage backbone (soco_d2/methods/montage/export.py,
meta_arch.py, the ExportSpec aliases of soco_d2/export.py)."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import soco_d2  # noqa: F401  (registers the Montage meta architecture)
from soco_d2 import add_config
from soco_d2.config import load_config
from soco_d2.export import export_trunk, find_export_spec
from soco_d2.methods import registered_exports
from soco_d2.methods.montage.export import MONTAGE_EXPORT
from train_helpers import load_with_report, perturb_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONTAGE = os.path.join(REPO, "configs", "montage")
TRANSFER = os.path.join(REPO, "configs", "transfer")


def make_cfg(path, opts=()):
    cfg = get_cfg()
    add_config(cfg)
    load_config(cfg, path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


@pytest.fixture(scope="module")
def exported_r50(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("montage_export")
    cfg = make_cfg(os.path.join(MONTAGE, "montage_R50_coco_2017_train.yaml"), ["MODEL.RESNETS.NORM", "BN"])
    trained = perturb_weights(build_model(cfg))
    torch.save({"model": trained, "iteration": 5}, tmp / "model_final.pth")
    summary = export_trunk(str(tmp / "model_final.pth"), str(tmp / "trunk.pth"), registered_exports())
    return trained, summary, str(tmp / "trunk.pth")


def test_export_keeps_the_backbone_under_detectron2_names(exported_r50):
    trained, summary, path = exported_r50
    assert summary["method"] == "Montage" and summary["dropped"] == {"dense_classifier": 2}
    backbone = {k for k in trained if k.startswith("backbone.")}
    weights = torch.load(path, weights_only=True)["model"]
    plain = {k for k in weights if not k.startswith(("backbone.bottom_up.", "roi_heads.res5."))}
    assert plain == backbone
    assert {k for k in weights if k.startswith("backbone.bottom_up.")} == {
        k.replace("backbone.", "backbone.bottom_up.", 1) for k in backbone}
    assert {k for k in weights if k.startswith("roi_heads.res5.")} == {
        k.replace("backbone.", "roi_heads.", 1) for k in backbone if k.startswith("backbone.res5.")}
    assert summary["aliased"] == len(weights) - len(backbone) and summary["renamed"] == 0
    # aliases are the same tensors: stored once
    assert weights["backbone.bottom_up.stem.conv1.weight"].data_ptr() == weights["backbone.stem.conv1.weight"].data_ptr()
    assert find_export_spec(list(trained), registered_exports()) is MONTAGE_EXPORT


@pytest.mark.parametrize("zoo, resnet_prefix", [
    ("detectron2://COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "backbone.bottom_up."),
    ("detectron2://COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", "backbone."),
], ids=["faster_rcnn_R50_FPN", "faster_rcnn_R50_C4"])
def test_exported_backbone_loads_into_stock_detectors(exported_r50, zoo, resnet_prefix):
    trained, _, path = exported_r50
    cfg = make_cfg(zoo, ["MODEL.WEIGHTS", path])
    detector = build_model(cfg)
    report = load_with_report(detector, path)
    state = detector.state_dict()
    resnet = [k for k in state if k.startswith(resnet_prefix) and not k.startswith("backbone.fpn_")]
    if resnet_prefix == "backbone.":  # C4: res5 is the box head
        resnet += [k for k in state if k.startswith("roi_heads.res5.")]
    # every backbone tensor has its place (stock detectors use FrozenBN: no num_batches_tracked)
    assert len(resnet) == len([k for k in trained if k.startswith("backbone.") and "num_batches" not in k])
    assert [k for k in report.missing_keys if k in resnet] == []  # zero missing backbone keys
    assert report.incorrect_shapes == []
    not_pretrained = ("backbone.fpn_", "proposal_generator.", "roi_heads.box_head.", "roi_heads.box_predictor.")
    assert all(k.startswith(not_pretrained) for k in report.missing_keys), report.missing_keys
    for k in resnet:
        source = "backbone." + k.split(".", 2)[-1] if k.startswith("backbone.bottom_up.") else \
            k.replace("roi_heads.", "backbone.", 1)
        assert torch.equal(state[k], trained[source]), k


def test_synthetic_transfer_config_loads_an_r18_montage_backbone(tmp_path):
    cfg = make_cfg(os.path.join(MONTAGE, "montage_demo_synthetic.yaml"))
    trained = perturb_weights(build_model(cfg))
    export_trunk({"model": trained}, str(tmp_path / "trunk.pth"), registered_exports())
    det_cfg = make_cfg(os.path.join(TRANSFER, "faster_rcnn_R18_FPN_synthetic.yaml"),
                       ["MODEL.WEIGHTS", str(tmp_path / "trunk.pth")])
    report = load_with_report(build_model(det_cfg), det_cfg.MODEL.WEIGHTS)
    assert not [k for k in report.missing_keys if k.startswith("backbone.bottom_up.")]
    assert report.incorrect_shapes == []


@pytest.mark.parametrize("soco_config", ["Base-SoCo-R50-FPN.yaml", "Base-SoCo-R50-C4.yaml"])
def test_soco_trunks_load_into_the_montage_backbone(tmp_path, soco_config):
    soco_cfg = make_cfg(os.path.join(REPO, "configs", "soco", soco_config), [
        "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN",
        "MODEL.SOCO.HEAD_NORM", "BN", "MODEL.SOCO.PROJECTOR_HIDDEN_DIM", 64,
        "MODEL.SOCO.PREDICTOR_HIDDEN_DIM", 64, "MODEL.SOCO.PROJECTOR_DIM", 32])
    soco_state = perturb_weights(build_model(soco_cfg))
    export_trunk({"model": soco_state}, str(tmp_path / "soco_trunk.pth"), registered_exports())
    montage = build_model(make_cfg(os.path.join(MONTAGE, "montage_R50_coco_2017_train.yaml"),
                                   ["MODEL.RESNETS.NORM", "BN"]))
    report = load_with_report(montage, str(tmp_path / "soco_trunk.pth"))
    assert report.missing_keys == ["dense_classifier.weight", "dense_classifier.bias"]
    for k, v in montage.state_dict().items():
        if k.startswith("backbone."):
            rest = k[len("backbone."):]
            source = ("roi_heads." + rest) if rest.startswith("res5.") and "C4" in soco_config else \
                ("backbone.bottom_up." + rest if "FPN" in soco_config else k)
            assert torch.equal(v, soco_state[source]), k
