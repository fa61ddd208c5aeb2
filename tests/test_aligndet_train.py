"""AlignDet end to end through train_net.py (tiny, CPU): a run, the target copying the loaded
weights, the frozen backbone handed on unchanged, exact resume, config errors at start,
2 processes through launch, the published schedule."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.engine import HookBase

from soco_d2.config import ConfigError
from soco_d2.methods.aligndet import AlignDetTrainer
from test_resume import _assert_same_checkpoint
from train_helpers import REPO_ROOT, TrainArgs, train_in_two_processes

INSTANT = os.path.join(REPO_ROOT, "configs", "aligndet", "aligndet_instant_test.yaml")
NAIVE_SYNC_BN = ["MODEL.FPN.NORM", "naiveSyncBN", "MODEL.ROI_BOX_HEAD.NORM", "naiveSyncBN"]


@pytest.fixture(scope="module")
def dataset(tiny_images, tmp_path_factory):
    """The 8 tiny scenes with a proposal file of 6 boxes per image (objectness order)."""
    json_file, image_root = tiny_images
    with open(json_file) as f:
        images = json.load(f)["images"]
    rng = np.random.default_rng(0)
    boxes = []
    for img in images:
        w, h = img["width"], img["height"]
        x0 = rng.uniform(0, w / 2, 6)
        y0 = rng.uniform(0, h / 2, 6)
        side = rng.uniform(36, min(w, h) / 2, 6)
        boxes.append(np.stack([x0, y0, x0 + side, y0 + side * rng.uniform(0.7, 1.3, 6)], 1).astype(np.float32))
    path = str(tmp_path_factory.mktemp("aligndet_props") / "proposals.pkl")
    with open(path, "wb") as f:
        pickle.dump({"ids": [img["id"] for img in images], "boxes": boxes,
                     "objectness_logits": [-np.arange(6, dtype=np.float32)] * len(images), "bbox_mode": 0}, f)
    return json_file, image_root, path


def opts(dataset, output_dir, name="test_aligndet_syn", *more):
    json_file, image_root, proposals = dataset
    return ["OUTPUT_DIR", str(output_dir), "DATASETS.TRAIN", f"('{name}',)",
            "DATASETS.SOCO_REGISTER", f"[('{name}', '{image_root}', '{proposals}', '{json_file}')]", *more]


def trained(opts_list, weights=""):
    from train_net import setup

    torch.set_num_threads(1)
    trainer = AlignDetTrainer(setup(TrainArgs(opts_list + ["MODEL.WEIGHTS", weights], config_file=INSTANT)))
    trainer.resume_or_load(resume=False)
    return trainer


def metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def backbone_weights(tmp_path, seed=3):
    """A trunk file in the exported format: every tensor of a fresh model, perturbed."""
    from train_net import setup
    from soco_d2.export import export_trunk

    cfg = setup(TrainArgs(["OUTPUT_DIR", str(tmp_path / "w")], config_file=INSTANT))
    torch.manual_seed(seed)
    model = AlignDetTrainer.build_model(cfg)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.01 * torch.randn_like(t))
    path = str(tmp_path / "trunk.pth")
    export_trunk(model.state_dict(), path, AlignDetTrainer.export_spec(cfg), verbose=False)
    return path


def test_run_logs_losses_monitors_momentum_and_exports(dataset, tmp_path):
    trainer = trained(opts(dataset, tmp_path, "test_aligndet_syn", "SOLVER.MAX_ITER", "3"))
    log = (tmp_path / "log.txt").read_text()
    assert "MODEL.WEIGHTS empty: the backbone stays at its RANDOM initialisation" in log
    trainer.train()
    last = metrics(tmp_path)[-1]
    assert last["iteration"] == 2
    for key in ("loss_rpn_cls", "loss_rpn_loc", "loss_contrast", "loss_box_reg", "total_loss"):
        assert np.isfinite(last[key]), key
    assert 0 <= last["aligndet/accuracy"] <= 1 and last["aligndet/num_ids"] >= 2
    assert last["aligndetrcnn/momentum"] == pytest.approx(1.0)
    assert 0 < last["rpn/num_pos_anchors"] and last["update_ratio/fpn"] > 0 and "update_ratio/bottom_up" not in last
    trunk = torch.load(tmp_path / "model_final_trunk.pth", weights_only=True)["model"]
    assert any(k.startswith("proposal_generator.") for k in trunk)
    assert not any(k.startswith(("target.", "roi_heads.box_predictor.")) for k in trunk)


def test_by_default_only_the_backbone_is_taken_from_the_weights(dataset, tmp_path):
    from train_net import setup

    weights = backbone_weights(tmp_path)
    loaded = torch.load(weights, weights_only=True)["model"]
    torch.set_num_threads(1)
    cfg = setup(TrainArgs(opts(dataset, tmp_path / "run", "test_aligndet_syn_b") + ["MODEL.WEIGHTS", weights],
                          config_file=INSTANT))
    assert cfg.MODEL.ALIGNDET.LOAD_BACKBONE_ONLY
    trainer = AlignDetTrainer(cfg)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.resume_or_load(resume=False)
    state = trainer.model.state_dict()
    rest = [k for k in loaded if not k.startswith("backbone.bottom_up.")]
    assert rest and any(k.startswith("roi_heads.box_head.") for k in rest)
    for k, v in loaded.items():
        if k.startswith("backbone.bottom_up."):
            assert torch.equal(state[k], v), k
        else:  # FPN, RPN and box head keep their initialisation; the target copies them
            assert torch.equal(state[k], initial[k]), k
            assert not v.is_floating_point() or not torch.equal(state[k], v), k
            assert torch.equal(state["target." + k], initial[k]), k
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"not loaded from {weights}: backbone.fpn_lateral2" in log


def test_target_starts_as_the_loaded_weights_and_the_backbone_is_handed_on(dataset, tmp_path):
    weights = backbone_weights(tmp_path)
    trainer = trained(opts(dataset, tmp_path / "run", "test_aligndet_syn_w", "SOLVER.MAX_ITER", "2",
                           "MODEL.ALIGNDET.LOAD_BACKBONE_ONLY", "False"), weights)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "MODEL.WEIGHTS empty" not in log and "Momentum target initialised as a copy" in log
    loaded = torch.load(weights, weights_only=True)["model"]
    state = trainer.model.state_dict()
    for k, v in loaded.items():
        assert torch.equal(state[k], v), k
        if not k.startswith("backbone.bottom_up."):
            assert torch.equal(state["target." + k], v), k  # the target copies the loaded weights
    trainer.train()
    exported = torch.load(tmp_path / "run" / "model_final_trunk.pth", weights_only=True)["model"]
    bottom_up = [k for k in loaded if k.startswith("backbone.bottom_up.")]
    assert bottom_up and all(torch.equal(exported[k], loaded[k]) for k in bottom_up)
    assert not torch.equal(exported["backbone.fpn_output2.weight"], loaded["backbone.fpn_output2.weight"])


class _Interrupt(HookBase):
    def after_step(self):
        if self.trainer.iter == 2:
            raise RuntimeError("interrupted (simulated)")


def test_resume_is_exact(dataset, tmp_path, one_thread):
    from train_net import main

    common = ["SEED", "5", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"]
    main(TrainArgs(opts(dataset, tmp_path / "a", "test_aligndet_syn_r", *common), config_file=INSTANT))

    build_hooks = AlignDetTrainer.build_hooks
    AlignDetTrainer.build_hooks = lambda self: build_hooks(self) + [_Interrupt()]
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            main(TrainArgs(opts(dataset, tmp_path / "b", "test_aligndet_syn_r", *common), config_file=INSTANT))
    finally:
        AlignDetTrainer.build_hooks = build_hooks
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000001.pth"
    main(TrainArgs(opts(dataset, tmp_path / "b", "test_aligndet_syn_r", *common), config_file=INSTANT, resume=True))

    # Every tensor and value: online and target weights, SGD momentum buffers, LR scheduler,
    # iteration, data stream.
    ckpt = _assert_same_checkpoint(tmp_path / "a" / "model_final.pth", tmp_path / "b" / "model_final.pth")
    assert ckpt["/iteration"] == 3 and ckpt["/trainer/data_stream/seed"] == 5
    assert any(k.startswith("/model/target.roi_heads.") for k in ckpt)
    assert any("momentum_buffer" in k for k in ckpt)


def test_retinanet_run(dataset, tmp_path):
    retina = ["MODEL.META_ARCHITECTURE", "AlignDetRetinaNet", "MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone",
              "MODEL.RESNETS.OUT_FEATURES", "['res3', 'res4', 'res5']", "MODEL.FPN.IN_FEATURES", "['res3', 'res4', 'res5']",
              "MODEL.ALIGNDET.DENSE_NUM_SAMPLES", "256", "MODEL.ALIGNDET.EXPORT_REGRESSION", "True", "SOLVER.MAX_ITER", "2"]
    trainer = trained(opts(dataset, tmp_path, "test_aligndet_syn_ret", *retina))
    trainer.train()
    last = metrics(tmp_path)[-1]
    assert np.isfinite(last["loss_contrast"]) and np.isfinite(last["loss_box_reg"])
    assert last["aligndet/pos_anchors_per_image"] > 0
    trunk = torch.load(tmp_path / "model_final_trunk.pth", weights_only=True)["model"]
    assert "head.bbox_pred.weight" in trunk and not any(k.startswith("head.cls_score") for k in trunk)


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize("key, value, message", [
    ("MODEL.ALIGNDET.TEMPERATURE", "0.0", "MODEL.ALIGNDET.TEMPERATURE must be > 0, got 0.0"),
    ("MODEL.ALIGNDET.MOMENTUM", "1.5", "MODEL.ALIGNDET.MOMENTUM must be in [0, 1], got 1.5"),
    ("MODEL.ALIGNDET.EMBED_DIM", "0", "MODEL.ALIGNDET.EMBED_DIM must be >= 1, got 0"),
    ("INPUT.ALIGNDET.MIN_SIZES", "(16, 64)", "INPUT.ALIGNDET.MIN_SIZES must list short sides >= 32"),
    ("INPUT.ALIGNDET.FLIP_PROB", "2.0", "INPUT.ALIGNDET.FLIP_PROB must be in [0, 1], got 2.0"),
    ("INPUT.ALIGNDET.PHOTOMETRIC_OPS", "('identity', 'blur')", "INPUT.ALIGNDET.PHOTOMETRIC_OPS must be"),
    ("INPUT.ALIGNDET.POSTERIZE_BITS", "(0, 8)", "INPUT.ALIGNDET.POSTERIZE_BITS must satisfy 1 <= lo <= hi <= 8"),
    ("INPUT.ALIGNDET.MAX_BOXES", "-1", "INPUT.ALIGNDET.MAX_BOXES (top-K) must be >= 0"),
    ("INPUT.ALIGNDET.MAX_BOX_SCALE", "1.5", "INPUT.ALIGNDET.MAX_BOX_SCALE must be in (0, 1], got 1.5"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", "80", "MODEL.ROI_HEADS.NUM_CLASSES must be 1"),
    ("MODEL.ROI_HEADS.NAME", "Res5ROIHeads", "MODEL.ROI_HEADS.NAME must be 'StandardROIHeads'"),
    ("MODEL.MASK_ON", "True", "MODEL.MASK_ON must be False for AlignDet pretraining"),
    ("MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.BACKBONE.NAME is 'build_resnet_backbone'"),
    ("SOLVER.STEP_EPOCHS", "(3, 2)", "SOLVER.STEP_EPOCHS must be positive, strictly increasing and below"),
    ("SOLVER.OPTIMIZER", "Adam", "SOLVER.OPTIMIZER must be 'LARS' or 'SGD', got 'Adam'"),
])
def test_config_errors_name_the_key(tmp_path, key, value, message):
    from train_net import setup

    with pytest.raises(ConfigError) as e:
        setup(TrainArgs(["OUTPUT_DIR", str(tmp_path), key, value], config_file=INSTANT))
    assert message in str(e.value) and "Invalid AlignDet config" in str(e.value)


def test_missing_dataset_fails_before_the_model(tmp_path, monkeypatch):
    from train_net import setup

    cfg = setup(TrainArgs(["OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", "('no_such_set',)"], config_file=INSTANT))
    monkeypatch.setattr(AlignDetTrainer, "build_model", lambda *a: pytest.fail("model built"))
    with pytest.raises(ConfigError, match="dataset 'no_such_set' is not registered"):
        AlignDetTrainer(cfg)


# ------------------------------------------------------------------ schedule, launch


def test_published_schedule_in_epochs(monkeypatch):
    from train_net import setup

    from soco_d2.solver import resolve_epochs

    for name, lr in (("aligndet_rcnn_R50_FPN_12ep_coco.yaml", 0.02), ("aligndet_retinanet_R50_FPN_12ep_coco.yaml", 0.01)):
        cfg = setup(TrainArgs(["MODEL.DEVICE", "cpu"], config_file=os.path.join(REPO_ROOT, "configs", "aligndet", name)))
        s = cfg.SOLVER
        assert (s.OPTIMIZER, s.BASE_LR, s.BASE_LR_BATCH, s.IMS_PER_BATCH, s.WEIGHT_DECAY, s.MOMENTUM) == (
            "SGD", lr, 16, 16, 1e-4, 0.9)
        assert cfg.DATASETS.TRAIN == ("coco_2017_train_soco",) and cfg.MODEL.ALIGNDET.MOMENTUM == 0.996
        assert cfg.MODEL.ALIGNDET.TEMPERATURE == 0.5 and cfg.MODEL.ALIGNDET.FREEZE_BACKBONE
        cfg = cfg.clone()
        cfg.defrost()
        resolve_epochs(cfg, lambda _: 118287)  # COCO train2017
        assert (s.EPOCHS, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS) == (12, 88716, 500, (59144, 81323))
    cfg = setup(TrainArgs(["MODEL.DEVICE", "cpu"], config_file=os.path.join(REPO_ROOT, "configs", "aligndet",
                                                                          "aligndet_rcnn_R50_FPN_12ep_coco.yaml")))
    assert (cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE, cfg.MODEL.RPN.POSITIVE_FRACTION) == (4096, 1.0)
    assert (cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION, cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS) == (1.0, [0.5])
    assert tuple(cfg.INPUT.ALIGNDET.MIN_SIZES) == (640, 672, 704, 736, 768, 800) and cfg.INPUT.ALIGNDET.MAX_SIZE == 1333


def _train_and_dump(opts_list, dump_dir):
    from detectron2.utils import comm

    trainer = trained(opts_list)
    trainer.train()
    model = getattr(trainer.model, "module", trainer.model)
    torch.save(model.state_dict(), os.path.join(dump_dir, f"rank{comm.get_rank()}.pth"))


def test_two_process_gloo_run_keeps_ranks_identical(dataset, tmp_path):
    opts_list = opts(dataset, tmp_path, "test_aligndet_syn_ddp", *NAIVE_SYNC_BN, "SOLVER.MAX_ITER", "2")
    s0 = train_in_two_processes(_train_and_dump, (opts_list, str(tmp_path)), str(tmp_path))
    assert not torch.equal(s0["backbone.fpn_output3.weight"], s0["target.backbone.fpn_output3.weight"])
    assert os.path.isfile(tmp_path / "model_final_trunk.pth")
