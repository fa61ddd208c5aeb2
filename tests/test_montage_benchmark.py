"""benchmarks/montage.py without training: arms, pretraining and fine-tuning commands, summary."""
import math
import os

import pytest

from train_helpers import load_script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/montage.py", "montage_bench")


def _opts(opts):
    return dict(zip(opts[::2], opts[1::2]))


def test_arms_differ_only_in_weights(bench, tmp_path):
    args = bench.parse_args(["--output-root", str(tmp_path), "--arms", "random", "montage", "soco", "montage_free"])
    assert args.seeds == [0, 1, 2]
    weights = {"montage": "m.pth", "soco": "s.pth", "montage_free": "f.pth"}
    opts = {arm: _opts(bench.STUDY.finetune_opts(args, "synthetic", arm, 1, weights, str(tmp_path / "o"))[1]) for arm in args.arms}
    assert [o.pop("MODEL.WEIGHTS") for o in opts.values()] == ["", "m.pth", "s.pth", "f.pth"]
    assert opts["random"] == opts["montage"] == opts["soco"] == opts["montage_free"]
    assert opts["random"]["SEED"] == "1" and "SOLVER.MAX_ITER" not in opts["random"]  # the config's schedule
    assert bench.STUDY.finetune_schedule(args, "synthetic")[0] == 200
    with pytest.raises(SystemExit):
        bench.parse_args(["--arms", "montage", "random"])


def test_pretraining_sees_only_the_finetuning_labels(bench, tmp_path):
    """Montage pretrains on exactly the labelled set the detector fine-tunes on, in both settings."""
    args = bench.parse_args(["--output-root", str(tmp_path)])
    o = _opts(bench.pretrain_opts(args, "montage", str(tmp_path / "p")))
    assert o["DATASETS.TRAIN"] == '("soco_synthetic_det_train_100",)'
    assert (o["SOLVER.MAX_ITER"], o["SOLVER.WARMUP_ITERS"], o["SOLVER.EPOCHS"]) == ("300", "50", "0")
    free = _opts(bench.pretrain_opts(args, "montage_free", str(tmp_path / "p"), trunk="soco.pth"))
    assert free["MODEL.WEIGHTS"] == "soco.pth" and "DATASETS.TRAIN" not in free
    full = bench.parse_args(["--detection-set", "full"])
    assert full.montage_iters == 1000 and full.output_root.endswith(os.path.join("output", "montage_bench_full"))
    o = _opts(bench.pretrain_opts(full, "montage", str(tmp_path / "p")))
    assert o["DATASETS.TRAIN"] == '("soco_synthetic_det_train",)' and o["INPUT.MONTAGE.CANVAS_SIZE"] == "128"
    assert o["SOLVER.MAX_ITER"] == "1000"
    tuned = {arm: _opts(bench.STUDY.finetune_opts(full, "synthetic", arm, 0, {"montage": "m.pth"}, str(tmp_path))[1]) for arm in
             ("random", "montage")}
    assert tuned["random"]["DATASETS.TRAIN"] == tuned["montage"]["DATASETS.TRAIN"] == '("soco_synthetic_det_train",)'
    assert "DATASETS.TRAIN" not in _opts(bench.STUDY.finetune_opts(args, "synthetic", "random", 0, {}, str(tmp_path))[1])
    assert bench.parse_args(["--detection-set", "full", "--montage-iters", "7"]).montage_iters == 7
    quick = bench.parse_args(["--quick", "--output-root", str(tmp_path)])
    assert quick.seeds == [0] and quick.out == os.path.join(str(tmp_path), "montage.json")
    assert _opts(bench.pretrain_opts(quick, "montage", str(tmp_path)))["SOLVER.MAX_ITER"] == "3"
    o = _opts(bench.STUDY.finetune_opts(quick, "synthetic", "montage", 0, {"montage": "m.pth"}, str(tmp_path))[1])
    assert (o["SOLVER.MAX_ITER"], o["TEST.PRECISE_BN.NUM_ITER"]) == ("4", "2")
    assert o["DATASETS.TEST"] == '("soco_synthetic_det_val_20",)'
    from detectron2.data import DatasetCatalog

    import soco_d2  # noqa: F401  (registers the builtin datasets)

    assert "soco_synthetic_det_val_20" in DatasetCatalog.list()


def test_configs_of_the_study_fit_together(bench):
    from detectron2.config import get_cfg

    from soco_d2 import add_config
    from soco_d2.config import load_config

    fine = load_config(add_config(get_cfg()), os.path.join(REPO_ROOT, bench.FINETUNE_CONFIG))
    for spec in bench.PRETRAIN.values():
        pre = load_config(add_config(get_cfg()), os.path.join(REPO_ROOT, spec["config"]))
        assert pre.MODEL.RESNETS.DEPTH == fine.MODEL.RESNETS.DEPTH == 18
        assert pre.MODEL.RESNETS.RES2_OUT_CHANNELS == fine.MODEL.RESNETS.RES2_OUT_CHANNELS
        assert list(pre.MODEL.PIXEL_MEAN) == list(fine.MODEL.PIXEL_MEAN) and pre.INPUT.FORMAT == fine.INPUT.FORMAT
    assert fine.DATASETS.TRAIN == ("soco_synthetic_det_train_100",)


def test_summary_pairs_every_arm_with_random_and_montage_with_soco(bench):
    def run(arm, seed, box):
        return {"dataset": "synthetic", "arm": arm, "seed": seed, "bbox_AP": box, "segm_AP": None,
                "metrics": {"bbox": {"AP": box, "AP50": 2 * box}, "segm": {}},
                "no_detections": math.isnan(box), "wall_s": 60.0}

    runs = [run("random", 0, 1.0), run("montage", 0, 3.0), run("soco", 0, 2.0),
            run("random", 1, 2.0), run("montage", 1, 5.0), run("soco", 1, float("nan"))]
    summary = bench.STUDY.summarize(runs, ["random", "montage", "soco"])["synthetic"]
    assert summary["delta_montage_minus_random"]["bbox_AP"]["values"] == [2.0, 3.0]
    assert summary["delta_soco_minus_random"]["bbox_AP"]["values"] == [1.0, -2.0]  # no detection = 0 AP
    assert summary["delta_montage_minus_soco"]["bbox_AP"]["values"] == [1.0, 5.0]
    table = bench.STUDY.format_table({"synthetic": summary}, ["random", "montage", "soco"])
    rows = {line[:34].strip(): line[34:] for line in table.splitlines()}
    assert rows["Montage - SoCo backbone (paired)"].split() == ["2", "+3.00", "±", "2.83"]  # std sqrt(8)
    assert rows["SoCo backbone - random (paired)"].split() == ["2", "-0.50", "±", "2.12"]
    assert rows["Montage init"].split()[:4] == ["2", "4.00", "±", "1.41"]
    # backbone against backbone: the SoCo arm must load (and only takes) the ResNet
    assert bench.TRUNK_PREFIXES["soco"] == bench.TRUNK_PREFIXES["montage"] == ("backbone.bottom_up.",)
