#!/usr/bin/env python
"""SoCo's transfer benchmark: a detector fine-tuned from random init vs from the SoCo trunk.

    python benchmarks/transfer.py                                   # synthetic, the issue's bar
    python benchmarks/transfer.py --datasets synthetic coco_sample  # + the coco_sample table
    python benchmarks/transfer.py --quick --seeds 0                 # smoke test, minutes
    python benchmarks/transfer.py --arms random soco supervised     # + the supervised reference

For every dataset, the two arms differ ONLY in MODEL.WEIGHTS: ``""`` (random init) or the trunk
(backbone + FPN + 4conv1fc box head) that SoCo pretraining exported as ``model_final_trunk.pth``.
Schedule, inputs, test settings and fine-tuning seeds are the same, and a given seed also gives
both arms the same initial RPN / box predictor and the same data order (Detectron2 seeds
everything from SEED before the model is built). Pretraining uses NO labels:

- ``synthetic`` (the low-label setting of the evidence issue): SoCo pretraining with the CPU
  recipe ``configs/soco/soco_demo_synthetic.yaml`` (the ``make demo`` run) on the 2000 train
  scenes without labels; fine-tuning ``configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml``
  (Faster R-CNN R18-FPN) on the first 100 of them WITH labels (``soco_synthetic_det_train_100``),
  evaluated on the 200 val scenes. Bar: SoCo - random >= 3 box AP, paired over the seeds,
  and greater than 2 standard deviations of the paired difference.
- ``coco_sample``: ../shared/data/coco_sample split 80/20 by image id (ids sorted ascending,
  every 5th one to val; the fixed rule of soco_d2/data/coco_sample.py). The same SoCo recipe on
  the 80 train images (``coco_sample_soco``), fine-tuning
  ``configs/transfer/faster_rcnn_R18_FPN_coco_sample.yaml``, evaluated on the 20 val images.
  Reported, no bar: 80 images and minutes of CPU are far from the regime the paper measures.

``supervised`` (synthetic only, with ``--arms``): a reference, not a method. The same Faster
R-CNN trained WITH labels on all 2000 train scenes (``soco_synthetic_det_train``, 300 iterations,
seed 0), its backbone, FPN and box head (the parts the SoCo arm takes) then fine-tuned like the
other arms. It answers the question the SoCo arm cannot answer alone: can a pretrained trunk beat
random init at this fine-tuning budget at all, and by how much, when it has learnt the shapes?

One pretraining per dataset (seed 0) is shared by all fine-tuning seeds (default 0, 1, 2). Each
config's own schedule is used unless ``--pretrain-iters`` / ``--finetune-iters`` scale it.
``--quick`` (3 pretraining and 4 fine-tuning iterations, the synthetic run evaluated on the first
20 val scenes) is a smoke test of the pipeline; its numbers mean nothing.

This file declares the study (datasets, configs, arms, the bar); ``benchmarks/harness.py`` runs
it. Every step is ``train_net.py`` run as a subprocess, i.e. exactly what a user runs; the JSON
holds each command. The benchmark is resumable: a run whose output folder holds its result is
reused, an interrupted one continues from its last checkpoint (``--resume``), and missing data
(synthetic scenes, split jsons, proposals) and pretrainings are prepared first. Reusing a folder
made with different settings is refused. Fine-tuning checkpoints are deleted once the result is
recorded and so are the intermediate pretraining checkpoints (``--keep-checkpoints`` keeps them
all); ``model_final.pth`` and ``model_final_trunk.pth`` of each pretraining are kept.

Reported: COCO box AP (percent, pycocotools on the val split) per run, and per dataset and arm
mean +- sample std over seeds, the paired (same seed) SoCo - random difference, and the probe of
each pretraining (its ``probe.json``: first and last kNN accuracy) beside them. A run with no
detection at all, which Detectron2 reports as NaN AP, counts as 0 AP in the summary (it is
flagged in the JSON and the table).
"""
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402
from harness import (  # noqa: E402
    REPO_ROOT, fmt, paired_gain_bar, probe_summary, rel, scaled_schedule, supervised_reference,
)

# Arm -> its name in tables; the first arm is the baseline the others are paired with.
ARMS = {"random": "random", "soco": "SoCo", "supervised": "supervised reference"}
DEFAULT_ARMS = ["random", "soco"]
WEIGHTS_DESCRIPTION = {"random": 'MODEL.WEIGHTS ""', "soco": "MODEL.WEIGHTS <pretraining>/model_final_trunk.pth",
                       "supervised": "MODEL.WEIGHTS <dataset>/supervised_trunk.pth (trained with labels)"}
# State_dict prefixes of the SoCo trunk in these FPN detectors: all must load in the SoCo arm.
TRUNK_PREFIXES = ("backbone.", "roi_heads.box_head.")

# Per dataset: the configs, what the benchmark overrides, and the bar (None: reported only).
DATASETS = {
    "synthetic": {
        "pretrain_config": "configs/soco/soco_demo_synthetic.yaml",
        "pretrain_opts": ["DATASETS.TRAIN", '("soco_synthetic_train",)'],
        "finetune_config": "configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml",
        "quick_opts": ["DATASETS.TEST", '("soco_synthetic_det_val_20",)'],
        "min_gain": 3.0,
        # The supervised reference arm: labelled train set and iterations at batch 8.
        "supervised": {"train": '("soco_synthetic_det_train",)', "iters": 300},
    },
    "coco_sample": {
        "pretrain_config": "configs/soco/soco_demo_synthetic.yaml",
        # 80 classes on 20 val images: the probe would be noise; the synthetic one stays.
        "pretrain_opts": ["DATASETS.TRAIN", '("coco_sample_soco",)', "TEST.PROBE.DATASET", ""],
        "finetune_config": "configs/transfer/faster_rcnn_R18_FPN_coco_sample.yaml",
        "quick_opts": [],
        "min_gain": None,
        "supervised": None,  # no labelled set beyond the 80 train images
    },
}

# Both arms, both datasets. Precision is the configs' (SOLVER.AMP on CPU is bf16 only where the
# CPU runs it natively, soco_d2/engine/precision.py).
COMMON_FINETUNE_OPTS = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1"]
QUICK = {"pretrain_iters": 3, "finetune_iters": 4, "precise_bn_iters": 2}


# ------------------------------------------------------------------------------ pretraining
def pretrain_opts(name: str, args, output_dir: str):
    opts = list(DATASETS[name]["pretrain_opts"]) + [
        "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1", "SEED", "0", "OUTPUT_DIR", rel(output_dir),
    ]
    iters = QUICK["pretrain_iters"] if args.quick else args.pretrain_iters
    if iters:  # the recipe's shape (10% warmup, then cosine) at another length
        opts += ["SOLVER.WARMUP_EPOCHS", "0"] + scaled_schedule(iters, 0.1, ())
    if args.quick:
        opts += ["TEST.PROBE.PERIOD", "0", "TEST.PROBE.MAX_IMAGES", "10"]
    return opts


def supervised_trunk(name: str, args) -> tuple:
    """The supervised reference: the fine-tuning detector trained with labels on the whole train
    set of ``name``; returns (its run record, its trunk: the keys of TRUNK_PREFIXES)."""
    spec = DATASETS[name]["supervised"]
    output_dir = os.path.join(args.output_root, name, "supervised_pretrain")
    trunk = os.path.join(args.output_root, name, "supervised_trunk.pth")
    iters = QUICK["pretrain_iters"] if args.quick else spec["iters"]
    opts = (["MODEL.WEIGHTS", "", "DATASETS.TRAIN", spec["train"]] + COMMON_FINETUNE_OPTS
            + scaled_schedule(iters, 0.1, (0.75,)))
    if args.quick:
        opts += STUDY.quick_finetune_opts(args, name)
    opts += ["SEED", "0", "OUTPUT_DIR", rel(output_dir)]
    record = supervised_reference(f"[{name} supervised reference]", {"dataset": name, "arm": "supervised_pretrain"},
                                  DATASETS[name]["finetune_config"], opts, output_dir, trunk, TRUNK_PREFIXES,
                                  iters, args.keep_checkpoints)
    record.pop("trunk")  # the JSON's supervised_reference record as before
    return record, trunk


# --------------------------------------------------------------------------------- summary
def bars(summary: dict) -> dict:
    """Per dataset with a bar: is SoCo - random >= its minimum gain and > 2 std (paired)?"""
    return {name: paired_gain_bar(summary, name, "delta_soco_minus_random", spec["min_gain"])
            for name, spec in DATASETS.items() if spec["min_gain"] is not None and name in summary}


def recorded_walls(result: dict) -> tuple:
    """(pretraining, fine-tuning) wall seconds recorded, reused runs included."""
    return (sum(p.get("wall_s") or 0 for p in result["pretraining"].values()),
            sum(r.get("wall_s") or 0 for r in result["runs"]))


# -------------------------------------------------------------------------------- the study
class TransferStudy(harness.Study):
    name = "transfer"
    description = __doc__
    datasets = list(DATASETS)
    arms = ARMS
    default_arms = DEFAULT_ARMS
    common_finetune_opts = COMMON_FINETUNE_OPTS
    quick_finetune_iters = QUICK["finetune_iters"]
    trunk_prefixes = dict.fromkeys(ARMS, TRUNK_PREFIXES)
    help = {
        "arms": "arms, random first (the baseline of the paired differences); supervised is the "
                "labelled reference, synthetic only (default: %(default)s)",
        "finetune_iters": "fine-tuning iterations instead of each config's (its shape scaled)",
        "quick": f"smoke test: {QUICK['pretrain_iters']} pretraining and {QUICK['finetune_iters']} "
                 "fine-tuning iterations",
    }

    def add_arguments(self, parser):
        parser.add_argument("--pretrain-iters", type=int, default=0,
                            help="pretraining iterations instead of the recipe's (its shape scaled)")

    def check_args(self, parser, args):
        if "supervised" in args.arms and any(DATASETS[d]["supervised"] is None for d in args.datasets):
            parser.error("--arms supervised: the supervised reference exists for the synthetic scenes only")

    def weights(self, run, name):
        """SoCo pretraining on the train images of ``name`` (and the supervised reference)."""
        output_dir = os.path.join(run.args.output_root, name, "pretrain")
        pre = run.pretrain(name, DATASETS[name]["pretrain_config"], pretrain_opts(name, run.args, output_dir),
                           output_dir, tag=f"[{name}]", labels={"dataset": name})
        weights = {"soco": os.path.join(REPO_ROOT, pre["trunk"])}
        if "supervised" in run.args.arms:
            run.result["supervised_reference"], weights["supervised"] = supervised_trunk(name, run.args)
            run.save()
        return weights

    def finetune_config_of(self, args, name):
        return DATASETS[name]["finetune_config"]

    def quick_finetune_opts(self, args, name):
        return DATASETS[name]["quick_opts"] + ["TEST.PRECISE_BN.NUM_ITER", str(QUICK["precise_bn_iters"])]

    def settings(self, args):
        return {
            "datasets": args.datasets,
            "seeds": args.seeds,
            "arms": {arm: WEIGHTS_DESCRIPTION[arm] for arm in args.arms},
            "quick": args.quick,
            "output_root": rel(args.output_root),
            "common_finetune_overrides": COMMON_FINETUNE_OPTS,
            "per_dataset": {
                name: {
                    "pretrain_config": DATASETS[name]["pretrain_config"],
                    "pretrain_overrides": pretrain_opts(name, args, os.path.join(args.output_root, name, "pretrain")),
                    "finetune_config": DATASETS[name]["finetune_config"],
                    "finetune_iters": self.finetune_schedule(args, name)[0],
                    "finetune_schedule_overrides": self.finetune_schedule(args, name)[1],
                    "min_gain": DATASETS[name]["min_gain"],
                }
                for name in args.datasets
            },
        }

    def result_fields(self, result):
        return {"bars": bars(result["summary"]), "probes": probe_summary(result["pretraining"])}

    def final_fields(self, result):
        return {"wall_s_total_recorded": round(sum(recorded_walls(result)), 1)}

    def report(self, result, args, minutes):
        lines = [f"{name}: SoCo - random box AP (paired) {fmt(b['paired_gain_mean'])} +- "
                 f"{fmt(b['paired_gain_std'])}; >= {b['min_gain']} and > 2 std: {b['met']}"
                 for name, b in result["bars"].items()]
        lines += [f"{name}: probe kNN (head) during pretraining {p['first']['knn_head']:.3f} (iteration "
                  f"{p['first']['iteration']}) -> {p['last']['knn_head']:.3f} (iteration {p['last']['iteration']})"
                  for name, p in result["probes"].items()]
        pre_wall, run_wall = recorded_walls(result)
        return lines + [f"\nPretraining wall: {pre_wall / 60:.1f} min, fine-tuning wall: {run_wall / 60:.1f} min "
                        f"(recorded, reused runs included); this invocation: {minutes:.1f} min",
                        f"JSON: {rel(args.out)}"]


STUDY = TransferStudy()
parse_args, main = STUDY.parse_args, STUDY.main

if __name__ == "__main__":
    sys.exit(main())
