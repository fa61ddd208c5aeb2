#!/usr/bin/env python
"""Generate the embedded synthetic SoCo dataset (deterministic shapes with COCO annotations).

Example (from the repository root)::

    python tools/make_synthetic_dataset.py --out datasets/soco_synthetic
    python tools/make_synthetic_dataset.py --out datasets/soco_synthetic --num-train 1000 --seed 1 --overwrite
    python tools/make_synthetic_dataset.py --out datasets/soco_synthetic_independent --appearance independent

``--appearance category`` (the default) gives each category its own colour distribution and
preferred texture as well as its shape; ``--appearance texture`` keeps the preferred texture but
draws colour independently of the category; ``--appearance independent`` draws colour and texture
independently of the category (only the shape tells them apart), the scenes every figure
measured before the setting existed was made with.

Running it again with the same arguments is a no-op; different arguments on an existing
dataset folder need --overwrite.
"""
import argparse
import json
import logging
import os
import sys
import time

try:
    import soco_d2  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soco_d2.data.synthetic import (  # noqa: E402
    APPEARANCES,
    DEFAULTS,
    MANIFEST_NAME,
    generate_synthetic_dataset,
    read_synthetic_manifest,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="datasets/soco_synthetic", help="output folder (default: %(default)s)")
    for name, help_text in (("num_train", "train images"), ("num_val", "val images"), ("seed", "random seed"),
                            ("min_size", "smallest image side in px"), ("max_size", "largest image side in px")):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=DEFAULTS[name],
                       help=f"{help_text} (default: %(default)s)")
    p.add_argument("--appearance", choices=APPEARANCES, default=DEFAULTS["appearance"],
                   help="colour and texture per category, or independent of it (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate even if the folder already holds a synthetic dataset")
    return p.parse_args(argv)


def _setup_logging():
    try:
        from detectron2.utils.logger import setup_logger

        return setup_logger(name="soco_d2", abbrev_name="soco_d2")
    except Exception:  # detectron2 not importable: plain logging is enough
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s: %(message)s")
        return logging.getLogger("soco_d2")


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = _setup_logging()
    start = time.perf_counter()
    try:
        paths = generate_synthetic_dataset(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            seed=args.seed,
            min_size=args.min_size,
            max_size=args.max_size,
            appearance=args.appearance,
            overwrite=args.overwrite,
        )
    except (ValueError, TypeError) as e:
        logger.error("%s", e)
        return 2
    manifest = read_synthetic_manifest(args.out) or {}
    logger.info("Done in %.1fs", time.perf_counter() - start)
    print(f"Synthetic dataset: {os.path.abspath(args.out)}")
    print(f"  manifest: {os.path.join(args.out, MANIFEST_NAME)}")
    for split, (json_path, image_root) in paths.items():
        info = manifest.get("splits", {}).get(split, {})
        print(f"  {split}: {info.get('num_images', '?')} images, {info.get('num_annotations', '?')} "
              f"annotations\n    json:       {json_path}\n    image_root: {image_root}")
    print(f"  params: {json.dumps(manifest.get('params', {}), sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
