#!/usr/bin/env python
"""Recall of unsupervised proposals against the labelled boxes of a COCO json: selective search
(SoCo's) and, with --from-features, SimDETR's semantic proposals of a backbone checkpoint.

    python benchmarks/proposal_recall.py --coco-json ../shared/data/aquarium/instances_valid.json \\
        --image-root ../shared/data/aquarium --out output/proposal_recall/aquarium_valid.json \\
        --from-features output/soco_R18_FPN_imagenette_cpu/model_final_trunk.pth
    python benchmarks/proposal_recall.py --coco-json ../shared/data/coco_sample/instances.json \\
        --image-root ../shared/data/coco_sample/images --out output/proposal_recall/coco_sample.json \\
        --from-features output/soco_R18_FPN_imagenette_cpu/model_final_trunk.pth

Each kind's proposals are made by the proposal job itself (tools/generate_proposals.py's:
parallel with --workers, resumable, unreadable images skipped and named), into
``--work-dir`` (default: beside --out), so a rerun only evaluates. Labels are read only here,
to score.

Figures per kind (non-crowd labelled boxes; an image the job skipped counts as recalling none):

- ``recall_at_0_5`` / ``recall_at_0_7``: share of ALL labelled boxes with a proposal at IoU
  >= 0.5 / 0.7 (small objects included, which SoCo's size filter leaves to no proposal);
- ``recall_filtered_at_0_5``: the same over the labelled boxes that pass SoCo's full filter
  themselves (side >= 32 px, aspect <= 3, 0.3-0.8 of the image side), the objects the
  proposals are meant to find (benchmarks/proposals.py's figure);
- ``recall_top10_at_0_5``: ALL boxes, by the first 10 proposals of each image;
- ``proposals_per_image``, ``n_failed`` and ``failed`` (the images the job skipped), and, for a
  kind computed by this run (not reused), ``filter_stages`` (how many images fell back to a
  looser rule or the whole image) and ``wall_s``.

The table is printed and everything written to --out as JSON.
"""
import argparse
import json
import os
import pickle
import sys
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
for path in (REPO_ROOT, BENCH_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)

from proposals import gt_passing_filter, load_gt, machine_info  # noqa: E402

from soco_d2.data.proposals.selective_search import (  # noqa: E402
    add_settings_arguments, pairwise_iou, settings_from_args,
)
from soco_d2.data.proposals.semantic import add_semantic_arguments, semantic_settings_from_args  # noqa: E402

TOP = 10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco-json", required=True, help="COCO instances json with the labelled boxes")
    p.add_argument("--image-root", required=True, help="folder its file names are relative to")
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--from-features", metavar="CHECKPOINT",
                   help="also score semantic proposals of this checkpoint's backbone")
    p.add_argument("--features-config", metavar="CONFIG",
                   help="config of that backbone (default: config.yaml beside CHECKPOINT)")
    p.add_argument("--work-dir", help="where the proposal files go (default: OUT without .json)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="proposal job processes")
    p.add_argument("--no-selective-search", action="store_true", help="score the semantic proposals only")
    add_settings_arguments(p)
    add_semantic_arguments(p)
    args = p.parse_args(argv)
    if args.no_selective_search and not args.from_features:
        p.error("--no-selective-search leaves nothing to score without --from-features")
    return p, args


def recall(images, proposals: dict, box_filter) -> dict:
    """The figures of one kind (module docstring). ``images``: load_gt's tuples; ``proposals``:
    a proposal-file dict."""
    by_id = {str(i): b for i, b in zip(proposals["ids"], proposals["boxes"])}
    n_all = hit5 = hit7 = hit_top = n_filt = hit_filt = 0
    for image_id, _, width, height, gt in images:
        props = np.asarray(by_id.get(str(image_id), np.zeros((0, 4))), np.float64).reshape(-1, 4)
        n_all += len(gt)
        filtered = gt_passing_filter(gt, width, height, box_filter)
        n_filt += len(filtered)
        if not len(gt) or not len(props):
            continue
        iou = pairwise_iou(gt, props)
        best = iou.max(axis=1)
        hit5 += int((best >= 0.5).sum())
        hit7 += int((best >= 0.7).sum())
        hit_top += int((iou[:, :TOP].max(axis=1) >= 0.5).sum())
        if len(filtered):
            hit_filt += int((pairwise_iou(filtered, props).max(axis=1) >= 0.5).sum())
    n_done = sum(str(i) in by_id for i, *_ in images)
    return {
        "recall_at_0_5": hit5 / max(n_all, 1), "recall_at_0_7": hit7 / max(n_all, 1),
        "recall_filtered_at_0_5": hit_filt / max(n_filt, 1), f"recall_top{TOP}_at_0_5": hit_top / max(n_all, 1),
        "n_gt": n_all, "n_gt_filtered": n_filt, "n_images": len(images), "n_done": n_done,
        "proposals_per_image": sum(len(by_id[str(i)]) for i, *_ in images if str(i) in by_id) / max(n_done, 1),
    }


def main(argv=None):
    parser, args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    from soco_d2.data.proposals.job import failures_path, generate_proposals, is_up_to_date

    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    from generate_proposals import semantic_proposer

    setup_logger(name="soco_d2")
    try:
        ss_settings = settings_from_args(args)
        semantic = semantic_settings_from_args(args) if args.from_features else None
    except ValueError as e:
        parser.error(str(e))
    images = load_gt(args.coco_json, args.image_root)
    if args.limit > 0:
        images = images[: args.limit]
    items = [(image_id, path) for image_id, path, *_ in images]
    work = args.work_dir or os.path.splitext(os.path.abspath(args.out))[0]
    kinds = {} if args.no_selective_search else {"selective_search": ss_settings}
    if semantic is not None:
        kinds["semantic"] = semantic_proposer(args.from_features, args.features_config, semantic, "cpu")

    results = {}
    for kind, proposer in kinds.items():
        output = os.path.join(work, f"{kind}.pkl")
        start = time.perf_counter()
        if is_up_to_date(items, output, proposer):
            summary = None
        else:
            summary = generate_proposals(items, output, proposer, workers=args.workers, progress=False)
        with open(output, "rb") as f:
            proposals = pickle.load(f)
        with open(failures_path(output)) as f:
            report = json.load(f)
        box_filter = ss_settings.box_filter if kind == "selective_search" else semantic.box_filter
        results[kind] = dict(recall(images, proposals, box_filter), proposal_file=output,
                             settings=proposer.to_dict(), n_failed=report["n_failed"],
                             failed=[f["path"] for f in report["failures"]],
                             wall_s=None if summary is None else time.perf_counter() - start,
                             filter_stages=None if summary is None else summary.stage_counts)

    out = {"coco_json": os.path.abspath(args.coco_json), "image_root": os.path.abspath(args.image_root),
           "limit": args.limit, "results": results, "machine": dict(machine_info(), threads=args.workers)}
    keys = ["recall_at_0_5", "recall_filtered_at_0_5", f"recall_top{TOP}_at_0_5", "recall_at_0_7", "proposals_per_image"]
    print(f"{len(images)} images, {results[next(iter(results))]['n_gt']} labelled boxes of {args.coco_json}")
    print(f"{'kind':<18}" + "".join(f"{k:>24}" for k in keys))
    for kind, r in results.items():
        print(f"{kind:<18}" + "".join(f"{r[k]:>24.3f}" for k in keys))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
