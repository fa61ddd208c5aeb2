#!/usr/bin/env python
"""Generate unsupervised object proposals as a Detectron2 proposal file (for
DATASETS.PROPOSAL_FILES_TRAIN or a pretraining set's proposal file): SoCo's selective search +
box filter (the default), or SimDETR's semantic proposals from a backbone's features.

Examples (from the repository root)::

    python tools/generate_proposals.py --coco-json datasets/coco/annotations/instances_train2017.json \\
        --image-root datasets/coco/train2017 --output datasets/soco_proposals/coco_2017_train.pkl --workers 16
    python tools/generate_proposals.py --image-dir datasets/imagenet/train \\
        --output datasets/soco_proposals/imagenet_train.pkl --workers 16

(the output paths the built-in dataset names coco_2017_train_soco / imagenet_train_soco read).

With --ground-truth (and --coco-json), the json's own boxes are written instead, categories
dropped: an oracle for ablations, SoCo told where the objects are but not what they are::

    python tools/generate_proposals.py --ground-truth \
        --coco-json datasets/soco_synthetic/annotations/instances_train.json \
        --image-root datasets/soco_synthetic/train --output datasets/soco_synthetic/proposals_train_gt.pkl

With --from-features CHECKPOINT, semantic proposals (soco_d2/data/proposals/semantic.py):
each image's res4 (or res5) feature map of the checkpoint's backbone (a SoCo trunk, or any
Detectron2 checkpoint with backbone.* keys) clustered with its cell positions, connected regions
as boxes, SoCo's box filter. The ResNet's architecture comes from --features-config, by default
the config.yaml of the run that wrote the checkpoint (beside it)::

    python tools/generate_proposals.py --coco-json ../shared/data/aquarium/instances_train.json \
        --image-root ../shared/data/aquarium --output datasets/aquarium/semantic_proposals_train.pkl \
        --from-features output/soco_R18_FPN_imagenette_cpu/model_final_trunk.pth --workers 2

Image ids: COCO image ids with --coco-json; with --image-dir the path relative to the folder
without extension (soco_d2.data.image_list). Progress is saved in OUTPUT.partial/, so an
interrupted run resumes where it stopped. Unusable images are skipped and listed in
OUTPUT.failures.json. If OUTPUT is already complete for the same images and settings, nothing
is done (use --overwrite to regenerate).

Resuming, skipped images and the failures report are the same for both kinds.

Exit status: 0 if at least one image got proposals; 1 if none did; 2 for bad arguments or
missing inputs (a checkpoint without a backbone included).
"""
import argparse
import os
import sys

try:
    import soco_d2  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soco_d2.data.image_list import list_coco_images, list_image_folder  # noqa: E402
from soco_d2.data.proposals.ground_truth import write_ground_truth_proposals  # noqa: E402
from soco_d2.data.proposals.job import generate_proposals, is_up_to_date  # noqa: E402
from soco_d2.data.proposals.selective_search import add_settings_arguments, settings_from_args  # noqa: E402
from soco_d2.data.proposals.semantic import add_semantic_arguments, semantic_settings_from_args  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--coco-json", help="COCO instances json listing the images (labels unused)")
    src.add_argument("--image-dir", help="folder of images, searched recursively")
    p.add_argument("--image-root", help="folder the --coco-json file names are relative to")
    p.add_argument("--output", required=True, help="proposal file to write (.pkl)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes, one core each; 0 or 1: in this process (default: %(default)s)")
    p.add_argument("--flush-every", type=int, default=200,
                   help="save progress every N images (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate even if OUTPUT is complete for these images and settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ground-truth", action="store_true",
                   help="write the --coco-json's boxes (no categories) instead of selective search: "
                        "an oracle for ablations")
    p.add_argument("--from-features", metavar="CHECKPOINT",
                   help="semantic proposals from the backbone of this Detectron2 checkpoint (e.g. a SoCo "
                        "model_final_trunk.pth) instead of selective search")
    p.add_argument("--features-config", metavar="CONFIG",
                   help="config describing that backbone (default: config.yaml beside CHECKPOINT)")
    p.add_argument("--device", default="cpu", help="where the backbone runs, with --from-features "
                   "(cuda needs --workers 0 or 1; default: %(default)s)")
    add_settings_arguments(p)
    add_semantic_arguments(p)
    args = p.parse_args(argv)
    if args.coco_json and not args.image_root:
        p.error("--coco-json needs --image-root")
    if args.image_dir and args.image_root:
        p.error("--image-root goes with --coco-json; --image-dir needs none")
    if args.ground_truth and not args.coco_json:
        p.error("--ground-truth needs --coco-json (the boxes come from its annotations)")
    if args.ground_truth and args.from_features:
        p.error("--ground-truth and --from-features are two kinds of proposals; choose one")
    if args.features_config and not args.from_features:
        p.error("--features-config goes with --from-features")
    if args.device != "cpu" and args.workers > 1:
        p.error(f"--device {args.device} runs in this process: use --workers 0 or 1")
    if args.workers < 0 or args.flush_every < 1:
        p.error("--workers must be >= 0 and --flush-every >= 1")
    return p, args


def semantic_proposer(checkpoint, config_file, settings, device):
    """The semantic-proposal job's proposer: the ResNet of ``config_file`` (default: the run's
    config.yaml beside ``checkpoint``) loaded from ``checkpoint``.

    Raises:
        FileNotFoundError: no checkpoint, or no config given and none beside it.
        ValueError: the checkpoint has no backbone, or it does not fit the config.
    """
    from detectron2.config import get_cfg

    from soco_d2 import add_config
    from soco_d2.config import load_config
    from soco_d2.data.proposals.semantic import SemanticProposer

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--from-features: checkpoint not found: {checkpoint}")
    if config_file is None:
        config_file = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.yaml")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"--from-features {checkpoint}: no config.yaml beside it to say what its backbone is; "
                "name the config it was trained with, --features-config CONFIG")
    cfg = add_config(get_cfg())
    load_config(cfg, config_file)
    return SemanticProposer(cfg, checkpoint, settings, device)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    setup_logger(name="soco_d2")
    logger = setup_logger(name="generate_proposals")
    if args.ground_truth:
        try:
            proposals = write_ground_truth_proposals(args.coco_json, args.output)
        except (FileNotFoundError, ValueError) as e:
            logger.error(str(e))
            return 2
        n = sum(len(b) for b in proposals["boxes"])
        logger.info(f"Wrote {args.output}: the {n} ground-truth boxes of {len(proposals['ids'])} "
                    f"images of {args.coco_json} (categories dropped)")
        return 0
    try:
        settings = settings_from_args(args)
        semantic = semantic_settings_from_args(args) if args.from_features else None
    except ValueError as e:
        parser.error(str(e))
    if semantic is not None:
        try:
            settings = semantic_proposer(args.from_features, args.features_config, semantic, args.device)
        except (FileNotFoundError, ValueError, KeyError) as e:
            logger.error(str(e))
            return 2
    try:
        if args.coco_json:
            if not os.path.isdir(args.image_root):
                raise FileNotFoundError(f"Image root does not exist: {args.image_root}")
            items = list_coco_images(args.coco_json, args.image_root)
        else:
            items = list_image_folder(args.image_dir)
    except (FileNotFoundError, ValueError) as e:
        logger.error(str(e))
        return 2
    if not items:
        logger.error("The image list is empty; nothing to do")
        return 1
    if not args.overwrite and is_up_to_date(items, args.output, settings):
        logger.info(f"{args.output} is already complete for these {len(items)} images and "
                    "settings; nothing to do (--overwrite regenerates it)")
        return 0
    try:
        summary = generate_proposals(
            items, args.output, settings, workers=args.workers, flush_every=args.flush_every,
            progress=not args.no_progress)
    except (RuntimeError, ValueError) as e:  # e.g. partial results of another job
        logger.error(str(e))
        return 2
    return 0 if summary.n_done > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
