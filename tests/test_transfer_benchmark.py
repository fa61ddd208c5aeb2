"""benchmarks/transfer.py without training: commands, schedule, result parsing, summary."""
import json
import math
import os

import pytest

from train_helpers import load_script



@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/transfer.py", "transfer_bench")


def _opts_dict(opts):
    return dict(zip(opts[::2], opts[1::2]))


def test_arms_differ_only_in_weights(bench, tmp_path):
    args = bench.parse_args(["--output-root", str(tmp_path)])
    for name in bench.DATASETS:
        _, random_opts = bench.STUDY.finetune_opts(args, name, "random", 1, {"soco": "t.pth"}, str(tmp_path / "r"))
        _, soco_opts = bench.STUDY.finetune_opts(args, name, "soco", 1, {"soco": "t.pth"}, str(tmp_path / "r"))
        r, s = _opts_dict(random_opts), _opts_dict(soco_opts)
        assert r.pop("MODEL.WEIGHTS") == "" and s.pop("MODEL.WEIGHTS").endswith("t.pth")
        assert r == s and r["SEED"] == "1"


def test_supervised_reference_arm(bench, tmp_path):
    args = bench.parse_args(["--arms", "random", "soco", "supervised", "--output-root", str(tmp_path)])
    assert args.arms == ["random", "soco", "supervised"] and bench.parse_args([]).arms == ["random", "soco"]
    weights = {"soco": "soco.pth", "supervised": "sup.pth"}
    opts = {arm: _opts_dict(bench.STUDY.finetune_opts(args, "synthetic", arm, 2, weights, str(tmp_path / "r"))[1])
            for arm in args.arms}
    assert [o.pop("MODEL.WEIGHTS") for o in opts.values()] == ["", "soco.pth", "sup.pth"]
    assert opts["random"] == opts["soco"] == opts["supervised"]  # only the weights differ
    for bad in (["--arms", "soco", "random"], ["--arms", "random", "supervised", "--datasets", "coco_sample"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_supervised_reference_trains_with_labels_and_keeps_the_trunk(bench, tmp_path, monkeypatch):
    import torch

    args = bench.parse_args(["--arms", "random", "supervised", "--output-root", str(tmp_path)])
    seen = {}

    def fake_run(tag, labels, config_file, opts, output_dir, max_iter, keep_checkpoints, pretrained, trunk_prefixes):
        seen.update(_opts_dict(opts), max_iter=max_iter, keep=keep_checkpoints, config=config_file)
        os.makedirs(output_dir, exist_ok=True)
        t = torch.ones(1)
        torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": t, "roi_heads.box_head.fc1.weight": t,
                              "roi_heads.box_predictor.cls_score.weight": t, "proposal_generator.x": t},
                    "optimizer": {}, "iteration": 299}, os.path.join(output_dir, "model_final.pth"))
        return dict(labels, output_dir=output_dir, bbox_AP=50.0)

    monkeypatch.setattr(bench.harness, "run_finetuning", fake_run)  # what harness.supervised_reference runs
    record, trunk = bench.supervised_trunk("synthetic", args)
    assert seen["DATASETS.TRAIN"] == '("soco_synthetic_det_train",)' and seen["MODEL.WEIGHTS"] == ""
    assert seen["max_iter"] == 300 and seen["SOLVER.MAX_ITER"] == "300" and seen["keep"] is True
    assert seen["config"] == bench.DATASETS["synthetic"]["finetune_config"]
    saved = torch.load(trunk, weights_only=True)
    # the parts the SoCo arm takes, nothing else; no optimizer state to resume from
    assert sorted(saved["model"]) == ["backbone.bottom_up.stem.conv1.weight", "roi_heads.box_head.fc1.weight"]
    assert "optimizer" not in saved and "iteration" not in saved
    assert not os.path.exists(os.path.join(os.path.dirname(trunk), "supervised_pretrain", "model_final.pth"))


@pytest.mark.parametrize("iters", [2, 4, 60, 100, 300])
def test_scaled_schedule_steps_below_max_iter(bench, iters):
    n, opts = bench.STUDY.finetune_schedule(bench.parse_args(["--finetune-iters", str(iters)]), "synthetic")
    o = _opts_dict(opts)
    steps = eval(o["SOLVER.STEPS"])
    assert n == iters and int(o["SOLVER.MAX_ITER"]) == iters
    assert steps == tuple(sorted(steps)) and all(0 < s < iters for s in steps)
    assert 0 < int(o["SOLVER.WARMUP_ITERS"]) < max(iters, 2)
    if iters == 300:
        assert steps == (225,) and o["SOLVER.WARMUP_ITERS"] == "30"


def test_default_schedules_are_the_configs_own(bench, tmp_path):
    args = bench.parse_args([])
    assert args.datasets == ["synthetic"]  # coco_sample is asked for
    n, opts = bench.STUDY.finetune_schedule(args, "synthetic")
    assert n == 200 and opts == []  # configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml
    o = _opts_dict(bench.pretrain_opts("synthetic", args, str(tmp_path)))
    assert "SOLVER.MAX_ITER" not in o and o["DATASETS.TRAIN"] == '("soco_synthetic_train",)'
    _, ft = bench.STUDY.finetune_opts(args, "synthetic", "soco", 0, {"soco": "t.pth"}, str(tmp_path / "r"))
    assert "SOLVER.AMP.PRECISION" not in ft  # precision is the config's (fp32 unless bf16 is native)


def test_pretrain_iters_override_the_recipe(bench, tmp_path):
    o = _opts_dict(bench.pretrain_opts("coco_sample", bench.parse_args(["--pretrain-iters", "12"]), str(tmp_path)))
    assert o["SOLVER.EPOCHS"] == "0" and o["SOLVER.MAX_ITER"] == "12" and o["SOLVER.WARMUP_ITERS"] == "1"
    assert o["DATASETS.TRAIN"] == '("coco_sample_soco",)' and o["TEST.PROBE.DATASET"] == ""


def test_quick_mode_evaluates_twenty_val_scenes(bench, tmp_path):
    _, opts = bench.STUDY.finetune_opts(bench.parse_args(["--quick"]), "synthetic", "random", 0, {}, str(tmp_path))
    o = _opts_dict(opts)
    assert o["DATASETS.TEST"] == '("soco_synthetic_det_val_20",)' and o["SOLVER.MAX_ITER"] == "4"


def test_bar_needs_three_ap_and_two_std(bench):
    def summary(deltas):
        return {"synthetic": {"delta_soco_minus_random": {
            "n": len(deltas), "bbox_AP": {"mean": sum(deltas) / len(deltas),
                                          "std": __import__("statistics").stdev(deltas) if len(deltas) > 1 else 0.0}}}}
    assert bench.bars(summary([3.5, 4.0, 4.5]))["synthetic"]["met"] is True
    assert bench.bars(summary([2.0, 2.2, 2.4]))["synthetic"]["met"] is False  # < 3 AP
    assert bench.bars(summary([0.5, 4.0, 8.5]))["synthetic"]["met"] is False  # mean 4.3 < 2 x 4.0
    assert bench.bars(summary([5.0]))["synthetic"]["met"] is None  # one seed: no std
    assert "coco_sample" not in bench.bars({"coco_sample": {}})  # reported, no bar


def test_probe_summary_reads_first_and_last(bench):
    pre = {"synthetic": {"probe": {"dataset": "soco_synthetic_det_val", "probes": [
        {"iteration": 0, "knn_head": 0.4}, {"iteration": 100, "knn_head": 0.5}, {"iteration": 200, "knn_head": 0.6}]}},
        "coco_sample": {"probe": None}}
    p = bench.probe_summary(pre)
    assert list(p) == ["synthetic"]
    assert p["synthetic"]["first"]["knn_head"] == 0.4 and p["synthetic"]["last"]["iteration"] == 200


def test_final_evaluation_and_summary(bench, tmp_path):
    records = [
        {"iteration": 9, "total_loss": 1.0},
        {"iteration": 10, "bbox/AP": 5.0, "bbox/AP50": 9.0, "segm/AP": 4.0, "segm/AP50": 8.0},
    ]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert bench.harness.final_evaluation(str(tmp_path), max_iter=20) is None  # not the last iteration
    metrics = bench.harness.final_evaluation(str(tmp_path), max_iter=10)
    assert metrics["bbox"]["AP"] == 5.0 and metrics["segm"]["AP50"] == 8.0

    def run(arm, seed, box, mask):
        m = {"bbox": {"AP": box, "AP50": box}, "segm": {"AP": mask, "AP50": mask}}
        return {"dataset": "synthetic", "arm": arm, "seed": seed, "bbox_AP": box, "segm_AP": mask,
                "metrics": m, "no_detections": math.isnan(box), "wall_s": 60.0}

    runs = [run("random", 0, 1.0, 1.0), run("soco", 0, 3.0, 2.0),
            run("random", 1, float("nan"), float("nan")), run("soco", 1, 5.0, 4.0)]
    summary = bench.STUDY.summarize(runs)["synthetic"]
    assert summary["random"]["bbox_AP"]["mean"] == pytest.approx(0.5)  # NaN (no detection) -> 0
    assert summary["random"]["no_detection_runs"] == 1
    assert summary["soco"]["segm_AP"]["mean"] == pytest.approx(3.0)
    assert summary["delta_soco_minus_random"]["bbox_AP"]["values"] == [2.0, 5.0]
    table = bench.STUDY.format_table({"synthetic": summary})
    assert "SoCo init" in table and "random init (1 no-det)" in table and "+3.50" in table
    # a long arm name widens the init column instead of pushing its row's figures out of line
    long = bench.harness.format_table({"synthetic": summary}, {"random": "random", "soco": "a much longer arm name"})
    rows = [line for line in long.splitlines() if line.startswith("synthetic")]
    assert len(rows) == 3 and len({line.index("±") for line in rows}) == 1


def test_reuse_with_other_settings_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="other settings"):
        bench.harness.check_same(["train_net.py", "SEED", "0"], ["train_net.py", "SEED", "1"], str(tmp_path))
    bench.harness.check_same(["train_net.py", "--resume", "SEED", "0"], ["train_net.py", "SEED", "0"], str(tmp_path))
