"""Montage's canvas: aspect groups, the layout rule, the region map, and that each region holds
its own sample (soco_d2/methods/montage/layout.py, mapper.py)."""
import itertools

import cv2
import numpy as np
import pytest

from soco_d2.methods.montage.layout import aspect_group, choose_layout, layout_distortion, region_map
from soco_d2.methods.montage.mapper import MontageDatasetMapper
from soco_d2.methods.montage.samples import sample_records

ASPECTS = [0.3, 0.45, 0.5, 0.8, 1.0, 1.3, 1.5, 2.2, 3.0]


def paint_count(rects, canvas):
    """How many rectangles cover each pixel, counted independently of region_map."""
    count = np.zeros((canvas, canvas), np.int64)
    for x0, y0, x1, y1 in rects:
        count[y0:y1, x0:x1] += 1
    return count


def test_aspect_groups_follow_the_spec_bounds():
    assert [aspect_group(a) for a in (0.2, 0.49, 0.5, 1.0, 1.5, 1.51, 4.0)] == [1, 1, 0, 0, 0, 2, 2]
    assert aspect_group(0.6, (0.7, 1.2)) == 1 and aspect_group(1.3, (0.7, 1.2)) == 2


@pytest.mark.parametrize("canvas, min_region", [(224, 32), (96, 32), (128, 48), (64, 32)])
def test_layout_tiles_the_canvas_exactly(canvas, min_region):
    for aspects in itertools.product(ASPECTS[::2], repeat=4):
        rects = choose_layout(aspects, canvas, min_region)
        assert len(rects) == 4
        assert (paint_count(rects, canvas) == 1).all(), (aspects, rects)
        for x0, y0, x1, y1 in rects:
            assert x1 - x0 >= min_region and y1 - y0 >= min_region
        regions = region_map(rects, canvas)
        for i, (x0, y0, x1, y1) in enumerate(rects):
            assert (regions[y0:y1, x0:x1] == i).all()
        assert sorted(np.bincount(regions.ravel()).tolist()) == sorted((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in rects)


def test_region_map_refuses_a_gap_or_an_overlap():
    with pytest.raises(ValueError, match="do not tile"):
        region_map([(0, 0, 32, 64), (32, 0, 64, 32), (32, 32, 64, 64), (0, 0, 8, 8)], 64)
    with pytest.raises(ValueError, match="do not tile"):
        region_map([(0, 0, 32, 64), (32, 0, 64, 32), (32, 32, 64, 60), (0, 0, 0, 0)], 64)


def test_layout_adapts_to_the_aspect_groups():
    canvas = 224
    # Four square-ish samples: four near-square quadrants.
    rects = choose_layout([1.0, 1.0, 1.0, 1.0], canvas, 32)
    assert sorted(rects) == sorted([(0, 0, 112, 112), (0, 112, 112, 224), (112, 0, 224, 112), (112, 112, 224, 224)])
    # Two tall (T) and two wide (W) samples: the tall ones share a narrow column, the wide ones
    # are stacked beside them, and no region is distorted much.
    tall_wide = [0.4, 2.5, 0.4, 2.5]
    rects = choose_layout(tall_wide, canvas, 32)
    assert rects[0][0] == rects[2][0] and rects[0][2] == rects[2][2]  # same column
    assert rects[0][2] - rects[0][0] < canvas // 2  # narrow
    assert all(aspect_group((x1 - x0) / (y1 - y0)) == aspect_group(a)
               for a, (x0, y0, x1, y1) in zip(tall_wide, rects)), rects
    # 1/U = 1.45 is the least (uniform) distortion any 2 x 2 split reaches for these four.
    assert max(abs(np.log(d)) for d in layout_distortion(tall_wide, rects)) < np.log(1.5)
    # Four wide samples: rows, each region wide.
    rects = choose_layout([2.0, 2.0, 2.0, 2.0], canvas, 32)
    assert all((x1 - x0) > (y1 - y0) for x0, y0, x1, y1 in rects)
    # The chosen layout is the least distorted of the six: never worse than a plain 2x2 grid.
    for aspects in itertools.product([0.35, 1.0, 2.8], repeat=4):
        grid = [(0, 0, 112, 112), (112, 0, 224, 112), (0, 112, 112, 224), (112, 112, 224, 224)]
        worst = max(abs(np.log(d)) for d in layout_distortion(aspects, choose_layout(aspects, canvas, 32)))
        assert worst <= max(abs(np.log(d)) for d in layout_distortion(aspects, grid)) + 1e-9


def solid_dataset(tmp_path, colours, sizes):
    """One image per colour, each with one box (class = its index); sample records for them."""
    records = []
    for i, (colour, (w, h)) in enumerate(zip(colours, sizes)):
        path = str(tmp_path / f"{i}.png")
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = colour[::-1]  # stored BGR
        cv2.imwrite(path, img)
        box = [w * 0.2, h * 0.2, w * 0.8, h * 0.8]
        records.append({"file_name": path, "image_id": i, "annotations": [
            {"bbox": box, "bbox_mode": 0, "category_id": i, "iscrowd": 0}]})
    return sample_records(records, "gt")


def test_each_region_holds_its_own_sample(tmp_path):
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    sizes = [(120, 40), (40, 120), (80, 80), (100, 60)]
    records = solid_dataset(tmp_path, colours, sizes)
    mapper = MontageDatasetMapper(records, canvas_size=96, num_classes=4, background_prob=0.0,
                                  context=(0.0, 0.5), image_format="RGB")
    seen = set()
    for k in range(24):
        out = mapper(records[k % 4], seed=[7, k])
        image, regions = out["image"].numpy().transpose(1, 2, 0), out["regions"].numpy()
        assert regions.shape == (96, 96) and set(np.unique(regions)) == {0, 1, 2, 3}
        for i in range(4):
            source = int(out["refs"][i, 0])
            assert int(out["labels"][i]) == source  # class = the image it was cut from
            pixels = image[regions == i].astype(int)
            assert np.abs(pixels - np.array(colours[source])).max() <= 2, (k, i, source)
            x0, y0, x1, y1 = out["crops"][i].tolist()
            w, h = sizes[source]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            seen.add(source)
    assert seen == {0, 1, 2, 3}
