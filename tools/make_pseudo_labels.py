#!/usr/bin/env python
"""Write SimDETR's round-0 pseudo-labels of a config's training set as a COCO json, beside its
proposals: the first MODEL.SIMDETR.MAX_BOXES proposals of every image of DATASETS.TRAIN, their
MODEL.ROI_HEADS.NUM_CLASSES pseudo-classes clustered from the features of the ResNet of
MODEL.WEIGHTS (soco_d2/methods/simdetr/pseudo_labels.py), what ``train_net.py`` computes at the
start of a SimDETR run.

    python tools/make_pseudo_labels.py --config-file configs/simdetr/simdetr_R18_FPN_aquarium_cpu.yaml

writes ``datasets/aquarium/semantic_proposals_train.pseudo_k32.json`` (the proposal file's name,
``.pseudo_k<K>.json``; ``--output`` for another). Then:

- a SimDETR run trains on it instead of computing round 0:
  ``MODEL.SIMDETR.PSEUDO_LABELS <json>``;
- any Detectron2 code reads it as a labelled COCO set, e.g.
  ``register_coco_instances("aquarium_pseudo", {}, "<json>", "")`` (file names are absolute).

Trailing ``KEY VALUE`` pairs override the config (e.g. ``MODEL.WEIGHTS <trunk>``). Exit status 0,
or 2 for bad arguments or missing inputs.
"""
import argparse
import os
import sys

try:
    import soco_d2  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="a SimDETR config (configs/simdetr/)")
    p.add_argument("--output", help="json to write (default: beside the proposal file of DATASETS.TRAIN)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def default_output(cfg) -> str:
    """``<proposal file>.pseudo_k<K>.json`` of the (one) training set."""
    from detectron2.data import MetadataCatalog

    if len(cfg.DATASETS.TRAIN) != 1:
        raise ValueError(f"DATASETS.TRAIN has {len(cfg.DATASETS.TRAIN)} sets: name the json with --output")
    src = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("soco_source", None)
    if not src or not src["proposal_file"]:
        raise ValueError(f"DATASETS.TRAIN '{cfg.DATASETS.TRAIN[0]}' has no proposal file to write beside: "
                         "use --output")
    return f"{os.path.splitext(src['proposal_file'])[0]}.pseudo_k{cfg.MODEL.ROI_HEADS.NUM_CLASSES}.json"


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.utils.logger import setup_logger

    from soco_d2 import add_config
    from soco_d2.config import ConfigError, load_config
    from soco_d2.data import register_datasets_from_cfg
    from soco_d2.data.loader import load_pretrain_records
    from soco_d2.data.sample_stream import resolve_data_seed
    from soco_d2.methods import get_method
    from soco_d2.methods.simdetr.pseudo_labels import initial_pseudo_labels, write_pseudo_labels
    from soco_d2.methods.simdetr.trainer import check_simdetr_data

    logger = setup_logger(name="make_pseudo_labels")
    setup_logger(name="soco_d2")
    try:
        cfg = add_config(get_cfg())
        load_config(cfg, args.config_file)
        cfg.merge_from_list(args.opts)
        register_datasets_from_cfg(cfg)
        method = get_method(cfg.MODEL.META_ARCHITECTURE)
        if method is None or method.name != "SimDETRRCNN":
            raise ConfigError(f"{args.config_file} is not a SimDETR config (MODEL.META_ARCHITECTURE "
                              f"{cfg.MODEL.META_ARCHITECTURE!r})")
        method.validate_config(cfg)
        cfg.MODEL.SIMDETR.PSEUDO_LABELS = ""
        check_simdetr_data(cfg)
        output = args.output or default_output(cfg)
        if not cfg.MODEL.WEIGHTS or not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise FileNotFoundError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r}: the backbone whose features are "
                                    "clustered must be a file (e.g. a SoCo model_final_trunk.pth)")
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as e:
        logger.error(str(e))
        return 2
    model = method.trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    s = cfg.MODEL.SIMDETR
    seed = resolve_data_seed(cfg.SEED)
    labels = initial_pseudo_labels(model.feature_extractor(), load_pretrain_records(cfg),
                                   k=cfg.MODEL.ROI_HEADS.NUM_CLASSES, max_boxes=s.MAX_BOXES, iters=s.KMEANS_ITERS,
                                   fit_samples=s.FIT_SAMPLES, seed=seed)
    labels.info["seed"] = seed
    write_pseudo_labels(labels, output)
    logger.info(f"Wrote {output}: {labels.num_boxes} pseudo-boxes of {len(labels.images)} images in "
                f"{labels.num_classes} pseudo-classes (k-means seed {seed}; {len(labels.info['skipped'])} "
                f"unreadable images left out). Train on it with MODEL.SIMDETR.PSEUDO_LABELS {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
