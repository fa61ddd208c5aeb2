"""SimDETR's semantic proposals (soco_d2/data/proposals/semantic.py): regions of a toy feature map
with known regions, the SoCo filter and its fallbacks, the checkpoint's backbone in every naming
(and a clear error without one), and the resumable parallel job through
tools/generate_proposals.py --from-features, bad images skipped and named."""
import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone

from soco_d2 import add_config
from soco_d2.config import load_config
from soco_d2.data.pretrain_datasets import attach_proposals
from soco_d2.data.proposals import ASPECT, FULL, WHOLE_IMAGE, failures_path
from soco_d2.data.proposals.semantic import (
    SemanticProposer, SemanticSettings, backbone_state_dict, cluster_regions, propose_from_features,
)
from train_helpers import REPO_ROOT, load_script

SOCO_INSTANT = os.path.join(REPO_ROOT, "configs", "soco", "soco_instant_test.yaml")
TOY = SemanticSettings(ks=(3,), position_weight=0.0)


def toy_map(h=12, w=16):
    """(8, h, w): background, a 'red' rectangle at cells x 2-5, y 1-4 and a 'blue' one at x 9-14,
    y 6-10 (x1, y1 exclusive: (2, 1, 6, 5) and (9, 6, 15, 11))."""
    fmap = torch.zeros(8, h, w)
    fmap[0] = 1.0
    fmap[:, 1:5, 2:6] = torch.eye(8)[1][:, None, None]
    fmap[:, 6:11, 9:15] = torch.eye(8)[2][:, None, None]
    return fmap + 0.01 * torch.randn(8, h, w, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- regions
def test_regions_of_a_toy_feature_map_are_its_objects():
    (boxes,) = cluster_regions(toy_map(), TOY)
    boxes = {tuple(b) for b in boxes.tolist()}
    assert (2, 1, 6, 5) in boxes and (9, 6, 15, 11) in boxes
    assert (0, 0, 16, 12) in boxes  # the background cluster spans the map
    assert len(boxes) == 3


def test_one_cluster_in_two_places_is_two_regions_and_connectivity_counts():
    fmap = torch.zeros(4, 10, 10)
    fmap[0] = 1.0
    fmap[:, 1:4, 1:4] = torch.eye(4)[1][:, None, None]
    fmap[:, 4:7, 4:7] = torch.eye(4)[1][:, None, None]  # touches the first only at a corner
    four = {tuple(b) for b in cluster_regions(fmap, SemanticSettings(ks=(2,), position_weight=0.0))[0].tolist()}
    assert {(1, 1, 4, 4), (4, 4, 7, 7)} <= four
    eight = {tuple(b) for b in cluster_regions(fmap, SemanticSettings(ks=(2,), position_weight=0.0,
                                                                      connectivity=8))[0].tolist()}
    assert (1, 1, 7, 7) in eight and (1, 1, 4, 4) not in eight


def test_position_splits_a_uniform_map_into_compact_regions():
    fmap = torch.ones(4, 8, 8)  # nothing to tell cells apart but where they are
    (boxes,) = cluster_regions(fmap, SemanticSettings(ks=(2,), position_weight=1.0))
    assert len(boxes) == 2
    assert all((b[2] - b[0]) * (b[3] - b[1]) == 32 for b in boxes.tolist())  # two halves


def test_regions_are_deterministic_and_k_larger_than_the_map_is_skipped():
    a = cluster_regions(toy_map(), SemanticSettings(ks=(2, 3, 500)))
    b = cluster_regions(toy_map(), SemanticSettings(ks=(2, 3, 500)))
    assert len(a) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_proposals_are_pixels_filtered_and_ranked():
    # Cells of 20 x 20 px on a 320 x 240 image: the blue box is 120 x 100 px (0.40 of the image
    # side), the red one 80 x 80 (0.29, below SoCo's 0.3) and the background the whole image (> 0.8).
    p = propose_from_features(toy_map(), (20.0, 20.0), 320, 240, TOY)
    assert p.stage == FULL and p.n_raw == 3
    assert p.boxes.tolist() == [[180.0, 120.0, 300.0, 220.0]]
    # On a 300 x 200 image both objects pass, ranked (logits strictly decreasing), clipped to it.
    p = propose_from_features(toy_map(), (20.0, 20.0), 300, 200, TOY)
    assert {tuple(b) for b in p.boxes.tolist()} == {(180.0, 120.0, 300.0, 200.0), (40.0, 20.0, 120.0, 100.0)}
    assert np.all(np.diff(p.objectness_logits) < 0)


def test_an_image_without_a_region_falls_back_as_selective_search_does():
    # A 1 x 1 map: no k fits, no region at all -> the whole image, as the selective-search job.
    p = propose_from_features(torch.ones(8, 1, 1), (32.0, 32.0), 200, 100, SemanticSettings(ks=(2, 3)))
    assert p.stage == WHOLE_IMAGE and p.boxes.tolist() == [[0, 0, 200, 100]] and p.n_raw == 0
    # Regions that only fail the scale rule: the aspect-only fallback, as filter_boxes does.
    fmap = torch.zeros(4, 20, 20)
    fmap[0] = 1.0
    fmap[:, 5:8, 5:8] = torch.eye(4)[1][:, None, None]  # 3 x 3 cells of 4 px: 12 px, far too small
    p = propose_from_features(fmap, (4.0, 4.0), 80, 80, SemanticSettings(ks=(2,), position_weight=0.0))
    assert p.stage == ASPECT


# ----------------------------------------------------------------------------- the backbone
def trunk(tmp_path, seed=0, naming="fpn"):
    """A SoCo-like trunk file (an FPN backbone of the SoCo instant config, random weights) and the
    config.yaml beside it, as a pretraining run leaves them."""
    cfg = add_config(get_cfg())
    load_config(cfg, SOCO_INSTANT)
    torch.manual_seed(seed)
    backbone = build_backbone(cfg)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if naming == "c4":  # a C4 detector: backbone.stem / res2-4, res5 in the box head
        state = {k.replace("backbone.bottom_up.", "backbone."): v for k, v in state.items() if "bottom_up" in k}
        state = {k.replace("backbone.res5.", "roi_heads.res5."): v for k, v in state.items()}
    folder = tmp_path / f"run_{naming}_{seed}"
    folder.mkdir()
    torch.save({"model": state}, folder / "model_final_trunk.pth")
    (folder / "config.yaml").write_text(cfg.dump())
    return str(folder / "model_final_trunk.pth"), cfg, backbone


@pytest.mark.parametrize("naming", ["fpn", "c4"])
def test_backbone_is_read_in_every_detectron2_naming(tmp_path, naming):
    path, _, backbone = trunk(tmp_path, naming=naming)
    state = backbone_state_dict(path)
    assert set(state) == {k for k in backbone.bottom_up.state_dict()}
    assert torch.equal(state["res5.1.conv2.weight"], backbone.bottom_up.res5[1].conv2.weight)


def test_a_checkpoint_without_a_backbone_fails_naming_the_file(tmp_path):
    path = str(tmp_path / "heads_only.pth")
    torch.save({"model": {"roi_heads.box_head.fc1.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match="heads_only.pth has no backbone.*roi_heads"):
        backbone_state_dict(path)
    cli = load_script("tools/generate_proposals.py", "generate_proposals_cli")
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    code = cli.main(["--image-dir", str(tmp_path / "imgs"), "--output", str(tmp_path / "p.pkl"),
                     "--from-features", path, "--features-config", SOCO_INSTANT])
    assert code == 2 and not os.path.exists(tmp_path / "p.pkl")


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    path, cfg, _ = trunk(tmp_path)
    other = cfg.clone()
    other.MODEL.RESNETS.DEPTH = 34
    with pytest.raises(ValueError, match="does not fit the ResNet of the config.*DEPTH 34"):
        SemanticProposer(other, path)


def test_a_checkpoint_without_its_config_says_which_flag_to_use(tmp_path):
    path, _, _ = trunk(tmp_path)
    os.remove(os.path.join(os.path.dirname(path), "config.yaml"))
    cli = load_script("tools/generate_proposals.py", "generate_proposals_cli")
    with pytest.raises(FileNotFoundError, match="--features-config"):
        cli.semantic_proposer(path, None, SemanticSettings(), "cpu")


# ----------------------------------------------------------------------------- the job
def scenes(folder, n=5):
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((96, 128, 3), 40, np.uint8)
        x, y = rng.integers(5, 60, 2)
        img[y:y + 40, x:x + 50] = rng.integers(0, 256, 3)
        cv2.imwrite(os.path.join(folder, f"img{i}.jpg"), img)


def test_the_job_writes_a_proposal_file_skips_bad_images_and_resumes(tmp_path):
    path, _, _ = trunk(tmp_path)
    images = str(tmp_path / "imgs")
    scenes(images)
    with open(os.path.join(images, "broken.jpg"), "wb") as f:
        f.write(b"not an image")
    cv2.imwrite(os.path.join(images, "tiny.png"), np.zeros((20, 20, 3), np.uint8))
    out = str(tmp_path / "props" / "semantic.pkl")
    cli = load_script("tools/generate_proposals.py", "generate_proposals_cli")
    argv = ["--image-dir", images, "--output", out, "--from-features", path, "--workers", "2",
            "--feature-min-size", "96", "--no-progress"]
    assert cli.main(argv) == 0
    with open(out, "rb") as f:
        props = pickle.load(f)
    assert sorted(props["ids"]) == [f"img{i}" for i in range(5)]
    for boxes, logits in zip(props["boxes"], props["objectness_logits"]):
        assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and len(boxes) == len(logits) >= 1
        assert (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
    with open(failures_path(out)) as f:
        report = json.load(f)
    assert {os.path.basename(x["path"]): x["reason"] for x in report["failures"]} == {
        "broken.jpg": "unreadable", "tiny.png": "tiny"}
    assert report["settings"]["kind"] == "semantic" and report["settings"]["checkpoint_sha256"]
    # What a pretraining set reads back
    records = [{"image_id": i, "file_name": ""} for i in props["ids"]]
    assert attach_proposals(records, out) == 0
    # Complete: nothing to do. Another trunk: refused while a partial job is pending.
    assert cli.main(argv) == 0
    other, _, _ = trunk(tmp_path, seed=1)
    os.makedirs(out + ".partial")
    with open(out + ".partial/manifest.json", "w") as f:
        json.dump({"format": 1, "items_sha256": report["items_sha256"], "settings_sha256": report["settings_sha256"]}, f)
    assert cli.main(argv[:5] + [other] + argv[6:] + ["--overwrite"]) == 2  # "different proposal settings"


def test_the_job_in_one_process_gives_the_same_file(tmp_path):
    path, _, _ = trunk(tmp_path)
    images = str(tmp_path / "imgs")
    scenes(images, 3)
    cli = load_script("tools/generate_proposals.py", "generate_proposals_cli")
    outs = []
    for workers in ("0", "2"):
        out = str(tmp_path / f"p{workers}.pkl")
        assert cli.main(["--image-dir", images, "--output", out, "--from-features", path, "--workers", workers,
                         "--feature-min-size", "96", "--no-progress"]) == 0
        with open(out, "rb") as f:
            outs.append(f.read())
    assert outs[0] == outs[1]


# ----------------------------------------------------------------------------- recall
def test_recall_benchmark_scores_both_kinds_against_the_labelled_boxes(tmp_path, tiny_images):
    json_file, image_root = tiny_images
    path, _, _ = trunk(tmp_path)
    bench = load_script("benchmarks/proposal_recall.py")
    out = tmp_path / "recall.json"
    argv = ["--coco-json", json_file, "--image-root", image_root, "--out", str(out), "--from-features", path,
            "--workers", "0", "--limit", "3", "--feature-min-size", "96"]
    result = bench.main(argv)
    assert set(result["results"]) == {"selective_search", "semantic"}
    with open(json_file) as f:
        data = json.load(f)
    first = {im["id"] for im in data["images"][:3]}
    n_gt = sum(a["image_id"] in first for a in data["annotations"])
    for r in result["results"].values():
        assert r["n_images"] == 3 and r["n_done"] == 3 and r["n_gt"] == n_gt and r["n_failed"] == 0
        assert 0 <= r["recall_top10_at_0_5"] <= r["recall_at_0_5"] <= 1 and r["recall_at_0_7"] <= r["recall_at_0_5"]
        assert os.path.isfile(r["proposal_file"]) and r["filter_stages"]
    assert json.loads(out.read_text())["results"]["semantic"]["settings"]["kind"] == "semantic"
    again = bench.main(argv)  # the proposals are reused, the figures the same
    assert again["results"]["semantic"]["recall_at_0_5"] == result["results"]["semantic"]["recall_at_0_5"]
    assert again["results"]["semantic"]["wall_s"] is None
