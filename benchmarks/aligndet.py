#!/usr/bin/env python
"""AlignDet evidence on CPU: does box-domain pretraining of FPN, RPN and box head help, on top of
the same SoCo backbone? (issue 10, item 5)

    python benchmarks/aligndet.py --out output/aligndet_bench/aligndet.json
    python benchmarks/aligndet.py --quick --out output/aligndet_bench_quick/aligndet.json

Arms, fine-tuned with the same config, schedule and seeds; they differ ONLY in MODEL.WEIGHTS:

- ``soco_backbone`` (the baseline the others are paired with; the issue's arm (a)): the ResNet
  of the SoCo trunk of the CPU recipe (``--soco-trunk``, default
  ``output/soco_demo_synthetic/model_final_trunk.pth``), its ``backbone.bottom_up.*`` keys only,
  written to ``OUTPUT_ROOT/soco_backbone.pth``: FPN, RPN and heads random;
- ``aligndet`` (arm (b)): that trunk after AlignDet pretraining
  (``configs/aligndet/aligndet_demo_synthetic.yaml`` with MODEL.WEIGHTS = the SoCo trunk): the
  same, frozen ResNet, with FPN, RPN and box head from AlignDet;
- ``random``: MODEL.WEIGHTS ``""`` (random everything, the third arm);
- ``aligndet_no_box_head`` (only with ``--arms``): the AlignDet trunk without its box head
  (``roi_heads.*`` dropped, written to ``OUTPUT_ROOT/aligndet_no_box_head.pth``): SoCo ResNet,
  AlignDet FPN and RPN, random box head; separates what the pretrained box head costs or gives;
- ``soco`` (only with ``--arms``): the whole SoCo trunk (ResNet, FPN and box head from SoCo;
  RPN and box predictor random).

No labels are used before fine-tuning: SoCo and AlignDet see the 2000 embedded train scenes
(``soco_synthetic_train``) with their selective-search proposals. Fine-tuning:
``configs/transfer/faster_rcnn_R18_FPN_synthetic_aligndet.yaml`` (Faster R-CNN R18-FPN, the 100
labelled scenes of ``soco_synthetic_det_train_100``, AlignDet's lr x1.5 / wd x0.5 recipe for
every arm), evaluated on the 200 ``soco_synthetic_det_val`` scenes; ``--detector retinanet``
runs the same study with RetinaNet (``aligndet_retinanet_demo_synthetic.yaml``,
``retinanet_R18_FPN_synthetic_aligndet.yaml``). Fine-tuning seeds 0, 1, 2; a given seed gives
every arm the same data order and the same initial random layers.

Reported: box AP (COCO, percent) per run; per arm mean +- sample std over seeds; the paired
(same seed) differences of every arm minus ``soco_backbone`` with their std; and whether the bar
of the issue is met (AlignDet - SoCo backbone gain greater than 2 standard deviations of the
paired difference). The AlignDet pretraining record lists any SoCo-trunk key its model did not load
(it must be empty: the trunk's shapes must match, FPN 128 channels and box head 128 / 512).

Runs, reuse, resume and statistics: ``benchmarks/harness.py`` (every step is ``train_net.py``
run as a subprocess; a finished run is reused, an interrupted one resumed). ``--quick`` is a
smoke test of the whole pipeline in minutes (2 AlignDet and 4 fine-tuning iterations, seed 0,
and a 3-iteration SoCo trunk made on the spot when ``--soco-trunk`` does not exist).
"""
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402
from harness import (  # noqa: E402
    REPO_ROOT, fmt, keep_prefixes, log, missing_trunk_keys, paired_gain_bar, rel, run_pretraining,
    scaled_schedule,
)

# Arm -> its name in tables; the first arm is the baseline the others are paired with.
# "AlignDet" is the SoCo trunk after AlignDet pretraining.
ARMS = {"soco_backbone": "SoCo backbone", "aligndet": "AlignDet", "random": "random", "soco": "SoCo trunk",
        "aligndet_no_box_head": "AlignDet, no box head"}
DEFAULT_ARMS = ["soco_backbone", "aligndet", "random"]
BACKBONE_PREFIX = "backbone.bottom_up."  # the ResNet, in an FPN detector's names
DEFAULT_SOCO_TRUNK = "output/soco_demo_synthetic/model_final_trunk.pth"
# The trunk of the CPU recipes (configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml): the quick
# mode's SoCo trunk is made with it, whatever the SoCo demo config says.
CPU_TRUNK_OPTS = ["MODEL.FPN.OUT_CHANNELS", "128", "MODEL.ROI_BOX_HEAD.CONV_DIM", "128",
                  "MODEL.ROI_BOX_HEAD.FC_DIM", "512"]

DETECTORS = {
    "faster_rcnn": {
        "pretrain_config": "configs/aligndet/aligndet_demo_synthetic.yaml",
        "finetune_config": "configs/transfer/faster_rcnn_R18_FPN_synthetic_aligndet.yaml",
        # State_dict prefixes that must load from MODEL.WEIGHTS in each pretrained arm.
        "trunk_prefixes": {"soco_backbone": (BACKBONE_PREFIX,), "soco": ("backbone.", "roi_heads.box_head."),
                           "aligndet": ("backbone.", "proposal_generator.", "roi_heads.box_head."),
                           "aligndet_no_box_head": ("backbone.", "proposal_generator.")},
    },
    "retinanet": {
        "pretrain_config": "configs/aligndet/aligndet_retinanet_demo_synthetic.yaml",
        "finetune_config": "configs/transfer/retinanet_R18_FPN_synthetic_aligndet.yaml",
        # SoCo has no P6/P7 convs and no RetinaNet head.
        "trunk_prefixes": {"soco_backbone": (BACKBONE_PREFIX,),
                           "soco": (BACKBONE_PREFIX, "backbone.fpn_lateral", "backbone.fpn_output"),
                           "aligndet": ("backbone.", "head.cls_subnet.", "head.bbox_subnet."),
                           "aligndet_no_box_head": ("backbone.",)},  # FPN with P6/P7, random head
    },
}
QUICK = {"soco_iters": 3, "aligndet_iters": 2, "finetune_iters": 4, "precise_bn_iters": 2}


# ------------------------------------------------------------------------------ pretraining
def soco_trunk(args) -> str:
    """The SoCo trunk of the baseline arm; in quick mode, made on the spot when missing."""
    path = os.path.join(REPO_ROOT, args.soco_trunk) if not os.path.isabs(args.soco_trunk) else args.soco_trunk
    if os.path.isfile(path):
        return path
    if not args.quick:
        raise SystemExit(
            f"SoCo trunk not found: {rel(path)}. Make it with the SoCo CPU recipe (`make demo`, "
            "configs/soco/soco_demo_synthetic.yaml) or pass --soco-trunk PATH."
        )
    output_dir = os.path.join(args.output_root, "soco_quick")
    iters = QUICK["soco_iters"]
    opts = CPU_TRUNK_OPTS + ["DATASETS.TRAIN", '("soco_synthetic_train",)', "MODEL.DEVICE", "cpu",
                             "DATALOADER.NUM_WORKERS", "1", "SEED", "0", "OUTPUT_DIR", rel(output_dir),
                             "SOLVER.WARMUP_EPOCHS", "0"] + scaled_schedule(iters, 0.2, ())
    record = run_pretraining("[soco quick]", {"method": "SoCo"}, "configs/soco/soco_demo_synthetic.yaml",
                             opts, output_dir, args.keep_checkpoints)
    return os.path.join(REPO_ROOT, record["trunk"])


def backbone_only(trunk: str, path: str) -> str:
    """The ResNet of a SoCo trunk (its ``backbone.bottom_up.*`` keys): arm (a)'s MODEL.WEIGHTS."""
    return keep_prefixes(trunk, path, (BACKBONE_PREFIX,))


def aligndet_opts(args, trunk: str, output_dir: str) -> list:
    opts = ["MODEL.WEIGHTS", rel(trunk), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1",
            "SEED", "0", "OUTPUT_DIR", rel(output_dir)]
    iters = QUICK["aligndet_iters"] if args.quick else args.aligndet_iters
    if iters:  # the demo's shape: warmup 1/4, steps at 8/12 and 11/12
        opts += scaled_schedule(iters, 0.25, (8 / 12, 11 / 12))
    return opts + list(args.aligndet_opts)


# --------------------------------------------------------------------------------- summary
def bar(summary: dict) -> dict:
    """The issue's bar: the paired AlignDet - SoCo backbone box-AP gain exceeds 2 of its std."""
    return paired_gain_bar(summary, "synthetic", "delta_aligndet_minus_soco_backbone")


# -------------------------------------------------------------------------------- the study
class AlignDetStudy(harness.Study):
    name = "aligndet"
    description = __doc__
    arms = ARMS
    default_arms = DEFAULT_ARMS
    baseline_always = True
    quick_seeds = (0,)
    quick_finetune_iters = QUICK["finetune_iters"]
    # and 20 instead of 100 test proposals: the 4conv head dominates inference
    quick_opts = ("TEST.PRECISE_BN.NUM_ITER", str(QUICK["precise_bn_iters"]), "MODEL.RPN.POST_NMS_TOPK_TEST", "20")
    help = {"finetune_iters": "fine-tuning iterations at batch 8 (default: the config's 200)"}

    def add_arguments(self, parser):
        parser.add_argument("--soco-trunk", default=DEFAULT_SOCO_TRUNK,
                            help="the SoCo CPU trunk: its ResNet is the soco_backbone arm; MODEL.WEIGHTS of the "
                                 "soco arm and of AlignDet (default: %(default)s)")
        parser.add_argument("--detector", choices=list(DETECTORS), default="faster_rcnn")
        parser.add_argument("--aligndet-iters", type=int, default=0,
                            help="AlignDet pretraining iterations at batch 16 (default: the config's 160)")
        parser.add_argument("--aligndet-opts", nargs="+", default=[], metavar="KEY VALUE",
                            help="config overrides of the AlignDet pretraining run (ablations, e.g. "
                                 "SOLVER.BASE_LR 0.02)")
        parser.add_argument("--finetune-config", default=None,
                            help="fine-tuning config of every arm (default: the detector's *_synthetic_aligndet.yaml)")

    def check_args(self, parser, args):
        if len(args.aligndet_opts) % 2:
            parser.error(f"--aligndet-opts takes KEY VALUE pairs, got {len(args.aligndet_opts)} words")

    def weights(self, run, dataset):
        """The SoCo trunk, AlignDet on top of it, and the trunks cut out of them."""
        args, spec = run.args, DETECTORS[run.args.detector]
        trunk = soco_trunk(args)
        output_dir = os.path.join(args.output_root, f"aligndet_{args.detector}")
        pre = run.pretrain("aligndet", spec["pretrain_config"], aligndet_opts(args, trunk, output_dir), output_dir,
                           tag=f"[aligndet {args.detector}]", labels={"method": "AlignDet", "soco_trunk": rel(trunk)})
        # the SoCo keys that the AlignDet model did not load (must be none: the shapes match)
        _, pre["soco_keys_not_loaded"] = missing_trunk_keys(output_dir, spec["trunk_prefixes"]["soco"])
        run.save()
        if pre["soco_keys_not_loaded"]:
            log(f"WARNING: the AlignDet model did not load these SoCo trunk keys (shapes differ?): "
                f"{pre['soco_keys_not_loaded']}")
        weights = {"soco_backbone": backbone_only(trunk, os.path.join(args.output_root, "soco_backbone.pth")),
                   "soco": trunk, "aligndet": os.path.join(REPO_ROOT, pre["trunk"])}
        if "aligndet_no_box_head" in args.arms:
            weights["aligndet_no_box_head"] = keep_prefixes(
                weights["aligndet"], os.path.join(args.output_root, "aligndet_no_box_head.pth"),
                spec["trunk_prefixes"]["aligndet_no_box_head"])
        return weights

    def finetune_config_of(self, args, dataset):
        return args.finetune_config or DETECTORS[args.detector]["finetune_config"]

    def finetune_dir(self, args, dataset, arm, seed):
        return os.path.join(args.output_root, f"{args.detector}_{arm}_seed{seed}")

    def trunk_prefixes_of(self, args, arm):
        return DETECTORS[args.detector]["trunk_prefixes"].get(arm, ())

    def settings(self, args):
        return {"detector": args.detector, "seeds": args.seeds, "quick": args.quick, "arms": self.labels(args.arms),
                "finetune_config": self.finetune_config_of(args, "synthetic"), "output_root": rel(args.output_root)}

    def result_fields(self, result):
        return {"bar": bar(result["summary"])}

    def report(self, result, args, minutes):
        b = result["bar"]
        return ["", f"AlignDet - SoCo backbone box AP (paired): {fmt(b['paired_gain_mean'])} +- "
                    f"{fmt(b['paired_gain_std'])}; gain > 2 std: {b['met']}", self.invocation_line(args, minutes)]


STUDY = AlignDetStudy()
parse_args, main = STUDY.parse_args, STUDY.main

if __name__ == "__main__":
    sys.exit(main())
