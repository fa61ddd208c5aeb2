#!/usr/bin/env python
"""Convert a SoCo pretraining checkpoint into Detectron2 weights for fine-tuning.

Keeps the online trunk (backbone + FPN + box head, or backbone + res5 for C4), drops the
projector, the predictor and the momentum target, and keeps every name (they are already
Detectron2's). Example (from the repository root)::

    python tools/convert_soco_to_d2.py output/soco_R50_FPN_100ep/model_final.pth soco_R50_FPN_100ep.pth
    python train_net.py --config-file configs/transfer/mask_rcnn_R50_FPN_1x.yaml --num-gpus 8 \\
        MODEL.WEIGHTS soco_R50_FPN_100ep.pth

Exit status: 0 on success, 1 if the input is missing or not a SoCo checkpoint.
"""
import argparse
import os
import sys

try:
    import soco_d2  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soco_d2.export import export_trunk  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="SoCo checkpoint written by train_net.py (model_final.pth)")
    p.add_argument("output", help="Detectron2 weights file to write (.pth), for MODEL.WEIGHTS")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    logger = setup_logger(name="soco_d2", abbrev_name="soco_d2")
    try:
        summary = export_trunk(args.input, args.output)
    except (FileNotFoundError, ValueError) as e:
        logger.error(str(e))
        return 1
    dropped = ", ".join(f"{part}: {n}" for part, n in summary["dropped"].items())
    print(f"kept {summary['kept']} keys (none renamed); dropped {dropped}; wrote {summary['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
