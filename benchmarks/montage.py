#!/usr/bin/env python
"""Montage evidence on CPU (issue 11, item 5): a Montage-pretrained backbone vs random init vs the
SoCo backbone, fine-tuned with the same config, schedule and seeds on the embedded data.

    python benchmarks/montage.py --soco-trunk output/soco_demo_synthetic/model_final_trunk.pth
    python benchmarks/montage.py --detection-set full --arms random montage   # all 2000 scenes labelled
    python benchmarks/montage.py --quick            # smoke test of the pipeline, minutes

Arms (they differ ONLY in MODEL.WEIGHTS of the fine-tuning run):

- ``random`` (the baseline the others are paired with): MODEL.WEIGHTS ``""``;
- ``montage``: the ResNet-18 of Montage pretraining (``configs/montage/montage_demo_synthetic.yaml``)
  on the LABELLED scenes of the fine-tuning split, ``soco_synthetic_det_train_100`` (the paper's
  setting: pretraining needs only the target detection set, so it sees the same 100 labelled
  scenes as fine-tuning and no other label); ``--montage-iters`` iterations (default 300 at batch
  16, 48 epochs of the 100 scenes). With ``--detection-set full`` the detection set is all 2000
  train scenes with their labels (``soco_synthetic_det_train``): Montage pretrains on them (1000
  iterations, 128 px canvas) and every arm fine-tunes on them. Only the backbone is pretrained:
  FPN, RPN and box head start random;
- ``soco``: the ResNet-18 of the SoCo trunk of the CPU recipe (``--soco-trunk``, pretrained
  without labels on the 2000 train scenes; its ``backbone.bottom_up.*`` keys, written to
  ``OUTPUT_ROOT/soco_backbone.pth``): backbone against backbone, FPN, RPN and box head random in
  both (the whole SoCo trunk is the ``soco`` arm of ``benchmarks/aligndet.py``); in ``--quick``
  mode a 3-iteration trunk is made on the spot when the file does not exist;
- ``montage_free`` (only with ``--arms``): the label-free variant
  (``configs/montage/montage_free_demo_synthetic.yaml``), initialised from the SoCo trunk, same
  iterations as ``montage``.

Fine-tuning: ``configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml`` (Faster R-CNN R18-FPN on the
100 labelled scenes, or the 2000 of ``--detection-set full``, its own 200-iteration schedule at
batch 8, or ``--finetune-iters`` scaled),
evaluated on the 200 ``soco_synthetic_det_val`` scenes; seeds 0, 1, 2, each run in every arm
(a seed gives every arm the same data order and the same random layers).

Reported: COCO box AP (percent) per run; per arm mean +- sample std over seeds; the paired
(same seed) differences montage - random, soco - random (and montage_free - random), and
montage - soco, each with its std. ``--quick`` is a smoke test of the whole pipeline (3
pretraining and 4 fine-tuning iterations, seed 0, evaluated on the first 20 val scenes,
``soco_synthetic_det_val_20``); its numbers mean nothing. Every step is ``train_net.py`` run as
a subprocess (``benchmarks/harness.py``): a finished run is reused, an interrupted one resumed,
a folder made with other settings refused. Each fine-tuning record lists the pretrained keys its detector did
not load (must be empty: ``backbone.bottom_up.*`` in every pretrained arm).
"""
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402
from aligndet import DEFAULT_SOCO_TRUNK, backbone_only, soco_trunk  # noqa: E402  (the SoCo arm)
from harness import REPO_ROOT, rel, scaled_schedule  # noqa: E402

# Arm -> its name in tables; "random" is the baseline every other arm is paired with.
ARMS = {"random": "random", "montage": "Montage", "soco": "SoCo backbone", "montage_free": "Montage label-free"}
DEFAULT_ARMS = ["random", "montage", "soco"]
PRETRAIN = {
    "montage": {"config": "configs/montage/montage_demo_synthetic.yaml"},
    "montage_free": {"config": "configs/montage/montage_free_demo_synthetic.yaml"},
}
# The detection set (--detection-set): the labelled scenes that Montage pretrains on and the
# detector fine-tunes on, the same ones (the paper's setting: no other data, no other label).
# "low_label": 100 labelled scenes, Montage 300 iterations on the 96 px canvas of the demo config;
# "full": all 2000 train scenes labelled, Montage 1000 iterations (8 epochs) on a 128 px canvas,
# where an object sample is about as large as in the fine-tuning images.
DETECTION_SETS = {
    "low_label": {"train": "soco_synthetic_det_train_100", "montage_iters": 300, "montage_opts": []},
    "full": {"train": "soco_synthetic_det_train", "montage_iters": 1000,
             "montage_opts": ["INPUT.MONTAGE.CANVAS_SIZE", "128"]},
}
FINETUNE_CONFIG = "configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml"
# State_dict prefixes of the detector that each pretrained arm must fill.
TRUNK_PREFIXES = {"montage": ("backbone.bottom_up.",), "montage_free": ("backbone.bottom_up.",),
                  "soco": ("backbone.bottom_up.",)}
QUICK = {"montage_iters": 3, "finetune_iters": 4, "precise_bn_iters": 2,
         "test_set": '("soco_synthetic_det_val_20",)'}


def pretrain_opts(args, arm: str, output_dir: str, trunk: str = "") -> list:
    """Overrides of a Montage pretraining: its data, the SoCo trunk (label-free), the schedule."""
    iters = QUICK["montage_iters"] if args.quick else args.montage_iters
    if arm == "montage":
        detection_set = DETECTION_SETS[args.detection_set]
        opts = ["DATASETS.TRAIN", f'("{detection_set["train"]}",)'] + detection_set["montage_opts"]
    else:  # montage_free: the unlabelled train scenes of its config, from the SoCo trunk
        opts = ["MODEL.WEIGHTS", rel(trunk)]
    opts += ["MODEL.DEVICE", "cpu", "SEED", "0", "OUTPUT_DIR", rel(output_dir)]
    return opts + scaled_schedule(iters, 1 / 6, ())  # the demo's shape: warmup 1/6, cosine to 0


class MontageStudy(harness.Study):
    name = "montage"
    description = __doc__
    arms = ARMS
    default_arms = DEFAULT_ARMS
    quick_seeds = (0,)
    finetune_config = FINETUNE_CONFIG
    quick_finetune_iters = QUICK["finetune_iters"]
    quick_opts = ("TEST.PRECISE_BN.NUM_ITER", str(QUICK["precise_bn_iters"]), "DATASETS.TEST", QUICK["test_set"])
    trunk_prefixes = TRUNK_PREFIXES
    paired = [("montage", "soco")]
    box_only = True  # Faster R-CNN has no masks
    help = {"finetune_iters": "fine-tuning iterations at batch 8 (default: the config's 200)",
            "quick": f"smoke test: {QUICK['montage_iters']} pretraining and {QUICK['finetune_iters']} "
                     "fine-tuning iterations, seed 0, evaluated on 20 val scenes"}

    def add_arguments(self, parser):
        parser.add_argument("--soco-trunk", default=DEFAULT_SOCO_TRUNK,
                            help="the SoCo CPU trunk: its ResNet is the soco arm; montage_free's init "
                                 "(default: %(default)s)")
        parser.add_argument("--detection-set", choices=list(DETECTION_SETS), default="low_label",
                            help="labelled scenes that Montage pretrains on and every arm fine-tunes on: "
                                 "low_label = the first 100, full = all 2000 (default: %(default)s)")
        parser.add_argument("--montage-iters", type=int, default=None,
                            help="Montage pretraining iterations at batch 16 (default: 300 low_label, 1000 full)")

    def check_args(self, parser, args):
        if args.montage_iters is None:
            args.montage_iters = DETECTION_SETS[args.detection_set]["montage_iters"]
        if args.output_root is None and args.detection_set != "low_label":
            args.output_root = f"output/montage_bench_{args.detection_set}" + ("_quick" if args.quick else "")

    def weights(self, run, dataset):
        """The SoCo trunk's ResNet, and Montage pretraining (labelled, or label-free from that trunk)."""
        args, weights = run.args, {}
        trunk = soco_trunk(args) if {"soco", "montage_free"} & set(args.arms) else ""
        if "soco" in args.arms:
            weights["soco"] = backbone_only(trunk, os.path.join(args.output_root, "soco_backbone.pth"))
            run.result["pretraining"]["soco"] = {"trunk": rel(trunk), "weights": rel(weights["soco"])}
        for arm in ("montage", "montage_free"):
            if arm in args.arms:
                output_dir = os.path.join(args.output_root, f"pretrain_{arm}")
                pre = run.pretrain(arm, PRETRAIN[arm]["config"], pretrain_opts(args, arm, output_dir, trunk), output_dir)
                weights[arm] = os.path.join(REPO_ROOT, pre["trunk"])
        return weights

    def finetune_data_opts(self, args, dataset):
        if args.detection_set == "low_label":  # the config fine-tunes on the low-label set
            return []
        return ["DATASETS.TRAIN", f'("{DETECTION_SETS[args.detection_set]["train"]}",)']

    def finetune_dir(self, args, dataset, arm, seed):
        return os.path.join(args.output_root, f"faster_rcnn_{arm}_seed{seed}")

    def settings(self, args):
        return {"arms": self.labels(args.arms), "seeds": args.seeds, "quick": args.quick,
                "detection_set": args.detection_set, "finetune_train": DETECTION_SETS[args.detection_set]["train"],
                "montage_iters": QUICK["montage_iters"] if args.quick else args.montage_iters,
                "finetune_config": FINETUNE_CONFIG, "finetune_iters": self.finetune_schedule(args, "synthetic")[0],
                "output_root": rel(args.output_root)}


STUDY = MontageStudy()
parse_args, main = STUDY.parse_args, STUDY.main

if __name__ == "__main__":
    sys.exit(main())
