"""BYOL's asymmetric colour recipe and SoCo's cutout-in-box, on uint8 HxWx3 images.

Everything stays uint8 and uses OpenCV look-up tables and blends, so a 224 px view costs well
under a millisecond. The operations follow torchvision's definitions (``ColorJitter`` with its
random order, ``RandomGrayscale``, ``GaussianBlur``, ``RandomSolarize`` at 128); the HSV round
trip of the hue shift is quantised to 8 bits. ``bgr`` says which channel order the image has
(it matters for grayscale weights and hue only).
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
]

_IDENTITY = np.arange(256, dtype=np.float32)
_SOLARIZE_LUT = np.where(_IDENTITY >= 128, 255 - _IDENTITY, _IDENTITY).astype(np.uint8)


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


def color_jitter(img: np.ndarray, strength: Sequence[float], bgr: bool = False) -> np.ndarray:
    """torchvision ``ColorJitter(b, c, s, h)``: the four adjustments in a random order, factors
    ``U(max(0, 1-x), 1+x)`` for brightness/contrast/saturation and ``U(-h, h)`` for hue."""
    b, c, s, h = strength
    order = np.random.permutation(4)
    u = np.random.random_sample(4)
    for op in order:
        if op == 0 and b > 0:
            lo = max(0.0, 1 - b)
            img = _affine_lut(img, lo + (1 + b - lo) * u[0], 0.0)
        elif op == 1 and c > 0:
            lo = max(0.0, 1 - c)
            f = lo + (1 + c - lo) * u[1]
            mean = cv2.mean(_gray(img, bgr))[0]
            img = _affine_lut(img, f, (1 - f) * mean)
        elif op == 2 and s > 0:
            lo = max(0.0, 1 - s)
            f = lo + (1 + s - lo) * u[2]
            gray = cv2.cvtColor(_gray(img, bgr), cv2.COLOR_GRAY2BGR)
            img = cv2.addWeighted(img, f, gray, 1 - f, 0)
        elif op == 3 and h > 0:
            img = _shift_hue(img, h * (2 * u[3] - 1), bgr)
    return img


def to_grayscale(img: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Luma replicated to three channels (``RandomGrayscale`` with 3 output channels)."""
    return cv2.cvtColor(_gray(img, bgr), cv2.COLOR_GRAY2BGR)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; OpenCV sizes the kernel from sigma (about +-3 sigma)."""
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)


def solarize(img: np.ndarray) -> np.ndarray:
    """Invert every value >= 128."""
    return cv2.LUT(img, _SOLARIZE_LUT)


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
