"""benchmarks/aligndet.py without training: arms, schedules, the SoCo trunk, the bar."""
import os

import pytest

from train_helpers import load_script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/aligndet.py", "aligndet_bench")


def _opts(opts):
    return dict(zip(opts[::2], opts[1::2]))


def test_arms_differ_only_in_weights(bench, tmp_path):
    args = bench.parse_args(["--output-root", str(tmp_path)])
    # The arms: (a) SoCo backbone + random FPN/RPN/heads (the baseline), (b) AlignDet, random.
    assert args.seeds == [0, 1, 2] and list(args.arms) == ["soco_backbone", "aligndet", "random"]
    assert list(bench.parse_args(["--arms", "random", "soco"]).arms) == ["soco_backbone", "random", "soco"]
    weights = {"soco_backbone": "bb.pth", "soco": "soco.pth", "aligndet": "aligndet.pth",
               "aligndet_no_box_head": "nb.pth"}
    opts = {arm: _opts(bench.STUDY.finetune_opts(args, "synthetic", arm, 2, weights, str(tmp_path / "o"))[1]) for arm in bench.ARMS}
    assert [o.pop("MODEL.WEIGHTS") for o in opts.values()] == ["bb.pth", "aligndet.pth", "", "soco.pth", "nb.pth"]
    assert opts["soco_backbone"] == opts["aligndet"] == opts["random"] == opts["soco"] == opts["aligndet_no_box_head"]
    assert opts["soco"]["SEED"] == "2" and "SOLVER.MAX_ITER" not in opts["soco"]  # the config's schedule


def test_backbone_arm_keeps_only_the_resnet(bench, tmp_path):
    import torch

    t = torch.ones(2)
    trunk = {"backbone.bottom_up.stem.conv1.weight": t, "backbone.fpn_lateral2.weight": 2 * t,
             "roi_heads.box_head.fc1.weight": 3 * t}
    torch.save({"model": trunk, "__author__": "soco_d2", "matching_heuristics": False}, tmp_path / "trunk.pth")
    path = bench.backbone_only(str(tmp_path / "trunk.pth"), str(tmp_path / "bb.pth"))
    saved = torch.load(path, weights_only=True)
    assert list(saved["model"]) == ["backbone.bottom_up.stem.conv1.weight"]
    assert saved["matching_heuristics"] is False and torch.equal(saved["model"]["backbone.bottom_up.stem.conv1.weight"], t)
    torch.save({"model": {"backbone.res2.0.weight": t}}, tmp_path / "c4.pth")
    with pytest.raises(SystemExit, match="backbone.bottom_up"):
        bench.backbone_only(str(tmp_path / "c4.pth"), str(tmp_path / "bb2.pth"))


def test_no_box_head_arm_drops_only_the_box_head(bench, tmp_path):
    import torch

    t = torch.ones(2)
    trunk = {"backbone.bottom_up.stem.conv1.weight": t, "backbone.fpn_lateral2.weight": t,
             "proposal_generator.rpn_head.conv.weight": t, "roi_heads.box_head.fc1.weight": t}
    torch.save({"model": trunk}, tmp_path / "aligndet.pth")
    prefixes = bench.DETECTORS["faster_rcnn"]["trunk_prefixes"]["aligndet_no_box_head"]
    saved = torch.load(bench.keep_prefixes(str(tmp_path / "aligndet.pth"), str(tmp_path / "nb.pth"), prefixes))
    assert sorted(saved["model"]) == sorted(k for k in trunk if not k.startswith("roi_heads."))
    # RetinaNet: no box head at all; the arm keeps the FPN (P6/P7 included) and drops the dense head
    assert bench.DETECTORS["retinanet"]["trunk_prefixes"]["aligndet_no_box_head"] == ("backbone.",)


def test_quick_mode_and_schedules(bench, tmp_path):
    args = bench.parse_args(["--quick", "--output-root", str(tmp_path)])
    assert args.seeds == [0] and args.out == os.path.join(str(tmp_path), "aligndet.json")
    o = _opts(bench.STUDY.finetune_opts(args, "synthetic", "aligndet", 0, {"aligndet": "a.pth"}, str(tmp_path))[1])
    assert (o["SOLVER.MAX_ITER"], o["TEST.PRECISE_BN.NUM_ITER"], o["MODEL.RPN.POST_NMS_TOPK_TEST"]) == ("4", "2", "20")
    o = _opts(bench.aligndet_opts(args, "soco.pth", str(tmp_path)))
    assert (o["MODEL.WEIGHTS"], o["SOLVER.MAX_ITER"], o["SOLVER.EPOCHS"]) == ("soco.pth", "2", "0")
    # --aligndet-opts go last, so they override the benchmark's own settings
    args = bench.parse_args(["--aligndet-opts", "SOLVER.BASE_LR", "0.02", "SEED", "4"])
    opts = bench.aligndet_opts(args, "soco.pth", str(tmp_path))
    assert opts[-4:] == ["SOLVER.BASE_LR", "0.02", "SEED", "4"] and _opts(opts)["SEED"] == "4"
    with pytest.raises(SystemExit):
        bench.parse_args(["--aligndet-opts", "SOLVER.BASE_LR"])
    # the demo's shape (warmup 1/4, steps at 8/12 and 11/12) at 40 iterations: warmup 10, steps 27 and 37
    o = _opts(bench.scaled_schedule(40, 0.25, (8 / 12, 11 / 12)))
    assert (o["SOLVER.WARMUP_ITERS"], o["SOLVER.STEPS"]) == ("10", "(27,37,)")
    for iters in (2, 3, 7, 200):
        steps = eval(_opts(bench.scaled_schedule(iters, 0.1, (0.75,)))["SOLVER.STEPS"])
        assert all(0 < s < iters for s in steps)
    assert _opts(bench.scaled_schedule(5, 0.2, ()))["SOLVER.STEPS"] == "()"


def test_configs_of_the_study_exist_and_match(bench):
    from detectron2.config import get_cfg

    from soco_d2 import add_config
    from soco_d2.config import load_config

    for spec in bench.DETECTORS.values():
        pre = load_config(add_config(get_cfg()), os.path.join(REPO_ROOT, spec["pretrain_config"]))
        fine = load_config(add_config(get_cfg()), os.path.join(REPO_ROOT, spec["finetune_config"]))
        assert pre.MODEL.FPN.OUT_CHANNELS == fine.MODEL.FPN.OUT_CHANNELS == 128
        assert pre.MODEL.RESNETS.DEPTH == fine.MODEL.RESNETS.DEPTH == 18
        assert pre.DATASETS.TRAIN == ("soco_synthetic_train",)
    assert bench.DETECTORS["faster_rcnn"]["finetune_config"] == bench.STUDY.finetune_config_of(bench.parse_args([]), "synthetic")
    assert bench.STUDY.finetune_schedule(bench.parse_args([]), "synthetic")[0] == 200


def test_missing_soco_trunk_says_how_to_make_it(bench, tmp_path):
    args = bench.parse_args(["--soco-trunk", str(tmp_path / "none.pth"), "--output-root", str(tmp_path)])
    with pytest.raises(SystemExit, match="make demo"):
        bench.soco_trunk(args)
    (tmp_path / "t.pth").write_bytes(b"x")
    assert bench.soco_trunk(bench.parse_args(["--soco-trunk", str(tmp_path / "t.pth")])) == str(tmp_path / "t.pth")


def test_bar_is_the_paired_gain_over_two_std(bench):
    import harness

    def run(arm, seed, ap):
        return {"dataset": "synthetic", "arm": arm, "seed": seed, "bbox_AP": ap, "segm_AP": None,
                "metrics": {"bbox": {"AP": ap, "AP50": ap}, "segm": {}}, "no_detections": False, "wall_s": 1.0}

    runs = [run("soco_backbone", s, 10.0 + s) for s in range(3)] + [run("random", s, 5.0) for s in range(3)]
    runs += [run("aligndet", s, 12.0 + s + 0.1 * s) for s in range(3)]  # gains 2.0, 2.1, 2.2
    b = bench.bar(harness.summarize(runs, bench.ARMS))
    assert b["paired_gain_mean"] == pytest.approx(2.1) and b["paired_gain_std"] == pytest.approx(0.1)
    assert b["met"] is True
    runs[-1]["bbox_AP"] = 8.0  # gains 2.0, 2.1, -4.0
    assert bench.bar(harness.summarize(runs, bench.ARMS))["met"] is False
    assert bench.bar({})["met"] is None
    one_seed = [r for r in runs if r["seed"] == 0]
    assert bench.bar(harness.summarize(one_seed, bench.ARMS))["met"] is None  # no std
