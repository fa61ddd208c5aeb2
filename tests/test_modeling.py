"""SoCo model: loss, momentum, pooling levels, gradients, weight names, batching (CPU, tiny)."""
import math

import pytest
import torch
from torch import nn
from torchvision.ops import roi_align

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from soco_d2 import add_soco_config
from soco_d2.methods.soco import SoCo
from soco_d2.methods.soco.loss import (
    byol_loss, feature_spread_terms, info_nce_loss, pair_cosine, symmetric_info_nce_loss,
    symmetric_pair_loss,
)
from soco_d2.modeling import NaiveSyncBatchNorm1d, ema_update, get_norm_1d, momentum_at

FPN_LEVELS = ["p2", "p3", "p4", "p5"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # The models are tiny: one intra-op thread is as fast, and far steadier on a busy machine
    # (oversubscribed OpenMP threads spin-wait).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(arch="fpn", norm="BN"):
    cfg = get_cfg()
    add_soco_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "SoCo"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.RES2_OUT_CHANNELS, r.NORM, r.STRIDE_IN_1X1 = 18, 64, norm, False
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    box = cfg.MODEL.ROI_BOX_HEAD
    box.POOLER_TYPE, box.POOLER_SAMPLING_RATIO = "ROIAlignV2", 0
    if arch == "fpn":
        cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
        r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.NORM = 32, norm
        cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
        cfg.MODEL.ROI_HEADS.IN_FEATURES = FPN_LEVELS
        cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
        box.NAME, box.NUM_CONV, box.CONV_DIM, box.NUM_FC, box.FC_DIM = "FastRCNNConvFCHead", 4, 32, 1, 64
        box.NORM, box.POOLER_RESOLUTION = norm, 7
    else:
        cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
        r.OUT_FEATURES = ["res4"]
        cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
        box.POOLER_RESOLUTION = 8
    s = cfg.MODEL.SOCO
    s.PROJECTOR_HIDDEN_DIM, s.PROJECTOR_DIM, s.PREDICTOR_HIDDEN_DIM, s.HEAD_NORM = 64, 32, 64, norm
    return cfg


def tiny_model(arch="fpn", norm="BN", seed=0):
    torch.manual_seed(seed)
    model = build_model(tiny_cfg(arch, norm))
    assert isinstance(model, SoCo)
    return model


def make_inputs(sizes=(64, 64, 32), num_images=2, k=3, seed=0):
    """Mapper-like dicts: K + 1 boxes per view (ids shuffled), levels cycling over P2..P5."""
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for i in range(num_images):
        views = []
        for s in sizes:
            b = k + 1
            xy = torch.rand(b, 2, generator=g) * s * 0.5
            wh = (0.2 + 0.3 * torch.rand(b, 2, generator=g)) * s
            views.append(
                {
                    "image": torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8),
                    "boxes": Boxes(torch.cat([xy, (xy + wh).clamp(max=s)], dim=1)),
                    "ids": torch.randperm(b, generator=g),
                    "levels": (torch.arange(b) + i) % 4,
                }
            )
        pairs = []
        for a, bv in [(0, 1), (0, 2)]:
            order_a, order_b = torch.argsort(views[a]["ids"]), torch.argsort(views[bv]["ids"])
            pairs.append((a, bv, order_a[:k], order_b[:k]))  # rows holding ids 0..k-1
        inputs.append({"file_name": f"img{i}.jpg", "image_id": i, "views": views, "pairs": pairs})
    return inputs


# ---------------------------------------------------------------- loss


def test_byol_loss_values():
    x = torch.randn(5, 8)
    assert torch.allclose(byol_loss(x, x), torch.zeros(5), atol=1e-6)
    assert torch.allclose(byol_loss(x, -x), torch.full((5,), 4.0), atol=1e-6)
    y = torch.randn(5, 8)
    assert torch.allclose(byol_loss(3.0 * x, 0.5 * y), byol_loss(x, y), atol=1e-6)
    cos = nn.functional.cosine_similarity(x, y, dim=1)
    assert torch.allclose(byol_loss(x, y), 2 - 2 * cos, atol=1e-6)
    expected = byol_loss(x, -x).mean() + byol_loss(y, y).mean()
    assert torch.allclose(symmetric_pair_loss(x, y, y, -x), expected)


def test_byol_loss_no_grad_into_target():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    byol_loss(p, z).sum().backward()
    assert p.grad is not None and z.grad is None


# ---------------------------------------------------------------- momentum


def test_info_nce_loss_against_hand_computed_value():
    # Two objects in 2-D: v = (e1, e2), z = (e1, (e1 + e2) / sqrt 2), t = 0.5.
    v = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # scale must not matter
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t, c = 0.5, 1.0 / math.sqrt(2.0)
    # object 0: logits (1, c) / t, positive 1; object 1: logits (0, c) / t, positive c.
    l0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(c / t)))
    l1 = -math.log(math.exp(c / t) / (math.exp(0.0) + math.exp(c / t)))
    expected = torch.tensor([2 * t * l0, 2 * t * l1])
    assert torch.allclose(info_nce_loss(v, z, t), expected, atol=1e-6)
    both = symmetric_info_nce_loss(v, z, v, z, t)  # (pred_a, pred_b, proj_a, proj_b)
    assert torch.allclose(both, info_nce_loss(v, z, t).mean() + info_nce_loss(z, v, t).mean())
    # Orthogonal, well separated embeddings at a low temperature: loss near 0; swapping the
    # positives makes it large.
    e = torch.eye(4)
    assert info_nce_loss(e, e, 0.05).max() < 1e-6
    assert info_nce_loss(e, e.flip(0), 0.05).min() > 1.0


def test_info_nce_without_same_image_negatives():
    # Objects 0, 1 in image 0 and object 2 in image 1. Left out of object 0's denominator:
    # object 1 (same image); object 2 stays. Object 2 keeps both others (another image).
    g = torch.Generator().manual_seed(0)
    v, z = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    t = 0.3
    owner = torch.tensor([0, 0, 1])
    logits = torch.nn.functional.normalize(v, dim=1) @ torch.nn.functional.normalize(z, dim=1).t() / t
    expected = torch.stack([
        -torch.log_softmax(logits[0, [0, 2]], 0)[0],
        -torch.log_softmax(logits[1, [1, 2]], 0)[0],
        -torch.log_softmax(logits[2], 0)[2],
    ]) * 2 * t
    assert torch.allclose(info_nce_loss(v, z, t, owner), expected, atol=1e-6)
    # one object per image: nothing to leave out
    assert torch.allclose(info_nce_loss(v, z, t, torch.arange(3)), info_nce_loss(v, z, t))
    # every object in one image: only the positive is left, loss 0
    assert torch.allclose(info_nce_loss(v, z, t, torch.zeros(3, dtype=torch.int64)), torch.zeros(3))


def test_info_nce_loss_no_grad_into_target_and_cosine_monitor():
    p = torch.randn(6, 8, requires_grad=True)
    z = torch.randn(6, 8, requires_grad=True)
    info_nce_loss(p, z, 0.2).sum().backward()
    assert p.grad is not None and z.grad is None
    x, y = torch.randn(5, 8), torch.randn(5, 8)
    cos = 0.5 * (torch.cosine_similarity(x, y, dim=1).mean() + 1.0)  # (x, y) and (x, x)
    assert torch.allclose(pair_cosine(x, x, x, y), cos, atol=1e-6)
    # With BYOL the monitor equals 1 - pair loss / 4, as it is documented.
    assert torch.allclose(pair_cosine(x, y, x, y), 1 - symmetric_pair_loss(x, y, x, y) / 4, atol=1e-6)


def test_soco_infonce_option_trains_and_is_checked():
    from soco_d2.config.checks import ConfigError
    from soco_d2.methods.soco.config import validate_soco_config

    cfg = tiny_cfg()
    cfg.MODEL.SOCO.LOSS, cfg.MODEL.SOCO.TEMPERATURE = "infonce", 0.2
    torch.manual_seed(0)
    model = build_model(cfg).train()
    inputs = make_inputs()
    out = model(inputs)["loss_soco"]
    # Same monitor as BYOL; the loss is InfoNCE over the 2 x 3 matched objects of each pair.
    assert out.dim() == 0 and torch.isfinite(out) and out > 0
    assert set(model.monitors()) >= {"soco/cos_v1_v2", "soco/cos_v1_v3", "soco/target_std"}
    out.backward()
    assert model.predictor.fc1.weight.grad is not None
    assert all(p.grad is None for p in model.target.parameters())
    for key, value, needle in (("LOSS", "simclr", "MODEL.SOCO.LOSS"),
                               ("TEMPERATURE", 0.0, "MODEL.SOCO.TEMPERATURE")):
        bad = tiny_cfg()
        bad.MODEL.SOCO[key] = value
        with pytest.raises(ConfigError, match=needle):
            validate_soco_config(bad)


def test_feature_spread_terms_values():
    torch.manual_seed(0)
    # Independent units of equal spread: no unit below the average spread, correlations only
    # from sampling (about C / M for C units over M objects).
    x = torch.randn(4000, 8)
    spread, decorr = feature_spread_terms(x)
    assert spread < 0.05 and decorr < 8 * 8 / 4000 * 2
    # One dead unit of 8 (constant): it costs 1 in the mean over units -> 1/8; the others sit a
    # little above the mean spread (7/8 of it), so they cost nothing.
    dead = x.clone()
    dead[:, 0] = 3.0
    spread, _ = feature_spread_terms(dead)
    assert spread == pytest.approx(1 / 8, abs=0.01)
    # Every unit a copy of one: all 8 x 7 off-diagonal correlations are 1 -> 56 / 8 = 7.
    same = x[:, :1].repeat(1, 8)
    _, decorr = feature_spread_terms(same)
    assert decorr == pytest.approx(7.0, rel=1e-3)
    # Scale-free: multiplying the features changes neither term.
    s1, d1 = feature_spread_terms(x * torch.linspace(0.5, 2.0, 8))
    s2, d2 = feature_spread_terms(x * torch.linspace(0.5, 2.0, 8) * 100)
    assert s1 == pytest.approx(float(s2), abs=1e-4) and d1 == pytest.approx(float(d2), rel=1e-3)
    with pytest.raises(ValueError, match=">= 2 objects"):
        feature_spread_terms(x[:1])


def test_feature_spread_gradient_keeps_a_dying_unit_alive():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    x[:, 2] *= 0.01  # a unit that is dying: a hundredth of the others' spread
    x.requires_grad_(True)
    spread, decorr = feature_spread_terms(x)
    (spread + decorr).backward()
    assert torch.isfinite(x.grad).all()
    # Descending the terms spreads the dying unit's values apart, and only it is pushed out.
    y = (x - 0.5 * x.grad).detach()
    assert y[:, 2].std() > 5 * x[:, 2].std() and feature_spread_terms(y)[0] < spread
    # A unit already constant gets no gradient (as behind a dead ReLU): the term prevents
    # dying, it cannot revive.
    z = x.detach().clone()
    z[:, 2] = 0.0
    z.requires_grad_(True)
    feature_spread_terms(z)[0].backward()
    assert torch.all(z.grad[:, 2].abs() < 1e-6)


def test_soco_collapse_guards_add_their_losses_and_are_checked():
    from soco_d2.config.checks import ConfigError
    from soco_d2.methods.soco.config import validate_soco_config

    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert set(model(make_inputs())) == {"loss_soco"}  # off by default (published)
    cfg.MODEL.SOCO.SPREAD_WEIGHT, cfg.MODEL.SOCO.DECORR_WEIGHT = 2.0, 0.5
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses = model(make_inputs())
    assert set(losses) == {"loss_soco", "loss_spread", "loss_decorr"}
    assert losses["loss_decorr"] > 0 and losses["loss_spread"] >= 0
    # The guards alone act on the box features: the box head gets their gradient, the
    # projector (after the box features) and the target none.
    (losses["loss_spread"] + losses["loss_decorr"]).backward()
    assert model.roi_heads.box_head.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.projector.parameters())
    assert all(p.grad is None for p in model.target.parameters())
    model.eval()
    with torch.no_grad():
        assert isinstance(model(make_inputs()), list)  # no losses in eval
    for key in ("SPREAD_WEIGHT", "DECORR_WEIGHT"):
        bad = tiny_cfg()
        bad.MODEL.SOCO[key] = -1.0
        with pytest.raises(ConfigError, match=f"MODEL.SOCO.{key}"):
            validate_soco_config(bad)


def test_embedding_queue_is_first_in_first_out():
    from soco_d2.modeling import EmbeddingQueue

    q = EmbeddingQueue(5, 2)
    assert q.negatives().shape == (0, 2)  # a fresh queue adds no negative
    q.enqueue(torch.tensor([[3.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(q.negatives(), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # normalised
    q.enqueue(torch.tensor([[1.0, 1.0]] * 4))  # wraps: the oldest row is overwritten
    assert int(q.count) == 5 and int(q.ptr) == 1
    assert torch.allclose(q.embeddings[0], torch.tensor([1.0, 1.0]) / 2 ** 0.5)
    assert torch.allclose(q.embeddings[1], torch.tensor([0.0, 1.0]))
    q.enqueue(torch.arange(14.0).view(7, 2) + 1)  # more than fit: the newest 5 are kept
    assert sorted(round(float(r[0] / r[1]), 4) for r in q.negatives()) == sorted(
        round(a / (a + 1), 4) for a in (5.0, 7.0, 9.0, 11.0, 13.0))
    with pytest.raises(ValueError, match="size"):
        EmbeddingQueue(0, 2)


def test_info_nce_extra_negatives_join_every_denominator():
    g = torch.Generator().manual_seed(1)
    v, z, extra = (torch.randn(3, 4, generator=g) for _ in range(3))
    t = 0.5
    n = torch.nn.functional.normalize
    logits = torch.cat([n(v, dim=1) @ n(z, dim=1).t(), n(v, dim=1) @ n(extra, dim=1).t()], dim=1) / t
    expected = 2 * t * -torch.log_softmax(logits, dim=1)[torch.arange(3), torch.arange(3)]
    assert torch.allclose(info_nce_loss(v, z, t, extra_negatives=extra), expected, atol=1e-6)
    assert torch.allclose(info_nce_loss(v, z, t, extra_negatives=extra[:0]), info_nce_loss(v, z, t))
    assert (info_nce_loss(v, z, t, extra_negatives=extra) > info_nce_loss(v, z, t)).all()


def test_soco_queue_fills_with_past_objects_and_is_checked():
    from soco_d2.config.checks import ConfigError
    from soco_d2.methods.soco.config import validate_soco_config

    cfg = tiny_cfg()
    cfg.MODEL.SOCO.LOSS, cfg.MODEL.SOCO.QUEUE_SIZE = "infonce", 12
    torch.manual_seed(0)
    model = build_model(cfg).train()
    inputs = make_inputs()  # 2 images, 4 boxes each in V1
    first = model(inputs)["loss_soco"]
    assert int(model.queue.count) == 8 and model.monitors()["soco/queue_filled"] == 0
    second = model(inputs)["loss_soco"]  # the same objects are now negatives too: a harder loss
    assert second > first and int(model.queue.count) == 12
    assert "queue.embeddings" in model.state_dict()  # checkpoints carry it (exact resume)
    for loss, size, needle in (("byol", 8, "needs MODEL.SOCO.LOSS"), ("infonce", -1, ">= 0")):
        bad = tiny_cfg()
        bad.MODEL.SOCO.LOSS, bad.MODEL.SOCO.QUEUE_SIZE = loss, size
        with pytest.raises(ConfigError, match=needle):
            validate_soco_config(bad)


def test_momentum_schedule():
    base, total = 0.99, 100
    values = [momentum_at(k, total, base) for k in range(total + 1)]
    assert values[0] == pytest.approx(base)
    assert values[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert momentum_at(total // 2, total, base) == pytest.approx(1 - (1 - base) / 2)


def test_ema_update_copies_and_freezes():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    target = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    online(torch.randn(8, 4))  # moves online running stats
    before = {k: v.clone() for k, v in target.named_parameters()}
    ema_update(target, online, 1.0)
    assert all(torch.equal(v, before[k]) for k, v in target.named_parameters())
    # buffers (BN running statistics) are copied whatever m is
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    ema_update(target, online, 0.0)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in online.state_dict().items())
    # 0 < m < 1 interpolates parameters
    t0, o = target[0].weight.clone(), nn.Linear(4, 6).weight
    with torch.no_grad():
        online[0].weight.copy_(o)
    ema_update(target, online, 0.25)
    assert torch.allclose(target[0].weight, 0.25 * t0 + 0.75 * o)


def test_update_target_on_model():
    model = tiny_model()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    model.update_target(1.0)
    online_w = model.backbone.bottom_up.stem.conv1.weight
    assert not torch.equal(online_w, model.target["backbone"].bottom_up.stem.conv1.weight)
    model.update_target(0.0)
    sd = model.state_dict()
    for name in ("backbone", "roi_heads", "projector"):
        for k, v in getattr(model, name).state_dict().items():
            assert torch.equal(sd[f"target.{name}.{k}"], v), k


# ---------------------------------------------------------------- pooling


def test_each_box_pooled_from_its_level():
    model = tiny_model().eval()
    inputs = make_inputs()
    feats, pooled = [], []
    # the features the box branch pooled from (only levels with boxes are computed)
    model.roi_heads.register_forward_pre_hook(lambda m, i: feats.append(i[0]))
    model.roi_heads.box_head.register_forward_pre_hook(lambda m, i: pooled.append(i[0]))
    with torch.no_grad():
        model(inputs)
    # first group: views 0 and 1 (64x64), view-major, image by image
    features, rows = feats[0], pooled[0]
    strides = {f: s.stride for f, s in model.backbone.output_shape().items()}
    r = 0
    for v in (0, 1):
        for i, x in enumerate(inputs):
            view = x["views"][v]
            for box, level in zip(view["boxes"].tensor, view["levels"].tolist()):
                name = FPN_LEVELS[level]
                roi = torch.cat([torch.tensor([v * len(inputs) + i], dtype=torch.float32), box])[None]
                expect = roi_align(features[name], roi, 7, 1.0 / strides[name], 0, aligned=True)
                assert torch.allclose(rows[r], expect[0], atol=1e-5), (v, i, level)
                r += 1
    assert r == rows.shape[0]
    assert {lv for x in inputs for lv in x["views"][0]["levels"].tolist()} == {0, 1, 2, 3}


def test_all_levels_mode_matches_scale_aware_in_eval():
    model = tiny_model().eval()
    inputs = make_inputs()
    with torch.no_grad():
        out_assigned = model(inputs)
        model.roi_heads.level_assignment = "all"
        model.target["roi_heads"].level_assignment = "all"
        out_all = model(inputs)
    assert len(out_all) == len(inputs)
    for a, b in zip(out_assigned, out_all):
        for va, vb in zip(a["views"], b["views"]):
            assert va.keys() == {"box_features", "projections", "predictions"}
            for key in va:
                assert torch.allclose(va[key], vb[key], atol=1e-5), key


def test_eval_output_shapes():
    model = tiny_model().eval()
    inputs = make_inputs(k=2)
    with torch.no_grad():
        out = model(inputs)
    for x, o in zip(inputs, out):
        for view, ov in zip(x["views"], o["views"]):
            n = len(view["boxes"])
            assert ov["box_features"].shape == (n, 64)
            assert ov["projections"].shape == ov["predictions"].shape == (n, 32)


# ---------------------------------------------------------------- gradients and training


def test_only_online_branch_gets_gradients():
    model = tiny_model().train()
    loss = model(make_inputs())["loss_soco"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    online = [(n, p) for n, p in model.named_parameters() if not n.startswith("target.")]
    assert any(n.startswith("predictor.") for n, _ in online)
    for n, p in online:
        assert p.requires_grad, n
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    for n, p in model.target.named_parameters():
        assert not p.requires_grad and p.grad is None, n
    assert not any(k.startswith("target.predictor") for k in model.state_dict())
    assert model.target.training  # target follows the model's mode (BN batch statistics)


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_loss_decreases_on_fixed_batch(optimizer):
    from soco_d2.solver import LARS, split_decay_params

    model = tiny_model(seed=1).train()
    inputs = make_inputs(seed=1)
    if optimizer == "sgd":
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    else:  # SoCo's optimizer and grouping (biases and norm parameters not adapted)
        adapted, excluded = split_decay_params(model)
        opt = LARS([{"params": adapted, "weight_decay": 1e-5, "lars": True},
                    {"params": excluded, "weight_decay": 0.0, "lars": False}],
                   lr=0.5, momentum=0.9, trust_coef=1e-3)
    steps, losses = 30, []
    for it in range(steps):
        loss = model(inputs)["loss_soco"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_target(momentum_at(it, steps, 0.99))
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_equal_size_views_share_one_forward():
    model = tiny_model().train()
    calls = {"online": [], "target": []}
    model.backbone.bottom_up.register_forward_pre_hook(lambda m, i: calls["online"].append(tuple(i[0].shape)))
    model.target["backbone"].bottom_up.register_forward_pre_hook(lambda m, i: calls["target"].append(tuple(i[0].shape)))
    model(make_inputs(sizes=(64, 64, 32)))
    assert calls["online"] == [(4, 3, 64, 64), (2, 3, 32, 32)]
    assert calls["target"] == calls["online"]


def test_fpn_views_go_through_unpadded():
    """A view whose side is not a multiple of 32 (112 px in the published run; 48 here) is not
    zero-padded: the top-down pathway upsamples to each lateral's size."""
    model = tiny_model().train()
    shapes = []
    model.backbone.bottom_up.register_forward_pre_hook(lambda m, i: shapes.append(tuple(i[0].shape)))
    loss = model(make_inputs(sizes=(64, 64, 48)))["loss_soco"]
    assert torch.isfinite(loss)
    assert shapes[1] == (2, 3, 48, 48)


def test_fpn_forward_on_a_size_fpn_forward_cannot_take():
    """112 px: res5 is 4 x 4 and res4 7 x 7, so the stock FPN (upsampling by exactly 2) fails;
    fpn_forward upsamples to 7 x 7 and gives P2..P5 at the strides' sizes."""
    from soco_d2.methods.soco.fpn_levels import fpn_forward

    model = tiny_model().eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            model.backbone(x)
        out = fpn_forward(model.backbone, x, [True] * 4)
    assert [tuple(out[p].shape[-2:]) for p in FPN_LEVELS] == [(28, 28), (14, 14), (7, 7), (4, 4)]


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_residual_before_the_target_copy(zero_init):
    """MODEL.SOCO.ZERO_INIT_RESIDUAL: the last BN scale of every residual block is 0 in the
    online AND the target backbone at initialisation (the copy is made after zeroing)."""
    from detectron2.modeling.backbone.resnet import BasicBlock

    cfg = tiny_cfg()
    cfg.MODEL.SOCO.ZERO_INIT_RESIDUAL = zero_init
    torch.manual_seed(0)
    model = build_model(cfg)
    for net in (model.backbone, model.target["backbone"]):
        blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
        assert len(blocks) == 8  # ResNet-18
        for b in blocks:
            assert (b.conv2.norm.weight == 0).all() == zero_init
            assert (b.conv1.norm.weight == 1).all()


@pytest.mark.parametrize("norm", ["SyncBN", "naiveSyncBN"])
def test_sync_norms_single_process(norm):
    model = tiny_model(norm=norm).train()
    assert isinstance(model.projector.norm, (nn.SyncBatchNorm, NaiveSyncBatchNorm1d))
    loss = model(make_inputs(k=2))["loss_soco"]
    loss.backward()
    assert torch.isfinite(loss)


def test_norm_1d():
    assert isinstance(get_norm_1d("BN", 4), nn.BatchNorm1d)
    assert get_norm_1d("", 4) is None
    bn = NaiveSyncBatchNorm1d(4).train()
    x = torch.randn(6, 4)
    assert torch.allclose(bn(x), nn.functional.batch_norm(x, None, None, training=True), atol=1e-5)


# ---------------------------------------------------------------- weight names


def _stock_rcnn(arch):
    cfg = tiny_cfg(arch)
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.MASK_ON = False
    return build_model(cfg)


def test_fpn_keys_match_stock_mask_rcnn():
    soco = tiny_model().state_dict()
    stock = _stock_rcnn("fpn").state_dict()
    trunk = [k for k in stock if k.startswith(("backbone.", "roi_heads.box_head."))]
    assert any(k.startswith("roi_heads.box_head.conv4.") for k in trunk)
    assert "roi_heads.box_head.fc1.weight" in trunk
    for k in trunk:
        assert k in soco, k
        assert soco[k].shape == stock[k].shape, k
    for k in soco:
        if k.startswith(("backbone.", "roi_heads.", "projector.")):
            assert f"target.{k}" in soco, k
    assert tiny_model().online_state_dict_prefixes() == ("backbone.", "roi_heads.box_head.")


def test_c4_variant_builds_trains_and_matches_res5_heads():
    model = tiny_model("c4").train()
    soco = model.state_dict()
    stock = _stock_rcnn("c4").state_dict()
    trunk = [k for k in stock if k.startswith(("backbone.", "roi_heads.res5."))]
    assert any(k.startswith("roi_heads.res5.2.") for k in trunk)
    for k in trunk:
        assert k in soco and soco[k].shape == stock[k].shape, k
    assert model.projector.fc1.in_features == 512  # res5 output of the tiny R18
    assert model.online_state_dict_prefixes() == ("backbone.", "roi_heads.res5.")
    loss = model(make_inputs(k=2))["loss_soco"]
    loss.backward()
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- FPN levels on demand


def test_fpn_forward_computes_only_needed_levels_and_matches_fpn():
    from soco_d2.methods.soco.fpn_levels import fpn_forward, levels_needed

    model = tiny_model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model.backbone(x)
        out = fpn_forward(model.backbone, x, [True] * 4)
        assert set(out) == {"p2", "p3", "p4", "p5"}
        for name, f in out.items():
            torch.testing.assert_close(f, full[name], rtol=0, atol=0)
        calls = []
        for conv in model.backbone.output_convs:
            conv.register_forward_pre_hook(lambda m, i: calls.append(m))
        part = fpn_forward(model.backbone, x, [False, True, False, True])
    assert part["p2"] is None and part["p4"] is None
    torch.testing.assert_close(part["p3"], full["p3"], rtol=0, atol=0)
    torch.testing.assert_close(part["p5"], full["p5"], rtol=0, atol=0)
    assert len(calls) == 2  # only the two needed output convs ran
    levels = [torch.tensor([1, 3, 3]), torch.tensor([], dtype=torch.int64)]
    assert levels_needed(levels, 4, all_levels=False) == [False, True, False, True]
    assert levels_needed(levels, 4, all_levels=True) == [True] * 4
