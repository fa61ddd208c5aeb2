#!/usr/bin/env python
"""Convert a pretraining checkpoint into Detectron2 weights for fine-tuning, for every method.

Keeps the trunk the method declares (soco_d2/methods/<method>/export.py; for SoCo: backbone +
FPN + box head, or backbone + res5 for C4), drops its pretraining-only parts (for SoCo: the
projector, the predictor and the momentum target), and prints ``old -> new`` for every key
kept (SoCo's and AlignDet's names are already Detectron2's). The method is found from the
checkpoint's keys; ``--method`` names it; ``--also-keep PREFIX`` keeps more keys (e.g. AlignDet's
box regressor, ``roi_heads.box_predictor.bbox_pred.``). Example (from the repository root)::

    python tools/convert_to_d2.py output/soco_R50_FPN_100ep/model_final.pth soco_R50_FPN_100ep.pth
    python train_net.py --config-file configs/transfer/mask_rcnn_R50_FPN_1x.yaml --num-gpus 8 \\
        MODEL.WEIGHTS soco_R50_FPN_100ep.pth

Exit status: 0 on success, 1 if the input is missing or not a checkpoint of the method.
"""
import argparse
import dataclasses
import os
import sys

try:
    import soco_d2  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soco_d2.export import export_trunk, find_export_spec, read_state_dict  # noqa: E402
from soco_d2.methods import get_method, registered_exports, registered_methods  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="pretraining checkpoint written by train_net.py (model_final.pth)")
    p.add_argument("output", help="Detectron2 weights file to write (.pth), for MODEL.WEIGHTS")
    p.add_argument("--method", choices=[m.name for m in registered_methods()],
                   help="the pretraining method (MODEL.META_ARCHITECTURE); default: found from the keys")
    p.add_argument("--also-keep", action="append", default=[], metavar="PREFIX",
                   help="also export the keys starting with PREFIX (repeatable), e.g. "
                        "roi_heads.box_predictor.bbox_pred. (AlignDet's class-agnostic box regressor)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    logger = setup_logger(name="soco_d2", abbrev_name="soco_d2")
    # The registry is asked here; the exporter is given the declaration, or every method's to
    # find the checkpoint's among by its keys.
    spec = get_method(args.method).export if args.method else registered_exports()
    try:
        if args.also_keep:
            if not args.method:
                spec = find_export_spec(list(read_state_dict(args.input)), spec, args.input)
            spec = dataclasses.replace(spec, keep=spec.keep + tuple(args.also_keep))
        # The key map is printed here, not logged: the library's logger may already have been
        # set up (or silenced) by whoever called main() before in this process.
        summary = export_trunk(args.input, args.output, spec, verbose=False)
    except (FileNotFoundError, ValueError) as e:
        logger.error(str(e))
        return 1
    for old, new in summary["names"].items():
        print(f"  {old} -> {new}")
    dropped = ", ".join(f"{part}: {n}" for part, n in summary["dropped"].items())
    renamed = f"{summary['renamed']} renamed" if summary["renamed"] else "none renamed"
    print(f"kept {summary['kept']} keys ({renamed}); dropped {dropped}; wrote {summary['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
