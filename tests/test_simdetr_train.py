"""SimDETR end to end through train_net.py (tiny, CPU) and its pieces: round-0 pseudo-labels
(boxes, k-means classes, determinism, bad images), the COCO json a stock Detectron2 dataset reads,
a self-training round that changes the labels as specified, the rounds' schedule, exact resume
mid-round and at a round boundary, and config / data errors at start."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import HookBase

from soco_d2 import add_config
from soco_d2.config import ConfigError, load_config
from soco_d2.methods.simdetr import SimDETRTrainer
from soco_d2.methods.simdetr.pseudo_labels import (
    PseudoLabels, initial_pseudo_labels, read_pseudo_labels, register_pseudo_labels, write_pseudo_labels,
)
from soco_d2.methods.simdetr.self_training import (
    SelfTrainingSettings, label_changes, match_to_previous, next_round_labels, round_file,
)
from test_resume import _assert_same_checkpoint
from train_helpers import REPO_ROOT, TrainArgs, load_script, train_in_two_processes

INSTANT = os.path.join(REPO_ROOT, "configs", "simdetr", "simdetr_instant_test.yaml")


@pytest.fixture(scope="module")
def dataset(tiny_images, tmp_path_factory):
    """The 8 tiny scenes with a proposal file of 6 boxes per image (objectness order); the last
    image has no entry (its round-0 box is the whole image)."""
    json_file, image_root = tiny_images
    with open(json_file) as f:
        images = json.load(f)["images"]
    rng = np.random.default_rng(0)
    boxes = []
    for img in images[:-1]:
        w, h = img["width"], img["height"]
        x0, y0 = rng.uniform(0, w / 2, 6), rng.uniform(0, h / 2, 6)
        side = rng.uniform(36, min(w, h) / 2, 6)
        boxes.append(np.stack([x0, y0, x0 + side, y0 + side * rng.uniform(0.7, 1.3, 6)], 1).astype(np.float32))
    path = str(tmp_path_factory.mktemp("simdetr_props") / "proposals.pkl")
    with open(path, "wb") as f:
        pickle.dump({"ids": [img["id"] for img in images[:-1]], "boxes": boxes,
                     "objectness_logits": [-np.arange(6, dtype=np.float32)] * len(boxes), "bbox_mode": 0}, f)
    return json_file, image_root, path


def opts(dataset, output_dir, name="test_simdetr_syn", *more):
    json_file, image_root, proposals = dataset
    return ["OUTPUT_DIR", str(output_dir), "DATASETS.TRAIN", f"('{name}',)",
            "DATASETS.SOCO_REGISTER", f"[('{name}', '{image_root}', '{proposals}', '{json_file}')]", *more]


def make_cfg(extra=()):
    cfg = add_config(get_cfg())
    load_config(cfg, INSTANT)
    cfg.merge_from_list(list(extra))
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SimDETRTrainer.build_model(make_cfg()).eval()


def records_of(dataset, name="test_simdetr_records"):
    from soco_d2.data.pretrain_datasets import register_soco_images

    json_file, image_root, proposals = dataset
    register_soco_images(name, image_root, proposals, json_file)
    return DatasetCatalog.get(name)


def round0(model, records, **kw):
    args = dict(k=3, max_boxes=4, iters=10, fit_samples=1000, seed=0)
    args.update(kw)
    return initial_pseudo_labels(model.feature_extractor(), records, **args)


# ----------------------------------------------------------------------------- round 0
def test_round0_takes_the_first_proposals_and_clusters_them_deterministically(dataset, model):
    records = records_of(dataset)
    a, b = round0(model, records), round0(model, records)
    assert len(a.images) == 8 and a.num_classes == 3 and a.round == 0
    for r, boxes in zip(records[:-1], a.boxes[:-1]):
        expected = np.clip(r["proposal_boxes"][:4], 0, [r["width"], r["height"]] * 2)
        np.testing.assert_allclose(boxes, expected, rtol=1e-6)
    last = records[-1]
    assert a.boxes[-1].tolist() == [[0, 0, last["width"], last["height"]]]  # no proposals: the whole image
    assert all(np.array_equal(x, y) for x, y in zip(a.classes, b.classes))
    classes = np.concatenate(a.classes)
    assert classes.min() >= 0 and classes.max() < 3 and len(set(classes.tolist())) == 3
    other = round0(model, records, seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a.classes, other.classes))  # the seed counts


def test_round0_leaves_out_an_unreadable_image(dataset, model, tmp_path):
    records = [dict(r) for r in records_of(dataset)]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    records[2]["file_name"] = str(bad)
    labels = round0(model, records)
    assert len(labels.images) == 7 and str(bad) not in [im["file_name"] for im in labels.images]
    assert labels.info["skipped"] == [str(bad)]


def test_a_labelling_pass_logs_its_progress(dataset, tmp_path, monkeypatch):
    """read_share (every labelling pass) logs done/total with an eta, an unreadable image counted
    as handled; without a task it logs nothing."""
    from soco_d2.methods.simdetr import pseudo_labels

    lines = []
    monkeypatch.setattr(pseudo_labels, "log_every_n_seconds", lambda lvl, msg, n=1, name=None: lines.append((n, msg)))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    files = [r["file_name"] for r in records_of(dataset)[:2]] + [str(bad)]
    got = [(i, img is None) for i, img in pseudo_labels.read_share(files, "it is skipped", task="detecting")]
    assert got == [(0, False), (1, False), (2, True)]
    assert [msg.split(" (")[0] for _, msg in lines] == ["detecting: 1/3 images", "detecting: 2/3 images",
                                                         "detecting: 3/3 images"]
    assert lines[-1][1].endswith("eta 0 s)") and {n for n, _ in lines} == {pseudo_labels.PROGRESS_EVERY_S}
    lines.clear()
    assert len(list(pseudo_labels.read_share(files, "it is skipped"))) == 3 and not lines


def test_the_json_is_a_stock_detectron2_dataset(dataset, model, tmp_path):
    labels = round0(model, records_of(dataset))
    path = write_pseudo_labels(labels, str(tmp_path / "round_0.json"))
    back = read_pseudo_labels(path)
    assert back.num_classes == 3 and [im["image_id"] for im in back.images] == [im["image_id"] for im in labels.images]
    assert all(np.allclose(x, y, atol=1e-4) for x, y in zip(back.boxes, labels.boxes))
    assert all(np.array_equal(x, y) for x, y in zip(back.classes, labels.classes))
    # Detectron2's own loader and mapper
    records = DatasetCatalog.get(register_pseudo_labels(path))
    assert len(records) == 8 and sum(len(r["annotations"]) for r in records) == labels.num_boxes
    assert {a["category_id"] for r in records for a in r["annotations"]} <= {0, 1, 2}
    cfg = make_cfg()
    mapped = DatasetMapper(cfg, is_train=True)(records[0])
    assert mapped["instances"].gt_classes.tolist() == labels.classes[0].tolist()


# ----------------------------------------------------------------------------- self-training
SETTINGS = SelfTrainingSettings(num_classes=3, max_boxes=2, score_thresh=0.5, nms_thresh=0.5, classes="keep",
                                kmeans_iters=10, fit_samples=100, batch_size=2, min_size_test=96,
                                max_size_test=128, image_format="RGB")


def labels_of(boxes, classes, r=0):
    return PseudoLabels(3, r, [{"file_name": f"{i}.jpg", "image_id": i, "width": 100, "height": 100}
                               for i in range(len(boxes))],
                        [np.array(b, np.float32).reshape(-1, 4) for b in boxes],
                        [np.array(c, np.int64) for c in classes], [np.ones(len(c), np.float32) for c in classes])


def test_a_round_keeps_confident_detections_after_class_agnostic_nms():
    previous = labels_of([[[0, 0, 50, 50], [50, 50, 100, 100]], [[10, 10, 60, 60]], [[0, 0, 20, 20]]],
                         [[0, 1], [2], [1]])
    detections = [
        # image 0: two overlapping boxes of different classes (NMS keeps the better one, class-agnostic),
        # one below the threshold, two more confident ones (max_boxes 2 keeps the best two)
        (np.array([[0, 0, 50, 50], [2, 2, 52, 52], [50, 50, 100, 100], [70, 0, 100, 30], [0, 70, 30, 100]], np.float32),
         np.array([0.9, 0.8, 0.4, 0.7, 0.6], np.float32), np.array([1, 2, 0, 0, 2], np.int64)),
        # image 1: nothing confident -> keeps its previous boxes
        (np.array([[10, 10, 60, 60]], np.float32), np.array([0.2], np.float32), np.array([0], np.int64)),
        None,  # image 2: unreadable -> keeps its previous boxes
    ]
    new, fallback = next_round_labels(previous, detections, SETTINGS)
    assert new.round == 1 and fallback.tolist() == [False, True, True]
    assert new.boxes[0].tolist() == [[0, 0, 50, 50], [70, 0, 100, 30]]
    assert new.classes[0].tolist() == [1, 0] and np.allclose(new.scores[0], [0.9, 0.7])
    assert new.boxes[1].tolist() == [[10, 10, 60, 60]] and new.classes[1].tolist() == [2]
    stats = label_changes(previous, new)
    # new boxes: (0,0,50,50) IoU 1 with a previous box, class 0 -> 1 (changed); (70,0,100,30) IoU 0;
    # image 1 and 2: identical boxes and classes
    assert stats["boxes"] == 4 and stats["boxes_per_image"] == pytest.approx(4 / 3)
    assert stats["mean_best_iou"] == pytest.approx((1 + 0 + 1 + 1) / 4)
    assert stats["previous_recall"] == pytest.approx(3 / 4)  # (50,50,100,100) is gone
    assert stats["class_changed"] == pytest.approx(1 / 3)


def test_reclustered_ids_are_matched_to_the_previous_classes():
    previous = labels_of([[[0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 40, 40]]], [[0, 1], [2]])
    new = labels_of([[[0, 0, 10, 10], [20, 20, 30, 31]], [[1, 1, 40, 40]]], [[2, 0], [1]], r=1)
    perm = match_to_previous(previous, new)
    assert [perm[c].tolist() for c in new.classes] == [[0, 1], [2]]


# ----------------------------------------------------------------------------- runs
def trained(dataset, output_dir, *more, resume=False, hooks=()):
    from train_net import main

    build_hooks = SimDETRTrainer.build_hooks
    SimDETRTrainer.build_hooks = lambda self: build_hooks(self) + list(hooks)
    try:
        main(TrainArgs(opts(dataset, output_dir, "test_simdetr_syn", *more), config_file=INSTANT, resume=resume))
    finally:
        SimDETRTrainer.build_hooks = build_hooks


def metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


TWO_ROUNDS = ["SEED", "3", "MODEL.SIMDETR.ROUNDS", "2", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
              "MODEL.SIMDETR.SCORE_THRESH", "0.3", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


def test_two_rounds_train_on_their_own_detections_and_log_the_change(dataset, tmp_path, one_thread):
    out = tmp_path / "run"
    trained(dataset, out, *TWO_ROUNDS)
    r0, r1 = (read_pseudo_labels(round_file(str(out), r)) for r in (0, 1))
    history = json.loads((out / "pseudo_labels" / "rounds.json").read_text())
    assert [h["round"] for h in history] == [0, 1]
    # Round 1: every image has the detector's boxes (score >= 0.3, <= 6 per image) or its round-0 ones.
    for old_b, new_b, new_s in zip(r0.boxes, r1.boxes, r1.scores):
        assert 1 <= len(new_b) <= 6
        assert np.array_equal(old_b, new_b) or (new_s >= 0.3).all()
    assert history[1]["fallback_images"] == sum(np.array_equal(a, b) for a, b in zip(r0.boxes, r1.boxes))
    assert history[1] == pytest.approx(dict(history[1], **label_changes(r0, r1)))
    rows = metrics(out)
    assert any("simdetr/mean_best_iou" in r for r in rows) and rows[-1]["iteration"] == 3
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(rows[-1])
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert int(ckpt["model"]["simdetr_round"]) == 1
    assert ckpt["trainer"]["hooks"]["SelfTrainingHook"]["file"] == os.path.join("pseudo_labels", "round_1.json")
    assert (out / "model_final_trunk.pth").is_file()


def test_the_learning_rate_schedule_restarts_with_each_round(dataset, tmp_path):
    from train_net import setup

    cfg = setup(TrainArgs(opts(dataset, tmp_path, "test_simdetr_syn", "MODEL.SIMDETR.ROUNDS", "3",
                               "SOLVER.MAX_ITER", "10", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(6,)"),
                          config_file=INSTANT))
    model = SimDETRTrainer.build_model(cfg)
    optimizer = SimDETRTrainer.build_optimizer(cfg, model)
    scheduler = SimDETRTrainer.build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(30):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs[10:20] == pytest.approx(lrs[:10]) and lrs[20:] == pytest.approx(lrs[:10])
    assert lrs[2] > lrs[0] and lrs[6] == pytest.approx(lrs[5] * cfg.SOLVER.GAMMA)


class _Interrupt(HookBase):
    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise RuntimeError("interrupted (simulated)")


@pytest.mark.parametrize("stop_at", [2, 1], ids=["mid_round", "round_boundary"])
def test_resume_is_exact(dataset, tmp_path, one_thread, stop_at):
    a, b = tmp_path / "a", tmp_path / "b"
    trained(dataset, a, *TWO_ROUNDS)
    with pytest.raises(RuntimeError, match="simulated"):
        trained(dataset, b, *TWO_ROUNDS, hooks=[_Interrupt(stop_at)])
    assert (b / "last_checkpoint").read_text() == f"model_{stop_at:07d}.pth"
    assert os.path.isfile(round_file(str(b), 1)) == (stop_at == 2)
    trained(dataset, b, *TWO_ROUNDS, resume=True)
    for r in (0, 1):
        assert (a / "pseudo_labels" / f"round_{r}.json").read_bytes() == (b / "pseudo_labels" / f"round_{r}.json").read_bytes()
    ckpt = _assert_same_checkpoint(a / "model_final.pth", b / "model_final.pth")
    assert ckpt["/iteration"] == 3 and ckpt["/trainer/data_stream/seed"] == 3
    assert any("momentum_buffer" in k for k in ckpt)


def test_a_two_round_run_continued_from_the_one_round_run_is_the_two_round_run(dataset, tmp_path, one_thread):
    """benchmarks/simdetr.py trains round 0 once: the 2-round arm continues the 1-round arm's
    folder (benchmarks/harness.py continue_run + --resume). Valid because the 1-round run IS the
    2-round run's first round: same final state, bit for bit."""
    import sys

    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import harness

    a, one, two = tmp_path / "a", tmp_path / "one", tmp_path / "two"
    trained(dataset, a, *TWO_ROUNDS)
    trained(dataset, one, *TWO_ROUNDS, "MODEL.SIMDETR.ROUNDS", "1")
    assert harness.continue_run(str(one), str(two)) == 2
    assert (two / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (two / "model_final_trunk.pth").exists() and not (two / "log.txt").exists()
    trained(dataset, two, *TWO_ROUNDS, resume=True)
    for r in (0, 1):
        assert (a / "pseudo_labels" / f"round_{r}.json").read_bytes() == (two / "pseudo_labels" / f"round_{r}.json").read_bytes()
    ckpt = _assert_same_checkpoint(a / "model_final.pth", two / "model_final.pth")
    assert ckpt["/iteration"] == 3
    # the continued folder's metrics.json is the whole run's: iterations 0-3
    assert sorted({row["iteration"] for row in metrics(two)}) == [0, 1, 2, 3]
    with pytest.raises(SystemExit, match="has no model_final.pth"):
        harness.continue_run(str(tmp_path / "missing"), str(tmp_path / "three"))


def test_resume_refuses_a_changed_pseudo_label_file(dataset, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated"):
        trained(dataset, out, *TWO_ROUNDS, hooks=[_Interrupt(2)])
    path = round_file(str(out), 1)
    with open(path) as f:
        data = json.load(f)
    data["annotations"] = data["annotations"][1:]
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="round 1.*not the file the checkpoint trained on"):
        trained(dataset, out, *TWO_ROUNDS, resume=True)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="round 1: its pseudo-label file .* is missing"):
        trained(dataset, out, *TWO_ROUNDS, resume=True)


def test_make_pseudo_labels_writes_round_0_beside_the_proposals(dataset, tmp_path, one_thread):
    from soco_d2.export import export_trunk
    from soco_d2.methods.simdetr.export import simdetr_export

    torch.manual_seed(1)
    weights = str(tmp_path / "trunk.pth")
    export_trunk(SimDETRTrainer.build_model(make_cfg()).state_dict(), weights, simdetr_export(), verbose=False)
    tool = load_script("tools/make_pseudo_labels.py")
    common = opts(dataset, tmp_path / "x", "test_simdetr_syn", "SEED", "4", "MODEL.WEIGHTS", weights)
    assert tool.main(["--config-file", INSTANT, *common]) == 0
    written = dataset[2][:-len(".pkl")] + ".pseudo_k3.json"
    assert os.path.isfile(written)
    # A run started from it trains on the same labels it would have computed itself.
    trained(dataset, tmp_path / "own", "SEED", "4", "MODEL.WEIGHTS", weights)
    trained(dataset, tmp_path / "given", "SEED", "4", "MODEL.WEIGHTS", weights, "MODEL.SIMDETR.PSEUDO_LABELS", written)
    own, given = (json.loads(open(round_file(str(tmp_path / d), 0)).read()) for d in ("own", "given"))
    assert own["annotations"] == given["annotations"] and own["images"] == given["images"]
    assert tool.main(["--config-file", INSTANT, *common, "MODEL.WEIGHTS", str(tmp_path / "none.pth")]) == 2


def test_reclustered_rounds_run_and_match_their_classes(dataset, tmp_path):
    out = tmp_path / "run"
    trained(dataset, out, *TWO_ROUNDS, "MODEL.SIMDETR.CLASSES", "recluster")
    r0, r1 = (read_pseudo_labels(round_file(str(out), r)) for r in (0, 1))
    assert [len(c) for c in r1.classes] == [len(b) for b in r1.boxes]
    assert np.concatenate(r1.classes).max() < 3
    history = json.loads((out / "pseudo_labels" / "rounds.json").read_text())
    assert history[1]["class_changed"] == pytest.approx(label_changes(r0, r1)["class_changed"])


def _train_and_dump(opts_list, dump_dir):
    from detectron2.utils import comm
    from train_net import setup

    torch.set_num_threads(1)
    trainer = SimDETRTrainer(setup(TrainArgs(opts_list, config_file=INSTANT)))
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = getattr(trainer.model, "module", trainer.model)
    torch.save(model.state_dict(), os.path.join(dump_dir, f"rank{comm.get_rank()}.pth"))


def test_two_process_gloo_run_shares_its_rounds_and_keeps_ranks_identical(dataset, tmp_path):
    sync_bn = ["MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.FPN.NORM", "naiveSyncBN", "MODEL.ROI_BOX_HEAD.NORM", "naiveSyncBN"]
    opts_list = opts(dataset, tmp_path, "test_simdetr_syn_ddp", *TWO_ROUNDS, *sync_bn)
    s0 = train_in_two_processes(_train_and_dump, (opts_list, str(tmp_path)), str(tmp_path))
    assert int(s0["simdetr_round"]) == 1
    r0, r1 = (read_pseudo_labels(round_file(str(tmp_path), r)) for r in (0, 1))
    assert len(r0.images) == len(r1.images) == 8  # every image, whichever process read it


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("key,value,message", [
    ("MODEL.SIMDETR.CLASSES", "'kept'", "MODEL.SIMDETR.CLASSES must be one of"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", "1", "NUM_CLASSES is K"),
    ("MODEL.SIMDETR.SCORE_THRESH", "1.5", "SCORE_THRESH must be in"),
    ("MODEL.SIMDETR.FEATURE", "'res3'", "MODEL.SIMDETR.FEATURE must be one of"),
    ("MODEL.SIMDETR.ROUNDS", "0", "ROUNDS must be >= 1"),
    ("MODEL.MASK_ON", "True", "MASK_ON must be False"),
])
def test_config_errors_name_the_key(tmp_path, key, value, message):
    from train_net import setup

    with pytest.raises(ConfigError, match=message):
        setup(TrainArgs(["OUTPUT_DIR", str(tmp_path), key, value], config_file=INSTANT))


def test_a_training_set_without_proposals_fails_before_the_model(tiny_images, tmp_path):
    from train_net import main

    json_file, image_root = tiny_images
    bad = ["OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", "('simdetr_no_props',)",
           "DATASETS.SOCO_REGISTER", f"[('simdetr_no_props', '{image_root}', '', '{json_file}')]"]
    with pytest.raises(ConfigError, match="'simdetr_no_props' has no proposal file.*--from-features"):
        main(TrainArgs(bad, config_file=INSTANT))


def test_train_net_picks_the_simdetr_trainer():
    from train_net import trainer_class

    assert trainer_class(make_cfg()) is SimDETRTrainer
