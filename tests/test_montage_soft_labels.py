"""ERF-adaptive soft labels and Montage's loss against hand-computed values
(soco_d2/methods/montage/soft_labels.py, loss.py)."""
import math

import numpy as np
import pytest
import torch

from soco_d2.methods.montage.loss import region_averaged_soft_ce
from soco_d2.methods.montage.soft_labels import (
    own_regions, region_fractions, region_weights, soft_targets,
)

# A 4 x 4 canvas, stride 2 (2 x 2 locations), four regions:
#   region 0: columns 0-1 (8 px); region 1: columns 2-3 of row 0 (2 px);
#   region 2: columns 2-3 of row 1 (2 px); region 3: columns 2-3 of rows 2-3 (4 px).
REGIONS = torch.tensor([[[0, 0, 1, 1],
                         [0, 0, 2, 2],
                         [0, 0, 3, 3],
                         [0, 0, 3, 3]]])
FLAT = 1e6  # an ERF this wide is flat over the canvas: s_i = area share = (1/2, 1/8, 1/8, 1/4)


def weights(tau, sigma=FLAT):
    s = region_fractions(REGIONS, 4, (2, 2), 2, sigma)
    return region_weights(s, own_regions(REGIONS, (2, 2), 2), tau)[0]


def test_own_region_is_the_pixel_under_the_location_centre():
    # centres at pixels (1, 1), (1, 3), (3, 1), (3, 3) (row, column)
    assert own_regions(REGIONS, (2, 2), 2)[0].tolist() == [[0, 2], [0, 3]]


def test_flat_erf_fractions_are_area_shares():
    s = region_fractions(REGIONS, 4, (2, 2), 2, FLAT)
    for j in range(2):
        for k in range(2):
            assert s[0, j, k].tolist() == pytest.approx([0.5, 0.125, 0.125, 0.25], abs=1e-9)


def test_weights_by_hand_with_the_tau_floor():
    w = weights(tau=0.7)
    # own region 0 (s_r = 1/2 < tau): w_r = 0.7, the rest 0.3 * s_i / (1 - 1/2)
    assert w[0, 0].tolist() == pytest.approx([0.7, 0.075, 0.075, 0.15], abs=1e-9)
    # own region 2 (s_r = 1/8): w_r = 0.7, the rest 0.3 * s_i / (7/8)
    assert w[0, 1].tolist() == pytest.approx([0.3 * 0.5 / 0.875, 0.3 * 0.125 / 0.875, 0.7, 0.3 * 0.25 / 0.875], abs=1e-9)
    # own region 3 (s_r = 1/4): w_r = 0.7, the rest 0.3 * s_i / (3/4) = (0.2, 0.05, 0.05)
    assert w[1, 1].tolist() == pytest.approx([0.2, 0.05, 0.05, 0.7], abs=1e-9)


def test_weights_by_hand_without_the_floor():
    w = weights(tau=0.3)
    # own region 0 (s_r = 1/2 >= tau): the weights are the fractions themselves
    assert w[0, 0].tolist() == pytest.approx([0.5, 0.125, 0.125, 0.25], abs=1e-9)
    # own region 2 (s_r = 1/8 < tau): w_r = 0.3, the rest 0.7 * s_i / (7/8) = 0.8 s_i
    assert w[0, 1].tolist() == pytest.approx([0.4, 0.1, 0.3, 0.2], abs=1e-9)
    # tau = 1: hard labels
    assert weights(tau=1.0)[0, 1].tolist() == pytest.approx([0, 0, 1, 0], abs=1e-12)


def test_soft_targets_add_the_weights_of_regions_of_one_class():
    labels = torch.tensor([[1, 0, 1, 2]])  # regions 0 and 2 are both class 1
    t = soft_targets(weights(tau=0.7)[None], labels, 4)[0]
    assert t[0, 0].tolist() == pytest.approx([0.075, 0.775, 0.15, 0.0], abs=1e-9)
    assert t[1, 1].tolist() == pytest.approx([0.05, 0.25, 0.7, 0.0], abs=1e-9)


def brute_force_fractions(regions, grid, stride, sigma):
    """s_i by the 2-D definition, one location at a time (independent of the separable code)."""
    n, size, _ = regions.shape
    out = np.zeros((n, grid, grid, 4))
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    for j in range(grid):
        for k in range(grid):
            g = np.exp(-((ys - (j + 0.5) * stride) ** 2 + (xs - (k + 0.5) * stride) ** 2) / (2 * sigma**2))
            for i in range(4):
                out[:, j, k, i] = (g * (regions.numpy() == i)).sum(axis=(1, 2)) / g.sum()
    return out


@pytest.mark.parametrize("sigma", [8.0, 20.0, 51.0])
def test_gaussian_fractions_match_the_2d_definition_and_weights_sum_to_one(sigma):
    g = torch.Generator().manual_seed(0)
    regions = torch.zeros(3, 64, 64, dtype=torch.int64)
    for n in range(3):  # random guillotine-free maps: any region map works
        cx, cy = torch.randint(16, 48, (2,), generator=g).tolist()
        regions[n, :cy, cx:] = 1
        regions[n, cy:, :cx] = 2
        regions[n, cy:, cx:] = 3
        regions[n, torch.rand(64, 64, generator=g) < 0.05] = 2
    s = region_fractions(regions, 4, (2, 2), 32, sigma)
    assert np.allclose(s.numpy(), brute_force_fractions(regions, 2, 32, sigma), atol=1e-10)
    for tau in (0.0, 0.5, 0.9):
        w = region_weights(s, own_regions(regions, (2, 2), 32), tau)
        assert torch.allclose(w.sum(-1), torch.ones(3, 2, 2, dtype=w.dtype))
        assert (w >= 0).all()
        t = soft_targets(w, torch.tensor([[0, 1, 2, 4]] * 3), 5)
        assert torch.allclose(t.sum(-1), torch.ones(3, 2, 2, dtype=t.dtype))


def test_narrow_erf_gives_the_own_label():
    w = region_weights(region_fractions(REGIONS, 4, (2, 2), 2, 0.05), own_regions(REGIONS, (2, 2), 2), 0.0)
    # the location centres lie on pixel corners: each sees the 4 pixels around it equally
    # location (0, 0): pixels (0..1, 0..1), all region 0
    assert w[0, 0, 0].tolist() == pytest.approx([1, 0, 0, 0], abs=1e-6)
    # location (0, 1), centre (row 1, column 3): pixels of rows 0-1, columns 2-3, two of region 1
    # and two of region 2 (its own); with tau 0 the weights are those shares
    assert w[0, 0, 1].tolist() == pytest.approx([0, 0.5, 0.5, 0], abs=1e-6)


def ce(logits, target):
    z = sum(math.exp(v) for v in logits)
    return -sum(t * (v - math.log(z)) for v, t in zip(logits, target))


def test_loss_by_hand_averages_within_then_over_regions():
    logits = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, -2.0, 0.5]]
    targets = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.8, 0.0]]
    own = [0, 1, 1, 1]  # one location in region 0, three in region 1
    per_location = [ce(lg, t) for lg, t in zip(logits, targets)]
    expected = (per_location[0] + sum(per_location[1:]) / 3) / 2
    assert expected != pytest.approx(sum(per_location) / 4)  # not the plain location mean

    lg = torch.tensor(logits).t().reshape(1, 3, 1, 4)  # (N, C, h, w)
    tg = torch.tensor(targets).reshape(1, 1, 4, 3)  # (N, h, w, C)
    ow = torch.tensor(own).reshape(1, 1, 4)
    assert float(region_averaged_soft_ce(lg, tg, ow, num_regions=2)) == pytest.approx(expected, rel=1e-6)
    # a region that holds no location does not count; montages are averaged
    assert float(region_averaged_soft_ce(lg, tg, ow, num_regions=4)) == pytest.approx(expected, rel=1e-6)
    two = region_averaged_soft_ce(torch.cat([lg, torch.zeros_like(lg)]), torch.cat([tg, tg]),
                                  torch.cat([ow, ow]), num_regions=2)
    assert float(two) == pytest.approx((expected + math.log(3)) / 2, rel=1e-6)


def test_loss_gradient_flows_to_the_logits_only():
    lg = torch.randn(2, 5, 3, 3, requires_grad=True)
    t = torch.softmax(torch.randn(2, 3, 3, 5), -1)
    region_averaged_soft_ce(lg, t, torch.randint(0, 4, (2, 3, 3)), 4).backward()
    assert lg.grad is not None and lg.grad.abs().sum() > 0
