"""SOLVER.AMP on a CPU: bf16 autocast only where the CPU computes bf16 natively, else fp32,
in pretraining and in fine-tuning."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer

from soco_d2 import add_config
from soco_d2.engine.ddp import CPUAutocastTrainer, build_step_trainer
from soco_d2.engine.precision import CpuFeatures, choose_cpu_precision, cpu_features

AMX = CpuFeatures(amx_bf16=True, avx512_bf16=True, capability="AVX512")
AVX512_BF16 = CpuFeatures(amx_bf16=False, avx512_bf16=True, capability="AVX512")
AVX2 = CpuFeatures(amx_bf16=False, avx512_bf16=False, capability="AVX2")


def test_bf16_only_with_native_support():
    assert choose_cpu_precision(True, AMX).dtype == torch.bfloat16
    assert choose_cpu_precision(True, AVX512_BF16).dtype == torch.bfloat16
    choice = choose_cpu_precision(True, AVX2)
    assert choice.dtype is None
    assert "no native bf16" in choice.reason and "AVX2" in choice.reason and "fp32" in choice.reason
    off = choose_cpu_precision(False, AMX)
    assert off.dtype is None and "SOLVER.AMP.ENABLED is False" in off.reason


def test_this_machine_is_described():
    f = cpu_features()
    assert isinstance(f.capability, str) and f.capability
    assert f.native_bf16 == (f.amx_bf16 or f.avx512_bf16)


def _cfg(amp, precision="bfloat16"):
    cfg = add_config(get_cfg())
    cfg.SOLVER.AMP.ENABLED = amp
    cfg.SOLVER.AMP.PRECISION = precision
    return cfg


def test_step_trainer_follows_the_decision(caplog):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [[torch.zeros(1, 2)]]
    with caplog.at_level("INFO"):
        fast = build_step_trainer(_cfg(True), model, data, opt, cpu_features=AMX)
        slow = build_step_trainer(_cfg(True), model, data, opt, cpu_features=AVX2)
    assert isinstance(fast, CPUAutocastTrainer)
    assert type(slow) is SimpleTrainer
    assert any("no native bf16" in r.getMessage() for r in caplog.records)
    # fp16 is never used on a CPU; with native bf16 AMP still means bf16 there
    assert isinstance(build_step_trainer(_cfg(True, "float16"), model, data, opt, cpu_features=AMX),
                      CPUAutocastTrainer)
    assert type(build_step_trainer(_cfg(False), model, data, opt, cpu_features=AMX)) is SimpleTrainer


# ------------------------------------------------------------------ fine-tuning (DetectionTrainer)
def _cpu_transfer_configs():
    import glob
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "transfer")
    return sorted(p for p in glob.glob(os.path.join(root, "*R18*.yaml")))


def test_cpu_fine_tuning_configs_ask_for_hardware_precision():
    from soco_d2.config import load_config

    paths = _cpu_transfer_configs()
    assert len(paths) >= 5
    for path in paths:
        cfg = load_config(add_config(get_cfg()), path)
        assert cfg.MODEL.DEVICE == "cpu", path
        assert cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.PRECISION == "bfloat16", path


@pytest.mark.parametrize("features", [AMX, AVX2], ids=["native_bf16", "avx2"])
def test_fine_tuning_trains_in_bf16_only_where_native(tiny_images, tmp_path, monkeypatch, caplog, features):
    """DetectionTrainer (a stock Faster R-CNN) steps under bf16 autocast on a CPU with native
    bf16, in fp32 elsewhere; the log names the choice; parameters stay fp32 and losses finite."""
    import os

    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from soco_d2.config import load_config
    from soco_d2.engine import precision
    from soco_d2.engine.detection import DetectionTrainer

    monkeypatch.setattr(precision, "cpu_features", lambda: features)
    name = "test_precision_det"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, *tiny_images)
    path = [p for p in _cpu_transfer_configs() if p.endswith("faster_rcnn_R18_FPN_synthetic.yaml")][0]
    cfg = load_config(add_config(get_cfg()), path)
    cfg.merge_from_list([
        "MODEL.WEIGHTS", "", "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.CONV_DIM", 32,
        "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "DATASETS.TRAIN", (name,), "DATASETS.TEST", (),
        "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128, "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.MAX_ITER", 2, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", (), "DATALOADER.NUM_WORKERS", 0,
        "TEST.PRECISE_BN.ENABLED", False, "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    torch.manual_seed(0)
    with caplog.at_level("INFO"):
        trainer = DetectionTrainer(cfg)
    native = features.native_bf16
    assert type(trainer._trainer) is (CPUAutocastTrainer if native else SimpleTrainer)
    assert any(("bf16 autocast" if native else "no native bf16") in r.getMessage() for r in caplog.records)

    seen = []
    head = trainer.model.roi_heads.box_head
    head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert seen and all(d == (torch.bfloat16 if native else torch.float32) for d in seen)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert torch.isfinite(torch.tensor(trainer.storage.history("total_loss").latest()))
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")
