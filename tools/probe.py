#!/usr/bin/env python
"""Compare trunks with the probe: kNN / linear category accuracy (plain and class-balanced,
``*_bal``) of their ground-truth box features on a labelled COCO-format set
(soco_d2/evaluation/probe.py), nothing trained.

    # the demo's SoCo trunk vs random initialisation, on the embedded val scenes
    python tools/probe.py --config-file configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml \\
        --dataset soco_synthetic_det_val \\
        --weights random output/soco_demo_synthetic/model_final_trunk.pth --out probe.json
    # any COCO json
    python tools/probe.py --config-file my_detector.yaml --json ann.json --image-root images/ \\
        --weights random a.pth b.pth

``--config-file`` is a detector config (a fine-tuning config of configs/transfer/, or any
Detectron2 config) that describes the architecture the weights load into; ``random`` is that
detector as Detectron2 initialises it (seed ``--seed``). Weights load as ``MODEL.WEIGHTS``
would (DetectionCheckpointer). Prints a table and writes the figures as JSON.
"""
import argparse
import json
import os
import sys
import time

try:
    import soco_d2  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from soco_d2 import add_config  # noqa: E402
from soco_d2.config import load_config  # noqa: E402
from soco_d2.evaluation.probe import load_probe_images, probe_trunk, trunk_from_detector  # noqa: E402
from soco_d2.utils.atomic_io import atomic_write_json  # noqa: E402

COLUMNS = ("knn_head", "knn_head_bal", "linear_head", "linear_head_bal", "erank_head", "dead_head",
           "knn_pooled", "knn_pooled_bal", "linear_pooled", "linear_pooled_bal", "erank_pooled")
RANDOM = "random"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="detector config the weights load into")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered labelled detection set (COCO format)")
    src.add_argument("--json", help="a COCO instances json (with --image-root)")
    p.add_argument("--image-root", help="image folder of --json")
    p.add_argument("--weights", nargs="+", required=True, help=f"weight files, or '{RANDOM}'")
    p.add_argument("--min-size", type=int, default=0, help="resize short side to this (0: as stored)")
    p.add_argument("--max-size", type=int, default=0, help="long side cap with --min-size (0: none)")
    p.add_argument("--max-images", type=int, default=0, help="probe the first N images with boxes (0: all)")
    p.add_argument("--keep-bn-stats", action="store_true",
                   help="probe the stored BN statistics instead of re-estimating them on the images")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if args.json and not args.image_root:
        p.error("--json needs --image-root")
    return args


def format_table(rows) -> str:
    name_w = max(len("trunk"), *(len(r["trunk"]) for r in rows))
    width = max(len(c) for c in COLUMNS)
    lines = [f"{'trunk':<{name_w}}  " + "  ".join(f"{c:>{width}}" for c in COLUMNS)]
    for r in rows:
        cells = [f"{r[c]:>{width}.3f}" if c in r else f"{'-':>{width}}" for c in COLUMNS]
        lines.append(f"{r['trunk']:<{name_w}}  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="soco_d2", abbrev_name="soco")
    cfg = add_config(get_cfg())
    load_config(cfg, args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu" if not torch.cuda.is_available() else cfg.MODEL.DEVICE
    cfg.freeze()

    dataset = args.dataset
    if args.json:
        dataset = "probe_" + os.path.splitext(os.path.basename(args.json))[0]
        if dataset not in DatasetCatalog.list():
            register_coco_instances(dataset, {}, args.json, args.image_root)
    records = DatasetCatalog.get(dataset)
    if args.max_images > 0:
        records = records[: args.max_images]
    images = load_probe_images(records, cfg.INPUT.FORMAT, args.min_size, args.max_size)

    rows = []
    for weights in args.weights:
        torch.manual_seed(args.seed)
        model = build_model(cfg)
        if weights != RANDOM:
            if not os.path.isfile(weights):
                raise SystemExit(f"Weights file not found: {weights}")
            DetectionCheckpointer(model).load(weights)
        start = time.perf_counter()
        result = probe_trunk(trunk_from_detector(model), images, reestimate=not args.keep_bn_stats)
        result.update(trunk=weights, seconds=round(time.perf_counter() - start, 1))
        rows.append(result)
        print(f"probed {weights}: " + ", ".join(f"{c} {result[c]:.3f}" for c in COLUMNS if c in result),
              flush=True)

    print(f"\nProbe on {dataset}: {rows[0]['num_boxes']} boxes of {rows[0]['num_images']} images, "
          f"{rows[0]['num_classes']} classes (chance about {1 / rows[0]['num_classes']:.2f})")
    print(format_table(rows))
    if args.out:
        atomic_write_json(args.out, {
            "dataset": dataset, "config_file": args.config_file,
            "reestimate_bn": not args.keep_bn_stats, "min_size": args.min_size,
            "max_size": args.max_size, "results": rows,
        }, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
