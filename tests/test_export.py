"""Hand-off to detection: export the online trunk, load it into stock Detectron2 detectors built
from the transfer configs, and fine-tune + evaluate from it."""
import glob
import math
import os
import types

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model

import soco_d2  # noqa: F401  (registers the SoCo meta architecture)
from soco_d2 import add_soco_config
from soco_d2.config import WEIGHTS_PLACEHOLDER, check_weights_set, load_config
from soco_d2.export import export_trunk
from soco_d2.methods import registered_exports
from soco_d2.methods.soco.export import ONLINE_TRUNK_PREFIXES, SOCO_ONLY_PREFIXES
from train_helpers import load_script, load_with_report, perturb_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "soco")
TRANSFER = os.path.join(REPO, "configs", "transfer")
# AlignDet's fine-tuning configs (*_aligndet.yaml) change lr and weight decay and include
# RetinaNet: tests/test_aligndet_export.py checks them.
TRANSFER_CONFIGS = sorted(p for p in glob.glob(os.path.join(TRANSFER, "*.yaml")) if "aligndet" not in p)

# What a stock Mask R-CNN may miss after loading SoCo weights: the parts SoCo does not pretrain.
NOT_PRETRAINED = ("proposal_generator.", "roi_heads.box_predictor.", "roi_heads.mask_head.",
                  "roi_heads.res5.norm.")

BN_EVERYWHERE = [
    "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN",
    "MODEL.SOCO.HEAD_NORM", "BN",
]
# Pretraining-only widths; the trunk keeps its real shapes.
SMALL_PROJECTOR = [
    "MODEL.SOCO.PROJECTOR_HIDDEN_DIM", 256, "MODEL.SOCO.PREDICTOR_HIDDEN_DIM", 256,
    "MODEL.SOCO.PROJECTOR_DIM", 64,
]
R18 = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
# Narrow FPN and box head for the CPU fine-tuning test (same in pretraining and detector).
NARROW = ["MODEL.FPN.OUT_CHANNELS", 64, "MODEL.ROI_BOX_HEAD.CONV_DIM", 64, "MODEL.ROI_BOX_HEAD.FC_DIM", 256]


def make_cfg(path, opts=()):
    cfg = get_cfg()
    add_soco_config(cfg)
    load_config(cfg, path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def save_trained_soco_checkpoint(cfg, path, seed=0):
    """A SoCo training checkpoint whose every tensor differs from a fresh init, and whose target
    differs from the online network. Returns the saved state_dict."""
    state = perturb_weights(build_model(cfg), seed)
    torch.save({"model": state, "iteration": 3, "optimizer": {}}, path)
    return state


# ------------------------------------------------------------------ export -> stock detector


@pytest.mark.parametrize(
    "soco_config, soco_opts, transfer_config, head_prefix",
    [
        # Pretrained with plain BN (as on CPU), fine-tuned with the protocol's SyncBN: same names.
        ("Base-SoCo-R50-FPN.yaml", BN_EVERYWHERE, "mask_rcnn_R50_FPN_1x.yaml", "roi_heads.box_head."),
        ("Base-SoCo-R50-C4.yaml", [], "mask_rcnn_R50_C4_1x.yaml", "roi_heads.res5."),
    ],
    ids=["R50-FPN", "R50-C4"],
)
def test_exported_trunk_loads_into_stock_mask_rcnn(tmp_path, soco_config, soco_opts, transfer_config, head_prefix):
    soco_cfg = make_cfg(os.path.join(CONFIGS, soco_config), soco_opts + SMALL_PROJECTOR)
    trained = save_trained_soco_checkpoint(soco_cfg, tmp_path / "model_final.pth")
    online = {k for k in trained if k.startswith(ONLINE_TRUNK_PREFIXES)}
    assert any(k.startswith(head_prefix) for k in online)

    summary = export_trunk(str(tmp_path / "model_final.pth"), str(tmp_path / "trunk.pth"), registered_exports())
    assert summary["kept"] == len(online) and summary["renamed"] == 0
    assert {"projector", "predictor", "target.backbone", "target.roi_heads"} <= set(summary["dropped"])

    exported = torch.load(tmp_path / "trunk.pth", weights_only=True)
    assert exported["__author__"] == "soco_d2" and exported["matching_heuristics"] is False
    assert set(exported["model"]) == online  # names unchanged, nothing else
    assert not any(k.startswith(SOCO_ONLY_PREFIXES) for k in exported["model"])

    det_cfg = make_cfg(os.path.join(TRANSFER, transfer_config), ["MODEL.WEIGHTS", str(tmp_path / "trunk.pth")])
    detector = build_model(det_cfg)
    assert detector.__class__.__name__ == "GeneralizedRCNN"
    resnet = getattr(detector.backbone, "bottom_up", detector.backbone)  # FPN wraps the ResNet
    assert isinstance(resnet.stem.conv1.norm, torch.nn.SyncBatchNorm)
    report = load_with_report(detector, det_cfg.MODEL.WEIGHTS)

    assert report.unexpected_keys == [] and report.incorrect_shapes == []
    # The published C4 transfer adds a fresh BN after res5 (Res5ROIHeadsExtraNorm): the only
    # res5 keys a SoCo trunk does not provide.
    extra_norm = "roi_heads.res5.norm."
    if head_prefix == "roi_heads.res5.":
        assert type(detector.roi_heads).__name__ == "Res5ROIHeadsExtraNorm"
        assert {k for k in report.missing_keys if k.startswith(extra_norm)} == {
            extra_norm + n for n in ("weight", "bias", "running_mean", "running_var")}
    missing_trunk = [k for k in report.missing_keys
                     if k.startswith(("backbone.", head_prefix)) and not k.startswith(extra_norm)]
    assert missing_trunk == []
    assert all(k.startswith(NOT_PRETRAINED) for k in report.missing_keys), report.missing_keys

    loaded = detector.state_dict()
    for k in online:
        assert torch.equal(loaded[k], trained[k]), k
        if trained[k].is_floating_point():  # the online copy, not the momentum target's
            assert not torch.equal(trained[k], trained["target." + k]), k


def tiny_state():
    t = torch.ones(2)
    return {"backbone.a.weight": t, "roi_heads.box_head.fc1.weight": t, "projector.0.weight": t,
            "predictor.0.weight": t, "target.backbone.a.weight": t}


def test_converter_cli_and_clear_errors(tmp_path, capsys):
    cli = load_script("tools/convert_to_d2.py")
    main = cli.main

    src, dst = tmp_path / "model_final.pth", tmp_path / "out" / "trunk.pth"
    torch.save({"model": tiny_state(), "iteration": 3}, src)
    assert main([str(src), str(dst)]) == 0
    assert set(torch.load(dst, weights_only=True)["model"]) == {"backbone.a.weight", "roi_heads.box_head.fc1.weight"}
    out = capsys.readouterr().out
    assert "backbone.a.weight -> backbone.a.weight" in out and "dropped" in out
    assert not [p for p in os.listdir(dst.parent) if p != "trunk.pth"]  # no temporary file left

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        export_trunk(str(tmp_path / "nope.pth"), str(dst), registered_exports())
    assert main([str(tmp_path / "nope.pth"), str(dst)]) == 1

    detector_only = tmp_path / "mask_rcnn.pth"
    torch.save({"model": {"backbone.a.weight": torch.ones(1), "roi_heads.box_predictor.w": torch.ones(1)}}, detector_only)
    with pytest.raises(ValueError, match=r"mask_rcnn\.pth is not a SoCo checkpoint.*projector\.\*"):
        export_trunk(str(detector_only), str(dst), registered_exports())
    with pytest.raises(ValueError, match=r"no online trunk.*backbone\."):
        export_trunk({"projector.w": torch.ones(1)}, str(dst), registered_exports())
    with pytest.raises(ValueError, match=r"\.pth"):
        export_trunk(str(src), str(tmp_path / "trunk.pkl"), registered_exports())


def test_converter_method_flag_and_renames(tmp_path, capsys):
    from soco_d2.export import ExportSpec

    cli = load_script("tools/convert_to_d2.py")
    src, dst = tmp_path / "model_final.pth", tmp_path / "trunk.pth"
    torch.save({"model": tiny_state()}, src)
    assert cli.main([str(src), str(dst), "--method", "SoCo"]) == 0
    with pytest.raises(SystemExit):  # not a registered method
        cli.main([str(src), str(dst), "--method", "NoSuchMethod"])
    # A method whose names differ from Detectron2's declares renames; marks pick the method.
    other = ExportSpec(method="Other", keep=("encoder.",), marks=("head.",), renames=(("encoder.", "backbone."),))
    summary = export_trunk({"encoder.w": torch.ones(1), "head.w": torch.ones(1)}, str(dst), other)
    assert summary["renamed"] == 1 and summary["method"] == "Other"
    assert set(torch.load(dst, weights_only=True)["model"]) == {"backbone.w"}
    with pytest.raises(ValueError, match="is not a Other checkpoint"):
        export_trunk(str(src), str(dst), other)


def test_export_hook_writes_trunk_after_the_last_iteration(tmp_path):
    from soco_d2.engine.hooks import ExportTrunkHook

    model = types.SimpleNamespace(state_dict=tiny_state)
    ddp = types.SimpleNamespace(module=model)  # the hook unwraps DistributedDataParallel
    hook = ExportTrunkHook(str(tmp_path), registered_exports())
    hook.trainer = types.SimpleNamespace(model=ddp, iter=4, max_iter=10)
    hook.after_train()  # stopped early: nothing written
    assert not os.path.exists(tmp_path / "model_final_trunk.pth")
    hook.trainer.iter = 10
    hook.after_train()
    assert set(torch.load(tmp_path / "model_final_trunk.pth", weights_only=True)["model"]) == {
        "backbone.a.weight", "roi_heads.box_head.fc1.weight"}


# ------------------------------------------------------------------ transfer configs


@pytest.mark.parametrize("path", TRANSFER_CONFIGS, ids=os.path.basename)
def test_every_transfer_config_loads(path):
    cfg = make_cfg(path)
    m = cfg.MODEL
    assert m.WEIGHTS == WEIGHTS_PLACEHOLDER  # the model zoo's ImageNet weights are overridden
    assert cfg.INPUT.FORMAT == "RGB" and not m.RESNETS.STRIDE_IN_1X1 and m.BACKBONE.FREEZE_AT == 0
    assert list(m.PIXEL_MEAN) == [123.675, 116.28, 103.53] and list(m.PIXEL_STD) == [58.395, 57.12, 57.375]
    assert cfg.SOLVER.WEIGHT_DECAY == 2.5e-5 and cfg.TEST.PRECISE_BN.ENABLED
    if os.path.basename(path).startswith("Base-"):
        return
    # From Detectron2's own files, two _BASE_ levels down (e.g. ../Base-RCNN-FPN.yaml):
    assert m.META_ARCHITECTURE == "GeneralizedRCNN" and cfg.DATASETS.TRAIN
    norm = "BN" if "R18" in path else "SyncBN"
    assert m.RESNETS.NORM == norm
    if m.ROI_HEADS.NAME == "StandardROIHeads":
        assert m.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]
        assert (m.ROI_BOX_HEAD.NAME, m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.NUM_FC) == ("FastRCNNConvFCHead", 4, 1)
        assert m.FPN.NORM == m.ROI_BOX_HEAD.NORM == norm
        if m.MASK_ON:
            assert m.ROI_MASK_HEAD.NORM == norm


def test_schedules_and_model_zoo_paths():
    assert make_cfg(os.path.join(TRANSFER, "mask_rcnn_R50_FPN_1x.yaml")).SOLVER.MAX_ITER == 90000
    assert make_cfg(os.path.join(TRANSFER, "mask_rcnn_R50_FPN_2x.yaml")).SOLVER.MAX_ITER == 180000
    voc = make_cfg(os.path.join(TRANSFER, "faster_rcnn_R50_C4_voc.yaml"))
    assert voc.MODEL.ROI_HEADS.NUM_CLASSES == 20 and not voc.MODEL.MASK_ON
    # A top-level detectron2:// path works too; an unknown one names itself.
    zoo = make_cfg("detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert zoo.MODEL.MASK_ON and zoo.MODEL.RESNETS.STRIDE_IN_1X1
    with pytest.raises(FileNotFoundError, match="no_such_config.yaml"):
        make_cfg("detectron2://COCO-InstanceSegmentation/no_such_config.yaml")


def test_weights_placeholder_fails_clearly():
    path = os.path.join(TRANSFER, "mask_rcnn_R50_FPN_1x.yaml")
    cfg = make_cfg(path)
    with pytest.raises(ValueError, match=r"MODEL\.WEIGHTS.*" + WEIGHTS_PLACEHOLDER + r".*mask_rcnn_R50_FPN_1x\.yaml"):
        check_weights_set(cfg, path)
    for ok in ("", "soco_trunk.pth"):
        cfg.MODEL.WEIGHTS = ok
        check_weights_set(cfg, path)


# ------------------------------------------------------------------ coco_sample split


def test_coco_sample_split(coco_sample, tmp_path):
    import json

    from soco_d2.data import coco_sample as cs

    assert {"coco_sample_train", "coco_sample_val", "coco_sample_soco"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("coco_sample_val").evaluator_type == "coco"
    paths = cs.write_coco_sample_splits(coco_sample, str(tmp_path))
    with open(os.path.join(coco_sample, "instances.json")) as f:
        all_ids = sorted(img["id"] for img in json.load(f)["images"])
    splits = {}
    for split, path in paths.items():
        with open(path) as f:
            data = json.load(f)
        splits[split] = sorted(img["id"] for img in data["images"])
        assert {a["image_id"] for a in data["annotations"]} <= set(splits[split])
    assert splits["val"] == all_ids[4::5] and len(splits["train"]) + len(splits["val"]) == len(all_ids)
    assert not set(splits["train"]) & set(splits["val"])
    mtime = os.path.getmtime(paths["val"])
    cs.write_coco_sample_splits(coco_sample, str(tmp_path))  # up to date: not rewritten
    assert os.path.getmtime(paths["val"]) == mtime


# ------------------------------------------------------------------ fine-tune from export


def _register_synthetic(root):
    from soco_d2.data.synthetic import SYNTHETIC_CATEGORIES, generate_synthetic_dataset

    paths = generate_synthetic_dataset(str(root), num_train=8, num_val=4, seed=3, min_size=96, max_size=128)
    names = {}
    for split, (json_file, image_root) in paths.items():
        name = names[split] = f"test_export_synthetic_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        meta = {"thing_classes": [c["name"] for c in SYNTHETIC_CATEGORIES]}
        register_coco_instances(name, meta, json_file, image_root)
    return names


def test_finetune_from_exported_tiny_soco_checkpoint(tmp_path):
    from detectron2.engine.hooks import PreciseBN

    from soco_d2.engine.detection import DetectionTrainer

    names = _register_synthetic(tmp_path / "synthetic")
    soco_cfg = make_cfg(os.path.join(CONFIGS, "Base-SoCo-R50-FPN.yaml"), R18 + NARROW + BN_EVERYWHERE + SMALL_PROJECTOR)
    trained = save_trained_soco_checkpoint(soco_cfg, tmp_path / "model_final.pth")
    export_trunk(str(tmp_path / "model_final.pth"), str(tmp_path / "trunk.pth"), registered_exports(), verbose=False)

    cfg = make_cfg(os.path.join(TRANSFER, "mask_rcnn_R18_FPN_synthetic.yaml"), NARROW + [
        "MODEL.ROI_MASK_HEAD.CONV_DIM", 64,
        "MODEL.WEIGHTS", str(tmp_path / "trunk.pth"),
        "DATASETS.TRAIN", (names["train"],), "DATASETS.TEST", (names["val"],),
        "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128,
        "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 4, "SOLVER.STEPS", (3,),
        "SOLVER.WARMUP_ITERS", 2, "SOLVER.BASE_LR", 0.001, "SOLVER.CHECKPOINT_PERIOD", 1000,
        "DATALOADER.NUM_WORKERS", 0, "TEST.PRECISE_BN.NUM_ITER", 2,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 32, "TEST.DETECTIONS_PER_IMAGE", 16,
        # every box is kept, so the evaluator always has detections to score
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
        "OUTPUT_DIR", str(tmp_path / "finetune"),
    ])
    check_weights_set(cfg)
    trainer = DetectionTrainer(cfg)
    assert any(isinstance(h, PreciseBN) for h in trainer._hooks)
    trainer.resume_or_load(resume=False)
    key = "backbone.bottom_up.res2.0.conv1.weight"
    assert torch.equal(trainer.model.state_dict()[key], trained[key])
    trainer.train()

    results = trainer._last_eval_results  # DefaultTrainer's final evaluation (one dataset)
    for task in ("bbox", "segm"):
        ap = results[task]["AP"]
        assert isinstance(ap, float) and not math.isnan(ap), (task, ap)
    assert os.path.isfile(tmp_path / "finetune" / "model_final.pth")
