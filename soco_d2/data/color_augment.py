"""Colour augmentation on uint8 HxWx3 images: BYOL's asymmetric recipe and SoCo's
cutout-in-box, and RandAugment-style single photometric operations (AlignDet's views).

Everything stays uint8 and uses OpenCV look-up tables and blends, so a 224 px view costs well
under a millisecond. The operations follow torchvision's definitions (``ColorJitter`` with its
random order, ``RandomGrayscale``, ``GaussianBlur``, ``RandomSolarize``); the HSV round trip
of the hue shift is quantised to 8 bits. The single operations of :data:`PHOTOMETRIC_OPS`
follow Pillow's ``ImageOps`` / ``ImageEnhance`` (``autocontrast``, ``equalize``, ``solarize``,
``posterize``; ``Color``, ``Contrast``, ``Brightness``, ``Sharpness`` blend the image with a
degenerate version: gray, its mean gray level, black, a smoothed copy; factor 1 is the
identity). ``bgr`` says which channel order the image has (it matters for grayscale weights
and hue only).
"""
from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "ColorRecipe",
    "color_jitter",
    "to_grayscale",
    "gaussian_blur",
    "solarize",
    "apply_color_recipe",
    "cutout_in_boxes",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_sharpness",
    "autocontrast",
    "equalize",
    "posterize",
    "PHOTOMETRIC_OPS",
    "random_photometric",
]

_IDENTITY = np.arange(256, dtype=np.float32)
_SOLARIZE_LUT = np.where(_IDENTITY >= 128, 255 - _IDENTITY, _IDENTITY).astype(np.uint8)
# Pillow's SMOOTH filter, the degenerate image of ImageEnhance.Sharpness.
_SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0


@dataclass(frozen=True)
class ColorRecipe:
    """Colour augmentation of one view (probabilities and strengths)."""

    jitter_prob: float = 0.8
    # (brightness, contrast, saturation, hue), as torchvision's ColorJitter arguments.
    jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    grayscale_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0


def _gray(img: np.ndarray, bgr: bool) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)


def _affine_lut(img: np.ndarray, scale: float, shift: float) -> np.ndarray:
    lut = np.clip(_IDENTITY * scale + shift + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def _shift_hue(img: np.ndarray, factor: float, bgr: bool) -> np.ndarray:
    # Full-range HSV: hue 0..255 covers the whole circle, so the shift wraps modulo 256.
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL if bgr else cv2.COLOR_RGB2HSV_FULL)
    hsv[:, :, 0] += np.uint8(int(round(factor * 256)) % 256)  # uint8 addition wraps
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL if bgr else cv2.COLOR_HSV2RGB_FULL)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with black: ``factor * img`` (1: unchanged)."""
    return _affine_lut(img, factor, 0.0)


def adjust_contrast(img: np.ndarray, factor: float, bgr: bool = False) -> np.ndarray:
    """Blend with the image's mean gray level (1: unchanged)."""
    mean = cv2.mean(_gray(img, bgr))[0]
    return _affine_lut(img, factor, (1 - factor) * mean)


def adjust_saturation(img: np.ndarray, factor: float, bgr: bool = False) -> np.ndarray:
    """Blend with the image's grayscale version (Pillow's ``Color``; 1: unchanged)."""
    gray = cv2.cvtColor(_gray(img, bgr), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(img, factor, gray, 1 - factor, 0)


def color_jitter(img: np.ndarray, strength: Sequence[float], bgr: bool = False) -> np.ndarray:
    """torchvision ``ColorJitter(b, c, s, h)``: the four adjustments in a random order, factors
    ``U(max(0, 1-x), 1+x)`` for brightness/contrast/saturation and ``U(-h, h)`` for hue."""
    b, c, s, h = strength
    order = np.random.permutation(4)
    u = np.random.random_sample(4)
    for op in order:
        if op == 0 and b > 0:
            lo = max(0.0, 1 - b)
            img = adjust_brightness(img, lo + (1 + b - lo) * u[0])
        elif op == 1 and c > 0:
            lo = max(0.0, 1 - c)
            img = adjust_contrast(img, lo + (1 + c - lo) * u[1], bgr)
        elif op == 2 and s > 0:
            lo = max(0.0, 1 - s)
            img = adjust_saturation(img, lo + (1 + s - lo) * u[2], bgr)
        elif op == 3 and h > 0:
            img = _shift_hue(img, h * (2 * u[3] - 1), bgr)
    return img


def to_grayscale(img: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Luma replicated to three channels (``RandomGrayscale`` with 3 output channels)."""
    return cv2.cvtColor(_gray(img, bgr), cv2.COLOR_GRAY2BGR)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; OpenCV sizes the kernel from sigma (about +-3 sigma)."""
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)


def solarize(img: np.ndarray, threshold: float = 128) -> np.ndarray:
    """Invert every value >= ``threshold`` (256 or more: the identity)."""
    if threshold == 128:
        return cv2.LUT(img, _SOLARIZE_LUT)
    lut = np.where(_IDENTITY >= threshold, 255 - _IDENTITY, _IDENTITY).astype(np.uint8)
    return cv2.LUT(img, lut)


def apply_color_recipe(img: np.ndarray, recipe: ColorRecipe, bgr: bool = False) -> np.ndarray:
    """Jitter, grayscale, blur, solarize (each with its probability), in BYOL's order."""
    u = np.random.random_sample(5)
    if u[0] < recipe.jitter_prob:
        img = color_jitter(img, recipe.jitter, bgr)
    if u[1] < recipe.grayscale_prob:
        img = to_grayscale(img, bgr)
    if u[2] < recipe.blur_prob:
        lo, hi = recipe.blur_sigma
        img = gaussian_blur(img, lo + (hi - lo) * u[3])
    if u[4] < recipe.solarize_prob:
        img = solarize(img)
    return img


def cutout_in_boxes(
    img: np.ndarray, boxes: np.ndarray, prob: float, area: Sequence[float],
    fill: Sequence[float] = (0, 0, 0),
) -> np.ndarray:
    """SoCo's cutout: fill a square at each box with probability ``prob`` (in place; returns
    ``img``), as the authors' published FPN run does.

    The square covers a ``U(area)`` fraction of the box's area and is centred at a uniformly
    random point of the box. It is clipped to the image, not to the box (near a box edge it
    reaches outside the box), and filled with ``fill``, one value per channel in the image's
    channel order: the dataset mean colour, i.e. 0 after the model's normalisation.
    """
    n = len(boxes)
    if n == 0 or prob <= 0:
        return img
    h, w = img.shape[:2]
    colour = np.asarray(fill, dtype=np.float64).round().clip(0, 255).astype(img.dtype)
    u = np.random.random_sample((n, 4))
    for (x1, y1, x2, y2), (u_p, u_a, u_x, u_y) in zip(boxes.tolist(), u):
        if u_p >= prob:
            continue
        half = 0.5 * np.sqrt((area[0] + (area[1] - area[0]) * u_a) * (x2 - x1) * (y2 - y1))
        cx, cy = x1 + (x2 - x1) * u_x, y1 + (y2 - y1) * u_y
        xa, xb = int(round(max(cx - half, 0))), int(round(min(cx + half, w)))
        ya, yb = int(round(max(cy - half, 0))), int(round(min(cy + half, h)))
        img[ya:yb, xa:xb] = colour
    return img


# ------------------------------------------------------------------ single photometric ops


def adjust_sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with a smoothed copy (Pillow's ``Sharpness``: 3x3 SMOOTH filter, border pixels
    kept); 0 blurs, 1 is unchanged, 2 sharpens."""
    smooth = cv2.filter2D(img, -1, _SMOOTH_KERNEL, borderType=cv2.BORDER_REPLICATE)
    if img.shape[0] > 2 and img.shape[1] > 2:
        inner = smooth[1:-1, 1:-1].copy()
        smooth = img.copy()
        smooth[1:-1, 1:-1] = inner
    else:
        smooth = img.copy()
    return cv2.addWeighted(img, factor, smooth, 1 - factor, 0)


def autocontrast(img: np.ndarray) -> np.ndarray:
    """Stretch each channel's own min..max to 0..255 (a constant channel is left as it is)."""
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        lo, hi = int(img[:, :, c].min()), int(img[:, :, c].max())
        channel = np.ascontiguousarray(img[:, :, c])
        if hi <= lo:
            out[:, :, c] = channel
            continue
        lut = np.clip((_IDENTITY - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
        out[:, :, c] = cv2.LUT(channel, lut)
    return out


def equalize(img: np.ndarray) -> np.ndarray:
    """Histogram equalisation of each channel."""
    return cv2.merge([cv2.equalizeHist(np.ascontiguousarray(img[:, :, c])) for c in range(img.shape[2])])


def posterize(img: np.ndarray, bits: int) -> np.ndarray:
    """Keep the ``bits`` (1..8) most significant bits of every value."""
    mask = np.uint8((0xFF << (8 - int(bits))) & 0xFF)
    return np.bitwise_and(img, mask)


#: The operations :func:`random_photometric` picks from (AlignDet's views).
PHOTOMETRIC_OPS = ("identity", "autocontrast", "equalize", "solarize", "color", "contrast",
                   "brightness", "sharpness", "posterize")


def random_photometric(
    img: np.ndarray,
    ops: Sequence[str] = PHOTOMETRIC_OPS,
    enhance_range: Tuple[float, float] = (0.1, 1.9),
    posterize_bits: Tuple[int, int] = (4, 8),
    solarize_range: Tuple[float, float] = (0, 256),
    bgr: bool = False,
) -> np.ndarray:
    """One operation of ``ops`` picked uniformly, with a uniformly drawn magnitude: the factor
    of color / contrast / brightness / sharpness in ``enhance_range``, the bits kept by
    posterize (integer, both ends included) in ``posterize_bits``, the solarize threshold in
    ``solarize_range``. Always draws the op and one magnitude from numpy's global RNG."""
    op = ops[int(np.random.randint(len(ops)))]
    u = float(np.random.random_sample())
    factor = enhance_range[0] + (enhance_range[1] - enhance_range[0]) * u
    if op == "identity":
        return img
    if op == "autocontrast":
        return autocontrast(img)
    if op == "equalize":
        return equalize(img)
    if op == "solarize":
        return solarize(img, solarize_range[0] + (solarize_range[1] - solarize_range[0]) * u)
    if op == "posterize":
        lo, hi = posterize_bits
        return posterize(img, min(lo + int(u * (hi - lo + 1)), hi))
    if op == "color":
        return adjust_saturation(img, factor, bgr)
    if op == "contrast":
        return adjust_contrast(img, factor, bgr)
    if op == "brightness":
        return adjust_brightness(img, factor)
    if op == "sharpness":
        return adjust_sharpness(img, factor)
    raise ValueError(f"Unknown photometric op {op!r}; known: {list(PHOTOMETRIC_OPS)}")
