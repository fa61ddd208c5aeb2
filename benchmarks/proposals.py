"""Speed and quality of SoCo's proposals (selective search + SoCo filter) on one CPU core.

    python benchmarks/proposals.py --out proposals_bench.json [--data ../shared/data/coco_sample]

Timed per image: decoding the file + selective search + filter + ranking (``propose_image``),
single process, ``cv2.setNumThreads(1)``. Quality: recall at IoU 0.5 of the non-crowd COCO
ground-truth boxes that themselves pass SoCo's full filter (w.r.t. their image size).

Reference (same 100 images, one core): the SoCo authors' pure-Python selective search + filter
takes 0.80 s/image, keeps 52.8 proposals/image, recall 0.796.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict

import cv2
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from soco_d2.data.decode import ImageReadError  # noqa: E402
from soco_d2.data.proposals.selective_search import (  # noqa: E402
    FULL, pairwise_iou, add_settings_arguments, filter_boxes, propose_image, settings_from_args,
)

REFERENCE = {"s_per_image_median": 0.80, "proposals_per_image": 52.8, "recall_at_0_5": 0.796}


def load_gt(json_file, image_root):
    with open(json_file) as f:
        data = json.load(f)
    gts = defaultdict(list)
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            x, y, w, h = ann["bbox"]
            gts[ann["image_id"]].append([x, y, x + w, y + h])
    images = []
    for img in data["images"]:
        boxes = np.asarray(gts[img["id"]], dtype=np.float64).reshape(-1, 4)
        images.append((img["id"], os.path.join(image_root, img["file_name"]),
                       img["width"], img["height"], boxes))
    return images


def gt_passing_filter(boxes, width, height, box_filter):
    if len(boxes) == 0:
        return boxes
    result = filter_boxes(boxes, width, height, box_filter)
    return boxes[result.keep] if result.stage == FULL else boxes[:0]


def machine_info():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "n_cpus": os.cpu_count(), "python": platform.python_version(),
            "opencv": cv2.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "threads": 1}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(REPO_ROOT, "..", "shared", "data", "coco_sample"),
                        help="folder with instances.json and images/")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    cv2.setNumThreads(1)

    json_file = os.path.join(args.data, "instances.json")
    if not os.path.isfile(json_file):
        parser.error(f"no COCO json at {json_file} (use --data)")
    images = load_gt(json_file, os.path.join(args.data, "images"))
    if args.limit > 0:
        images = images[: args.limit]
    for _, path, *_ in images[: args.warmup]:
        propose_image(path, settings)

    times, cpu_times, n_props, stages, n_raw = [], [], [], Counter(), []
    n_gt = n_hit = n_hit7 = 0
    failed = []
    for image_id, path, width, height, gt in images:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            props = propose_image(path, settings)
        except ImageReadError as e:
            failed.append({"id": image_id, "reason": str(e)})
            continue
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        n_props.append(len(props.boxes))
        n_raw.append(props.n_raw)
        stages[props.stage] += 1
        gt = gt_passing_filter(gt, width, height, settings.box_filter)
        n_gt += len(gt)
        if len(gt):
            best = pairwise_iou(gt, props.boxes.astype(np.float64)).max(axis=1)
            n_hit += int((best >= 0.5).sum())
            n_hit7 += int((best >= 0.7).sum())

    result = {
        "s_per_image_median": statistics.median(times),
        "s_per_image_mean": statistics.fmean(times),
        "s_per_image_p90": float(np.percentile(times, 90)),
        "cpu_s_per_image_median": statistics.median(cpu_times),
        "proposals_per_image": statistics.fmean(n_props),
        "raw_boxes_per_image": statistics.fmean(n_raw),
        "recall_at_0_5": n_hit / max(n_gt, 1),
        "recall_at_0_7": n_hit7 / max(n_gt, 1),
        "n_images": len(times),
        "n_failed": len(failed),
        "n_gt": n_gt,
        "filter_stages": dict(stages),
        "timed": "per image: file decode (PIL, JPEG draft scaling) + resize + selective search "
                 "+ SoCo filter + ranking; one process, cv2.setNumThreads(1); s_per_image_* is wall "
                 "clock, cpu_s_per_image_median is this process's CPU time (robust to other "
                 "load on the machine); "
                 f"{args.warmup} untimed warm-up images",
        "settings": settings.to_dict(),
        "reference_authors_python_ss": REFERENCE,
        "machine": machine_info(),
        "data": os.path.abspath(args.data),
    }
    rows = [("s/image (median)", result["s_per_image_median"], REFERENCE["s_per_image_median"]),
            ("proposals/image", result["proposals_per_image"], REFERENCE["proposals_per_image"]),
            ("recall@0.5", result["recall_at_0_5"], REFERENCE["recall_at_0_5"])]
    print(f"{len(times)} images ({len(failed)} failed), {n_gt} GT boxes passing the filter")
    print(f"{'metric':<18}{'ours':>10}{'authors':>10}")
    for name, ours, ref in rows:
        print(f"{name:<18}{ours:>10.3f}{ref:>10.3f}")
    print(f"wall mean {result['s_per_image_mean']:.3f} s, p90 {result['s_per_image_p90']:.3f} s; "
          f"CPU median {result['cpu_s_per_image_median']:.3f} s; recall@0.7 {result['recall_at_0_7']:.3f}")
    print(f"raw boxes/image {result['raw_boxes_per_image']:.1f}, filter stages {dict(stages)}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
