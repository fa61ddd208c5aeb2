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
import argparse
import os
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402
from aligndet import DEFAULT_SOCO_TRUNK, backbone_only, soco_trunk  # noqa: E402  (the SoCo arm)
from harness import (  # noqa: E402
    REPO_ROOT, config_max_iter, fmt, new_result, rel, resolve_output_paths, run_finetuning,
    run_pretraining, scaled_schedule, write_json,
)
from transfer import prepare_data  # noqa: E402  (the embedded scenes and their proposals)

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
COMMON_FINETUNE_OPTS = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1"]
QUICK = {"montage_iters": 3, "finetune_iters": 4, "precise_bn_iters": 2,
         "test_set": '("soco_synthetic_det_val_20",)'}


# ------------------------------------------------------------------------------ pretraining
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


def pretrain(args, arm: str, trunk: str) -> dict:
    output_dir = os.path.join(args.output_root, f"pretrain_{arm}")
    return run_pretraining(f"[{arm}]", {"method": ARMS[arm]}, PRETRAIN[arm]["config"],
                           pretrain_opts(args, arm, output_dir, trunk), output_dir, args.keep_checkpoints)


# ------------------------------------------------------------------------------- fine-tuning
def finetune_max_iter(args) -> int:
    iters = QUICK["finetune_iters"] if args.quick else args.finetune_iters
    return iters or config_max_iter(FINETUNE_CONFIG)


def finetune_opts(args, arm: str, seed: int, weights: dict, output_dir: str) -> list:
    opts = ["MODEL.WEIGHTS", rel(weights[arm]) if weights.get(arm) else ""] + list(COMMON_FINETUNE_OPTS)
    if args.detection_set != "low_label":  # the config fine-tunes on the low-label set
        opts += ["DATASETS.TRAIN", f'("{DETECTION_SETS[args.detection_set]["train"]}",)']
    iters = QUICK["finetune_iters"] if args.quick else args.finetune_iters
    if iters:  # the config's schedule (warmup 20 of 200, step at 150) scaled
        opts += scaled_schedule(iters, 0.1, (0.75,))
    if args.quick:  # a smoke test: evaluated on 20 val scenes
        opts += ["TEST.PRECISE_BN.NUM_ITER", str(QUICK["precise_bn_iters"]), "DATASETS.TEST", QUICK["test_set"]]
    return opts + ["SEED", str(seed), "OUTPUT_DIR", rel(output_dir)]


def finetune(args, arm: str, seed: int, weights: dict) -> dict:
    output_dir = os.path.join(args.output_root, f"faster_rcnn_{arm}_seed{seed}")
    return run_finetuning(
        f"[{arm} seed {seed}]", {"dataset": "synthetic", "arm": arm, "seed": seed}, FINETUNE_CONFIG,
        finetune_opts(args, arm, seed, weights, output_dir), output_dir, finetune_max_iter(args),
        args.keep_checkpoints, pretrained=arm != "random", trunk_prefixes=TRUNK_PREFIXES.get(arm, ()),
    )


# --------------------------------------------------------------------------------- summary
def summarize(runs, arms) -> dict:
    """harness.summarize against random, plus the paired montage - soco difference."""
    summary = harness.summarize(runs, {a: ARMS[a] for a in arms})
    if "montage" in arms and "soco" in arms:
        versus = harness.summarize(runs, {"soco": ARMS["soco"], "montage": ARMS["montage"]})
        for name, entry in versus.items():
            summary[name]["delta_montage_minus_soco"] = entry["delta_montage_minus_soco"]
    return summary


def format_table(summary: dict, arms) -> str:
    """Box AP only (Faster R-CNN has no masks): one row per arm, one per paired difference."""
    lines = [f"{'init':<34} {'n':>2}  {'box AP':>15}  {'box AP50':>15}", "-" * 70]
    for entry in summary.values():
        for arm in arms:
            it = entry[arm]
            lines.append(f"{ARMS[arm] + ' init':<34} {it['n']:>2}  "
                         f"{fmt(it['bbox_AP']['mean']):>6} ± {fmt(it['bbox_AP']['std']):>5}  "
                         f"{fmt(it['bbox_AP50']['mean']):>6} ± {fmt(it['bbox_AP50']['std']):>5}")
        for key, d in entry.items():
            if key.startswith("delta_"):
                a, b = key[len("delta_"):].split("_minus_")
                mean = d["bbox_AP"]["mean"]
                lines.append(f"{ARMS[a] + ' - ' + ARMS[b] + ' (paired)':<34} {d['n']:>2}  "
                             f"{'-' if mean is None else f'{mean:+6.2f}':>6} ± {fmt(d['bbox_AP']['std']):>5}")
    lines.append("COCO box AP in percent on the val scenes; mean ± sample std over seeds.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS,
                   help="arms to run, random first (default: %(default)s)")
    p.add_argument("--soco-trunk", default=DEFAULT_SOCO_TRUNK,
                   help="the SoCo CPU trunk: its ResNet is the soco arm; montage_free's init (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="fine-tuning seeds, each run in every arm (default: 0 1 2; --quick: 0)")
    p.add_argument("--detection-set", choices=list(DETECTION_SETS), default="low_label",
                   help="labelled scenes that Montage pretrains on and every arm fine-tunes on: "
                        "low_label = the first 100, full = all 2000 (default: %(default)s)")
    p.add_argument("--montage-iters", type=int, default=None,
                   help="Montage pretraining iterations at batch 16 (default: 300 low_label, 1000 full)")
    p.add_argument("--finetune-iters", type=int, default=0,
                   help="fine-tuning iterations at batch 8 (default: the config's 200)")
    p.add_argument("--output-root", default=None,
                   help="folder of all runs (default: output/montage_bench, output/montage_bench_quick with --quick)")
    p.add_argument("--out", default=None, help="JSON file for the results (default: OUTPUT_ROOT/montage.json)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK['montage_iters']} pretraining and {QUICK['finetune_iters']} "
                        "fine-tuning iterations, seed 0, evaluated on 20 val scenes")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every checkpoint")
    args = p.parse_args(argv)
    if args.arms[0] != "random":
        p.error("--arms: the first arm must be random (the baseline of the paired differences)")
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    if args.montage_iters is None:
        args.montage_iters = DETECTION_SETS[args.detection_set]["montage_iters"]
    if args.output_root is None and args.detection_set != "low_label":
        args.output_root = f"output/montage_bench_{args.detection_set}" + ("_quick" if args.quick else "")
    resolve_output_paths(args, "montage")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO_ROOT)  # train_net.py, configs and datasets/ are relative to the repo root
    started = time.time()
    result = new_result(
        "montage", argv,
        settings={"arms": {a: ARMS[a] for a in args.arms}, "seeds": args.seeds, "quick": args.quick,
                  "detection_set": args.detection_set,
                  "finetune_train": DETECTION_SETS[args.detection_set]["train"],
                  "montage_iters": QUICK["montage_iters"] if args.quick else args.montage_iters,
                  "finetune_config": FINETUNE_CONFIG, "finetune_iters": finetune_max_iter(args),
                  "output_root": rel(args.output_root)},
        pretraining={},
        runs=[],
    )

    def save():
        result["summary"] = summarize(result["runs"], args.arms) if result["runs"] else {}
        result["wall_s_this_invocation"] = round(time.time() - started, 1)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, result)

    prepare_data("synthetic")
    weights = {}
    trunk = soco_trunk(args) if {"soco", "montage_free"} & set(args.arms) else ""
    if "soco" in args.arms:
        weights["soco"] = backbone_only(trunk, os.path.join(args.output_root, "soco_backbone.pth"))
        result["pretraining"]["soco"] = {"trunk": rel(trunk), "weights": rel(weights["soco"])}
    for arm in ("montage", "montage_free"):
        if arm in args.arms:
            result["pretraining"][arm] = pre = pretrain(args, arm, trunk)
            weights[arm] = os.path.join(REPO_ROOT, pre["trunk"])
            save()
    for seed in args.seeds:  # arms interleaved: partial results stay paired
        for arm in args.arms:
            result["runs"].append(finetune(args, arm, seed, weights))
            save()

    save()
    print()
    print(format_table(result["summary"], args.arms))
    print(f"\nThis invocation: {(time.time() - started) / 60:.1f} min. JSON: {rel(args.out)}")
    return 1 if any(r.get("failed") for r in result["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
