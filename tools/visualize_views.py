#!/usr/bin/env python
"""Draw SoCo's augmented views with their proposals, to check that boxes follow the content.

    python tools/visualize_views.py --config-file configs/X.yaml --dataset soco_synthetic_train \\
        --num-images 4 --output views.png
    python tools/visualize_views.py --image-dir DIR (--proposals FILE | --random-proposals 50) \\
        [--coco-json instances.json] --num-images 4 --output views.png [KEY VALUE ...]

One row per image, one column per view (V1, V2, V3 (, V4)), each shown as the mapper outputs
it (augmented, flipped, nothing undone). A box's colour stands for its proposal id, the same in
every view; its label is "id Pk" with the FPN level the mapper assigned in that view.
"""
import argparse
import os
import random
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402

from soco_d2 import add_soco_config  # noqa: E402
from soco_d2.data import load_soco_images, register_datasets_from_cfg  # noqa: E402
from soco_d2.data.decode import image_header  # noqa: E402
from soco_d2.methods.soco.mapper import SoCoDatasetMapper  # noqa: E402
from soco_d2.methods.soco.views import random_proposals  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default="", help="SoCo config (default: base + SoCo keys)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="soco_synthetic_train", help="registered dataset name")
    src.add_argument("--image-dir", default="", help="folder of images (searched recursively)")
    p.add_argument("--proposals", default="", help="proposal file for --image-dir")
    p.add_argument("--coco-json", default="", help="use this COCO json's images and ids")
    p.add_argument("--random-proposals", type=int, default=0,
                   help="N random boxes passing SoCo's filter per image (no proposal file)")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="picks the images and the augmentations")
    p.add_argument("--output", default="views.png")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def setup_cfg(args):
    cfg = get_cfg()
    add_soco_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def load_records(args, cfg):
    if args.image_dir:
        records = load_soco_images(args.image_dir, args.proposals or None, args.coco_json or None)
    else:
        register_datasets_from_cfg(cfg)
        records = DatasetCatalog.get(args.dataset)
    rng = np.random.default_rng(args.seed)
    picked = sorted(rng.choice(len(records), min(args.num_images, len(records)), replace=False))
    records = [dict(records[i]) for i in picked]
    if args.random_proposals > 0:
        for r in records:
            with open(r["file_name"], "rb") as f:
                w, h, _ = image_header(f.read())  # EXIF orientation applied
            r["proposal_boxes"] = random_proposals(rng, w, h, args.random_proposals)
    return records


def draw(outputs, names, cfg, path):
    n_views = len(outputs[0]["views"])
    fig, axes = plt.subplots(
        len(outputs), n_views, figsize=(3.2 * n_views, 3.4 * len(outputs)), squeeze=False
    )
    palette = plt.get_cmap("tab20")
    for row, (out, name) in enumerate(zip(outputs, names)):
        # V1 holds every proposal of the image once: number the colours in its order.
        colour_of = {i: palette(k % 20) for k, i in enumerate(out["views"][0]["ids"].tolist())}
        for col, view in enumerate(out["views"]):
            ax = axes[row, col]
            img = view["image"].permute(1, 2, 0).numpy()
            if cfg.INPUT.FORMAT == "BGR":
                img = img[:, :, ::-1]
            size = img.shape[1]
            ax.imshow(img, extent=(0, size, size, 0), interpolation="nearest")
            for box, i, lvl in zip(view["boxes"].tensor.tolist(), view["ids"].tolist(),
                                   view["levels"].tolist()):
                color = colour_of[i]
                x1, y1, x2, y2 = box
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2,
                                           edgecolor=color))
                ax.text(x1 + 1, y1 + 1, f"{i} P{lvl + 2}", color="white", fontsize=7,
                        va="top", bbox=dict(facecolor=color, alpha=0.8, pad=1, lw=0))
            ax.set_xlim(0, size)
            ax.set_ylim(size, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"V{col + 1} ({size} px)"
            ax.set_title(f"{name}\n{title}" if col == 0 else title, fontsize=8)
    pairs = ", ".join(f"(V{a + 1},V{b + 1})" for a, b, *_ in outputs[0]["pairs"])
    fig.suptitle(f"SoCo views; colour = proposal id; label = id and level; pairs {pairs}",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_cfg(args)
    records = load_records(args, cfg)
    if not records:
        sys.exit("No images found.")
    mapper = SoCoDatasetMapper(cfg, is_train=True)
    np.random.seed(args.seed)
    random.seed(args.seed)
    outputs = [mapper(r) for r in records]
    names = [os.path.basename(r["file_name"]) for r in records]
    draw(outputs, names, cfg, args.output)
    print(f"Wrote {args.output} ({len(outputs)} images x {len(outputs[0]['views'])} views)")


if __name__ == "__main__":
    main()
