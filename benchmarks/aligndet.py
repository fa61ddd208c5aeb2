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
import argparse
import os
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402
from harness import (  # noqa: E402
    REPO_ROOT, config_max_iter, keep_prefixes, log, missing_trunk_keys, new_result, paired_gain_bar, rel,
    resolve_output_paths, run_finetuning, run_pretraining, scaled_schedule, write_json,
)
from transfer import prepare_data  # noqa: E402  (the embedded scenes and their proposals)

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
COMMON_FINETUNE_OPTS = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1"]
QUICK = {"soco_iters": 3, "aligndet_iters": 2, "finetune_iters": 4, "precise_bn_iters": 2}


# ------------------------------------------------------------------------------ schedules
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


def pretrain_aligndet(args, trunk: str) -> dict:
    """AlignDet on top of the SoCo trunk; its record says which SoCo keys did not load."""
    spec = DETECTORS[args.detector]
    output_dir = os.path.join(args.output_root, f"aligndet_{args.detector}")
    record = run_pretraining(f"[aligndet {args.detector}]", {"method": "AlignDet", "soco_trunk": rel(trunk)},
                             spec["pretrain_config"], aligndet_opts(args, trunk, output_dir), output_dir,
                             args.keep_checkpoints)
    _, not_loaded = missing_trunk_keys(output_dir, spec["trunk_prefixes"]["soco"])
    record["soco_keys_not_loaded"] = not_loaded
    if not_loaded:
        log(f"WARNING: the AlignDet model did not load these SoCo trunk keys (shapes differ?): {not_loaded}")
    return record


# ------------------------------------------------------------------------------- fine-tuning
def finetune_opts(args, arm: str, seed: int, weights: dict, output_dir: str):
    opts = ["MODEL.WEIGHTS", rel(weights[arm]) if weights.get(arm) else ""] + list(COMMON_FINETUNE_OPTS)
    iters = QUICK["finetune_iters"] if args.quick else args.finetune_iters
    if iters:  # the configs' schedule (warmup 20 of 200, step at 150) scaled
        opts += scaled_schedule(iters, 0.1, (0.75,))
    if args.quick:  # and 20 instead of 100 test proposals: the 4conv head dominates inference
        opts += ["TEST.PRECISE_BN.NUM_ITER", str(QUICK["precise_bn_iters"]),
                 "MODEL.RPN.POST_NMS_TOPK_TEST", "20"]
    return opts + ["SEED", str(seed), "OUTPUT_DIR", rel(output_dir)]


def finetune_max_iter(args, config_file: str) -> int:
    iters = QUICK["finetune_iters"] if args.quick else args.finetune_iters
    return iters or config_max_iter(config_file)


def finetune(args, arm: str, seed: int, weights: dict) -> dict:
    spec = DETECTORS[args.detector]
    config = args.finetune_config or spec["finetune_config"]
    output_dir = os.path.join(args.output_root, f"{args.detector}_{arm}_seed{seed}")
    return run_finetuning(
        f"[{arm} seed {seed}]", {"dataset": "synthetic", "arm": arm, "seed": seed}, config,
        finetune_opts(args, arm, seed, weights, output_dir), output_dir, finetune_max_iter(args, config),
        args.keep_checkpoints, pretrained=arm != "random", trunk_prefixes=spec["trunk_prefixes"].get(arm, ()),
    )


# --------------------------------------------------------------------------------- summary
def bar(summary: dict) -> dict:
    """The issue's bar: the paired AlignDet - SoCo backbone box-AP gain exceeds 2 of its std."""
    return paired_gain_bar(summary, "synthetic", "delta_aligndet_minus_soco_backbone")


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--soco-trunk", default=DEFAULT_SOCO_TRUNK,
                   help="the SoCo CPU trunk: its ResNet is the soco_backbone arm; MODEL.WEIGHTS of the soco arm "
                        "and of AlignDet (default: %(default)s)")
    p.add_argument("--detector", choices=list(DETECTORS), default="faster_rcnn")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS,
                   help="arms to run; soco_backbone (the baseline) is always run (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="fine-tuning seeds, each run in every arm (default: 0 1 2; --quick: 0)")
    p.add_argument("--aligndet-iters", type=int, default=0,
                   help="AlignDet pretraining iterations at batch 16 (default: the config's 160)")
    p.add_argument("--aligndet-opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="config overrides of the AlignDet pretraining run (ablations, e.g. SOLVER.BASE_LR 0.02)")
    p.add_argument("--finetune-iters", type=int, default=0,
                   help="fine-tuning iterations at batch 8 (default: the config's 200)")
    p.add_argument("--finetune-config", default=None,
                   help="fine-tuning config of every arm (default: the detector's *_synthetic_aligndet.yaml)")
    p.add_argument("--output-root", default=None,
                   help="folder of all runs (default: output/aligndet_bench, output/aligndet_bench_quick with --quick)")
    p.add_argument("--out", default=None, help="JSON file for the results (default: OUTPUT_ROOT/aligndet.json)")
    p.add_argument("--quick", action="store_true", help="smoke test of the pipeline (see the module docstring)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every checkpoint")
    args = p.parse_args(argv)
    if len(args.aligndet_opts) % 2:
        p.error(f"--aligndet-opts takes KEY VALUE pairs, got {len(args.aligndet_opts)} words")
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    args.arms = {arm: ARMS[arm] for arm in ARMS if arm in args.arms or arm == "soco_backbone"}
    resolve_output_paths(args, "aligndet")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO_ROOT)  # train_net.py, configs and datasets/ are relative to the repo root
    started = time.time()
    result = new_result(
        "aligndet", argv,
        settings={"detector": args.detector, "seeds": args.seeds, "quick": args.quick, "arms": args.arms,
                  "finetune_config": args.finetune_config or DETECTORS[args.detector]["finetune_config"],
                  "output_root": rel(args.output_root)},
        pretraining={},
        runs=[],
    )

    def save():
        result["summary"] = harness.summarize(result["runs"], args.arms) if result["runs"] else {}
        result["bar"] = bar(result["summary"])
        result["wall_s_this_invocation"] = round(time.time() - started, 1)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, result)

    prepare_data("synthetic")
    trunk = soco_trunk(args)
    result["pretraining"]["aligndet"] = pre = pretrain_aligndet(args, trunk)
    save()
    weights = {"soco_backbone": backbone_only(trunk, os.path.join(args.output_root, "soco_backbone.pth")),
               "soco": trunk, "aligndet": os.path.join(REPO_ROOT, pre["trunk"])}
    if "aligndet_no_box_head" in args.arms:
        weights["aligndet_no_box_head"] = keep_prefixes(
            weights["aligndet"], os.path.join(args.output_root, "aligndet_no_box_head.pth"),
            DETECTORS[args.detector]["trunk_prefixes"]["aligndet_no_box_head"])
    for seed in args.seeds:  # arms interleaved: partial results stay paired
        for arm in args.arms:
            result["runs"].append(finetune(args, arm, seed, weights))
            save()

    save()
    print()
    print(harness.format_table(result["summary"], args.arms))
    b = result["bar"]
    print(f"\nAlignDet - SoCo backbone box AP (paired): {harness.fmt(b['paired_gain_mean'])} +- "
          f"{harness.fmt(b['paired_gain_std'])}; gain > 2 std: {b['met']}")
    print(f"This invocation: {(time.time() - started) / 60:.1f} min. JSON: {rel(args.out)}")
    return 1 if any(r.get("failed") for r in result["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
