"""Montage's samples and mapper: determinism per (seed, sample number), background crops with IoU
0 to every box, context enlargement, label-free samples, bad images
(soco_d2/methods/montage/samples.py, mapper.py)."""
import numpy as np
import pytest
import torch
from detectron2.data.datasets import load_coco_json
from detectron2.structures import Boxes, pairwise_iou

from soco_d2.data.sample_stream import SampleStreamDataset, sample_seed
from soco_d2.methods.montage.mapper import MontageDatasetMapper
from soco_d2.methods.montage.samples import draw_piece, sample_records

PIECE_ARGS = dict(context=(0.0, 0.3), background_scale=(0.02, 0.25), group_bounds=(0.5, 1.5),
                  background_tries=20, min_box_size=8)


@pytest.fixture(scope="module")
def labelled(tiny_images):
    json_file, image_root = tiny_images
    return sample_records(load_coco_json(json_file, image_root, "montage_test_tiny"), "gt")


def mapper_for(records, **kw):
    return MontageDatasetMapper(records, canvas_size=64, num_classes=4, **kw)


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("image", "regions", "labels", "refs", "groups", "crops"))


def test_output_contract(labelled):
    out = mapper_for(labelled)(labelled[0], seed=sample_seed(0, 0))
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 64)
    assert out["regions"].shape == (64, 64) and set(out["regions"].unique().tolist()) == {0, 1, 2, 3}
    assert out["labels"].shape == (4,) and ((out["labels"] >= 0) & (out["labels"] <= 4)).all()
    assert out["refs"].shape == (4, 2) and out["groups"].shape == (4,)
    assert out["file_name"] == labelled[0]["file_name"]
    assert labelled[0]["index"] in out["refs"][:, 0].tolist()  # the stream's image leads


def test_deterministic_per_seed_and_sample_number(labelled):
    a, b = mapper_for(labelled), mapper_for(labelled)
    for k in range(6):
        record = labelled[k % len(labelled)]
        assert same(a(record, seed=sample_seed(3, k)), b(record, seed=sample_seed(3, k)))
    outs = [a(labelled[0], seed=sample_seed(3, k)) for k in range(4)]
    assert not all(same(outs[0], o) for o in outs[1:])  # other sample numbers, other montages
    assert not same(a(labelled[0], seed=sample_seed(4, 0)), outs[0])  # other seed
    # Through the shared stream: sample k is the same whichever dataset object computes it.
    s1, s2 = SampleStreamDataset(labelled, a, seed=5), SampleStreamDataset(labelled, b, seed=5)
    for k in (0, 3, 11, 17):
        assert same(s1[k], s2[k])
    # numpy's global RNG is neither used nor disturbed
    np.random.seed(0)
    before = np.random.random_sample()
    np.random.seed(0)
    a(labelled[0], seed=sample_seed(3, 0))
    assert np.random.random_sample() == before


def random_record(rng, n_boxes, size=(160, 120)):
    w, h = size
    xy = rng.uniform(0, [w - 20, h - 20], size=(n_boxes, 2))
    wh = rng.uniform(8, 60, size=(n_boxes, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return {"file_name": "x", "image_id": 0, "index": 0, "boxes": boxes,
            "classes": np.arange(n_boxes), "usable": np.ones(n_boxes, bool)}, (w, h)


def test_background_crops_have_iou_zero_with_every_box():
    rng = np.random.RandomState(0)
    found = 0
    for trial in range(200):
        record, (w, h) = random_record(rng, int(rng.randint(0, 6)))
        piece = draw_piece(record, w, h, rng, background_prob=1.0, **PIECE_ARGS)
        if piece is None or piece["box"] >= 0:
            continue  # no room for a background crop: a positive or nothing
        found += 1
        assert piece["label"] is None
        x0, y0, x1, y1 = piece["crop"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert min(x1 - x0, y1 - y0) >= PIECE_ARGS["min_box_size"]
        if len(record["boxes"]):
            iou = pairwise_iou(Boxes(torch.tensor([piece["crop"]], dtype=torch.float32)),
                               Boxes(torch.from_numpy(np.minimum(record["boxes"], [w, h, w, h]))))
            assert (iou == 0).all(), (piece, record["boxes"])
    assert found > 100


def test_positives_hold_their_box_with_context():
    rng = np.random.RandomState(1)
    for trial in range(100):
        record, (w, h) = random_record(rng, 3)
        piece = draw_piece(record, w, h, rng, background_prob=0.0, **PIECE_ARGS)
        b = np.minimum(record["boxes"][piece["box"]], [w, h, w, h])
        x0, y0, x1, y1 = piece["crop"]
        assert x0 <= b[0] and y0 <= b[1] and x1 >= b[2] and y1 >= b[3]
        bw, bh = b[2] - b[0], b[3] - b[1]
        assert x1 - x0 <= bw * 1.6 + 2 and y1 - y0 <= bh * 1.6 + 2  # at most 0.3 per side
        assert piece["label"] == record["classes"][piece["box"]]


def test_mapper_background_pieces_avoid_every_box(labelled):
    mapper = mapper_for(labelled, background_prob=0.5)
    seen = 0
    for k in range(30):
        out = mapper(labelled[k % 8], seed=sample_seed(0, k))
        for (index, box), label, crop in zip(out["refs"].tolist(), out["labels"].tolist(), out["crops"]):
            if box >= 0:
                assert label == labelled[index]["classes"][box]
                continue
            seen += 1
            assert label == 4  # background = NUM_CLASSES
            iou = pairwise_iou(Boxes(crop[None]), Boxes(torch.from_numpy(labelled[index]["boxes"])))
            assert (iou == 0).all()
    assert seen > 10


def test_label_free_samples_are_the_first_proposals():
    records = [
        {"file_name": "a.jpg", "image_id": 1, "proposal_boxes": np.arange(40, dtype=np.float32).reshape(10, 4)},
        {"file_name": "b.jpg", "image_id": 2, "proposal_boxes": np.zeros((0, 4), np.float32)},
    ]
    out = sample_records(records, "proposals", proposals_per_image=3)
    assert out[0]["boxes"].tolist() == records[0]["proposal_boxes"][:3].tolist()
    assert (out[0]["classes"] == -1).all() and out[0]["index"] == 0 and out[1]["index"] == 1
    assert len(out[1]["boxes"]) == 1  # no proposal: the whole image
    with pytest.raises(ValueError, match="has no proposals"):
        sample_records([{"file_name": "c.jpg", "image_id": 3}], "proposals")


def test_label_free_montage_asks_the_model_for_classes(tiny_images):
    json_file, image_root = tiny_images
    raw = load_coco_json(json_file, image_root, "montage_test_tiny")
    for r in raw:  # proposals = the labelled boxes, labels ignored
        r["proposal_boxes"] = np.array([a["bbox"] for a in r["annotations"]], np.float32)
        r["proposal_boxes"][:, 2:] += r["proposal_boxes"][:, :2]
    records = sample_records(raw, "proposals")
    out = mapper_for(records, background_prob=0.3)(records[2], seed=sample_seed(0, 1))
    for (index, box), label in zip(out["refs"].tolist(), out["labels"].tolist()):
        assert label == (-1 if box >= 0 else 4)
        assert box < len(records[index]["boxes"])


def test_unreadable_images_are_skipped_and_counted(labelled, tmp_path, caplog):
    broken = dict(labelled[0], file_name=str(tmp_path / "broken.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    missing = dict(labelled[1], file_name=str(tmp_path / "missing.jpg"))
    mapper = mapper_for(labelled)
    assert mapper(broken, seed=sample_seed(0, 0)) is None
    assert mapper(missing, seed=sample_seed(0, 1)) is None
    assert mapper.num_skipped == 2 and "broken.jpg" in caplog.text and "missing.jpg" in caplog.text
    # A broken partner spoils the montage too; the stream then uses another image.
    only_broken = mapper_for([broken])
    assert only_broken(labelled[0], seed=sample_seed(0, 0)) is None
    stream = SampleStreamDataset([broken] + labelled[1:], mapper_for(labelled), seed=0)
    for k in range(len(labelled)):
        assert stream[k] is not None
