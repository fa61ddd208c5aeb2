"""SoCoDatasetMapper and its helpers (views, boxes, levels, colour), on tiny synthetic images."""
import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes

from soco_d2 import add_soco_config
from soco_d2.data.color_augment import cutout_in_boxes
from soco_d2.data.box_ops import clip_boxes, jitter_boxes, random_resized_crop, resize_antialiased
from soco_d2.methods.soco.mapper import SoCoDatasetMapper
from soco_d2.methods.soco.views import assign_levels, random_proposals

SMALL = dict(view1_size=64, view2_size=64, view3_size=32)
NO_COLOUR = dict(
    color_jitter_prob=0.0,
    grayscale_prob=0.0,
    blur_prob=(0.0, 0.0),
    solarize_prob=(0.0, 0.0),
    cutout_in_box=False,
)


def smooth_texture(h, w, seed=0, cell=16):
    """Low-frequency colour texture: resampling differences stay small, content is unique."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // cell + 2, w // cell + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def write(tmp_path, name, array):
    path = str(tmp_path / name)
    assert cv2.imwrite(path, array)
    return path


def record(path, boxes, image_id=1):
    return {
        "file_name": path,
        "image_id": image_id,
        "proposal_boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
    }


@pytest.fixture
def image_path(tmp_path):
    return write(tmp_path, "img.png", smooth_texture(120, 160))


@pytest.fixture(autouse=True)
def seeded():
    np.random.seed(0)


def check_output(out, k, sizes):
    views = out["views"]
    assert len(views) == len(sizes)
    for v, s in zip(views, sizes):
        assert v["image"].dtype == torch.uint8 and tuple(v["image"].shape) == (3, s, s)
        assert isinstance(v["boxes"], Boxes) and v["boxes"].tensor.dtype == torch.float32
        assert v["ids"].dtype == torch.int64 and v["levels"].dtype == torch.int64
        n = len(v["boxes"])
        assert v["ids"].shape == (n,) and v["levels"].shape == (n,)
        assert len(set(v["ids"].tolist())) == n, "ids must be unique within a view"
        b = v["boxes"].tensor
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= s).all() and (b[:, 3] <= s).all()
        assert ((b[:, 2] - b[:, 0]) >= 1 - 1e-4).all() and ((b[:, 3] - b[:, 1]) >= 1 - 1e-4).all()
        assert ((v["levels"] >= 0) & (v["levels"] <= 3)).all()
    assert [(a, b) for a, b, _, _ in out["pairs"]] == [(0, i) for i in range(1, len(sizes))]
    for a, b, idx_a, idx_b in out["pairs"]:
        assert idx_a.dtype == torch.int64 and idx_b.dtype == torch.int64
        assert len(idx_a) == len(idx_b) == k
        assert torch.equal(views[a]["ids"][idx_a], views[b]["ids"][idx_b])
        assert len(set(views[b]["ids"][idx_b].tolist())) == k


def test_output_contract(image_path):
    mapper = SoCoDatasetMapper(**SMALL)
    boxes = random_proposals(np.random.default_rng(0), 160, 120, 20)
    out = mapper(record(image_path, boxes, image_id=7))
    assert out["file_name"] == image_path and out["image_id"] == 7
    check_output(out, 4, [64, 64, 32])
    assert all(0 <= i < 20 for v in out["views"] for i in v["ids"].tolist())


def test_boxes_always_valid_over_many_draws(image_path):
    # Tiny, huge, out-of-image and degenerate proposals mixed with ordinary ones.
    boxes = [[0, 0, 2, 2], [-50, -50, 300, 300], [150, 100, 400, 300], [10, 10, 10, 40],
             [158.5, 0, 160, 120], [30, 20, 90, 80], [60, 40, 150, 110]]
    mapper = SoCoDatasetMapper(box_jitter_prob=1.0, view4_size=16, **SMALL)
    for _ in range(60):
        out = mapper(record(image_path, boxes))
        check_output(out, 4, [64, 64, 32, 16])
        assert 3 not in out["views"][0]["ids"].tolist()  # degenerate proposal never used


def test_hflip_moves_boxes_and_pixels(tmp_path):
    img = np.zeros((96, 128, 3), np.uint8)
    img[:, :32] = 255  # white left quarter
    path = write(tmp_path, "flip.png", img)
    box = [[8, 12, 40, 60]]
    # scale 1 and the image's aspect ratio: every crop is the whole image.
    common = dict(crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3), box_jitter_prob=0.0,
                  **SMALL, **NO_COLOUR)
    for flip, expected in ((0.0, [4, 8, 20, 40]), (1.0, [44, 8, 60, 40])):
        out = SoCoDatasetMapper(flip_prob=flip, **common)(record(path, box))
        for v, s in zip(out["views"], (64, 64, 32)):
            got = v["boxes"].tensor[v["ids"] == 0][0]
            want = torch.tensor(expected, dtype=torch.float32) * s / 64
            assert torch.allclose(got, want, atol=1e-4), (flip, s, got, want)
            column = v["image"][0].float().mean(0)  # brightness per column
            bright_left = column[: s // 8].mean() > 200
            assert bright_left == (flip == 0.0)
            assert (column[-s // 8:].mean() > 200) == (flip == 1.0)


def box_patch(view, box, n=8):
    """The view's content inside ``box``, resampled to n x n (float32)."""
    img = view["image"].permute(1, 2, 0).numpy().astype(np.float32)
    x1, y1, x2, y2 = box.tolist()
    grid = (np.arange(n) + 0.5) / n
    mx, my = np.meshgrid(x1 + grid * (x2 - x1) - 0.5, y1 + grid * (y2 - y1) - 0.5)
    return cv2.remap(img, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR)


def pair_patch_differences(out):
    """Mean abs pixel difference of matched boxes in every pair, and of mismatched ones."""
    v = out["views"]
    same, other = [], []
    for a, b, idx_a, idx_b in out["pairs"]:
        k = len(idx_b)
        for i, j in zip(idx_a.tolist(), idx_b.tolist()):
            pa = box_patch(v[a], v[a]["boxes"].tensor[i])
            same.append(np.abs(pa - box_patch(v[b], v[b]["boxes"].tensor[j])).mean())
            other.append(np.abs(pa - box_patch(v[b], v[b]["boxes"].tensor[(j + 1) % k])).mean())
    return same, other


def test_matched_boxes_show_the_same_content(tmp_path):
    path = write(tmp_path, "tex.png", smooth_texture(144, 160, seed=3))
    mapper = SoCoDatasetMapper(
        flip_prob=0.0, box_jitter_prob=0.0, min_overlap=1.0, view1_size=96, view2_size=96,
        view3_size=64, view4_size=48, **NO_COLOUR
    )
    boxes = random_proposals(np.random.default_rng(1), 160, 144, 30)
    diffs, shuffled = [], []
    for _ in range(5):
        d, s = pair_patch_differences(mapper(record(path, boxes)))
        diffs += d
        shuffled += s
    assert np.median(diffs) < 6 and np.max(diffs) < 15, np.max(diffs)
    assert np.median(shuffled) > 3 * np.median(diffs)


def test_box_jitter_bounds():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (500, 2))
    wh = rng.uniform(1, 80, (500, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    r = 0.1
    out = jitter_boxes(boxes, r)
    w, h = wh[:, 0], wh[:, 1]
    ow, oh = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    tol = 1e-3
    assert (np.abs(out[:, 0] - boxes[:, 0]) <= r * w + tol).all()
    assert (np.abs(out[:, 1] - boxes[:, 1]) <= r * h + tol).all()
    assert (np.abs(ow / w - 1) <= r + tol).all() and (np.abs(oh / h - 1) <= r + tol).all()
    assert not np.allclose(out, boxes)
    clipped = clip_boxes(out * 2 - 30, 64, 64)
    assert (clipped >= 0).all() and (clipped <= 64).all()
    assert ((clipped[:, 2:] - clipped[:, :2]) >= 1 - 1e-5).all()


def test_v1_jitter_in_mapper(image_path):
    boxes = [[20, 20, 100, 90]]
    common = dict(crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3), flip_prob=0.0, **SMALL)
    ref = SoCoDatasetMapper(box_jitter_prob=0.0, **common)(record(image_path, boxes))
    ref_box = ref["views"][0]["boxes"].tensor[0]
    moved = 0
    for _ in range(20):
        out = SoCoDatasetMapper(box_jitter_prob=1.0, **common)(record(image_path, boxes))
        v1, v2 = out["views"][0], out["views"][1]
        b = v1["boxes"].tensor[v1["ids"] == 0][0]
        w, h = ref_box[2] - ref_box[0], ref_box[3] - ref_box[1]
        assert abs(b[0] - ref_box[0]) <= 0.1 * w + 1e-3 and abs(b[1] - ref_box[1]) <= 0.1 * h + 1e-3
        moved += not torch.allclose(b, ref_box)
        # Only V1 is jittered.
        assert torch.allclose(v2["boxes"].tensor[v2["ids"] == 0][0], ref_box, atol=1e-4)
    assert moved == 20


@pytest.mark.parametrize(
    "side,level", [(1, 0), (47.9, 0), (48, 0), (48.01, 1), (96, 1), (96.01, 2), (192, 2),
                   (192.01, 3), (1000, 3)]
)
def test_assign_levels_at_thresholds(side, level):
    box = np.array([[10, 20, 10 + side, 20 + side]], np.float64)
    assert assign_levels(box, (48, 96, 192)).tolist() == [level]
    t = assign_levels(torch.tensor(box, dtype=torch.float32), (48, 96, 192))
    assert t.dtype == torch.int64 and t.tolist() == [level]


def test_assign_levels_non_square():
    # sqrt(24 * 96) = 48 -> P2; sqrt(24 * 97) > 48 -> P3
    boxes = np.array([[0, 0, 24, 96], [0, 0, 24, 97]], np.float32)
    assert assign_levels(boxes, (48, 96, 192)).tolist() == [0, 1]
    assert assign_levels(np.zeros((0, 4)), (48, 96, 192)).shape == (0,)


def test_level_rules_in_mapper(image_path):
    boxes = random_proposals(np.random.default_rng(0), 160, 120, 10)
    for rule in ("scale_aware", "all", "canonical"):
        out = SoCoDatasetMapper(level_assignment=rule, level_thresholds=(16, 32, 48), **SMALL)(
            record(image_path, boxes)
        )
        for v in out["views"]:
            b = v["boxes"].tensor
            s = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sqrt()
            if rule == "canonical":  # floor(4 + log2(s / 224)) clamped to 2..5, minus 2
                want = (4 + torch.log2(s / 224 + 1e-8)).floor().clamp(2, 5).long() - 2
            else:
                want = (s > 16).long() + (s > 32).long() + (s > 48).long()
            assert torch.equal(v["levels"], want), rule


def test_padding_with_fewer_than_k_proposals(image_path):
    boxes = [[10, 10, 150, 110], [40, 30, 120, 100]]  # P = 2, both always visible
    for _ in range(10):
        out = SoCoDatasetMapper(num_proposals=4, **SMALL)(record(image_path, boxes))
        check_output(out, 4, [64, 64, 32])
        for _, b, _, idx_b in out["pairs"]:
            ids = out["views"][b]["ids"][idx_b].tolist()
            assert sorted(i for i in ids if i < 2) == [0, 1]
            assert all(i >= 2 for i in ids[2:]) and len(set(ids)) == 4


@pytest.mark.parametrize("boxes", [np.zeros((0, 4)), None, [[5, 5, 5, 50]]])
def test_whole_image_fallback(image_path, boxes):
    rec = record(image_path, np.zeros((0, 4)) if boxes is None else boxes)
    if boxes is None:
        del rec["proposal_boxes"]
    p = 0 if boxes is None else len(boxes)
    out = SoCoDatasetMapper(
        flip_prob=0.0, box_jitter_prob=0.0, crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3),
        **SMALL,
    )(rec)
    check_output(out, 4, [64, 64, 32])
    v1 = out["views"][0]
    assert all(i >= p for i in v1["ids"].tolist())
    whole = v1["boxes"].tensor[v1["ids"] == p]
    assert torch.allclose(whole, torch.tensor([[0.0, 0, 64, 64]]))


def test_downsample_mode(image_path):
    boxes = random_proposals(np.random.default_rng(2), 160, 120, 15)
    mapper = SoCoDatasetMapper(view3_mode="downsample", **SMALL)
    for _ in range(5):
        out = mapper(record(image_path, boxes))
        check_output(out, 4, [64, 64, 32])
        v2, v3 = out["views"][1], out["views"][2]
        assert torch.equal(v2["ids"], v3["ids"])
        assert torch.allclose(v3["boxes"].tensor, v2["boxes"].tensor * 0.5, atol=1e-4)
        assert torch.equal(out["pairs"][0][2], out["pairs"][1][2])


def test_four_views(image_path):
    boxes = random_proposals(np.random.default_rng(3), 160, 120, 15)
    out = SoCoDatasetMapper(view4_size=48, **SMALL)(record(image_path, boxes))
    check_output(out, 4, [64, 64, 32, 48])
    assert len(out["pairs"]) == 3
    v2, v4 = out["views"][1], out["views"][3]
    assert torch.equal(v2["ids"], v4["ids"])
    assert torch.allclose(v4["boxes"].tensor, v2["boxes"].tensor * 0.75, atol=1e-4)


def test_cutout_in_boxes_function():
    """Published cutout: a square of 10-30% of the box's area centred in the box, filled with
    the given colour, clipped to the image (not to the box)."""
    img = np.full((50, 60, 3), 255, np.uint8)
    fill = (10, 20, 30)
    # The second box touches the image border: its square may be clipped by the image.
    boxes = np.array([[5.0, 5.0, 25.0, 30.0], [40.5, 10.2, 60.0, 45.9]], np.float32)
    cutout_in_boxes(img, boxes, prob=1.0, area=(0.1, 0.3), fill=fill)
    filled = (img == np.array(fill, np.uint8)).all(2)
    assert ((img == 255).all(2) | filled).all()  # only the fill colour is written
    largest = 0.0
    for x1, y1, x2, y2 in boxes:
        region = filled[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))]
        assert region.any()  # centred in the box, so some of it lies in the box
        largest += (np.sqrt(0.3 * (x2 - x1) * (y2 - y1)) + 1) ** 2  # side rounded up by 1 px
    assert filled.sum() <= largest


def test_cutout_square_is_clipped_to_the_image_not_the_box():
    """A square centred near a box's corner reaches outside the box (but never the image)."""
    outside_box = 0
    for seed in range(20):
        np.random.seed(seed)
        img = np.full((64, 64, 3), 255, np.uint8)
        box = np.array([[20.0, 20.0, 44.0, 44.0]], np.float32)
        cutout_in_boxes(img, box, prob=1.0, area=(0.3, 0.3), fill=(0, 0, 0))
        filled = (img == 0).all(2)
        inside = np.zeros_like(filled)
        inside[20:44, 20:44] = True
        outside_box += int((filled & ~inside).any())
    assert outside_box > 0


def test_cutout_in_mapper_fills_with_the_pixel_mean_on_crop_views(tmp_path):
    """On V2/V3/V4 only, in the pixel-mean colour (0 after normalisation), given in
    INPUT.FORMAT order (RGB here) while the mapper works in BGR."""
    path = write(tmp_path, "white.png", np.full((120, 160, 3), 255, np.uint8))
    boxes = [[10, 10, 70, 60], [80, 40, 150, 110], [30, 50, 120, 115]]
    colour_off = {k: v for k, v in NO_COLOUR.items() if k != "cutout_in_box"}
    mean_rgb = (123.675, 116.28, 103.53)
    mapper = SoCoDatasetMapper(cutout_prob=1.0, cutout_fill=mean_rgb, view4_size=48, **SMALL, **colour_off)
    fill = torch.tensor([124, 116, 104], dtype=torch.uint8)[:, None, None]  # RGB, rounded
    for _ in range(5):
        out = mapper(record(path, boxes))
        assert (out["views"][0]["image"] == 255).all()  # never on V1
        for v in out["views"][1:]:
            filled = (v["image"] == fill).all(0)
            assert filled.any()
            assert ((v["image"] == 255).all(0) | filled).all()


@pytest.mark.parametrize("kind", ["gray", "rgba", "gray16", "jpeg_gray"])
def test_other_image_types(tmp_path, kind):
    base = smooth_texture(100, 130)
    if kind == "gray":
        path = write(tmp_path, "g.png", base[:, :, 0])
    elif kind == "rgba":
        path = write(tmp_path, "a.png", np.dstack([base, np.full(base.shape[:2], 128, np.uint8)]))
    elif kind == "gray16":
        path = write(tmp_path, "g16.png", base[:, :, 0].astype(np.uint16) * 257)
    else:
        path = write(tmp_path, "g.jpg", base[:, :, 0])
    out = SoCoDatasetMapper(**SMALL, **NO_COLOUR)(record(path, [[10, 10, 90, 80]]))
    check_output(out, 4, [64, 64, 32])
    img = out["views"][0]["image"]
    if kind != "rgba":
        assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    if kind == "gray16":
        assert img.float().mean() > 60  # scaled to 8 bits, not saturated or truncated to ~0
        assert (img < 255).float().mean() > 0.5


def test_channel_order(tmp_path):
    img = np.zeros((96, 128, 3), np.uint8)
    img[:, :, 2] = 200  # red in OpenCV's BGR file order
    path = write(tmp_path, "red.png", img)
    for fmt, channel in (("RGB", 0), ("BGR", 2)):
        out = SoCoDatasetMapper(image_format=fmt, **SMALL, **NO_COLOUR)(record(path, []))
        for v in out["views"]:
            means = v["image"].float().mean((1, 2))
            assert means[channel] > 190 and means.sum() - means[channel] < 10
    with pytest.raises(ValueError):
        SoCoDatasetMapper(image_format="YUV-BT.601")


def test_exif_orientation(tmp_path):
    from PIL import Image

    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:20, :30] = 255  # top-left quarter of the stored pixels
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display -> white quarter top-right
    path = str(tmp_path / "rot.jpg")
    im.save(path, exif=exif.tobytes(), quality=95)
    out = SoCoDatasetMapper(flip_prob=0.0, **SMALL, **NO_COLOUR)(record(path, [[0, 0, 40, 60]]))
    v1 = out["views"][0]["image"][0].float()
    assert v1[:28, 36:].mean() > 200 and v1[:28, :28].mean() < 50 and v1[36:].mean() < 50


def test_reduced_decode_keeps_geometry(tmp_path, monkeypatch):
    # 1040 x 800 JPEG with 64 px views: decoded at 1/8 for most crops; results must agree.
    path = str(tmp_path / "big.jpg")
    cv2.imwrite(path, smooth_texture(800, 1040, seed=5, cell=128), [cv2.IMWRITE_JPEG_QUALITY, 95])
    boxes = random_proposals(np.random.default_rng(4), 1040, 800, 20)
    kw = dict(flip_prob=0.0, min_overlap=1.0, box_jitter_prob=0.0, **SMALL, **NO_COLOUR)
    mapper = SoCoDatasetMapper(**kw)
    assert mapper._reduce_factor(1040, 800, [((0, 0, 600, 560), 64)]) == 8
    assert mapper._reduce_factor(1040, 800, [((0, 0, 600, 500), 64)]) == 4
    assert mapper._reduce_factor(1040, 800, [((0, 0, 600, 100), 64)]) == 1
    from soco_d2.methods.soco import mapper as mapper_module

    factors = []
    decode = mapper_module.decode_image
    monkeypatch.setattr(
        mapper_module, "decode_image", lambda data, f=1: factors.append(f) or decode(data, f)
    )
    np.random.seed(1)
    fast = mapper(record(path, boxes))
    assert factors == [8]
    np.random.seed(1)
    full = SoCoDatasetMapper(reduced_decode=False, **kw)(record(path, boxes))
    # Crops snap to the 8 px grid of the reduced image (<= 0.5 view px here); the boxes
    # follow the crop actually used, so they still sit on the same content.
    for a, b in zip(fast["views"], full["views"]):
        assert torch.equal(a["ids"], b["ids"])
        assert torch.allclose(a["boxes"].tensor, b["boxes"].tensor, atol=0.5)
        assert (a["image"].float() - b["image"].float()).abs().mean() < 6
    same, _ = pair_patch_differences(fast)
    assert np.max(same) < 10


def test_random_resized_crop_semantics():
    for _ in range(200):
        x0, y0, w, h = random_resized_crop(120, 160, (0.5, 1.0), (3 / 4, 4 / 3))
        assert 0 <= x0 and x0 + w <= 160 and 0 <= y0 and y0 + h <= 120
        assert 0.5 * 120 * 160 * 0.9 <= w * h <= 120 * 160
    # No square crop of >= 90% of the area fits a 100 x 10 image: centred fallback.
    assert random_resized_crop(10, 100, (0.9, 1.0), (1.0, 1.0)) == (45, 0, 10, 10)


def test_resize_antialiased_shapes():
    src = np.random.default_rng(0).integers(0, 256, (481, 641, 3), dtype=np.uint8)
    for w, h in ((224, 224), (112, 112), (300, 100), (100, 300), (700, 500)):
        assert resize_antialiased(src, w, h).shape == (h, w, 3)
    flat = np.full((480, 640, 3), 77, np.uint8)
    assert (resize_antialiased(flat, 224, 224) == 77).all()


def test_from_config(image_path):
    cfg = add_soco_config(get_cfg())
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.SOCO.VIEW1_SIZE, cfg.INPUT.SOCO.VIEW2_SIZE, cfg.INPUT.SOCO.VIEW3_SIZE = 64, 64, 32
    cfg.INPUT.SOCO.VIEW4_SIZE = 16
    cfg.INPUT.SOCO.NUM_PROPOSALS = 3
    cfg.MODEL.SOCO.LEVEL_ASSIGNMENT = "canonical"
    mapper = SoCoDatasetMapper(cfg, is_train=True)
    assert mapper.level_assignment == "canonical" and mapper.k == 3
    out = mapper(record(image_path, [[10, 10, 100, 90], [50, 40, 150, 110]]))
    check_output(out, 3, [64, 64, 32, 16])


@pytest.mark.parametrize("min_overlap", [0.0, 0.5])
def test_proposal_counts_for_a_crop_when_it_overlaps_it(min_overlap):
    """Published rule (min_overlap 0): any overlap with the crop counts; the ablation 0.5 asks
    for half of the box inside. Proposals are a grid of boxes, so some always straddle the
    crop's border."""
    from soco_d2.data.box_ops import inside_fraction
    from soco_d2.methods.soco.views import select_in_crop

    xs = np.arange(0, 100, 10, dtype=np.float32)
    boxes = np.array([[x, y, x + 25, y + 25] for x in xs for y in xs], np.float32)
    fractions = []
    for _ in range(50):
        crop, chosen = select_in_crop(boxes, 120, 120, 8, (0.2, 0.3), (1.0, 1.0), 0, min_overlap)
        frac = inside_fraction(boxes[chosen], crop)
        assert (frac > 0).all() and (frac >= min_overlap).all()
        fractions += frac.tolist()
    assert (min(fractions) < 0.5) == (min_overlap == 0.0)


def test_mapper_clips_a_partly_visible_proposal_to_the_crop(tmp_path):
    """With the published rule a box half outside V2's crop is kept, clipped to the view."""
    path = write(tmp_path, "tex.png", smooth_texture(120, 160))
    mapper = SoCoDatasetMapper(num_proposals=2, crop_scale=(0.3, 0.4), **SMALL, **NO_COLOUR)
    assert mapper.min_overlap == 0.0  # the default is the published rule
    boxes = random_proposals(np.random.default_rng(2), 160, 120, 20)
    for _ in range(10):
        for v in mapper(record(path, boxes))["views"]:
            b = v["boxes"].tensor
            size = v["image"].shape[-1]
            assert (b >= 0).all() and (b <= size).all()


def test_two_view_mode_for_the_published_c4_run(image_path):
    """VIEW3_SIZE 0: V1 and V2 only, one pair (the published R50-C4 run)."""
    out = SoCoDatasetMapper(view1_size=64, view2_size=64, view3_size=0, **NO_COLOUR)(
        record(image_path, [[10, 10, 90, 80], [40, 20, 150, 110]]))
    check_output(out, 4, [64, 64])
    assert [p[:2] for p in out["pairs"]] == [(0, 1)]
