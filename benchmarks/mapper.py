"""Throughput of SoCo's dataset mapper on ONE CPU core.

    python benchmarks/mapper.py --out mapper_bench.json [--data ../shared/data/coco_sample]
        [--proposals FILE] [--config-file configs/X.yaml] [--passes 3] [--profile]

Timed per image: reading and decoding the file, all views (V1, V2, V3 (, V4)), colour
augmentation, cutout, proposal selection, box transforms and levels, i.e. one full
``SoCoDatasetMapper.__call__``. Single process pinned to one core, ``cv2.setNumThreads(1)``,
``torch.set_num_threads(1)``; a warm-up pass is excluded. The figure is per core: it is
measured in CPU time of the (only) mapping thread, so other processes sharing the machine do
not distort it; elapsed time is reported alongside.

Proposals: ``--proposals FILE`` or, if it exists, ``datasets/soco_proposals/coco_sample.pkl``;
otherwise 50 random boxes per image (fixed seed) that pass SoCo's proposal filter.

Reference: the SoCo authors' pipeline maps 79.8 images/s per core on these images.
"""
import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import sys
import time

import cv2
import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from soco_d2 import add_soco_config  # noqa: E402
from soco_d2.data import attach_proposals  # noqa: E402
from soco_d2.methods.soco import mapper as mapper_module  # noqa: E402
from soco_d2.methods.soco.mapper import SoCoDatasetMapper  # noqa: E402
from soco_d2.methods.soco.views import random_proposals  # noqa: E402

REFERENCE_IMAGES_PER_S = 79.8
DEFAULT_PROPOSALS = os.path.join(REPO_ROOT, "datasets", "soco_proposals", "coco_sample.pkl")


def load_records(data_dir, proposal_file):
    with open(os.path.join(data_dir, "instances.json")) as f:
        images = json.load(f)["images"]
    records = [
        {
            "file_name": os.path.join(data_dir, "images", im["file_name"]),
            "image_id": im["id"],
            "height": im["height"],
            "width": im["width"],
        }
        for im in images
    ]
    if proposal_file:
        attach_proposals(records, proposal_file)
        return records, proposal_file
    rng = np.random.default_rng(0)
    for r in records:
        r["proposal_boxes"] = random_proposals(rng, r["width"], r["height"], 50)
        r["proposal_bbox_mode"] = BoxMode.XYXY_ABS
    return records, "random (50 filtered boxes/image, seed 0)"


def build_mapper(config_file, opts):
    cfg = get_cfg()
    add_soco_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    return cfg, SoCoDatasetMapper(cfg, is_train=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument(
        "--data", default=os.path.join(REPO_ROOT, "..", "shared", "data", "coco_sample"),
        help="folder with instances.json and images/",
    )
    parser.add_argument("--proposals", default="", help="Detectron2 proposal file for the images")
    parser.add_argument("--config-file", default="")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--profile", action="store_true", help="print the top cProfile entries")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    pinned = None
    if hasattr(os, "sched_setaffinity"):
        pinned = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {pinned})

    proposal_file = args.proposals
    if not proposal_file and os.path.isfile(DEFAULT_PROPOSALS):
        proposal_file = DEFAULT_PROPOSALS
    records, proposal_source = load_records(args.data, proposal_file)
    cfg, mapper = build_mapper(args.config_file, args.opts)

    reduce_counts = {}
    original_decode = mapper_module.decode_image

    def counting_decode(data, reduce=1):
        reduce_counts[reduce] = reduce_counts.get(reduce, 0) + 1
        return original_decode(data, reduce)

    mapper_module.decode_image = counting_decode
    np.random.seed(0)
    for r in records:  # warm-up (file cache, lazy imports), not timed
        mapper(r)
    reduce_counts.clear()

    profiler = cProfile.Profile() if args.profile else None
    times, wall_times = [], []
    if profiler:
        profiler.enable()
    for _ in range(args.passes):
        for r in records:
            t0, w0 = time.thread_time(), time.perf_counter()
            mapper(r)
            times.append(time.thread_time() - t0)
            wall_times.append(time.perf_counter() - w0)
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    mapper_module.decode_image = original_decode

    images_per_s = len(times) / sum(times)
    result = {
        "images_per_s_per_core": round(images_per_s, 1),
        "median_ms_per_image": round(1000 * statistics.median(times), 3),
        "mean_ms_per_image": round(1000 * statistics.mean(times), 3),
        "p90_ms_per_image": round(1000 * float(np.percentile(times, 90)), 3),
        "wall_images_per_s": round(len(wall_times) / sum(wall_times), 1),
        "wall_median_ms_per_image": round(1000 * statistics.median(wall_times), 3),
        "timing": "CPU time of the mapping thread (robust to other processes on the core); "
        "wall_* = elapsed time",
        "reference_images_per_s_per_core": REFERENCE_IMAGES_PER_S,
        "speedup_vs_reference": round(images_per_s / REFERENCE_IMAGES_PER_S, 2),
        "images": len(records),
        "timed_passes": args.passes,
        "decode_reduce_factor_counts": {str(k): v for k, v in sorted(reduce_counts.items())},
        "settings": {
            "data": os.path.abspath(args.data),
            "proposals": proposal_source,
            "config_file": args.config_file or "(base + add_soco_config)",
            "opts": args.opts,
            "views": [cfg.INPUT.SOCO.VIEW1_SIZE, cfg.INPUT.SOCO.VIEW2_SIZE,
                      cfg.INPUT.SOCO.VIEW3_SIZE, cfg.INPUT.SOCO.VIEW4_SIZE],
            "view3_mode": cfg.INPUT.SOCO.VIEW3_MODE,
            "num_proposals": cfg.INPUT.SOCO.NUM_PROPOSALS,
            "cv2_threads": cv2.getNumThreads(),
            "torch_threads": torch.get_num_threads(),
            "pinned_cpu": pinned,
        },
        "machine": {
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
        },
    }
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
