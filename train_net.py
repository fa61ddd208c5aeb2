#!/usr/bin/env python
"""Pretraining inside Detectron2 (every method of soco_d2.methods), and fine-tuning of Detectron2
detectors on the pretrained weights.

The config's MODEL.META_ARCHITECTURE picks the trainer: a registered pretraining method ("SoCo")
trains with its own trainer, anything else is a detector fine-tuned with DetectionTrainer.

Pretraining, one machine with 8 GPUs::

    python train_net.py --config-file configs/soco/soco_R50_FPN_100ep.yaml --num-gpus 8

Fine-tuning and evaluation (e.g. META_ARCHITECTURE "GeneralizedRCNN")::

    python train_net.py --config-file configs/transfer/mask_rcnn_R50_FPN_1x.yaml --num-gpus 8 \
        MODEL.WEIGHTS output/soco_R50_FPN_100ep/model_final_trunk.pth

Many machines: add ``--num-machines M --machine-rank R --dist-url tcp://HOST:PORT`` on each.
On a CPU-only machine ``--num-gpus N`` starts N processes that talk over gloo.
Resume the last checkpoint of OUTPUT_DIR with ``--resume``. Trailing ``KEY VALUE`` pairs
override the config.
"""
import logging

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from soco_d2.config import check_weights_set, load_config
from soco_d2.data import register_datasets_from_cfg
from soco_d2.engine import DetectionTrainer
from soco_d2.methods import add_config, get_method

logger = logging.getLogger("soco_d2")


def setup(args):
    """Config from file and overrides, with every method's keys, datasets registered, frozen."""
    cfg = get_cfg()
    add_config(cfg)
    load_config(cfg, args.config_file)
    cfg.merge_from_list(args.opts)
    register_datasets_from_cfg(cfg)
    method = get_method(cfg.MODEL.META_ARCHITECTURE)
    if method is not None:
        method.validate_config(cfg)  # values only; the data on disk is checked by its trainer
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but CUDA is not available; "
            "add `MODEL.DEVICE cpu` to the command line to run on the CPU."
        )
    cfg.freeze()
    default_setup(cfg, args)
    # Detectron2-format logs (console + OUTPUT_DIR/log.txt) for this package's modules too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="soco_d2", abbrev_name="soco")
    return cfg


def trainer_class(cfg):
    """The trainer of the config's pretraining method (e.g. SoCoTrainer), or DetectionTrainer
    for any META_ARCHITECTURE that is not a registered method (a Detectron2 detector)."""
    method = get_method(cfg.MODEL.META_ARCHITECTURE)
    return DetectionTrainer if method is None else method.trainer


def main(args):
    cfg = setup(args)
    Trainer = trainer_class(cfg)
    if Trainer is DetectionTrainer:  # fine-tuning / evaluating: refuse placeholder weights
        check_weights_set(cfg, args.config_file)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    # Detection: DefaultTrainer's EvalHook evaluates DATASETS.TEST when training ends.
    results = trainer.train()
    logger.info(f"Done. Checkpoints, metrics.json and TensorBoard events are in {cfg.OUTPUT_DIR}")
    return results


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
