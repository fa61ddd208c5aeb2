"""Proposal generation: SoCo's filter, selective search, the resumable job and its CLI (CPU)."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from soco_d2.data.proposals import job as proposal_job
from soco_d2.data.image_list import list_coco_images, list_image_folder
from soco_d2.data.proposals import (
    ASPECT, FULL, SIZE, WHOLE_IMAGE, BoxFilter, ImageReadError, ProposalSettings,
    failures_path, filter_boxes, generate_proposals, load_image_bgr, partial_dir, propose_image,
)
from train_helpers import load_script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO_ROOT, "tools", "generate_proposals.py")


def _scene(seed, width=160, height=120):
    """A textured background with a few filled shapes: something for selective search."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(rng.integers(40, 200), 12, (height, width, 3)), 0, 255).astype(np.uint8)
    for _ in range(3):
        x1, y1 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x2, y2 = x1 + int(rng.integers(30, width // 2)), y1 + int(rng.integers(30, height // 2))
        cv2.rectangle(img, (x1, y1), (x2, y2), [int(c) for c in rng.integers(0, 255, 3)], -1)
    cv2.circle(img, (int(rng.integers(30, width - 30)), int(rng.integers(30, height - 30))),
               int(rng.integers(15, 30)), [int(c) for c in rng.integers(0, 255, 3)], -1)
    return img


def _write_images(folder, n, start=0):
    os.makedirs(folder, exist_ok=True)
    for i in range(start, start + n):
        cv2.imwrite(os.path.join(folder, f"img{i:03d}.jpg"), _scene(i))


def _load_cli():
    return load_script("tools/generate_proposals.py", "generate_proposals_cli")


# ----------------------------------------------------------------------------- filter

def _kept(boxes, width, height):
    result = filter_boxes(np.array(boxes, dtype=np.float64), width, height)
    return result.stage, result.keep.tolist()


def test_filter_min_size_boundary():
    # 100x100 image: 32x32 has scale 0.32, aspect 1
    assert _kept([[0, 0, 32, 32], [0, 0, 31.99, 32], [5, 5, 37, 36.99]], 100, 100) == (FULL, [0])


def test_filter_aspect_boundary():
    # 150x150 image: 120x40 boxes have scale 0.46
    boxes = [[0, 0, 120, 40], [0, 0, 40, 120], [0, 0, 120.01, 40], [0, 0, 40, 120.01]]
    assert _kept(boxes, 150, 150) == (FULL, [0, 1])


@pytest.mark.parametrize("width,height,lo,hi", [
    (200, 200, (60, 60), (160, 160)),
    (640, 480, (192, 144), (512, 384)),
    (400, 200, (120, 60), (320, 160)),
])
def test_filter_scale_boundary(width, height, lo, hi):
    eps = 0.01
    boxes = [[0, 0, *lo], [0, 0, *hi], [0, 0, lo[0] - eps, lo[1]], [0, 0, hi[0] + eps, hi[1]]]
    assert _kept(boxes, width, height) == (FULL, [0, 1])


def test_filter_fallbacks_in_order():
    W = H = 1000  # every box below is far too small for the scale rule
    small_square = [0, 0, 20, 20]      # aspect ok, size too small
    wide_big = [0, 0, 400, 40]         # size ok, aspect 10
    thin_small = [0, 0, 100, 10]       # neither
    r = filter_boxes(np.array([thin_small, small_square, wide_big]), W, H)
    assert (r.stage, r.keep.tolist()) == (ASPECT, [1])  # (a) wins over (b)
    np.testing.assert_array_equal(r.boxes, np.array([small_square], np.float32))
    assert _kept([thin_small, wide_big], W, H) == (SIZE, [1])
    for boxes in ([thin_small, [0, 0, 5, 60]], np.zeros((0, 4))):
        r = filter_boxes(np.array(boxes, dtype=np.float64), W, H)
        assert r.stage == WHOLE_IMAGE and r.keep.size == 0
        np.testing.assert_array_equal(r.boxes, np.array([[0, 0, W, H]], np.float32))
    # degenerate boxes never pass, not even the aspect rule
    assert _kept([[3, 3, 3, 3]], W, H)[0] == WHOLE_IMAGE


def test_filter_thresholds_are_parameters():
    cfg = BoxFilter(min_size=10, max_aspect_ratio=2, min_scale=0.1, max_scale=0.9)
    r = filter_boxes(np.array([[0, 0, 10, 20], [0, 0, 10, 21]]), 100, 100, cfg)
    assert (r.stage, r.keep.tolist()) == (FULL, [0])


# ----------------------------------------------------------------------------- selective search

def test_propose_image_deterministic_and_valid(tmp_path):
    _write_images(str(tmp_path), 1)
    path = str(tmp_path / "img000.jpg")
    a, b = propose_image(path), propose_image(path)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.objectness_logits, b.objectness_logits)
    assert a.boxes.dtype == np.float32 and a.objectness_logits.dtype == np.float32
    assert len(a.boxes) >= 1 and a.stage == FULL
    assert np.all(np.diff(a.objectness_logits) < 0)
    assert a.boxes[:, 0].min() >= 0 and a.boxes[:, 2].max() <= 160 and a.boxes[:, 3].max() <= 120
    r = filter_boxes(a.boxes, 160, 120)
    assert r.stage == FULL and len(r.keep) == len(a.boxes)  # all pass the full filter


def test_image_formats(tmp_path):
    """Grayscale, RGBA and 16-bit images decode to 8-bit BGR; EXIF-free sizes are kept."""
    gray = cv2.cvtColor(_scene(1), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(_scene(2), cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / "deep.png"), gray.astype(np.uint16) * 257)
    for name in ("gray.png", "rgba.png", "deep.png"):
        p = propose_image(str(tmp_path / name))
        assert len(p.boxes) >= 1 and p.boxes[:, 2].max() <= 160


def test_exif_orientation_and_elongated_images(tmp_path):
    """Boxes live in the frame Detectron2's read_image returns (EXIF rotation applied)."""
    from PIL import Image
    from detectron2.data.detection_utils import read_image

    rgb = np.ascontiguousarray(_scene(3, 400, 240)[:, :, ::-1])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(rgb).save(path, exif=exif)
    h, w = read_image(path).shape[:2]
    assert (w, h) == (240, 400)
    for max_side in (0, 150):
        image, width, height = load_image_bgr(path, max_side)
        assert (width, height) == (w, h) and image.shape[1] <= w and image.shape[0] <= h
    p = propose_image(path)
    assert p.boxes[:, 2].max() <= w and p.boxes[:, 3].max() <= h and p.boxes[:, 3].max() > w

    path = str(tmp_path / "panorama.jpg")
    cv2.imwrite(path, np.concatenate([_scene(i) for i in range(6)], axis=1)[:60])  # 960 x 60
    p = propose_image(path)
    assert p.stage in (FULL, ASPECT, SIZE, WHOLE_IMAGE) and p.boxes[:, 2].max() <= 960


# ----------------------------------------------------------------------------- job

def test_round_trip_load_proposals_into_dataset(tmp_path):
    from detectron2.data import load_proposals_into_dataset

    folder = str(tmp_path / "imgs")
    _write_images(folder, 3)
    os.makedirs(os.path.join(folder, "sub"))
    cv2.imwrite(os.path.join(folder, "sub", "x.png"), _scene(7))
    coco = {"images": [{"id": 10 + i, "file_name": name, "width": 160, "height": 120}
                       for i, name in enumerate(["img002.jpg", "img000.jpg", "sub/x.png"])]}
    json_file = str(tmp_path / "coco.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)

    for items, expect_type in ((list_image_folder(folder), str), (list_coco_images(json_file, folder), int)):
        out = str(tmp_path / f"props_{expect_type.__name__}.pkl")
        summary = generate_proposals(items, out, workers=0, progress=False)
        assert summary.n_done == len(items) and summary.n_failed == 0
        with open(out, "rb") as f:
            saved = pickle.load(f)
        assert saved["ids"] == [i for i, _ in items]
        assert all(isinstance(i, expect_type) for i in saved["ids"])
        dicts = [{"image_id": i, "file_name": p} for i, p in reversed(items)]
        loaded = load_proposals_into_dataset(dicts, out)
        for rec in loaded:
            k = saved["ids"].index(rec["image_id"])
            np.testing.assert_array_equal(rec["proposal_boxes"], saved["boxes"][k])  # order kept
            np.testing.assert_array_equal(rec["proposal_objectness_logits"], saved["objectness_logits"][k])
            assert saved["boxes"][k].dtype == np.float32 and saved["boxes"][k].shape[1] == 4


def _partial_chunks(output):
    folder = partial_dir(output)
    if not os.path.isdir(folder):
        return []
    return [n for n in os.listdir(folder) if n.startswith("chunk_") and n.endswith(".pkl")]


def _cli_cmd(folder, output, *extra):
    return [sys.executable, CLI, "--image-dir", folder, "--output", output, "--no-progress", *extra]


def test_killed_job_resumes_to_identical_file(tmp_path):
    folder = str(tmp_path / "imgs")
    _write_images(folder, 10)
    items = list_image_folder(folder)
    ref = str(tmp_path / "ref.pkl")
    generate_proposals(items, ref, workers=0, progress=False)

    out = str(tmp_path / "out" / "props.pkl")
    env = dict(os.environ, SOCO_PROPOSALS_FAIL_AFTER="4")
    proc = subprocess.run(_cli_cmd(folder, out, "--workers", "2", "--flush-every", "2"),
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not os.path.exists(out)  # no output before the job finished
    assert sorted(os.listdir(os.path.dirname(out))) == ["props.pkl.partial"]  # no temp files
    assert len(_partial_chunks(out)) == 2

    summary = generate_proposals(items, out, workers=1, progress=False)
    assert (summary.n_resumed, summary.n_processed, summary.n_done) == (4, 6, 10)
    with open(out, "rb") as a, open(ref, "rb") as b:
        assert a.read() == b.read()
    assert not os.path.exists(partial_dir(out))


def test_sigkill_mid_run_then_cli_rerun(tmp_path):
    folder = str(tmp_path / "imgs")
    _write_images(folder, 8)
    ref = str(tmp_path / "ref.pkl")
    generate_proposals(list_image_folder(folder), ref, workers=0, progress=False)

    out = str(tmp_path / "props.pkl")
    env = dict(os.environ, SOCO_PROPOSALS_SLEEP="0.25")
    proc = subprocess.Popen(_cli_cmd(folder, out, "--workers", "1", "--flush-every", "1"),
                            env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while len(_partial_chunks(out)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    n_saved = len(_partial_chunks(out))
    assert 2 <= n_saved < 8 and not os.path.exists(out)

    cli = _load_cli()
    assert cli.main(_cli_cmd(folder, out, "--workers", "0")[2:]) == 0
    with open(out, "rb") as a, open(ref, "rb") as b:
        assert a.read() == b.read()
    with open(failures_path(out)) as f:
        report = json.load(f)
    assert report["n_done"] == 8 and report["failures"] == []
    # complete now: a third run does nothing
    mtime = os.stat(out).st_mtime_ns
    assert cli.main(_cli_cmd(folder, out)[2:]) == 0
    assert os.stat(out).st_mtime_ns == mtime


def test_failures_are_skipped_counted_and_listed(tmp_path):
    folder = str(tmp_path / "imgs")
    _write_images(folder, 3)
    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "corrupt.jpg").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good = (tmp_path / "imgs" / "img000.jpg").read_bytes()
    (tmp_path / "imgs" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "imgs" / "empty.jpg").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "imgs" / "tiny.png"), _scene(5)[:20, :31])
    out = str(tmp_path / "props.pkl")

    cli = _load_cli()
    assert cli.main(["--image-dir", folder, "--output", out, "--workers", "2", "--no-progress"]) == 0
    with open(out, "rb") as f:
        saved = pickle.load(f)
    assert saved["ids"] == ["img000", "img001", "img002"]
    with open(failures_path(out)) as f:
        report = json.load(f)
    reasons = {d["id"]: d["reason"] for d in report["failures"]}
    assert reasons == {"corrupt": "unreadable", "truncated": "decode_error", "empty": "empty_file",
                       "tiny": "tiny"}
    assert report["n_failed"] == 4 and report["n_done"] == 3
    assert all(d["path"].startswith(folder) for d in report["failures"])

    for name in ("img000", "img001", "img002"):  # now everything fails
        os.remove(os.path.join(folder, name + ".jpg"))
    out2 = str(tmp_path / "none.pkl")
    assert cli.main(["--image-dir", folder, "--output", out2, "--workers", "0", "--no-progress"]) == 1
    assert not os.path.exists(out2) and os.path.exists(failures_path(out2))


def test_missing_file_and_missing_inputs(tmp_path):
    folder = str(tmp_path / "imgs")
    _write_images(folder, 1)
    items = [(1, os.path.join(folder, "img000.jpg")), (2, os.path.join(folder, "nope.jpg"))]
    out = str(tmp_path / "p.pkl")
    summary = generate_proposals(items, out, workers=0, progress=False)
    assert (summary.n_done, summary.n_failed, summary.failure_reasons) == (1, 1, {"missing": 1})
    with pytest.raises(ImageReadError):
        propose_image(os.path.join(folder, "nope.jpg"))

    cli = _load_cli()
    assert cli.main(["--image-dir", str(tmp_path / "absent"), "--output", out]) == 2
    assert cli.main(["--coco-json", str(tmp_path / "absent.json"), "--image-root", folder,
                     "--output", out]) == 2
    with pytest.raises(SystemExit):  # mutually exclusive sources
        cli.main(["--image-dir", folder, "--coco-json", "x.json", "--output", out])


def test_interrupted_job_writes_nothing_and_refuses_other_settings(tmp_path, monkeypatch):
    folder = str(tmp_path / "imgs")
    _write_images(folder, 6)
    items = list_image_folder(folder)
    ref = str(tmp_path / "ref.pkl")
    generate_proposals(items, ref, workers=0, progress=False)

    real = proposal_job._process
    calls = []

    def failing(index, path, settings):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(index)
        return real(index, path, settings)

    monkeypatch.setattr(proposal_job, "_process", failing)
    out = str(tmp_path / "job" / "p.pkl")
    with pytest.raises(KeyboardInterrupt):
        generate_proposals(items, out, workers=0, flush_every=100, progress=False)
    assert not os.path.exists(out) and not os.path.exists(failures_path(out))
    assert os.listdir(os.path.dirname(out)) == ["p.pkl.partial"]
    monkeypatch.setattr(proposal_job, "_process", real)

    with pytest.raises(RuntimeError, match="different proposal settings"):
        generate_proposals(items, out, ProposalSettings(max_side=120), workers=0, progress=False)
    with pytest.raises(RuntimeError, match="different image list"):
        generate_proposals(items[:-1], out, workers=0, progress=False)
    summary = generate_proposals(items, out, workers=0, progress=False)
    assert (summary.n_resumed, summary.n_processed) == (3, 3)
    with open(out, "rb") as a, open(ref, "rb") as b:
        assert a.read() == b.read()


def test_worker_crash_is_isolated(tmp_path, monkeypatch):
    """A worker dying in native code (simulated by os._exit in a forked worker) costs only the
    image that killed it; the job neither hangs nor stops."""
    folder = str(tmp_path / "imgs")
    _write_images(folder, 6)
    items = list_image_folder(folder)
    real = proposal_job._process

    def crashing(index, path, settings):
        if path.endswith("img003.jpg"):
            os._exit(139)
        return real(index, path, settings)

    monkeypatch.setattr(proposal_job, "_process", crashing)
    out = str(tmp_path / "p.pkl")
    summary = generate_proposals(items, out, workers=2, progress=False, start_method="fork")
    assert (summary.n_done, summary.failure_reasons) == (5, {"crashed": 1})
    with open(failures_path(out)) as f:
        assert [d["id"] for d in json.load(f)["failures"]] == ["img003"]


def test_second_concurrent_job_is_refused(tmp_path):
    folder = str(tmp_path / "imgs")
    _write_images(folder, 1)
    out = str(tmp_path / "p.pkl")
    os.makedirs(partial_dir(out))
    fd = proposal_job._lock_partial(partial_dir(out))  # as if another job were running
    try:
        with pytest.raises(RuntimeError, match="Another job"):
            generate_proposals(list_image_folder(folder), out, workers=0, progress=False)
    finally:
        proposal_job._unlock(fd)
    assert generate_proposals(list_image_folder(folder), out, workers=0, progress=False).n_done == 1


# ------------------------------------------------------------------- ground-truth oracle

def test_ground_truth_proposals_cli_round_trip_and_errors(tmp_path):
    from detectron2.data import load_proposals_into_dataset

    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
                   {"id": 3, "file_name": "b.jpg", "width": 100, "height": 80}],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [10, 20, 30, 40], "category_id": 1, "iscrowd": 0},
            {"id": 2, "image_id": 7, "bbox": [0, 0, 5, 6], "category_id": 2, "iscrowd": 1},
            {"id": 3, "image_id": 7, "bbox": [50, 10, 20, 20], "category_id": 2},
        ],
    }
    json_file, out = str(tmp_path / "gt.json"), str(tmp_path / "gt.pkl")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    cli = _load_cli()
    args = ["--ground-truth", "--coco-json", json_file, "--image-root", str(tmp_path), "--output", out]
    assert cli.main(args) == 0
    with open(out, "rb") as f:
        saved = pickle.load(f)
    assert saved["ids"] == [7, 3]  # every image, in the json's order, also one without boxes
    # XYWH -> XYXY, crowd box left out, category dropped
    np.testing.assert_array_equal(saved["boxes"][0], [[10, 20, 40, 60], [50, 10, 70, 30]])
    assert saved["boxes"][1].shape == (0, 4) and saved["boxes"][0].dtype == np.float32
    loaded = load_proposals_into_dataset([{"image_id": 3}, {"image_id": 7}], out)
    np.testing.assert_array_equal(loaded[1]["proposal_boxes"], saved["boxes"][0])
    assert not os.path.exists(failures_path(out))  # nothing of the selective-search job

    coco["annotations"][0]["bbox"] = [10, 20, float("nan"), 40]
    with open(json_file, "w") as f:
        json.dump(coco, f)
    assert cli.main(args) == 2  # the annotation id and the file are logged
    from soco_d2.data.proposals.ground_truth import ground_truth_proposals
    with pytest.raises(ValueError, match=r"gt\.json: annotation 1 has bbox"):
        ground_truth_proposals(json_file)
    with pytest.raises(SystemExit):  # the boxes come from a json
        cli.main(["--ground-truth", "--image-dir", str(tmp_path), "--output", out])
