#!/usr/bin/env python
"""SimDETR on real photographs: does SoCo -> SimDETR beat random init, SoCo and SoCo -> AlignDet
when Faster R-CNN R18-FPN is fine-tuned on the Aquarium train photos and evaluated on Aquarium
valid, paired by fine-tuning seed? The real-photo study (benchmarks/real.py) with SimDETR's arms.

    python benchmarks/simdetr.py                        # every arm, seeds 0 1 2, the bars
    python benchmarks/simdetr.py --arms random soco simdetr2
    python benchmarks/simdetr.py --quick --seeds 0      # smoke test of the pipeline, minutes
    python benchmarks/simdetr.py --output-root output/real_bench   # reuse benchmarks/real.py's runs

Arms (they differ ONLY in MODEL.WEIGHTS of configs/transfer/faster_rcnn_R18_FPN_aquarium.yaml):

- ``random``, ``soco``, ``aligndet``: as in benchmarks/real.py (SoCo on the Imagenette train
  photos; AlignDet's FPN, RPN and box head on the Aquarium train photos without labels).
- ``simdetr1`` / ``simdetr2``: SoCo's ResNet, then the whole detector pretrained by SimDETR
  (configs/simdetr/simdetr_R18_FPN_aquarium_cpu.yaml) on the Aquarium train photos WITHOUT their
  labels, 1 or 2 rounds: round 0 on the semantic proposals of the SoCo trunk with 32 k-means
  pseudo-classes, round 1 on its own confident detections. Its whole trunk (ResNet, FPN, RPN,
  box head) is handed on. The 2-round run continues the 1-round run's final state (its first
  round is that run), so its pretraining time is both runs'.
- ``simdetr2_score01`` (an ablation, not run by default): ``simdetr2`` with the self-training
  score threshold at 0.1 instead of 0.3 (MODEL.SIMDETR.SCORE_THRESH), so that the round-0
  detector relabels the images where none of its detections reaches 0.3 (about half of them)
  instead of leaving them their round-0 boxes. It continues the same 1-round run.

Before the SimDETR pretrainings, the semantic proposals of the Aquarium train photos are made
from the SoCo trunk (tools/generate_proposals.py --from-features, OUTPUT_ROOT/
semantic_proposals_train.pkl), and the recall@0.5 of both proposal kinds is measured against
the labelled boxes of Aquarium valid and of ../shared/data/coco_sample
(benchmarks/proposal_recall.py, OUTPUT_ROOT/recall_*.json; the labels are read only to score).

Bars (the SimDETR issue): each SimDETR arm - random > 2 standard deviations of the paired
difference (``simdetr_bars``); its paired differences against SoCo and SoCo -> AlignDet are in
the table. SoCo's own bar (benchmarks/real.py's) is kept as ``bar``. Resumable like every study.
"""
import dataclasses
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402
from harness import Pretraining, fmt, log, read_json, rel, run_logged  # noqa: E402
from real import RealStudy  # noqa: E402

SIMDETR_CONFIG = "configs/simdetr/simdetr_R18_FPN_aquarium_cpu.yaml"
#: Each SimDETR arm's keys beyond the config, and the arm whose finished run is its first round.
SIMDETR_RUNS = {"simdetr1": (("MODEL.SIMDETR.ROUNDS", "1"), None),
                "simdetr2": (("MODEL.SIMDETR.ROUNDS", "2"), "simdetr1"),
                "simdetr2_score01": (("MODEL.SIMDETR.ROUNDS", "2", "MODEL.SIMDETR.SCORE_THRESH", "0.1"), "simdetr1")}
SIMDETR_ARMS = tuple(SIMDETR_RUNS)
PROPOSALS = "semantic_proposals_train.pkl"
DATASET = "aquarium_train_semantic_bench"
# The proposal recall beside the table: {name in the report: (json, image root) under ../shared/data}.
RECALL_SETS = {"Aquarium valid": ("aquarium/instances_valid.json", "aquarium"),
               "COCO sample": ("coco_sample/instances.json", "coco_sample/images")}
QUICK_RECALL_IMAGES = 10


class SimDETRStudy(RealStudy):
    name = "simdetr"
    description = __doc__
    arms = {"random": "random", "soco": "SoCo", "aligndet": "SoCo -> AlignDet",
            "simdetr1": "SoCo -> SimDETR 1 round", "simdetr2": "SoCo -> SimDETR 2 rounds",
            "simdetr2_score01": "SoCo -> SimDETR 2 rounds, score >= 0.1"}
    default_arms = [arm for arm in arms if arm != "simdetr2_score01"]  # the arms; the ablation on request
    pretrainings = {
        "soco": RealStudy.pretrainings["soco"],
        "aligndet": RealStudy.pretrainings["aligndet"],
        # The 2-round run continues the 1-round one: its first round IS that run (same config,
        # the lr schedule restarts with each round), so round 0 is trained once per study.
        **{arm: Pretraining(SIMDETR_CONFIG, opts=opts, start_from="soco", quick_opts=RealStudy._quick_probe,
                            continues=continues) for arm, (opts, continues) in SIMDETR_RUNS.items()},
    }
    arm_weights = {"soco": "soco", "aligndet": "aligndet", **{arm: arm for arm in SIMDETR_ARMS}}
    trunk_prefixes = dict(RealStudy.trunk_prefixes,
                          **{arm: ("backbone.", "proposal_generator.", "roi_heads.box_head.") for arm in SIMDETR_ARMS})
    paired = tuple((arm, other) for arm in SIMDETR_ARMS for other in ("soco", "aligndet")) + (
        ("simdetr2", "simdetr1"), ("aligndet", "soco"), ("simdetr2_score01", "simdetr2"), ("simdetr2_score01", "simdetr1"))

    # ------------------------------------------------------------------ pretraining
    def weights(self, run, dataset):
        if any(arm in run.args.arms for arm in SIMDETR_ARMS):
            proposals = self.semantic_proposals(run)
            from soco_d2.data.builtin import shared_data_dir

            aquarium = shared_data_dir("aquarium")
            register = ["DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.SOCO_REGISTER",
                        f"[('{DATASET}', '{rel(aquarium)}', '{rel(proposals)}', "
                        f"'{rel(os.path.join(aquarium, 'instances_train.json'))}')]"]
            self.pretrainings = {key: dataclasses.replace(spec, opts=tuple(spec.opts) + tuple(register))
                                 if key in SIMDETR_ARMS else spec for key, spec in type(self).pretrainings.items()}
        return super().weights(run, dataset)

    def semantic_proposals(self, run) -> str:
        """The SoCo trunk (its pretraining run or reused), then its semantic proposals of the
        Aquarium train photos and the recall of both proposal kinds; the proposal file."""
        from soco_d2.data.builtin import shared_data_dir

        args = run.args
        arms, args.arms = args.arms, ["soco"]
        try:
            soco = harness.Study.weights(self, run, "aquarium")["soco"]
        finally:
            args.arms = arms
        output = os.path.join(args.output_root, PROPOSALS)
        aquarium = shared_data_dir("aquarium")
        log(f"semantic proposals of the SoCo trunk: {rel(output)}")
        cmd = [sys.executable, "tools/generate_proposals.py", "--coco-json", os.path.join(aquarium, "instances_train.json"),
               "--image-root", aquarium, "--output", output, "--from-features", soco, "--feature-min-size", "384",
               "--no-progress"]
        rc, wall = run_logged(cmd, output + ".log")
        if rc:
            raise SystemExit(f"tools/generate_proposals.py failed (exit {rc}); see {rel(output)}.log")
        run.result["semantic_proposals"] = {"file": rel(output), "command": ["python"] + cmd[1:], "wall_s": round(wall, 1)}
        run.result["proposal_recall"] = self.proposal_recall(run, soco)
        run.save()
        return output

    def proposal_recall(self, run, trunk: str) -> dict:
        """benchmarks/proposal_recall.py on each recall set: ``{set: {kind: figures}}``."""
        from soco_d2.data.builtin import shared_data_dir

        args, out = run.args, {}
        for label, (json_file, root) in RECALL_SETS.items():
            path = os.path.join(args.output_root, f"recall_{label.lower().replace(' ', '_')}.json")
            cmd = [sys.executable, "benchmarks/proposal_recall.py", "--coco-json", shared_data_dir(json_file),
                   "--image-root", shared_data_dir(root), "--out", path, "--from-features", trunk,
                   "--feature-min-size", "384"] + (["--limit", str(QUICK_RECALL_IMAGES)] if args.quick else [])
            log(f"proposal recall on {label}")
            rc, _ = run_logged(cmd, path[:-5] + ".log")
            done = read_json(path)
            if rc or done is None:
                raise SystemExit(f"benchmarks/proposal_recall.py failed (exit {rc}); see {rel(path)[:-5]}.log")
            out[label] = done["results"]
        return out

    # ------------------------------------------------------------------ results
    def result_fields(self, result):
        fields = super().result_fields(result)
        summary = result["summary"].get("aquarium", {})
        bars = {arm: harness.paired_gain_bar(result["summary"], "aquarium", f"delta_{arm}_minus_random")
                for arm in SIMDETR_ARMS if f"delta_{arm}_minus_random" in summary}
        if bars:
            fields["simdetr_bars"] = bars
        return fields

    def report(self, result, args, minutes):
        lines = []
        for arm, bar in (result.get("simdetr_bars") or {}).items():
            if bar.get("paired_gain_mean") is not None:
                lines.append(f"{self.arms[arm]} - random box AP (paired) {bar['paired_gain_mean']:+.2f} +- "
                             f"{fmt(bar['paired_gain_std'])}; > 2 std: {bar['met']}")
        for label, kinds in (result.get("proposal_recall") or {}).items():
            lines.append(f"recall@0.5 on {label}: " + ", ".join(
                f"{kind} {r['recall_at_0_5']:.3f} (SoCo-filter-sized boxes {r['recall_filtered_at_0_5']:.3f}, "
                f"{r['proposals_per_image']:.0f}/image)" for kind, r in kinds.items()))
        return lines + super().report(result, args, minutes)


STUDY = SimDETRStudy()
parse_args, main = STUDY.parse_args, STUDY.main

if __name__ == "__main__":
    sys.exit(main())
