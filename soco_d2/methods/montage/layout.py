"""Where the four samples of a montage go: aspect groups, the canvas split and the region map.

Aspect groups (spec: Samples): a sample of aspect ratio ``a = w / h`` is tall (T) when
``a < lo``, wide (W) when ``a > hi`` and square-ish (S) otherwise, with ``(lo, hi) =
INPUT.MONTAGE.GROUP_BOUNDS`` = (0.5, 1.5).

The layout rule (ours; the spec says only that the split adapts to the samples' aspect groups so
that little distortion or padding is needed). The canvas is cut into *strips*, columns side by
side or rows one above the other, and each strip is cut across into the samples it holds, so
the four regions tile the canvas exactly with no padding (a guillotine split). Every way of
grouping the four samples into strips (the 15 set partitions, from one strip of four to four
strips of one) in both directions is a candidate, if each region can keep the minimum side.
For one candidate the cuts follow in closed form:

- columns: a column holding samples of aspects ``a_i`` stacked has, at unit height, the natural
  width ``u = 1 / sum(1 / a_i)``; with column widths ``u_j / U`` (``U = sum_j u_j``) and
  heights inside a column proportional to ``1 / a_i``, every region's aspect is its sample's
  aspect times ``1 / U``: all four are distorted by the same factor;
- rows: likewise with natural heights ``t = 1 / sum(a_i)`` at unit width and widths inside a
  row proportional to ``a_i``; every region's aspect is its sample's times ``T = sum_j t_j``.

Cut positions are rounded to pixels and moved, where needed, so that every region side is at
least ``min_region`` (INPUT.MONTAGE.MIN_REGION_SIZE). The candidate whose regions then have the
smallest worst distortion ``max_i |log(region aspect / sample aspect)|`` wins. Equally distorted
candidates are common (two tall and two wide samples fill two columns either way at the same
factor), so ties (equal to 9 decimals) go to the candidate that puts the most pairs of samples
of the same aspect group in the same strip, then to the first enumerated. What that does with
the groups: four square-ish samples get four quadrants; tall samples share narrow columns and
wide samples flat rows; four wide samples on a 224 px canvas get a row of two above two
full-width rows. On a small canvas the minimum side limits the choice (at 64 px with 32 px
regions only the 2 x 2 grid remains). The mapper shuffles the samples first, so which
place a sample lands in is random.
"""
import math
from typing import Iterator, List, Sequence, Tuple

import numpy as np

__all__ = ["GROUP_NAMES", "aspect_group", "choose_layout", "region_map", "layout_distortion"]

#: Group index -> name.
GROUP_NAMES = ("S", "T", "W")

Rect = Tuple[int, int, int, int]  # x0, y0, x1, y1 in canvas pixels, half-open


def aspect_group(aspect: float, bounds: Sequence[float] = (0.5, 1.5)) -> int:
    """0 (S), 1 (T) or 2 (W) for aspect ratio ``w / h`` (module docstring)."""
    lo, hi = bounds
    if aspect < lo:
        return 1
    if aspect > hi:
        return 2
    return 0


def _set_partitions(items: List[int]) -> Iterator[List[List[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _set_partitions(rest):
        yield [[first]] + partition
        for k in range(len(partition)):
            yield partition[:k] + [[first] + partition[k]] + partition[k + 1:]


def _candidates(aspects: Sequence[float]):
    """(log factor, direction, strips, strip fractions, fractions inside each strip) of every
    strip layout (module docstring)."""
    for strips in _set_partitions(list(range(len(aspects)))):
        for direction in ("columns", "rows"):
            # along the strip, each sample's share; across, each strip's natural extent
            along = [[1.0 / aspects[i] if direction == "columns" else aspects[i] for i in s] for s in strips]
            natural = [1.0 / sum(a) for a in along]
            total = sum(natural)
            log_factor = -math.log(total) if direction == "columns" else math.log(total)
            yield (log_factor, direction, strips, [n / total for n in natural],
                   [[x / sum(a) for x in a] for a in along])


def _cuts(fractions: Sequence[float], length: int, min_side: int) -> List[int]:
    """Integer positions 0 = c_0 < ... < c_n = length, near the cumulative fractions, with every
    gap >= min_side (requires n * min_side <= length)."""
    n = len(fractions)
    cuts = [0] + [int(round(length * sum(fractions[:k]))) for k in range(1, n)] + [length]
    for k in range(1, n):  # every gap >= min_side going up ...
        cuts[k] = max(cuts[k], cuts[k - 1] + min_side)
    for k in range(n - 1, 0, -1):  # ... and coming down from the far end
        cuts[k] = min(cuts[k], cuts[k + 1] - min_side)
    return cuts


def _place(direction: str, strips, strip_fractions, inner, canvas: int, min_region: int) -> List[Rect]:
    """The rectangles of one candidate, its cuts rounded and clamped (``_cuts``)."""
    rects: List[Rect] = [None] * sum(len(s) for s in strips)
    across = _cuts(strip_fractions, canvas, min_region)
    for k, (members, fractions) in enumerate(zip(strips, inner)):
        lo, hi = across[k], across[k + 1]
        along = _cuts(fractions, canvas, min_region)
        for m, i in enumerate(members):
            if direction == "columns":  # strip = column [lo, hi), members top to bottom
                rects[i] = (lo, along[m], hi, along[m + 1])
            else:  # strip = row [lo, hi), members left to right
                rects[i] = (along[m], lo, along[m + 1], hi)
    return rects


def choose_layout(aspects: Sequence[float], canvas: int, min_region: int,
                  group_bounds: Sequence[float] = (0.5, 1.5)) -> List[Rect]:
    """The regions of a ``canvas`` x ``canvas`` montage, region ``i`` for sample ``i``.

    Args:
        aspects: the samples' aspect ratios ``w / h`` (> 0); four in a montage.
        canvas: the canvas side in pixels.
        min_region: smallest region side in pixels (``2 * min_region <= canvas``).
        group_bounds: the aspect-group bounds (ties between layouts, module docstring).

    Returns:
        ``(x0, y0, x1, y1)`` half-open integer rectangles that tile the canvas.
    """
    assert 2 * min_region <= canvas, (canvas, min_region)
    most = canvas // min_region  # regions that fit side by side
    groups = [aspect_group(a, group_bounds) for a in aspects]
    best_key, best = None, None
    for order, (_, direction, strips, strip_fractions, inner) in enumerate(
            _candidates([float(a) for a in aspects])):
        if len(strips) > most or max(len(s) for s in strips) > most:
            continue
        rects = _place(direction, strips, strip_fractions, inner, canvas, min_region)
        worst = max(abs(math.log(d)) for d in layout_distortion(aspects, rects))
        same = sum(groups[i] == groups[j] for st in strips for i in st for j in st if i < j)
        key = (round(worst, 9), -same, order)
        if best_key is None or key < best_key:
            best_key, best = key, rects
    return best


def region_map(rects: Sequence[Rect], canvas: int) -> np.ndarray:
    """int64 (canvas, canvas): the index of the region that covers each pixel.

    Raises:
        ValueError: a pixel is covered by no region or by more than one.
    """
    count = np.zeros((canvas, canvas), np.int64)
    out = np.full((canvas, canvas), -1, np.int64)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        count[y0:y1, x0:x1] += 1
        out[y0:y1, x0:x1] = i
    if (count != 1).any():
        raise ValueError(f"regions {list(rects)} do not tile the {canvas} px canvas exactly")
    return out


def layout_distortion(aspects: Sequence[float], rects: Sequence[Rect]) -> List[float]:
    """Per sample, region aspect / sample aspect (1: no distortion)."""
    return [((x1 - x0) / (y1 - y0)) / a for a, (x0, y0, x1, y1) in zip(aspects, rects)]
