"""ERF-adaptive soft labels (spec: ERF-adaptive dense classification).

For the location (j, k) of the classified feature map, g is its effective receptive field on the
canvas, m^i the binary mask of region R_i and R_r the region that holds the location. With the
fractions ``s_i = sum(g m^i) / sum(g)`` (they sum to 1 over the four regions):

    w_r = max(tau, s_r)
    w_i = (1 - w_r) * sum(g m^i) / sum(g (1 - m^r)) = (1 - w_r) * s_i / (1 - s_r)   (i != r)

and the soft label is ``sum_i w_i y_i`` (y_i the one-hot class of region i; regions of the same
class add up). The weights sum to 1. When all of g lies in R_r (s_r = 1), w_r = 1 and the others
are 0.

The ERF, our choice: a **Gaussian approximation**, ``g(x, y) = exp(-d^2 / (2 sigma^2))`` with d
the distance from the pixel centre ``(x + 0.5, y + 0.5)`` to the location's centre ``((k + 0.5)
stride, (j + 0.5) stride)`` (the cell centre, Detectron2's RoIAlign convention), restricted to
the canvas (g is zero outside it, as the zero padding makes the real ERF), with sigma =
MODEL.MONTAGE.ERF_SIGMA pixels. Why not a measured, cached ERF: the ERF of a trained network is
not the ERF at initialisation (it grows as it trains, Luo et al. 2016), so a per-architecture
cache would fix one arbitrary moment anyway; a Gaussian is what the spec describes, is separable
(exact and cheap for any region map, see :func:`region_fractions`), and its one parameter is a
key. :func:`measure_erf_sigma` is how the default was set: the spread of |d output / d input| of
the centre location of a freshly initialised Detectron2 R18 or R50 at 224 px is 51 px.

Shape shorthand: N montages, S canvas side, h x w feature map, R regions (4), C logits.
"""
import math

import torch

__all__ = [
    "gaussian_erf_1d", "region_fractions", "own_regions", "region_weights", "soft_targets",
    "measure_erf_sigma",
]


def gaussian_erf_1d(num_cells: int, canvas: int, stride: float, sigma: float,
                    device=None) -> torch.Tensor:
    """(num_cells, canvas) float64: the 1-D Gaussian of each cell along one canvas axis; the 2-D
    ERF of location (j, k) is the outer product of row j (y) and row k (x)."""
    centres = (torch.arange(num_cells, dtype=torch.float64, device=device) + 0.5) * stride
    pixels = torch.arange(canvas, dtype=torch.float64, device=device) + 0.5
    return torch.exp(-((pixels[None, :] - centres[:, None]) ** 2) / (2.0 * sigma * sigma))


def region_fractions(regions: torch.Tensor, num_regions: int, grid_hw, stride: float,
                     sigma: float) -> torch.Tensor:
    """s_i of every location: the share of its Gaussian ERF on each region.

    Args:
        regions: int64 (N, S, S) region index of each pixel.
        grid_hw: (h, w) of the feature map.

    Returns:
        float64 (N, h, w, R), summing to 1 over R.
    """
    n, height, width = regions.shape
    gy = gaussian_erf_1d(grid_hw[0], height, stride, sigma, regions.device)
    gx = gaussian_erf_1d(grid_hw[1], width, stride, sigma, regions.device)
    masks = torch.nn.functional.one_hot(regions, num_regions).to(torch.float64)  # (N, S, S, R)
    mass = torch.einsum("jy,nyxr,kx->njkr", gy, masks, gx)
    total = gy.sum(dim=1)[:, None] * gx.sum(dim=1)[None, :]  # (h, w)
    return mass / total[None, :, :, None]


def own_regions(regions: torch.Tensor, grid_hw, stride: float) -> torch.Tensor:
    """r of every location: the region of the pixel under its centre; int64 (N, h, w)."""
    ys = ((torch.arange(grid_hw[0], device=regions.device) + 0.5) * stride).long()
    xs = ((torch.arange(grid_hw[1], device=regions.device) + 0.5) * stride).long()
    return regions[:, ys[:, None], xs[None, :]]


def region_weights(fractions: torch.Tensor, own: torch.Tensor, tau: float) -> torch.Tensor:
    """w_i of every location (module docstring).

    Args:
        fractions: (N, h, w, R) s_i; own: int64 (N, h, w) r.

    Returns:
        (N, h, w, R), summing to 1 over R.
    """
    own_mask = torch.nn.functional.one_hot(own, fractions.shape[-1]).to(torch.bool)
    s_own = (fractions * own_mask).sum(dim=-1, keepdim=True)
    w_own = s_own.clamp(min=tau)
    rest = (1.0 - s_own).clamp(min=0.0)
    others = torch.where(rest > 1e-12, (1.0 - w_own) * fractions / rest.clamp(min=1e-12),
                         torch.zeros_like(fractions))
    return torch.where(own_mask, w_own.expand_as(fractions), others)


def soft_targets(weights: torch.Tensor, labels: torch.Tensor, num_logits: int) -> torch.Tensor:
    """The soft label ``sum_i w_i y_i`` of every location.

    Args:
        weights: (N, h, w, R); labels: int64 (N, R) class of each region, in [0, num_logits).

    Returns:
        (N, h, w, num_logits), in the dtype of ``weights``.
    """
    n, h, w, r = weights.shape
    index = labels[:, None, None, :].expand(n, h, w, r)
    out = torch.zeros(n, h, w, num_logits, dtype=weights.dtype, device=weights.device)
    return out.scatter_add_(-1, index, weights)


@torch.enable_grad()
def measure_erf_sigma(backbone: torch.nn.Module, feature: str = "res5", size: int = 224,
                      batch: int = 4, repeats: int = 4, seed: int = 0) -> float:
    """Spread (px) of the empirical ERF of the centre location of ``backbone``'s ``feature``.

    The ERF is mean |d y / d x| over the input channels and ``repeats`` batches of Gaussian
    noise images (Luo et al. 2016), where y sums the centre location's channels; the result is
    ``sqrt(E[d^2] / 2)`` around its centroid, the sigma of a 2-D Gaussian with that spread. The
    backbone keeps its train/eval mode (train: batch statistics, as at the start of training).
    """
    generator = torch.Generator().manual_seed(seed)
    device = next(backbone.parameters()).device
    acc = torch.zeros(size, size, dtype=torch.float64)
    for _ in range(repeats):
        x = torch.randn(batch, 3, size, size, generator=generator).to(device).requires_grad_(True)
        y = backbone(x)[feature]
        y[:, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
        acc += x.grad.detach().abs().sum(dim=(0, 1)).double().cpu()
    g = acc / acc.sum()
    coords = torch.arange(size, dtype=torch.float64) + 0.5
    cy, cx = (g.sum(1) * coords).sum(), (g.sum(0) * coords).sum()
    var = (g.sum(1) * (coords - cy) ** 2).sum() + (g.sum(0) * (coords - cx) ** 2).sum()
    return math.sqrt(float(var) / 2.0)
