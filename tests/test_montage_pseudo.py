"""Label-free Montage: k-means pseudo-classes, deterministic and refreshed at the period
(soco_d2/methods/montage/pseudo_labels.py)."""
import os
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model

from soco_d2 import add_config
from soco_d2.config import load_config
from soco_d2.methods.montage.pseudo_labels import (
    PseudoLabelHook, compute_pseudo_labels, kmeans, match_clusters, table_offsets,
)
from soco_d2.methods.montage.samples import sample_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blobs(seed=0, per=30, dim=8):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(3, dim, generator=g), dim=1) * 4
    x = torch.cat([c + 0.3 * torch.randn(per, dim, generator=g) for c in centres])
    return F.normalize(x, dim=1), torch.arange(3).repeat_interleave(per)


def test_kmeans_finds_separated_clusters_and_is_deterministic():
    x, truth = blobs()
    c1, l1 = kmeans(x, 3, 20, torch.Generator().manual_seed(1))
    c2, l2 = kmeans(x, 3, 20, torch.Generator().manual_seed(1))
    assert torch.equal(l1, l2) and torch.equal(c1, c2)
    # the same partition as the truth, up to the cluster ids
    pairs = {(int(a), int(b)) for a, b in zip(l1, truth)}
    assert len(pairs) == 3
    assert torch.allclose(c1.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="at least k"):
        kmeans(x[:2], 3, 5, torch.Generator().manual_seed(0))


def test_match_clusters_undoes_a_relabelling():
    old = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    perm_in = torch.tensor([2, 3, 0, 1])
    new = perm_in[old]
    new[7] = perm_in[0]  # one box really changed cluster (3 -> 0)
    perm = match_clusters(new, old, 4)
    assert sorted(perm.tolist()) == [0, 1, 2, 3]
    assert (perm[new] == old).sum() == 7


@pytest.fixture(scope="module")
def setup_free(tiny_images):
    json_file, image_root = tiny_images
    raw = load_coco_json(json_file, image_root, "montage_pseudo_tiny")
    for r in raw:  # proposals: the labelled boxes, jittered, plus the whole image
        b = np.array([a["bbox"] for a in r["annotations"]], np.float32).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        r["proposal_boxes"] = np.concatenate([b, [[0, 0, r["width"], r["height"]]]]).astype(np.float32)
    records = sample_records(raw, "proposals")
    cfg = get_cfg()
    add_config(cfg)
    load_config(cfg, os.path.join(REPO, "configs", "montage", "montage_instant_test.yaml"))
    cfg.merge_from_list(["INPUT.MONTAGE.SAMPLES", "proposals", "MODEL.MONTAGE.NUM_CLASSES", 3])
    torch.manual_seed(0)
    model = build_model(cfg)
    return records, model


def table(records, model, iteration, previous=None):
    return compute_pseudo_labels(model.probe_trunk(), records, "RGB", k=3, iters=10, fit_samples=1000,
                                 seed=0, iteration=iteration, batch_size=4, previous=previous)


def test_pseudo_labels_are_deterministic_and_restore_the_model_mode(setup_free):
    records, model = setup_free
    model.train()
    a, b = table(records, model, 0), table(records, model, 0)
    assert model.training and model.backbone.training  # features in eval mode, mode restored
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["centroids"], b["centroids"])
    assert torch.equal(a["offsets"], table_offsets(records))
    assert len(a["labels"]) == int(a["offsets"][-1]) == sum(len(r["boxes"]) for r in records)
    assert set(a["labels"].tolist()) <= {0, 1, 2} and a["changed"] == -1.0
    # A later refresh with unchanged features keeps the classes (ids matched to the old ones).
    c = table(records, model, 5, previous=a["labels"])
    assert c["changed"] == pytest.approx(float((c["labels"] != a["labels"]).float().mean()))
    assert c["changed"] < 0.34


class FakeStorage:
    def __init__(self):
        self.scalars = []

    def put_scalars(self, smoothing_hint=True, **kw):
        self.scalars.append(kw)


def fake_trainer(model):
    return types.SimpleNamespace(model=model, iter=0, data_stream=types.SimpleNamespace(seed=0),
                                 storage=FakeStorage())


def test_hook_refreshes_at_the_period_and_resumes_with_its_table(setup_free):
    records, model = setup_free
    calls = []

    def trunk_fn(m):
        calls.append(trainer.iter)
        return m.probe_trunk()

    def make_hook(period):
        return PseudoLabelHook(records, trunk_fn, k=3, iters=10, fit_samples=1000, batch_size=4,
                               period=period, image_format="RGB")

    trainer = fake_trainer(model)
    hook = make_hook(period=3)
    hook.trainer = trainer
    hook.before_train()
    for it in range(8):
        trainer.iter = it
        hook.before_step()
    assert calls == [0, 3, 6]
    assert hook.table["iteration"] == 6
    assert torch.equal(model._pseudo["labels"], hook.table["labels"])
    assert any("pseudo/changed" in s for s in trainer.storage.scalars)

    # resumed at iteration 7: the saved table comes back, nothing is recomputed until 9
    state = hook.state_dict()
    assert set(state) == {"labels", "offsets", "centroids", "iteration"}
    assert all(torch.is_tensor(v) or isinstance(v, int) for v in state.values())  # weights_only-safe
    model.set_pseudo_labels(torch.zeros_like(state["labels"]), state["offsets"])
    calls.clear()
    resumed = make_hook(period=3)
    resumed.load_state_dict(state)
    resumed.trainer = trainer
    trainer.iter = 7
    resumed.before_train()
    assert calls == [] and torch.equal(model._pseudo["labels"], state["labels"])
    for it in (7, 8, 9):
        trainer.iter = it
        resumed.before_step()
    assert calls == [9]

    # period 0: once, before training
    calls.clear()
    once = make_hook(period=0)
    once.trainer = trainer
    trainer.iter = 0
    once.before_train()
    for it in range(1, 7):
        trainer.iter = it
        once.before_step()
    assert calls == [0]


def test_model_reads_pseudo_classes_by_reference(setup_free):
    records, model = setup_free
    offsets = table_offsets(records)
    labels = torch.arange(int(offsets[-1])) % 3
    model.set_pseudo_labels(labels, offsets)
    got = model._resolve(torch.tensor([[-1, -1, 3, 1]]), torch.tensor([[[2, 1], [0, 0], [5, -1], [1, 0]]]))
    assert got.tolist() == [[int(labels[offsets[2] + 1]), int(labels[offsets[0]]), 3, 1]]
    model._pseudo = None
    with pytest.raises(RuntimeError, match="no pseudo-label table"):
        model._resolve(torch.tensor([[-1, 0, 0, 0]]), torch.zeros(1, 4, 2, dtype=torch.int64))
