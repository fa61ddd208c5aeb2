#!/usr/bin/env python
"""SoCo pretraining inside Detectron2.

Pretraining, one machine with 8 GPUs::

    python train_net.py --config-file configs/soco_R50_FPN_100ep.yaml --num-gpus 8

Many machines: add ``--num-machines M --machine-rank R --dist-url tcp://HOST:PORT`` on each.
On a CPU-only machine ``--num-gpus N`` starts N processes that talk over gloo.
Resume the last checkpoint of OUTPUT_DIR with ``--resume``. Trailing ``KEY VALUE`` pairs
override the config.
"""
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch

from soco_d2 import add_soco_config
from soco_d2.data import register_datasets_from_cfg
from soco_d2.engine import SoCoTrainer

logger = logging.getLogger("soco_d2")


def setup(args):
    """Config from file and overrides, with SoCo's keys, datasets registered, frozen."""
    cfg = get_cfg()
    add_soco_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_datasets_from_cfg(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but CUDA is not available; "
            "add `MODEL.DEVICE cpu` to the command line to run on the CPU."
        )
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = SoCoTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return SoCoTrainer.test(cfg, model)

    trainer = SoCoTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    logger.info(f"Done. Checkpoints, metrics.json and TensorBoard events are in {cfg.OUTPUT_DIR}")
    return os.path.join(cfg.OUTPUT_DIR, "model_final.pth")


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
