"""Image files to 8-bit pixels as a person sees them, whatever their PIL mode and bit depth.

PIL's own ``convert("RGB")`` clips 16- and 32-bit grey images at 255 (a 16-bit scan becomes
almost white) and drops transparency (a transparent pixel shows whatever colour it happens to
store). :func:`to_display_mode` instead maps every mode to 8-bit ``RGB`` or ``L`` the way an
image viewer shows it:

- ``1``, ``L``, ``P`` (no transparency), ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's
  conversion (CMYK: ``R = (255 - C)(255 - K) / 255``, likewise G, B).
- ``I;16*`` (16-bit unsigned grey): scaled, ``v8 = round(v / 257)`` (0 → 0, 65535 → 255).
- ``I`` (32-bit signed grey, what 16-bit files decode to in some readers): taken as the 16-bit
  range, clipped to [0, 65535], then scaled like ``I;16``.
- ``F`` (32-bit float grey): taken as [0, 1], clipped, ``v8 = round(255 v)``.
- Any image with transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, a palette or grey/RGB
  image with a ``transparency`` entry): composited over :data:`BACKGROUND` (white, as a browser
  page shows it), ``out = (src · a + bg · (255 − a)) / 255``.
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

__all__ = ["BACKGROUND", "to_display_mode", "load_rgb", "too_large"]

#: Colour transparent pixels are composited over (RGB, 0-255).
BACKGROUND = (255, 255, 255)

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


def too_large(e: Image.DecompressionBombError) -> str:
    """Why PIL refused to decode an image, from its ``DecompressionBombError``: ``too large to
    decode (400,000,000 pixels, more than PIL's limit of 178,956,970: a possible decompression
    bomb)``."""
    nums = [int(n) for n in re.findall(r"\d+", str(e))]
    size = f"{nums[0]:,} pixels, more than PIL's limit of {nums[1]:,}: " if len(nums) >= 2 else ""
    return f"too large to decode ({size}a possible decompression bomb)"


def to_display_mode(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """``img`` as 8-bit ``mode`` (``"RGB"`` or ``"L"``) with the pixels a viewer shows.

    Args:
        img: a PIL image of any mode (loaded or lazily opened).
        mode: ``"RGB"`` (3-channel models) or ``"L"`` (1-channel models; from colour by PIL's
            ITU-R 601-2 luma).

    Returns:
        A new image of ``mode``, same size.

    Raises:
        ValueError: ``mode`` other than ``"RGB"`` or ``"L"``.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L' (got {mode!r}).")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # see the module docstring
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            scaled = np.clip(arr, 0.0, 1.0) * 255.0
        else:
            scaled = np.clip(arr, 0.0, 65535.0) / 257.0
        img = Image.fromarray(np.rint(scaled).astype(np.uint8), "L")
    if {"A", "a"} & set(img.getbands()) or "transparency" in img.info:
        grey = img.mode in _GREY_MODES
        rgba = img.convert("RGBA")
        ground = Image.new("RGBA", img.size, (*BACKGROUND, 255))
        img = Image.alpha_composite(ground, rgba).convert("RGB")
        if grey:  # a grey image stays grey: its three channels are equal
            img = img.convert("L")
    return img if img.mode == mode else img.convert(mode)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file as 8-bit RGB (:func:`to_display_mode`).

    The loader of the folder and iNaturalist data sets (a drop-in for torchvision's
    ``default_loader``).

    Raises:
        OSError, SyntaxError, ValueError: what PIL raises for an unreadable file.
    """
    with open(path, "rb") as f, Image.open(f) as im:
        im.load()
        return to_display_mode(im, "RGB")
